//! Bodies of ferry's live-migration extension: `PUT /migration/send`, `PUT /migration/receive`
//! and `GET /migration` (issue 6 describes the protocol and its states).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::models::{check_uds_path, HostDevType, VsockOverride};
use crate::validate::{check_drive_path, check_id, check_ifname, check_path};

/// Default downtime budget for the final stop-and-copy round, ms.
pub const DEFAULT_DOWNTIME_MS: u64 = 300;
/// Default number of pre-copy rounds before giving up (or forcing the switchover).
pub const DEFAULT_MAX_ITERATIONS: u32 = 30;
/// Largest accepted `downtime_ms` (one minute).
pub const MAX_DOWNTIME_MS: u64 = 60_000;
/// Largest accepted `max_iterations`.
pub const MAX_ITERATIONS: u32 = 10_000;

/// Where a migration stream goes or comes from: `tcp:HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUrl {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl FromStr for MigrationUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            check_path("unix socket path", path)?;
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("tcp:") else {
            return Err(format!("{text:?} is neither tcp:HOST:PORT nor unix:PATH"));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: missing :PORT"))?;
        // IPv6 literals are written in brackets: tcp:[::1]:4444.
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let host_ok =
            |h: &str, ok: fn(u8) -> bool| !h.is_empty() && h.len() <= 253 && h.bytes().all(ok);
        let host = match bracketed {
            Some(v6) if host_ok(v6, |b| b.is_ascii_hexdigit() || b == b':' || b == b'.') => v6,
            None if host_ok(host, |b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) => host,
            _ => return Err(format!("{text:?}: bad host")),
        };
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: port must be 1 to 65535"))?;
        Ok(Self::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn default_downtime() -> u64 {
    DEFAULT_DOWNTIME_MS
}
fn default_iterations() -> u32 {
    DEFAULT_MAX_ITERATIONS
}
fn yes() -> bool {
    true
}

/// TLS 1.3 with mutual certificates: this side's PEM certificate chain and key, and the CA that
/// signed the peer's certificate (`--tls-cert`, `--tls-key`, `--tls-ca`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationTls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl MigrationTls {
    fn validate(&self) -> Result<(), String> {
        check_path("tls.cert", &self.cert)?;
        check_path("tls.key", &self.key)?;
        check_path("tls.ca", &self.ca)
    }
}

/// The protection fields shared by send and receive: TLS or a PSK file (not both); plain TCP
/// off loopback only with `insecure`.
fn validate_security(tls: Option<&MigrationTls>, psk_file: Option<&str>) -> Result<(), String> {
    if let Some(tls) = tls {
        tls.validate()?;
    }
    if let Some(psk) = psk_file {
        check_path("psk_file", psk)?;
    }
    if tls.is_some() && psk_file.is_some() {
        return Err("give either tls or psk_file, not both".into());
    }
    Ok(())
}

/// `PUT /migration/send`: start migrating this (running) guest. Returns at once; progress and
/// the result are in `GET /migration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSend {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub destination_url: String,
    #[serde(default = "default_downtime")]
    pub downtime_ms: u64,
    #[serde(default = "default_iterations")]
    pub max_iterations: u32,
    /// Compare digests of all guest memory after the last round.
    #[serde(default)]
    pub verify: bool,
    /// Switch over at the iteration limit instead of aborting.
    #[serde(default)]
    pub force_switchover: bool,
    /// Throttle vCPUs when the guest dirties memory faster than the link.
    #[serde(default = "yes")]
    pub auto_converge: bool,
    /// Protect the stream with TLS (mutual certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MigrationTls>,
    /// Protect the stream with the pre-shared key in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<String>,
    /// Allow a plain TCP stream to a non-loopback address.
    #[serde(default)]
    pub insecure: bool,
}

impl MigrationSend {
    /// The parsed destination (already checked when the request was accepted).
    pub fn destination(&self) -> Result<MigrationUrl, String> {
        self.destination_url.parse()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.destination()?;
        validate_security(self.tls.as_ref(), self.psk_file.as_deref())?;
        if self.downtime_ms == 0 || self.downtime_ms > MAX_DOWNTIME_MS {
            return Err(format!(
                "downtime_ms must be between 1 and {MAX_DOWNTIME_MS}"
            ));
        }
        if self.max_iterations == 0 || self.max_iterations > MAX_ITERATIONS {
            return Err(format!(
                "max_iterations must be between 1 and {MAX_ITERATIONS}"
            ));
        }
        Ok(())
    }
}

/// Replaces a drive's host path on the destination (`--disk-map ID=PATH`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveMap {
    pub drive_id: String,
    pub path_on_host: String,
}

impl FromStr for DriveMap {
    type Err = String;

    /// `ID=PATH`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (id, path) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected ID=PATH"))?;
        let map = Self {
            drive_id: id.to_string(),
            path_on_host: path.to_string(),
        };
        map.validate()?;
        Ok(map)
    }
}

impl DriveMap {
    fn validate(&self) -> Result<(), String> {
        check_id("drive_id", &self.drive_id)?;
        check_drive_path(&self.path_on_host)
    }
}

/// Replaces a network interface's host device on the destination
/// (`--net-map ID=macvtap:NAME` or `ID=tap:NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetMap {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev_type: Option<HostDevType>,
}

impl FromStr for NetMap {
    type Err = String;

