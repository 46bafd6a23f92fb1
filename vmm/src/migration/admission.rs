//! What an incoming guest may make this host open.
//!
//! A migration stream (or a snapshot's state file) carries the source's [`VmConfig`], and that
//! configuration names host resources: disk paths, iSCSI portals, CHAP secret files, tap and
//! macvtap interfaces, inherited fds. Whoever writes the stream chooses them, so the destination
//! must not take them on trust: a peer could name the host's own root disk, `/etc/shadow`, or an fd
//! the destination happens to hold. The rule applied here, before anything is opened:
//!
//! * a resource the destination named itself (`--disk-map`, `--net-map`, `--vsock-map`) is
//!   used as named;
//! * any other resource must fall under one of the destination's `--allow-path` entries — a
//!   filesystem prefix (compared after resolving `..` and symlinks, and the disk then opened by
//!   its resolved path so a later symlink swap cannot redirect it), an `iscsi://HOST:PORT/…`
//!   prefix, or `tap:PREFIX` / `macvtap:PREFIX` for interface names;
//! * an inherited fd (`fd=N`) from a stream is never admitted: its number means nothing here;
//! * the vsock device's `uds_path` is a path ferry creates (and, when a dead socket is left
//!   there, replaces), and guest connections reach `<uds_path>_P`: its directory must fall under
//!   an `--allow-path` prefix, and the path is rewritten to its resolved directory.
//!
//! Without `--allow-path` nothing outside the maps is admitted. The refusal names the offending
//! resource so the operator can map or allow it.

use std::path::{Path, PathBuf};

use ferry_api::{NetBackendConfig, VmConfig};

use super::destination::ReceiveMaps;
use crate::VmmError;

/// One `--allow-path` entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// A canonical directory or file prefix (component-wise).
    Path(PathBuf),
    /// An `iscsi://` URL prefix, without credentials.
    Iscsi(String),
    Tap(String),
    Macvtap(String),
}

/// The destination's admission policy: its allow-list (the maps are passed to [`Admission::admit`]).
#[derive(Clone, Debug, Default)]
pub struct Admission {
    allowed: Vec<Allowed>,
    /// Admit everything the configuration names (`ferry run --restore --trust-snapshot`).
    trust_all: bool,
}

impl Admission {
    /// Parses `--allow-path` entries. Filesystem prefixes must exist (they are resolved now, so
    /// a later change of a symlink in the prefix cannot widen what is allowed).
    pub fn new(entries: &[String]) -> Result<Self, VmmError> {
        let mut allowed = Vec::with_capacity(entries.len());
        for entry in entries {
            allowed.push(parse_entry(entry)?);
        }
        Ok(Self {
            allowed,
            trust_all: false,
        })
    }

    /// Admits whatever the configuration names: only for a snapshot the operator vouches for.
    pub fn trust_all() -> Self {
        Self {
            allowed: Vec::new(),
            trust_all: true,
        }
    }

    /// Checks every host resource of `config` (the maps already applied) and rewrites admitted
    /// disk paths to their resolved form. Refuses with the first resource that is neither mapped
    /// nor allowed. Opens nothing: paths are only resolved (`realpath`).
    pub fn admit(&self, config: &mut VmConfig, maps: &ReceiveMaps) -> Result<(), VmmError> {
        if self.trust_all {
            return Ok(());
        }
        for drive in &mut config.drives {
            let id = &drive.drive_id;
            if !maps.disks.contains_key(id) {
                drive.path_on_host = self.admit_drive_path(id, &drive.path_on_host)?;
            }
            if let Some(secret) = &mut drive.chap_secret_file {
                *secret = self
                    .admit_file(secret)
                    .map_err(|why| refused(format!("drive '{id}' CHAP secret file {why}")))?;
            }
        }
        for net in &config.nets {
            if maps.nets.contains_key(&net.iface_id) {
                continue;
            }
            let id = &net.iface_id;
            let ok = match &net.backend {
                NetBackendConfig::Tap(name) => self.allows_name(name, |a| match a {
                    Allowed::Tap(p) => Some(p),
                    _ => None,
                }),
                NetBackendConfig::Macvtap(name) => self.allows_name(name, |a| match a {
                    Allowed::Macvtap(p) => Some(p),
                    _ => None,
                }),
                NetBackendConfig::Fd(_) => false,
            };
            if !ok {
                let what = match &net.backend {
                    NetBackendConfig::Tap(name) => format!("tap:{name}"),
                    NetBackendConfig::Macvtap(name) => format!("macvtap:{name}"),
                    NetBackendConfig::Fd(n) => {
                        format!("fd={n} (an inherited fd is never admitted)")
                    }
                };
                return Err(refused(format!(
                    "interface '{id}' names {what}, which is neither mapped (--net-map \
                     {id}=KIND:NAME) nor allowed (--allow-path KIND:PREFIX)"
                )));
            }
        }
        if let (Some(vsock), None) = (&mut config.vsock, &maps.vsock) {
            vsock.uds_path = self.admit_socket_path(&vsock.uds_path).map_err(|why| {
                refused(format!(
                    "the vsock device names {why}; map it (--vsock-map PATH) or allow it \
                     (--allow-path PREFIX)"
                ))
            })?;
        }
        Ok(())
    }

