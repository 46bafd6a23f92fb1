//! Host network backends for virtio-net: a tap, a macvtap, or an fd inherited from an
//! orchestrator. Each backend is one non-blocking fd per queue pair that reads and writes whole
//! Ethernet frames prefixed with a 12-byte virtio-net header ([`vnet`]).
//!
//! * [`open_net_backend`] turns a [`NetSpec`] (what the operator asked for) into a
//!   [`NetBackend`], deciding the guest MAC on the way (see [`macvtap`] for why a macvtap
//!   dictates it).
//! * Errors are one line that says what is wrong and what to do ([`NetError`]).

mod fd;
#[cfg(test)]
mod host_tests;
pub mod mac;
mod macvtap;
mod sys;
mod tap;
pub mod vnet;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use mac::{BadMac, MacAddr};

/// Most queue pairs a backend may have (the kernel's limit for tap and macvtap is 256).
pub const MAX_QUEUE_PAIRS: u16 = 256;

/// Which host interface to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A tap interface: attached to if it exists, created (and brought up) otherwise.
    Tap(String),
    /// A macvtap interface; its `/dev/tap<ifindex>` node is opened (created when missing).
    Macvtap(String),
    /// An open tap or macvtap fd handed over by an orchestrator.
    Fd(i32),
}

/// A network interface as configured by the operator (`--net ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub backend: NetBackendSpec,
    /// Guest MAC text; `None` picks the macvtap's MAC or a random local one.
    pub mac: Option<String>,
    /// Queue pairs; more than one enables multiqueue.
    pub queues: u16,
}

/// Why a backend could not be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface `{0}` does not exist (check `ip link show {0}`; create it first, e.g. `ip link add link eth0 name {0} type macvtap mode bridge`)")]
    NoSuchInterface(String),
    #[error("`{0}` is not a macvtap interface (there is no /sys/class/net/{0}/macvtap); use tap={0} for a tap, or create a macvtap on top of it")]
    NotMacvtap(String),
    #[error("`{0}` exists but is not a tap interface (tun devices and other link types cannot carry a guest); pick another name or delete it")]
    NotTap(String),
    #[error("cannot open {path}: permission denied (run ferry as root or with CAP_NET_ADMIN and access to {path})")]
    Permission { path: String },
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error(transparent)]
    BadMac(#[from] BadMac),
    #[error("MAC {0} is a multicast address; a guest MAC must be unicast (first byte even)")]
    MulticastMac(MacAddr),
    #[error("mac={requested} differs from macvtap `{name}`'s own MAC {own}: a macvtap only delivers frames addressed to its own MAC; omit mac= or first run `ip link set {name} address {requested}`")]
    MacMismatch {
        name: String,
        own: MacAddr,
        requested: MacAddr,
    },
    #[error("fd={fd} is not an open tap/macvtap file descriptor ({reason}); pass an fd opened on /dev/net/tun or /dev/tapN")]
    BadFd { fd: i32, reason: String },
    #[error("fd={0} was opened without IFF_VNET_HDR; ferry needs the virtio-net header: open it with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    NoVnetHdr(i32),
    #[error("queues={queues} is not possible here: {reason}")]
    Queues { queues: u16, reason: String },
    #[error("{what} failed on {name}: {source}")]
    Setup {
        what: &'static str,
        name: String,
        source: io::Error,
    },
}

/// What kind of host interface a backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Tap {
        name: String,
    },
    Macvtap {
        name: String,
    },
    /// Inherited fd; `name` is the interface TUNGETIFF reported.
    Fd {
        fd: i32,
        name: String,
    },
    /// Datagram sockets standing in for a tap (tests and benchmarks): no offload ioctls.
    Socket,
}

/// An opened backend: one non-blocking fd per queue pair, all with a 12-byte vnet header.
#[derive(Debug)]
pub struct NetBackend {
    kind: BackendKind,
    fds: Vec<OwnedFd>,
    guest_mac: MacAddr,
}

