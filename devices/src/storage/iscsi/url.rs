//! Parsing of `iscsi://` URLs and CHAP secret files.
//!
//! URL syntax, as QEMU and libiscsi write it, plus optional ferry query parameters:
//!
//! ```text
//! iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>[?key=value[&key=value]...]
//! ```
//!
//! * `host` is a name, an IPv4 address or a bracketed IPv6 address; the port defaults to 3260.
//! * Query keys: `initiator-name=IQN` (default [`DEFAULT_INITIATOR`]), `header-digest=` and
//!   `data-digest=` (`none`, `crc32c`, or `crc32c-none` / `none-crc32c` to let the target choose,
//!   preferring the first; default `none-crc32c`... see [`DigestPref`]), `timeout=SECONDS` (how long
//!   requests wait for a lost connection to come back before failing, default 30).
//!
//! A secret file holds `key=value` lines (`#` comments and blank lines ignored) with the keys
//! `username`, `password`, `mutual_username`, `mutual_password`. Values in the file override those
//! in the URL, so that the password need not appear on a command line.

use std::path::Path;
use std::time::Duration;

use super::Error;

/// Initiator name used when the URL does not give one.
pub const DEFAULT_INITIATOR: &str = "iqn.2026-11.dev.ferry:initiator";
/// Well-known iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;
/// Default bound on how long requests wait for a lost session to be re-established.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the initiator offers for a digest key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestPref {
    /// Offer only `None`.
    None,
    /// Offer only `CRC32C` (login fails if the target refuses).
    Crc32c,
    /// Offer `CRC32C,None`.
    PreferCrc32c,
    /// Offer `None,CRC32C` (the default: the target chooses, no digest preferred).
    PreferNone,
}

impl DigestPref {
    /// The value sent in the login request.
    pub fn offer(self) -> &'static str {
        match self {
            DigestPref::None => "None",
            DigestPref::Crc32c => "CRC32C",
            DigestPref::PreferCrc32c => "CRC32C,None",
            DigestPref::PreferNone => "None,CRC32C",
        }
    }

    fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "none" => Some(DigestPref::None),
            "crc32c" => Some(DigestPref::Crc32c),
            "crc32c-none" => Some(DigestPref::PreferCrc32c),
            "none-crc32c" => Some(DigestPref::PreferNone),
            _ => None,
        }
    }
}

/// CHAP credentials. `mutual_*` set means the target must authenticate itself too.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub mutual_username: Option<String>,
    pub mutual_password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("mutual_username", &self.mutual_username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Fills fields from a secret file's contents; file values override existing ones.
    pub fn merge_file_contents(&mut self, text: &str) -> Result<(), String> {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key=value", n + 1))?;
            let v = Some(v.trim().to_string());
            match k.trim() {
                "username" => self.username = v,
                "password" => self.password = v,
                "mutual_username" => self.mutual_username = v,
                "mutual_password" => self.mutual_password = v,
                other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
            }
        }
        Ok(())
    }

    /// Reads and merges a secret file.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::SecretFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.merge_file_contents(&text)
            .map_err(|reason| Error::SecretFile {
                path: path.display().to_string(),
                reason,
            })
    }

    /// One-way CHAP (username and password) configured.
    pub fn chap(&self) -> Option<(&str, &str)> {
        Some((self.username.as_deref()?, self.password.as_deref()?))
    }

    /// Mutual CHAP (target's username and secret) configured.
    pub fn mutual(&self) -> Option<(&str, &str)> {
        Some((
            self.mutual_username.as_deref()?,
            self.mutual_password.as_deref()?,
        ))
    }
}

/// A parsed `iscsi://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u16,
    pub credentials: Credentials,
    pub initiator: String,
    pub header_digest: DigestPref,
    pub data_digest: DigestPref,
    pub timeout: Duration,
}

fn bad(url: &str, why: &str) -> Error {
    Error::InvalidUrl {
        url: redact(url),
        reason: why.to_string(),
    }
}

