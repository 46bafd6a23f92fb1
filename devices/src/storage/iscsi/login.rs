//! The login phase (RFC 7143 §6.3, §12): the security stage with CHAP or no authentication,
//! then the operational stage, over a blocking stream with timeouts.
//!
//! Written against `Read + Write` so that tests can drive it with a scripted fake target.

use std::io::{self, Read, Write};

use super::chap;
use super::pdu::{
    self, Framing, Pdu, SeqNums, BHS_LEN, STAGE_FULL_FEATURE, STAGE_OPERATIONAL, STAGE_SECURITY,
};
use super::text::{self, Offer, Params};
use super::url::Credentials;

/// Bound on login request/response round trips, so a target can not keep us in login forever.
const MAX_EXCHANGES: usize = 16;

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("target not found: {0}")]
    TargetNotFound(String),
    #[error("login rejected: {0}")]
    Rejected(String),
    #[error("login protocol error: {0}")]
    Protocol(String),
    #[error("I/O error during login: {0}")]
    Io(#[from] io::Error),
}

/// What a login needs.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub initiator: String,
    pub target: String,
    /// Initiator Session ID; reusing it with TSIH 0 after a connection loss reinstates the
    /// session, which makes the target drop the old one's tasks (RFC 7143 §6.3.5).
    pub isid: [u8; 6],
    pub credentials: Credentials,
    pub offer: Offer,
}

/// A logged-in session's starting state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginOutcome {
    pub params: Params,
    pub tsih: u16,
    /// CmdSN for the first command.
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

/// A type-safe random ISID: type 0b10 ("random") in the top bits (RFC 7143 §11.12.5).
pub fn random_isid() -> io::Result<[u8; 6]> {
    let mut isid = [0u8; 6];
    chap::random_bytes(&mut isid)?;
    isid[0] = 0x80 | (isid[0] & 0x3f);
    Ok(isid)
}

/// Sends one PDU with no digests (login PDUs never carry them).
pub fn send_pdu<S: Write>(s: &mut S, pdu: &Pdu, data: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(BHS_LEN + data.len() + 4);
    pdu::write_frame(&mut buf, pdu, data, Framing::default());
    s.write_all(&buf)
}

/// Receives one PDU with no digests, refusing data segments over `max_data`.
pub fn recv_pdu<S: Read>(s: &mut S, max_data: u32) -> Result<(Pdu, Vec<u8>), LoginError> {
    let mut bhs = [0u8; BHS_LEN];
    s.read_exact(&mut bhs)?;
    let total = pdu::frame_len(&bhs, Framing::default(), max_data)
        .map_err(|e| LoginError::Protocol(e.to_string()))?;
    let mut buf = vec![0u8; total];
    buf[..BHS_LEN].copy_from_slice(&bhs);
    s.read_exact(&mut buf[BHS_LEN..])?;
    let frame = pdu::parse_frame(&buf, Framing::default(), max_data)
        .map_err(|e| LoginError::Protocol(e.to_string()))?
        .ok_or_else(|| LoginError::Protocol("short PDU".into()))?;
    Ok((frame.pdu, frame.data.to_vec()))
}

/// A login response after status checks and continuation reassembly.
struct Response {
    transit: bool,
    nsg: u8,
    tsih: u16,
    sn: SeqNums,
    keys: Vec<(String, String)>,
}

struct Login<'a, S> {
    s: &'a mut S,
    cfg: &'a LoginConfig,
    cmd_sn: u32,
    exp_stat_sn: u32,
    exchanges: usize,
}

