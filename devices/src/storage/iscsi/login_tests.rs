//! Login state machine against a scripted fake target on a socket pair.

use std::os::unix::net::UnixStream;
use std::thread;

use super::chap;
use super::login::{login, recv_pdu, send_pdu, LoginConfig, LoginError};
use super::pdu::{Pdu, SeqNums};
use super::text::{self, Offer};
use super::url::Credentials;

const ISID: [u8; 6] = [0x80, 1, 2, 3, 4, 5];

fn config(creds: Credentials) -> LoginConfig {
    LoginConfig {
        initiator: "iqn.2026-11.dev.ferry:test".into(),
        target: "iqn.2026-11.test:disk0".into(),
        isid: ISID,
        credentials: creds,
        offer: Offer {
            header_digest: "CRC32C,None",
            ..Offer::default()
        },
    }
}

/// The fake target's side of one exchange.
struct Target {
    s: UnixStream,
    stat_sn: u32,
}

impl Target {
    fn recv(&mut self) -> (bool, u8, u8, Vec<(String, String)>) {
        let (pdu, data) = recv_pdu(&mut self.s, 65536).expect("target recv");
        let Pdu::LoginRequest {
            transit,
            csg,
            nsg,
            isid,
            ..
        } = pdu
        else {
            panic!("not a login request: {pdu:?}")
        };
        assert_eq!(isid, ISID);
        (transit, csg, nsg, text::parse(&data).expect("request text"))
    }

    fn send(
        &mut self,
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        status: (u8, u8),
        keys: &[(&str, &str)],
    ) {
        let mut data = Vec::new();
        for (k, v) in keys {
            text::push(&mut data, k, v);
        }
        self.send_raw(transit, cont, csg, nsg, status, &data);
    }

    fn send_raw(
        &mut self,
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        status: (u8, u8),
        data: &[u8],
    ) {
        let rsp = Pdu::LoginResponse {
            transit,
            cont,
            csg,
            nsg,
            version_max: 0,
            version_active: 0,
            isid: ISID,
            tsih: if transit && nsg == 3 { 7 } else { 0 },
            itt: 0,
            sn: SeqNums {
                stat_sn: self.stat_sn,
                exp_cmd_sn: 1,
                max_cmd_sn: 32,
            },
            status_class: status.0,
            status_detail: status.1,
        };
        self.stat_sn += 1;
        // The initiator may already have hung up after an error status; that is fine.
        let _ = send_pdu(&mut self.s, &rsp, data);
    }

    /// Answers the operational stage the way tgtd does by default.
    fn operational(&mut self) {
        let (transit, csg, nsg, keys) = self.recv();
        assert!(transit);
        assert_eq!((csg, nsg), (1, 3));
        let get = |k: &str| keys.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("HeaderDigest").as_deref(), Some("CRC32C,None"));
        assert_eq!(get("ErrorRecoveryLevel").as_deref(), Some("0"));
        assert_eq!(get("InitialR2T").as_deref(), Some("No"));
        self.send(
            true,
            false,
            1,
            3,
            (0, 0),
            &[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "8192"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"),
                ("ImmediateData", "Yes"),
                ("InitialR2T", "Yes"),
                ("MaxOutstandingR2T", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("TargetPortalGroupTag", "1"),
            ],
        );
    }
}

fn run(
    creds: Credentials,
    script: impl FnOnce(&mut Target) + Send + 'static,
) -> Result<super::login::LoginOutcome, LoginError> {
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let mut target = Target { s: b, stat_sn: 100 };
        script(&mut target);
    });
    let mut a = a;
    let r = login(&mut a, &config(creds));
    drop(a);
    t.join().expect("fake target panicked");
    r
}

fn chap_creds(mutual: bool) -> Credentials {
    Credentials {
        username: Some("alice".into()),
        password: Some("secret12chars".into()),
        mutual_username: mutual.then(|| "tgt".into()),
        mutual_password: mutual.then(|| "tgtsecret12ch".into()),
    }
}

#[test]
fn no_authentication() {
    let out = run(Credentials::default(), |t| {
        let (transit, csg, nsg, keys) = t.recv();
        assert!(transit);
        assert_eq!((csg, nsg), (0, 1));
        assert!(keys.contains(&("AuthMethod".into(), "None".into())));
        assert!(keys.contains(&("TargetName".into(), "iqn.2026-11.test:disk0".into())));
        assert!(keys.contains(&("SessionType".into(), "Normal".into())));
        t.send(true, false, 0, 1, (0, 0), &[("AuthMethod", "None")]);
        t.operational();
    })
    .unwrap();
    assert_eq!(out.tsih, 7);
    assert!(out.params.header_digest && !out.params.data_digest);
    assert_eq!(out.params.target_max_recv_dsl, 8192);
    assert!(out.params.initial_r2t && out.params.immediate_data);
    assert_eq!(out.cmd_sn, 1);
    assert_eq!(out.exp_stat_sn, 102);
}