/// The URL with any password replaced, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some(rest) = url.strip_prefix("iscsi://") else {
        return url.to_string();
    };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split_once('%').map_or(user, |(u, _)| u);
            format!("iscsi://{user}%***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

impl IscsiUrl {
    /// Parses `url` (see the module documentation for the syntax).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let rest = url
            .strip_prefix("iscsi://")
            .ok_or_else(|| bad(url, "must start with iscsi://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let slash = rest
            .find('/')
            .ok_or_else(|| bad(url, "missing /<target-iqn>/<lun>"))?;
        let (authority, path) = rest.split_at(slash);
        let mut credentials = Credentials::default();
        let hostport = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let (user, pass) = match userinfo.split_once('%') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(bad(url, "empty user name"));
                }
                credentials.username = Some(user.to_string());
                credentials.password = pass.map(str::to_string);
                &authority[at + 1..]
            }
            None => authority,
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad(url, "bad host[:port]"))?;
        let path = &path[1..];
        let (target, lun) = path
            .rsplit_once('/')
            .ok_or_else(|| bad(url, "missing /<lun>"))?;
        if target.is_empty() || target.contains('/') || target.len() > 223 {
            return Err(bad(url, "bad target name"));
        }
        let lun: u16 = lun.parse().map_err(|_| bad(url, "LUN must be a number"))?;
        if lun > 16383 {
            return Err(bad(url, "LUN must be at most 16383"));
        }
        let mut parsed = IscsiUrl {
            host: host.to_string(),
            port,
            target: target.to_string(),
            lun,
            credentials,
            initiator: DEFAULT_INITIATOR.to_string(),
            header_digest: DigestPref::PreferNone,
            data_digest: DigestPref::PreferNone,
            timeout: DEFAULT_TIMEOUT,
        };
        for kv in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(url, "query items must be key=value"))?;
            match k {
                "initiator-name" if !v.is_empty() && v.len() <= 223 => {
                    parsed.initiator = v.to_string()
                }
                "header-digest" => {
                    parsed.header_digest =
                        DigestPref::parse(v).ok_or_else(|| bad(url, "bad header-digest"))?
                }
                "data-digest" => {
                    parsed.data_digest =
                        DigestPref::parse(v).ok_or_else(|| bad(url, "bad data-digest"))?
                }
                "timeout" => {
                    let s: u64 = v
                        .parse()
                        .map_err(|_| bad(url, "timeout must be whole seconds"))?;
                    if s == 0 || s > 86_400 {
                        return Err(bad(url, "timeout must be 1..=86400 seconds"));
                    }
                    parsed.timeout = Duration::from_secs(s);
                }
                _ => return Err(bad(url, &format!("unknown or empty query key {k:?}"))),
            }
        }
        Ok(parsed)
    }

    /// `host:port` suitable for `ToSocketAddrs`.
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, DEFAULT_PORT),
    };
    (!host.is_empty() && !host.contains(':') && port != 0).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u =
            IscsiUrl::parse("iscsi://alice%s3cret@10.0.0.1:3261/iqn.2026-11.test:disk0/1").unwrap();
        assert_eq!(u.host, "10.0.0.1");
        assert_eq!(u.port, 3261);
        assert_eq!(u.target, "iqn.2026-11.test:disk0");
        assert_eq!(u.lun, 1);
        assert_eq!(u.credentials.chap(), Some(("alice", "s3cret")));
        assert_eq!(u.initiator, DEFAULT_INITIATOR);
        assert_eq!(u.portal(), "10.0.0.1:3261");
    }

    #[test]
    fn defaults_ipv6_and_query() {
        let u = IscsiUrl::parse(
            "iscsi://[::1]/iqn.x:y/0?initiator-name=iqn.a:b&header-digest=crc32c&data-digest=none&timeout=5",
        )
        .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3260));
        assert_eq!(u.portal(), "[::1]:3260");
        assert_eq!(u.initiator, "iqn.a:b");
        assert_eq!(u.header_digest, DigestPref::Crc32c);
        assert_eq!(u.data_digest, DigestPref::None);
        assert_eq!(u.timeout, Duration::from_secs(5));
        let u = IscsiUrl::parse("iscsi://host/iqn.x:y/7").unwrap();
        assert_eq!((u.port, u.lun), (3260, 7));
        assert_eq!(u.credentials, Credentials::default());
    }

    #[test]
    fn malformed() {
        for url in [
            "http://h/t/1",
            "iscsi://h",
            "iscsi://h/t",
            "iscsi://h/t/x",
            "iscsi://h/t/99999",
            "iscsi://h:0/t/1",
            "iscsi://h:99999/t/1",
            "iscsi://:3260/t/1",
            "iscsi://@h/t/1",
            "iscsi://h//1",
            "iscsi://h/t/1?bogus=1",
            "iscsi://h/t/1?timeout=0",
            "iscsi://[::1/t/1",
        ] {
            assert!(
                matches!(IscsiUrl::parse(url), Err(Error::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact("iscsi://u%pw@h/t/1"), "iscsi://u%***@h/t/1");
        let e = IscsiUrl::parse("iscsi://u%pw@h/t/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn secret_file() {
        let mut c = Credentials {
            username: Some("url".into()),
            ..Default::default()
        };
        c.merge_file_contents(
            "# comment\n\npassword = p1\nmutual_username=tgt\nmutual_password=p2\n",
        )
        .unwrap();
        assert_eq!(c.chap(), Some(("url", "p1")));
        assert_eq!(c.mutual(), Some(("tgt", "p2")));
        assert!(c.merge_file_contents("pasword=x").is_err());
        assert!(c.merge_file_contents("novalue").is_err());
        assert!(!format!("{c:?}").contains("p1"));
    }
}