    /// A socket ferry will create: the file need not exist, its directory must, and must be
    /// allowed. Returns the path in the resolved directory.
    fn admit_socket_path(&self, path: &str) -> Result<String, String> {
        let p = Path::new(path);
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(format!("{path}, which has no file name"));
        };
        if name == ".." || dir.as_os_str().is_empty() {
            return Err(format!("{path}, which is not an absolute path"));
        }
        let dir = self.admit_file(&dir.to_string_lossy())?;
        Path::new(&dir)
            .join(name)
            .into_os_string()
            .into_string()
            .map_err(|_| format!("{path}, which is not valid UTF-8"))
    }

    fn admit_drive_path(&self, id: &str, path: &str) -> Result<String, VmmError> {
        if path.starts_with("iscsi://") {
            let bare = without_credentials(path);
            let ok = self.allowed.iter().any(|a| match a {
                Allowed::Iscsi(prefix) => prefix_at_boundary(&bare, prefix, '/'),
                _ => false,
            });
            if ok {
                return Ok(path.to_string());
            }
            return Err(refused(format!(
                "drive '{id}' names {bare}, which is neither mapped (--disk-map {id}=PATH) nor \
                 under an --allow-path iscsi:// prefix"
            )));
        }
        self.admit_file(path).map_err(|why| {
            refused(format!(
                "drive '{id}' names {why}; map it (--disk-map {id}=PATH) or allow it \
                 (--allow-path PREFIX)"
            ))
        })
    }

    /// Resolves `path` and checks it lies under an allowed prefix; returns the resolved path.
    /// The error text starts with the path as the stream gave it.
    fn admit_file(&self, path: &str) -> Result<String, String> {
        if !Path::new(path).is_absolute() {
            return Err(format!("{path}, which is not an absolute path"));
        }
        let resolved = std::fs::canonicalize(path)
            .map_err(|e| format!("{path}, which cannot be resolved ({e}) and is not allowed"))?;
        let ok = self.allowed.iter().any(|a| match a {
            Allowed::Path(prefix) => resolved.starts_with(prefix),
            _ => false,
        });
        let shown = if resolved == Path::new(path) {
            path.to_string()
        } else {
            format!("{path} (resolved: {})", resolved.display())
        };
        if !ok {
            return Err(format!(
                "{shown}, which is outside every --allow-path prefix"
            ));
        }
        resolved
            .into_os_string()
            .into_string()
            .map_err(|_| format!("{shown}, which is not valid UTF-8"))
    }

    fn allows_name(&self, name: &str, kind: impl Fn(&Allowed) -> Option<&String>) -> bool {
        self.allowed
            .iter()
            .filter_map(kind)
            .any(|prefix| name.starts_with(prefix.as_str()))
    }
}

fn refused(why: String) -> VmmError {
    VmmError::NotAdmitted(why)
}

fn parse_entry(entry: &str) -> Result<Allowed, VmmError> {
    let bad = |why: &str| VmmError::Config(format!("--allow-path {entry:?}: {why}"));
    if entry.starts_with("iscsi://") {
        let bare = without_credentials(entry);
        if bare.len() <= "iscsi://".len() {
            return Err(bad("an iscsi:// prefix needs at least a portal"));
        }
        return Ok(Allowed::Iscsi(bare));
    }
    if let Some(name) = entry.strip_prefix("tap:") {
        return Ok(Allowed::Tap(name.to_string()));
    }
    if let Some(name) = entry.strip_prefix("macvtap:") {
        return Ok(Allowed::Macvtap(name.to_string()));
    }
    if !Path::new(entry).is_absolute() {
        return Err(bad(
            "expected an absolute path, an iscsi:// URL prefix, tap:PREFIX or macvtap:PREFIX",
        ));
    }
    let resolved = std::fs::canonicalize(entry).map_err(|e| bad(&e.to_string()))?;
    Ok(Allowed::Path(resolved))
}