/// Target side of CHAP: checks the initiator's response against `secret`; optionally answers a
/// mutual challenge with `mutual_secret`.
fn chap_target(t: &mut Target, secret: &'static str, mutual_secret: Option<&'static str>) -> bool {
    let (transit, _, _, keys) = t.recv();
    assert!(!transit);
    assert!(keys
        .iter()
        .any(|(k, v)| k == "AuthMethod" && v.starts_with("CHAP")));
    t.send(false, false, 0, 0, (0, 0), &[("AuthMethod", "CHAP")]);
    let (_, _, _, keys) = t.recv();
    assert_eq!(keys, vec![("CHAP_A".to_string(), "5".to_string())]);
    let challenge = [9u8, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6];
    t.send(
        false,
        false,
        0,
        0,
        (0, 0),
        &[
            ("CHAP_A", "5"),
            ("CHAP_I", "42"),
            ("CHAP_C", &chap::to_hex(&challenge)),
        ],
    );
    let (transit, _, nsg, keys) = t.recv();
    assert!(transit);
    assert_eq!(nsg, 1);
    let get = |k: &str| keys.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    assert_eq!(get("CHAP_N").as_deref(), Some("alice"));
    let want = chap::to_hex(&chap::chap_response(42, secret.as_bytes(), &challenge));
    if get("CHAP_R").as_deref() != Some(want.as_str()) {
        t.send(false, false, 0, 0, (2, 1), &[]);
        return false;
    }
    match mutual_secret {
        None => t.send(true, false, 0, 1, (0, 0), &[]),
        Some(ms) => {
            let id = get("CHAP_I").and_then(|i| text::number(&i)).unwrap() as u8;
            let c = chap::from_binary(&get("CHAP_C").unwrap()).unwrap();
            let r = chap::to_hex(&chap::chap_response(id, ms.as_bytes(), &c));
            t.send(
                true,
                false,
                0,
                1,
                (0, 0),
                &[("CHAP_N", "tgt"), ("CHAP_R", &r)],
            );
        }
    }
    true
}

#[test]
fn chap_one_way() {
    run(chap_creds(false), |t| {
        assert!(chap_target(t, "secret12chars", None));
        t.operational();
    })
    .unwrap();
}

#[test]
fn chap_wrong_secret_is_auth_failure() {
    let err = run(chap_creds(false), |t| {
        assert!(!chap_target(t, "othersecret12", None));
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Auth(_)), "{err}");
}

#[test]
fn chap_mutual() {
    run(chap_creds(true), |t| {
        assert!(chap_target(t, "secret12chars", Some("tgtsecret12ch")));
        t.operational();
    })
    .unwrap();
    // A target that does not know the mutual secret is refused.
    let err = run(chap_creds(true), |t| {
        assert!(chap_target(t, "secret12chars", Some("impostor12345")));
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Auth(_)), "{err}");
}

#[test]
fn target_requires_chap_but_none_configured() {
    let err = run(Credentials::default(), |t| {
        t.recv();
        t.send(false, false, 0, 0, (0, 0), &[("AuthMethod", "Reject")]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Auth(_)), "{err}");
}

#[test]
fn target_not_found_and_target_error() {
    let err = run(Credentials::default(), |t| {
        t.recv();
        t.send(false, false, 0, 0, (2, 3), &[]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::TargetNotFound(_)), "{err}");
    let err = run(Credentials::default(), |t| {
        t.recv();
        t.send(false, false, 0, 0, (3, 1), &[]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Rejected(_)), "{err}");
}

#[test]
fn continued_response_is_reassembled() {
    let out = run(Credentials::default(), |t| {
        t.recv();
        t.send(true, false, 0, 1, (0, 0), &[("AuthMethod", "None")]);
        t.recv();
        // Split "MaxRecvDataSegmentLength=4096\0" across two PDUs.
        t.send_raw(false, true, 1, 0, (0, 0), b"MaxRecvDataSegme");
        let (_, _, _, keys) = t.recv();
        assert!(keys.is_empty());
        t.send_raw(
            true,
            false,
            1,
            3,
            (0, 0),
            b"ntLength=4096\0HeaderDigest=None\0",
        );
    })
    .unwrap();
    assert_eq!(out.params.target_max_recv_dsl, 4096);
    assert!(!out.params.header_digest);
}

#[test]
fn unknown_key_is_answered_not_understood() {
    run(Credentials::default(), |t| {
        t.recv();
        t.send(true, false, 0, 1, (0, 0), &[("AuthMethod", "None")]);
        t.recv();
        t.send(false, false, 1, 0, (0, 0), &[("X-com.example.Foo", "1")]);
        let (_, _, _, keys) = t.recv();
        assert_eq!(
            keys,
            vec![("X-com.example.Foo".to_string(), "NotUnderstood".to_string())]
        );
        t.send(true, false, 1, 3, (0, 0), &[]);
    })
    .unwrap();
}

#[test]
fn hostile_targets_fail_cleanly() {
    // Never transits: bounded number of exchanges.
    let err = run(Credentials::default(), |t| loop {
        if recv_pdu(&mut t.s, 65536).is_err() {
            break;
        }
        t.send(false, false, 0, 0, (0, 0), &[]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Protocol(_)), "{err}");
    // Digest we did not offer.
    let err = run(Credentials::default(), |t| {
        t.recv();
        t.send(true, false, 0, 1, (0, 0), &[("AuthMethod", "None")]);
        t.recv();
        t.send(true, false, 1, 3, (0, 0), &[("DataDigest", "CRC64")]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Rejected(_)), "{err}");
    // Garbage instead of a login response.
    let err = run(Credentials::default(), |t| {
        t.recv();
        let _ = std::io::Write::write_all(&mut t.s, &[0xffu8; 48]);
    })
    .unwrap_err();
    assert!(matches!(err, LoginError::Protocol(_)), "{err}");
}