impl NetBackend {
    /// A backend over datagram sockets (`socketpair(AF_UNIX, SOCK_DGRAM)` ends), which carry
    /// frames with their vnet header like a tap but accept no tap ioctls: for tests and
    /// benchmarks that need no root.
    pub fn from_sockets(fds: Vec<OwnedFd>, guest_mac: MacAddr) -> io::Result<Self> {
        if fds.is_empty() || fds.len() > usize::from(MAX_QUEUE_PAIRS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "1 to 256 sockets",
            ));
        }
        for fd in &fds {
            sys::set_nonblocking(fd.as_raw_fd())?;
        }
        Ok(Self {
            kind: BackendKind::Socket,
            fds,
            guest_mac,
        })
    }

    /// The MAC the guest must use on this backend.
    pub fn guest_mac(&self) -> MacAddr {
        self.guest_mac
    }

    pub fn kind(&self) -> &BackendKind {
        &self.kind
    }

    /// Number of queue pairs (fds).
    pub fn queue_pairs(&self) -> u16 {
        self.fds.len() as u16
    }

    /// The fd of queue pair `pair` (RX reads and TX writes go to the same fd).
    pub fn fd(&self, pair: usize) -> Option<RawFd> {
        self.fds.get(pair).map(AsRawFd::as_raw_fd)
    }

    fn is_tap_like(&self) -> bool {
        self.kind != BackendKind::Socket
    }

    /// Applies TUN_F_* offloads to every queue (no-op on sockets).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.is_tap_like() {
            return Ok(());
        }
        for fd in &self.fds {
            sys::set_offload(fd.as_raw_fd(), flags)?;
        }
        Ok(())
    }

    /// Sets the host interface's MTU to the one the guest is told (`mtu` on the interface), so
    /// frames of that size pass the host side too. Sockets have no interface: nothing to do.
    pub fn set_host_mtu(&self, mtu: u16) -> Result<(), NetError> {
        let name = match &self.kind {
            BackendKind::Tap { name } | BackendKind::Macvtap { name } => name,
            BackendKind::Fd { name, .. } => name,
            BackendKind::Socket => return Ok(()),
        };
        sys::set_mtu(name, mtu).map_err(|source| NetError::Setup {
            what: "setting the MTU (SIOCSIFMTU)",
            name: describe(&self.kind),
            source,
        })
    }

    /// Attaches or detaches queue `pair` (multiqueue taps only; the first queue always stays).
    pub fn set_queue_enabled(&self, pair: usize, enabled: bool) -> io::Result<()> {
        if !self.is_tap_like() || self.fds.len() < 2 {
            return Ok(());
        }
        match self.fds.get(pair) {
            Some(fd) => sys::set_queue_attached(fd.as_raw_fd(), enabled),
            None => Ok(()),
        }
    }
}

/// Opens the backend `spec` describes and decides the guest MAC.
pub fn open_net_backend(spec: &NetSpec) -> Result<NetBackend, NetError> {
    let requested = match &spec.mac {
        Some(text) => {
            let mac: MacAddr = text.parse()?;
            if mac.is_multicast() {
                return Err(NetError::MulticastMac(mac));
            }
            Some(mac)
        }
        None => None,
    };
    if spec.queues == 0 || spec.queues > MAX_QUEUE_PAIRS {
        return Err(NetError::Queues {
            queues: spec.queues,
            reason: format!("use 1 to {MAX_QUEUE_PAIRS} queue pairs"),
        });
    }
    let (kind, fds, own_mac) = match &spec.backend {
        NetBackendSpec::Tap(name) => {
            let fds = tap::open(name, spec.queues)?;
            (BackendKind::Tap { name: name.clone() }, fds, None)
        }
        NetBackendSpec::Macvtap(name) => {
            let (fds, mac) = macvtap::open(name, spec.queues)?;
            (
                BackendKind::Macvtap { name: name.clone() },
                fds,
                Some((name.clone(), mac)),
            )
        }
        NetBackendSpec::Fd(fd) => {
            if spec.queues != 1 {
                return Err(NetError::Queues {
                    queues: spec.queues,
                    reason: "fd= hands over one queue; pass queues=1".into(),
                });
            }
            let (owned, name) = fd::adopt(*fd)?;
            // An inherited macvtap dictates the MAC just like one ferry opened itself.
            let own = macvtap::own_mac(&name).map(|m| (name.clone(), m));
            (BackendKind::Fd { fd: *fd, name }, vec![owned], own)
        }
    };
    let guest_mac = match (own_mac, requested) {
        (Some((_, own)), None) => own,
        (Some((_, own)), Some(req)) if own == req => req,
        (Some((name, own)), Some(requested)) => {
            return Err(NetError::MacMismatch {
                name,
                own,
                requested,
            })
        }
        (None, Some(req)) => req,
        (None, None) => MacAddr::random_local(),
    };
    let backend = NetBackend {
        kind,
        fds,
        guest_mac,
    };
    backend.set_offload(0).map_err(|source| NetError::Setup {
        what: "TUNSETOFFLOAD",
        name: describe(&backend.kind),
        source,
    })?;
    Ok(backend)
}