impl<S: Read + Write> Login<'_, S> {
    /// Sends a request in stage `csg` (asking for `nsg` when `transit`), collects the full response.
    fn exchange(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[u8],
    ) -> Result<Response, LoginError> {
        let mut text = Vec::new();
        let mut data = keys;
        loop {
            self.exchanges += 1;
            if self.exchanges > MAX_EXCHANGES {
                return Err(LoginError::Protocol("target did not finish login".into()));
            }
            let req = Pdu::LoginRequest {
                transit,
                cont: false,
                csg,
                nsg: if transit { nsg } else { 0 },
                isid: self.cfg.isid,
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            };
            send_pdu(self.s, &req, data)?;
            let (rsp, rdata) = recv_pdu(self.s, text::MAX_TEXT as u32)?;
            let Pdu::LoginResponse {
                transit: t,
                cont,
                csg: rcsg,
                nsg: rnsg,
                version_active,
                isid,
                tsih,
                itt,
                sn,
                status_class,
                status_detail,
                ..
            } = rsp
            else {
                return Err(LoginError::Protocol(format!(
                    "expected a login response, got {rsp:?}"
                )));
            };
            check_status(status_class, status_detail, &self.cfg.target)?;
            if itt != 0 || isid != self.cfg.isid || rcsg != csg || version_active != 0 {
                return Err(LoginError::Protocol(
                    "login response does not match the request".into(),
                ));
            }
            if t && cont {
                return Err(LoginError::Protocol(
                    "login response with both T and C set".into(),
                ));
            }
            self.exp_stat_sn = sn.stat_sn.wrapping_add(1);
            if text.len() + rdata.len() > text::MAX_TEXT {
                return Err(LoginError::Protocol("login text too long".into()));
            }
            text.extend_from_slice(&rdata);
            if cont {
                // Ask for the rest of the response with an empty request (RFC 7143 §6.3).
                data = &[];
                continue;
            }
            let keys = text::parse(&text).map_err(LoginError::Protocol)?;
            if t && (rnsg < csg || rnsg == 2 || (transit && rnsg > nsg)) {
                return Err(LoginError::Protocol(format!("bad next stage {rnsg}")));
            }
            return Ok(Response {
                transit: t,
                nsg: rnsg,
                tsih,
                sn,
                keys,
            });
        }
    }

    /// Runs the security stage; returns the response that moved us on (it may already have
    /// transited to the operational stage).
    fn security(&mut self) -> Result<(), LoginError> {
        let creds = &self.cfg.credentials;
        let chap_creds = creds.chap();
        let mutual = creds.mutual();
        if mutual.is_some() && chap_creds.is_none() {
            return Err(LoginError::Auth(
                "mutual CHAP needs a username and password too".into(),
            ));
        }
        let methods = match (chap_creds, mutual) {
            (None, _) => "None",
            (Some(_), None) => "CHAP,None",
            (Some(_), Some(_)) => "CHAP",
        };
        let mut keys = Vec::new();
        text::push(&mut keys, "InitiatorName", &self.cfg.initiator);
        text::push(&mut keys, "SessionType", "Normal");
        text::push(&mut keys, "TargetName", &self.cfg.target);
        text::push(&mut keys, "AuthMethod", methods);
        let rsp = self.exchange(
            STAGE_SECURITY,
            STAGE_OPERATIONAL,
            chap_creds.is_none(),
            &keys,
        )?;
        let method = find(&rsp.keys, "AuthMethod").unwrap_or("None");
        match method {
            "None" if mutual.is_none() => return self.finish_security(rsp),
            "None" => {
                return Err(LoginError::Auth(
                    "target refused to authenticate itself (mutual CHAP)".into(),
                ))
            }
            "CHAP" if chap_creds.is_some() => {}
            other => {
                return Err(LoginError::Auth(format!(
                    "target requires authentication method {other:.40}"
                )))
            }
        }
        let (user, secret) = chap_creds.unwrap_or_default();
        let mut keys = Vec::new();
        text::push(&mut keys, "CHAP_A", "5");
        let rsp = self.exchange(STAGE_SECURITY, STAGE_OPERATIONAL, false, &keys)?;
        if find(&rsp.keys, "CHAP_A") != Some("5") {
            return Err(LoginError::Auth(
                "target did not accept CHAP with MD5".into(),
            ));
        }
        let id = find(&rsp.keys, "CHAP_I")
            .and_then(text::number)
            .filter(|&i| i <= 255)
            .ok_or_else(|| LoginError::Protocol("missing or bad CHAP_I".into()))?
            as u8;
        let challenge = find(&rsp.keys, "CHAP_C")
            .and_then(chap::from_binary)
            .ok_or_else(|| LoginError::Protocol("missing or bad CHAP_C".into()))?;
        let mut keys = Vec::new();
        text::push(&mut keys, "CHAP_N", user);
        text::push(
            &mut keys,
            "CHAP_R",
            &chap::to_hex(&chap::chap_response(id, secret.as_bytes(), &challenge)),
        );
        let mut ours = [0u8; 17];
        if mutual.is_some() {
            chap::random_bytes(&mut ours)?;
            // A target that echoes our challenge back could be reflecting it (RFC 7143 §12.1.3).
            if ours[1..] == challenge[..] {
                return Err(LoginError::Auth("target reused our CHAP challenge".into()));
            }
            text::push(&mut keys, "CHAP_I", &ours[0].to_string());
            text::push(&mut keys, "CHAP_C", &chap::to_hex(&ours[1..]));
        }
        let rsp = self.exchange(STAGE_SECURITY, STAGE_OPERATIONAL, true, &keys)?;
        if let Some((tuser, tsecret)) = mutual {
            let name = find(&rsp.keys, "CHAP_N");
            let resp = find(&rsp.keys, "CHAP_R").and_then(chap::from_binary);
            let want = chap::chap_response(ours[0], tsecret.as_bytes(), &ours[1..]);
            if name != Some(tuser) || resp.as_deref() != Some(&want[..]) {
                return Err(LoginError::Auth(
                    "target failed mutual CHAP authentication".into(),
                ));
            }
        }
        self.finish_security(rsp)
    }

    /// Makes sure we leave the security stage, asking again with T=1 if the target has not
    /// transited yet.
    fn finish_security(&mut self, mut rsp: Response) -> Result<(), LoginError> {
        while !rsp.transit {
            rsp = self.exchange(STAGE_SECURITY, STAGE_OPERATIONAL, true, &[])?;
        }
        if rsp.nsg == STAGE_FULL_FEATURE {
            return Err(LoginError::Protocol(
                "target skipped operational negotiation".into(),
            ));
        }
        Ok(())
    }

    /// Runs the operational stage to the full-feature phase.
    fn operational(&mut self) -> Result<LoginOutcome, LoginError> {
        let offer = self.cfg.offer;
        let mut params = Params::from_offer(&offer);
        let mut keys = Vec::new();
        for (k, v) in offer.keys() {
            text::push(&mut keys, k, &v);
        }
        loop {
            let rsp = self.exchange(STAGE_OPERATIONAL, STAGE_FULL_FEATURE, true, &keys)?;
            keys.clear();
            for (k, v) in &rsp.keys {
                if let Some(answer) = params.apply(&offer, k, v).map_err(LoginError::Rejected)? {
                    text::push(&mut keys, k, &answer);
                }
            }
            if rsp.transit && rsp.nsg == STAGE_FULL_FEATURE {
                return Ok(LoginOutcome {
                    params,
                    tsih: rsp.tsih,
                    cmd_sn: rsp.sn.exp_cmd_sn,
                    exp_stat_sn: self.exp_stat_sn,
                    max_cmd_sn: rsp.sn.max_cmd_sn,
                });
            }
        }
    }
}