/// `iscsi://user%secret@host/…` → `iscsi://host/…`: credentials are neither matched nor shown.
fn without_credentials(url: &str) -> String {
    let rest = &url["iscsi://".len()..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("iscsi://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// `text` starts with `prefix`, and the match ends where a component ends (so a portal
/// `host:3260` does not also allow `host:32600`).
fn prefix_at_boundary(text: &str, prefix: &str, separator: char) -> bool {
    text.starts_with(prefix)
        && (prefix.ends_with(separator)
            || text.len() == prefix.len()
            || text[prefix.len()..].starts_with(separator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{DriveConfig, NetConfig};

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("ferry-adm-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn drive(id: &str, path: &str) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: path.into(),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            direct: None,
            chap_secret_file: None,
            rate_limiter: None,
        }
    }

    fn net(id: &str, backend: NetBackendConfig) -> NetConfig {
        NetConfig {
            iface_id: id.into(),
            backend,
            guest_mac: None,
            queues: 1,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        }
    }

    fn with_drives(drives: Vec<DriveConfig>) -> VmConfig {
        VmConfig {
            drives,
            ..Default::default()
        }
    }

    fn allow(entries: &[&str]) -> Admission {
        Admission::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn refusal(a: &Admission, config: &mut VmConfig) -> String {
        match a.admit(config, &ReceiveMaps::default()) {
            Err(VmmError::NotAdmitted(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nothing_outside_the_maps_by_default() {
        let a = Admission::default();
        let mut c = with_drives(vec![drive("root", "/etc/shadow")]);
        let why = refusal(&a, &mut c);
        assert!(why.contains("/etc/shadow"), "{why}");
        assert!(why.contains("--disk-map root=PATH"), "{why}");
        // A mapped drive is the destination's own choice.
        let mut maps = ReceiveMaps::default();
        maps.disks.insert("root".into(), "/dev/vg/root".into());
        a.admit(&mut c, &maps).unwrap();
        assert_eq!(
            c.drives[0].path_on_host, "/etc/shadow",
            "admit leaves mapped paths"
        );
    }

    #[test]
    fn allowed_prefix_admits_and_resolves() {
        let dir = Dir::new("ok");
        let disks = dir.0.join("disks");
        std::fs::create_dir(&disks).unwrap();
        std::fs::write(disks.join("a.img"), b"x").unwrap();
        let a = allow(&[disks.to_str().unwrap()]);
        // `..` that stays inside is fine, and the path becomes the resolved one.
        let inside = format!("{}/../disks/a.img", disks.display());
        let mut c = with_drives(vec![drive("d", &inside)]);
        a.admit(&mut c, &ReceiveMaps::default()).unwrap();
        assert_eq!(
            PathBuf::from(&c.drives[0].path_on_host),
            std::fs::canonicalize(disks.join("a.img")).unwrap()
        );
    }

    #[test]
    fn dotdot_and_symlinks_cannot_escape() {
        let dir = Dir::new("escape");
        let disks = dir.0.join("disks");
        std::fs::create_dir(&disks).unwrap();
        std::fs::write(dir.0.join("outside.img"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", disks.join("link.img")).unwrap();
        // A sibling whose name extends the prefix is not inside it.
        std::fs::create_dir(dir.0.join("disks-evil")).unwrap();
        std::fs::write(dir.0.join("disks-evil/x.img"), b"x").unwrap();
        let a = allow(&[disks.to_str().unwrap()]);
        for path in [
            format!("{}/../outside.img", disks.display()),
            format!("{}/link.img", disks.display()),
            format!("{}-evil/x.img", disks.display()),
            "relative.img".to_string(),
            format!("{}/missing.img", disks.display()),
        ] {
            let mut c = with_drives(vec![drive("d", &path)]);
            let why = refusal(&a, &mut c);
            assert!(why.contains(&path), "{path}: {why}");
        }
        let mut c = with_drives(vec![drive("d", &format!("{}/link.img", disks.display()))]);
        assert!(refusal(&a, &mut c).contains("resolved: /etc/shadow"));
    }

    #[test]
    fn chap_secret_files_need_allowing_even_for_mapped_disks() {
        let a = Admission::default();
        let mut d = drive("san", "iscsi://10.0.0.1:3260/iqn.x:t/1");
        d.chap_secret_file = Some("/etc/shadow".into());
        let mut c = with_drives(vec![d]);
        let mut maps = ReceiveMaps::default();
        maps.disks
            .insert("san".into(), "iscsi://10.0.0.1:3260/iqn.x:t/1".into());
        match a.admit(&mut c, &maps) {
            Err(VmmError::NotAdmitted(why)) => assert!(why.contains("/etc/shadow"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn iscsi_prefixes_match_whole_components_without_credentials() {
        let a = allow(&["iscsi://u%p@10.0.0.1:3260"]);
        for ok in [
            "iscsi://10.0.0.1:3260/iqn.x:t/1",
            "iscsi://other%secret@10.0.0.1:3260/iqn.x:t/1",
        ] {
            let mut c = with_drives(vec![drive("d", ok)]);
            a.admit(&mut c, &ReceiveMaps::default()).unwrap();
            assert_eq!(
                c.drives[0].path_on_host, ok,
                "credentials are kept for the login"
            );
        }
        for bad in [
            "iscsi://10.0.0.1:32600/iqn.x:t/1",
            "iscsi://10.0.0.2:3260/iqn.x:t/1",
        ] {
            let mut c = with_drives(vec![drive("d", bad)]);
            assert!(refusal(&a, &mut c).contains(bad));
        }
        let mut c = with_drives(vec![drive("d", "iscsi://user%hunter2@10.9.9.9/iqn.x:t/1")]);
        let why = refusal(&a, &mut c);
        assert!(!why.contains("hunter2"), "{why}");
    }

    #[test]
    fn interfaces_need_a_map_or_a_name_prefix_and_fds_never_pass() {
        let a = allow(&["tap:vm1-", "macvtap:mvt"]);
        let mut c = VmConfig {
            nets: vec![
                net("a", NetBackendConfig::Tap("vm1-eth0".into())),
                net("b", NetBackendConfig::Macvtap("mvt7".into())),
            ],
            ..Default::default()
        };
        a.admit(&mut c, &ReceiveMaps::default()).unwrap();
        for (backend, shown) in [
            (NetBackendConfig::Tap("eth0".into()), "tap:eth0"),
            (NetBackendConfig::Macvtap("vm1-x".into()), "macvtap:vm1-x"),
            (NetBackendConfig::Fd(3), "fd=3"),
        ] {
            let mut c = VmConfig {
                nets: vec![net("n", backend)],
                ..Default::default()
            };
            assert!(refusal(&a, &mut c).contains(shown));
        }
        let mut c = VmConfig {
            nets: vec![net("n", NetBackendConfig::Fd(3))],
            ..Default::default()
        };
        let mut maps = ReceiveMaps::default();
        maps.nets
            .insert("n".into(), NetBackendConfig::Tap("tap9".into()));
        a.admit(&mut c, &maps).unwrap();
    }

    #[test]
    fn bad_entries_and_trust() {
        for bad in ["relative", "/does/not/exist/ferry", "iscsi://"] {
            assert!(Admission::new(&[bad.to_string()]).is_err(), "{bad}");
        }
        let mut c = with_drives(vec![drive("d", "/etc/shadow")]);
        Admission::trust_all()
            .admit(&mut c, &ReceiveMaps::default())
            .unwrap();
    }

    #[test]
    fn vsock_socket_paths_need_a_map_or_an_allowed_directory() {
        let dir = Dir::new("vsock");
        let socks = dir.0.join("socks");
        std::fs::create_dir(&socks).unwrap();
        let with_vsock = |path: String| VmConfig {
            vsock: Some(ferry_api::VsockConfig {
                guest_cid: 3,
                uds_path: path,
            }),
            ..VmConfig::default()
        };
        let inside = format!("{}/v.sock", socks.display());
        let mut c = with_vsock(inside.clone());
        let why = refusal(&Admission::default(), &mut c);
        assert!(why.contains("--vsock-map PATH"), "{why}");
        let a = allow(&[socks.to_str().unwrap()]);
        a.admit(&mut c, &ReceiveMaps::default()).unwrap();
        let resolved = std::fs::canonicalize(&socks).unwrap().join("v.sock");
        assert_eq!(
            c.vsock.as_ref().unwrap().uds_path,
            resolved.to_str().unwrap()
        );
        // `..` out of the allowed directory, a relative path, a missing directory.
        for bad in [
            format!("{}/../v.sock", socks.display()),
            format!("{}/..", socks.display()),
            "v.sock".to_string(),
            format!("{}/nope/v.sock", socks.display()),
        ] {
            let mut c = with_vsock(bad.clone());
            assert!(a.admit(&mut c, &ReceiveMaps::default()).is_err(), "{bad}");
        }
        // A mapped path is the destination's own choice.
        let mut c = with_vsock("/elsewhere/v.sock".into());
        let maps = ReceiveMaps {
            vsock: Some("/run/v.sock".into()),
            ..ReceiveMaps::default()
        };
        Admission::default().admit(&mut c, &maps).unwrap();
    }
}