    /// `ID=macvtap:NAME`, `ID=tap:NAME` or `ID=NAME` (type detected).
    fn from_str(text: &str) -> Result<Self, String> {
        let (id, dev) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected ID=macvtap:NAME or ID=tap:NAME"))?;
        let (kind, name) = match dev.split_once(':') {
            Some(("macvtap", name)) => (Some(HostDevType::Macvtap), name),
            Some(("tap", name)) => (Some(HostDevType::Tap), name),
            Some((other, _)) => return Err(format!("{text:?}: unknown device type {other:?}")),
            None => (None, dev),
        };
        let map = Self {
            iface_id: id.to_string(),
            host_dev_name: name.to_string(),
            host_dev_type: kind,
        };
        map.validate()?;
        Ok(map)
    }
}

impl NetMap {
    fn validate(&self) -> Result<(), String> {
        check_id("iface_id", &self.iface_id)?;
        if self.host_dev_type == Some(HostDevType::Fd) {
            return Err("host_dev_type \"fd\" cannot be used in a map".into());
        }
        check_ifname("host_dev_name", &self.host_dev_name)
    }
}

/// Host resources named differently on the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationMaps {
    #[serde(default)]
    pub drives: Vec<DriveMap>,
    #[serde(default)]
    pub network_interfaces: Vec<NetMap>,
    /// This host's `uds_path` for the incoming vsock device (`--vsock-map PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockOverride>,
}

/// `PUT /migration/receive`: wait for one incoming guest. Returns once listening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationReceive {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub listen_url: String,
    #[serde(default)]
    pub maps: MigrationMaps,
    /// Host resources an incoming configuration may name besides the maps (`--allow-path`):
    /// path prefixes, `iscsi://` URL prefixes, `tap:PREFIX`, `macvtap:PREFIX`.
    #[serde(default)]
    pub allow_paths: Vec<String>,
    /// Admit only sources that complete TLS with a certificate from `tls.ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MigrationTls>,
    /// Admit only sources that hold the pre-shared key in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<String>,
    /// Allow listening for plain TCP on a non-loopback address.
    #[serde(default)]
    pub insecure: bool,
}

impl MigrationReceive {
    /// The parsed listen address (already checked when the request was accepted).
    pub fn listen(&self) -> Result<MigrationUrl, String> {
        self.listen_url.parse()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.listen()?;
        validate_security(self.tls.as_ref(), self.psk_file.as_deref())?;
        for entry in &self.allow_paths {
            check_path("allow_paths entry", entry)?;
        }
        for map in &self.maps.drives {
            map.validate()?;
        }
        for map in &self.maps.network_interfaces {
            map.validate()?;
        }
        if let Some(v) = &self.maps.vsock {
            check_uds_path("maps.vsock.uds_path", &v.uds_path)?;
        }
        Ok(())
    }
}

/// Where a migration stands (`state` of `GET /migration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// No migration has run.
    #[default]
    Idle,
    /// Source: pre-copy rounds or switchover in progress.
    Sending,
    /// Destination: listening or receiving.
    Receiving,
    /// Destination: the guest runs here now.
    Completed,
    /// Source: the destination committed; this ferry no longer owns the guest.
    Migrated,
    /// Source: failed before commit; the guest still runs here. Destination: receive failed.
    Failed,
    /// Source: the connection broke after commit was sent but before it was acknowledged; the
    /// guest stays paused here and the orchestrator must decide.
    InDoubt,
}

impl MigrationState {
    /// Whether the migration has ended (no further change without a new request).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Idle | Self::Completed | Self::Migrated | Self::Failed | Self::InDoubt
        )
    }
}

/// `GET /migration` response: progress while running, figures at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub state: MigrationState,
    /// Pre-copy round (1 = the full copy).
    #[serde(default)]
    pub round: u32,
    #[serde(default)]
    pub bytes_sent: u64,
    /// Guest dirty rate measured in the last round, MiB/s.
    #[serde(default)]
    pub dirty_rate_mib_s: f64,
    /// Stream bandwidth measured in the last round, MiB/s.
    #[serde(default)]
    pub bandwidth_mib_s: f64,
    /// Downtime the remainder would cost at the measured bandwidth, ms.
    #[serde(default)]
    pub expected_downtime_ms: u64,
    /// At the end: total time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// At the end: source pause to destination resume, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Why it failed (or is in doubt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            "tcp:127.0.0.1:4444".parse(),
            Ok(MigrationUrl::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            })
        );
        assert_eq!(
            "tcp:[::1]:4444"
                .parse::<MigrationUrl>()
                .map(|u| u.to_string()),
            Ok("tcp:[::1]:4444".to_string())
        );
        assert_eq!(
            "unix:/tmp/m.sock".parse(),
            Ok(MigrationUrl::Unix("/tmp/m.sock".into()))
        );
        for bad in [
            "",
            "tcp:",
            "tcp:host",
            "tcp:host:0",
            "tcp:host:65536",
            "tcp::80",
            "http://x",
            "unix:",
            "unix:/a\0b",
            "tcp:a b:1",
        ] {
            assert!(bad.parse::<MigrationUrl>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn maps_from_cli() {
        assert_eq!(
            "eth0=macvtap:mvt1".parse(),
            Ok(NetMap {
                iface_id: "eth0".into(),
                host_dev_name: "mvt1".into(),
                host_dev_type: Some(HostDevType::Macvtap)
            })
        );
        assert_eq!(
            "eth0=tap1".parse::<NetMap>().map(|m| m.host_dev_type),
            Ok(None)
        );
        assert!("eth0=vde:x".parse::<NetMap>().is_err());
        assert!("eth0".parse::<NetMap>().is_err());
        assert_eq!(
            "root=/dev/vg/lv".parse(),
            Ok(DriveMap {
                drive_id: "root".into(),
                path_on_host: "/dev/vg/lv".into()
            })
        );
        assert!("r/x=/dev/a".parse::<DriveMap>().is_err());
        assert!("root=".parse::<DriveMap>().is_err());
    }
}