fn find<'a>(keys: &'a [(String, String)], key: &str) -> Option<&'a str> {
    keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Maps a login response's status class and detail (RFC 7143 §11.13.5) to an error.
fn check_status(class: u8, detail: u8, target: &str) -> Result<(), LoginError> {
    match (class, detail) {
        (0, _) => Ok(()),
        (1, _) => Err(LoginError::Rejected(
            "target redirected the login; redirection is not supported".into(),
        )),
        (2, 1) => Err(LoginError::Auth(
            "the target rejected the credentials".into(),
        )),
        (2, 2) => Err(LoginError::Auth(
            "the initiator is not authorized for this target".into(),
        )),
        (2, 3) | (2, 4) => Err(LoginError::TargetNotFound(target.to_string())),
        (2, d) => Err(LoginError::Rejected(format!(
            "initiator error, detail {d:#04x}"
        ))),
        (3, d) => Err(LoginError::Rejected(format!(
            "target error, detail {d:#04x}"
        ))),
        (c, d) => Err(LoginError::Protocol(format!(
            "unknown login status {c:#04x}/{d:#04x}"
        ))),
    }
}

/// Logs in on `stream` (which must have read/write timeouts set) and returns the negotiated state.
pub fn login<S: Read + Write>(
    stream: &mut S,
    cfg: &LoginConfig,
) -> Result<LoginOutcome, LoginError> {
    let mut l = Login {
        s: stream,
        cfg,
        cmd_sn: 1,
        exp_stat_sn: 0,
        exchanges: 0,
    };
    l.security()?;
    l.operational()
}

/// Parses one login response (BHS plus data) the way the login does; for the fuzz target.
pub fn parse_response(buf: &[u8]) -> Result<(), LoginError> {
    let frame = pdu::parse_frame(buf, Framing::default(), text::MAX_TEXT as u32)
        .map_err(|e| LoginError::Protocol(e.to_string()))?
        .ok_or_else(|| LoginError::Protocol("short".into()))?;
    if let Pdu::LoginResponse {
        status_class,
        status_detail,
        ..
    } = frame.pdu
    {
        check_status(status_class, status_detail, "fuzz")?;
    }
    let keys = text::parse(frame.data).map_err(LoginError::Protocol)?;
    let offer = Offer {
        header_digest: "CRC32C,None",
        data_digest: "None,CRC32C",
        ..Offer::default()
    };
    let mut params = Params::from_offer(&offer);
    for (k, v) in &keys {
        let _ = params.apply(&offer, k, v);
        if k == "CHAP_C" {
            let _ = chap::from_binary(v);
        }
    }
    Ok(())
}