fn describe(kind: &BackendKind) -> String {
    match kind {
        BackendKind::Tap { name } | BackendKind::Macvtap { name } => name.clone(),
        BackendKind::Fd { fd, name } => format!("fd {fd} ({name})"),
        BackendKind::Socket => "socket".into(),
    }
}

/// Prepares a freshly opened queue fd: non-blocking and a 12-byte vnet header.
fn setup_queue_fd(fd: RawFd, name: &str) -> Result<(), NetError> {
    let setup = |what, source| NetError::Setup {
        what,
        name: name.to_string(),
        source,
    };
    sys::set_nonblocking(fd).map_err(|e| setup("O_NONBLOCK", e))?;
    sys::set_vnet_hdr_sz(fd, vnet::VNET_HDR_LEN).map_err(|e| setup("TUNSETVNETHDRSZ", e))
}

/// Maps an open() failure on `path` to the error an operator can act on.
fn open_error(path: &Path, e: io::Error) -> NetError {
    let path = path.display().to_string();
    match e.kind() {
        io::ErrorKind::PermissionDenied => NetError::Permission { path },
        _ => NetError::Open { path, source: e },
    }
}

/// `/sys/class/net/<name>`, refusing names that would escape that directory.
fn sysfs_dir(name: &str) -> Result<std::path::PathBuf, NetError> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        return Err(NetError::NoSuchInterface(name.to_string()));
    }
    Ok(Path::new("/sys/class/net").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backend: NetBackendSpec, mac: Option<&str>, queues: u16) -> NetSpec {
        NetSpec {
            backend,
            mac: mac.map(str::to_string),
            queues,
        }
    }

    #[test]
    fn errors_are_clear_before_touching_the_host() {
        let e =
            open_net_backend(&spec(NetBackendSpec::Tap("x".into()), Some("nope"), 1)).unwrap_err();
        assert!(e.to_string().contains("invalid MAC address `nope`"), "{e}");
        let e = open_net_backend(&spec(
            NetBackendSpec::Tap("x".into()),
            Some("01:00:5e:00:00:01"),
            1,
        ))
        .unwrap_err();
        assert!(matches!(e, NetError::MulticastMac(_)), "{e}");
        let e = open_net_backend(&spec(NetBackendSpec::Tap("x".into()), None, 0)).unwrap_err();
        assert!(matches!(e, NetError::Queues { .. }), "{e}");
        let e = open_net_backend(&spec(NetBackendSpec::Fd(0), None, 2)).unwrap_err();
        assert!(e.to_string().contains("queues=1"), "{e}");
    }

    #[test]
    fn missing_macvtap_is_reported() {
        let e = open_net_backend(&spec(NetBackendSpec::Macvtap("ferrynope0".into()), None, 1))
            .unwrap_err();
        assert!(
            matches!(e, NetError::NoSuchInterface(ref n) if n == "ferrynope0"),
            "{e}"
        );
        let e =
            open_net_backend(&spec(NetBackendSpec::Macvtap("../lo".into()), None, 1)).unwrap_err();
        assert!(matches!(e, NetError::NoSuchInterface(_)), "{e}");
    }

    #[test]
    fn loopback_is_not_a_macvtap_or_tap() {
        let e = open_net_backend(&spec(NetBackendSpec::Macvtap("lo".into()), None, 1)).unwrap_err();
        assert!(matches!(e, NetError::NotMacvtap(_)), "{e}");
        let e = open_net_backend(&spec(NetBackendSpec::Tap("lo".into()), None, 1)).unwrap_err();
        assert!(matches!(e, NetError::NotTap(_)), "{e}");
    }

    #[test]
    fn fd_that_is_not_a_tap_is_refused() {
        let e = open_net_backend(&spec(NetBackendSpec::Fd(-1), None, 1)).unwrap_err();
        assert!(matches!(e, NetError::BadFd { fd: -1, .. }), "{e}");
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = open_net_backend(&spec(NetBackendSpec::Fd(file.as_raw_fd()), None, 1)).unwrap_err();
        assert!(matches!(e, NetError::BadFd { .. }), "{e}");
    }
}
