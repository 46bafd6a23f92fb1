//! Live migration: pre-copy of guest memory over TCP or a Unix socket to another ferry, then a
//! short switchover that moves vCPU, KVM and device state. Storage is shared, so only RAM moves.
//!
//! * [`wire`]: the versioned stream format (every length checked on receive).
//! * [`transport`]: endpoints and their protection: [`tls`] (mutual certificates) or [`psk`]
//!   (a pre-shared key); plain TCP only on loopback unless `--insecure`.
//! * [`dirty`]: KVM's dirty log OR'ed with device writes.
//! * [`memory`]: page runs, zero markers, digest.
//! * [`source`]: the sending side's rounds, convergence, auto-converge throttle and commit.
//! * [`destination`]: `ferry receive`.
//! * [`admission`]: which host resources an incoming configuration may make this host open.
//!
//! Safety rule: after the source sends COMMIT it never runs the guest again. If the destination's
//! COMMITTED answer does not arrive, the source stays paused and reports `in-doubt`: two running
//! copies of a guest on shared storage would corrupt its disks.

pub mod admission;
pub mod destination;
pub mod dirty;
pub mod memory;
pub mod psk;
pub mod source;
pub mod tls;
pub mod transport;
pub mod wire;

use serde::{Deserialize, Serialize};

use ferry_api::VmConfig;

pub use transport::{MigrationUrl, Security, SecurityOptions};

/// What CONFIG carries: the VM configuration and how the stream will end.
#[derive(Debug, Serialize, Deserialize)]
pub struct MigrationStart {
    pub config: VmConfig,
    /// A DIGEST message follows STATE; the destination checks it before READY.
    pub verify: bool,
}

/// Where a migration stands, for `GET /migration` and `ferry ctl migration-status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    #[default]
    None,
    /// Source: sending.
    Active,
    /// Source: the destination committed.
    Completed,
    Failed,
    InDoubt,
    /// Destination (`PUT /migration/receive`): listening or receiving.
    Receiving,
    /// Destination: the guest runs here.
    Received,
}

/// Progress and result figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrationProgress {
    pub state: MigrationPhase,
    pub round: u32,
    pub bytes_sent: u64,
    /// Pages found dirty at the start of the current round.
    pub dirty_pages: u64,
    pub dirty_rate_mib_s: f64,
    pub bandwidth_mib_s: f64,
    pub expected_downtime_ms: u64,
    /// Percentage of time vCPUs are held by auto-converge.
    pub throttle_percent: u32,
    pub total_ms: u64,
    /// Source pause to destination resume.
    pub downtime_ms: u64,
    pub error: Option<String>,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Vmm(#[from] crate::VmmError),
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the guest dirties memory faster than it can be sent: {dirty_rate_mib_s:.0} MiB/s dirty \
         vs {bandwidth_mib_s:.0} MiB/s bandwidth after {rounds} rounds; the guest keeps running \
         here (use --force-switchover to accept a longer pause)"
    )]
    NoConvergence {
        dirty_rate_mib_s: f64,
        bandwidth_mib_s: f64,
        rounds: u32,
    },
    #[error("memory digest mismatch: destination refused to resume")]
    DigestMismatch,
    #[error(
        "in doubt: COMMIT was sent but the destination's acknowledgement was lost ({0}); the guest \
         stays paused here — check whether the destination runs it before resuming either side"
    )]
    InDoubt(String),
    #[error("the destination aborted: {0}")]
    Aborted(String),
}

/// Options of one outgoing migration.
#[derive(Clone, Debug)]
pub struct SendOptions {
    pub downtime_ms: u64,
    pub max_iterations: u32,
    pub verify: bool,
    pub force_switchover: bool,
    pub auto_converge: bool,
    /// How the stream is protected (credentials already loaded).
    pub security: transport::Security,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            downtime_ms: 300,
            max_iterations: 30,
            verify: false,
            force_switchover: false,
            auto_converge: true,
            security: transport::Security::Plain,
        }
    }
}
