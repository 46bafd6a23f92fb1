//! The VMM's error type: every failure a user can cause or meet, with a message that says what to
//! do about it. `main` prints it as one `error: …` line and exits 1.

use ferry_arch::boot::BootError;
use ferry_arch::regs::RegsError;
use ferry_devices::bus::BusError;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd) or run on a host with virtualization")]
    KvmMissing,
    #[error("permission denied opening /dev/kvm: add yourself to the 'kvm' group or run as root")]
    KvmPermission,
    #[error("{0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("unsupported KVM API version {0} (ferry needs 12)")]
    KvmApiVersion(i32),
    #[error("the host KVM lacks a required capability: {0}")]
    KvmCapability(&'static str),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A migration stream or snapshot named a host resource this host did not admit
    /// (`migration::admission`); nothing was opened.
    #[error("refused before opening anything: {0}")]
    NotAdmitted(String),
    #[error("cannot allocate {size_mib} MiB of guest memory: {reason}")]
    Memory { size_mib: u64, reason: String },
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open initrd {path}: {source}")]
    InitrdOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: {source}")]
    Boot {
        path: String,
        #[source]
        source: BootError,
    },
    #[error("{0}")]
    BootInfo(#[from] BootError),
    #[error("setting up vCPU registers: {0}")]
    Regs(#[from] RegsError),
    #[error("placing a device: {0}")]
    Bus(#[from] BusError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Device(String),
    #[error("the VM is {state}; {action} is not possible now")]
    InvalidState {
        state: &'static str,
        action: &'static str,
    },
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("vCPU {0} thread is gone")]
    VcpuGone(u8),
}

impl VmmError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
        let what = what.into();
        move |source| VmmError::Io { what, source }
    }
}
