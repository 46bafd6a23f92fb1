//! seccomp filters on every ferry thread.
//!
//! A guest owns its kernel; what keeps a guest that finds a bug in ferry from reaching the host
//! is that each ferry thread may make only the syscalls its job needs. Each thread kind has its
//! own allow-list (one file per kind below, each syscall with the reason it is there), compiled
//! to BPF with rust-vmm's `seccompiler` and installed by the thread itself before it runs code a
//! guest or a peer can influence:
//!
//! * the main thread (`controller`) once the command line is parsed, before any VM is built;
//! * every other thread first thing in its body ([`install`] with its [`ThreadKind`]).
//!
//! A thread starts with its creator's filter and can only add to it (the kernel runs every
//! filter and the strictest answer wins), so the controller's list is the union of all the
//! others plus what building a VM takes, and each thread's own filter narrows it to its kind.
//! A call outside the list kills the whole process (`SECCOMP_RET_KILL_PROCESS`), as Firecracker
//! does; `--seccomp log` lets it through and logs it instead (kernel audit log), for finding a
//! missing entry. Installing a filter also sets `PR_SET_NO_NEW_PRIVS`.

mod api;
mod common;
mod controller;
mod devices;
pub mod firecracker;
mod helpers;
mod ioctls;
mod iscsi;
mod migration;
pub mod rules;
mod vcpu;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use rules::Table;

/// `--seccomp`: what a syscall outside a thread's list does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// Kill the process (`SECCOMP_RET_KILL_PROCESS`). The default.
    #[default]
    On,
    /// No filters at all (debugging only).
    Off,
    /// Allow it and log it in the kernel's audit log (`SECCOMP_RET_LOG`).
    Log,
}

impl SeccompLevel {
    /// The process policy for this level with ferry's own lists.
    pub fn policy(self) -> Policy {
        match self {
            Self::On => Policy::Builtin { log: false },
            Self::Off => Policy::Off,
            Self::Log => Policy::Builtin { log: true },
        }
    }
}

impl std::str::FromStr for SeccompLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "log" => Ok(Self::Log),
            other => Err(format!("'{other}': expected on, off or log")),
        }
    }
}

/// The kinds of thread ferry runs; each has its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread: command line, controller, API actions.
    Controller,
    /// `ferry_vcpuN`.
    Vcpu,
    /// `ferry_devices`: the virtio event loop.
    Devices,
    /// `ferry-api`: the HTTP API server.
    Api,
    /// `ferry_haltwatch`.
    HaltWatch,
    /// `ferry_migration`: sending a live migration.
    MigrationSend,
    /// `ferry_receive`: receiving a migration started over the API (it builds the VM).
    MigrationReceive,
    /// `ferry_throttle`: auto-converge while migrating.
    Throttle,
    /// `ferry_iscsiN`: one iSCSI session.
    Iscsi,
    /// `ferry_log`, `ferry_metrics`: line writers.
    Sink,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 10] = [
        Self::Controller,
        Self::Vcpu,
        Self::Devices,
        Self::Api,
        Self::HaltWatch,
        Self::MigrationSend,
        Self::MigrationReceive,
        Self::Throttle,
        Self::Iscsi,
        Self::Sink,
    ];

    /// The name used by `FERRY_SECCOMP_TRIGGER` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Controller => "controller",
            Self::Vcpu => "vcpu",
            Self::Devices => "devices",
            Self::Api => "api",
            Self::HaltWatch => "haltwatch",
            Self::MigrationSend => "migration",
            Self::MigrationReceive => "receive",
            Self::Throttle => "throttle",
            Self::Iscsi => "iscsi",
            Self::Sink => "sink",
        }
    }

    /// The thread category of a Firecracker filter file (`--seccomp-filter`) that applies to
    /// this kind: Firecracker has `vcpu`, `api` and `vmm` (everything else).
    pub fn firecracker_category(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::Api => "api",
            _ => "vmm",
        }
    }

    /// The kind's allow-list.
    pub fn table(self) -> Table {
        let own = |allows| rules::table(allows);
        match self {
            Self::Vcpu => own(vcpu::allows()),
            Self::Devices => own(devices::allows()),
            Self::Api => own(api::allows()),
            Self::HaltWatch => own(helpers::halt_watch()),
            Self::Throttle => own(helpers::throttle()),
            Self::Sink => own(helpers::sink()),
            Self::Iscsi => own(iscsi::allows()),
            Self::MigrationSend => own(migration::allows()),
            // Both build VMs and spawn the other threads: the union.
            Self::Controller | Self::MigrationReceive => {
                let mut tables = vec![own(controller::allows())];
                tables.extend(
                    Self::ALL
                        .iter()
                        .filter(|k| !matches!(k, Self::Controller | Self::MigrationReceive))
                        .map(|k| k.table()),
                );
                rules::union(&tables)
            }
        }
    }
}

/// Errors building, loading or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0} seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    #[error("installing the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
    #[error("{0}")]
    FilterFile(String),
}

/// What the process installs; set once by the binary before any thread starts.
#[derive(Debug)]
pub enum Policy {
    Off,
    /// ferry's own lists; `log` selects `SECCOMP_RET_LOG` over killing.
    Builtin {
        log: bool,
    },
    /// A Firecracker filter file: thread category → BPF (empty: no filter for that category).
    Custom(HashMap<String, Arc<BpfProgram>>),
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Sets the process's policy and installs the main thread's filter. Called once by the binary
/// after parsing its command line. The crates' thread-start hooks are set here too, so the
/// iSCSI and API threads (spawned in crates that do not know about seccomp) install theirs.
pub fn init(policy: Policy) -> Result<(), SeccompError> {
    if POLICY.set(policy).is_err() {
        return Err(SeccompError::FilterFile(
            "the seccomp policy was already set".into(),
        ));
    }
    ferry_devices::thread_hook::set(iscsi_thread_started);
    ferry_api::thread_hook::set(api_thread_started);
    if matches!(POLICY.get(), Some(Policy::Builtin { .. })) {
        refuse_clone3()?;
    }
    install(ThreadKind::Controller)
}

fn iscsi_thread_started() {
    install_or_abort(ThreadKind::Iscsi);
}

fn api_thread_started() {
    install_or_abort(ThreadKind::Api);
}

/// Installs the calling thread's filter for `kind` under the process's policy (nothing when no
/// policy was set: library users and unit tests), then, in debug builds, runs the test trigger.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(policy) = POLICY.get() else {
        return Ok(());
    };
    match policy {
        Policy::Off => return Ok(()),
        Policy::Builtin { log } => {
            let program = compile(kind, *log)?;
            seccompiler::apply_filter(&program)
                .map_err(|e| SeccompError::Install(kind.name(), e))?;
        }
        Policy::Custom(map) => {
            if let Some(program) = map.get(kind.firecracker_category()) {
                if !program.is_empty() {
                    seccompiler::apply_filter(program)
                        .map_err(|e| SeccompError::Install(kind.name(), e))?;
                }
            }
        }
    }
    debug_trigger(kind);
    Ok(())
}

/// [`install`] for a thread that must not go on without its filter: it ends the process.
pub fn install_or_abort(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        log::error!("{e}; stopping rather than running the thread unfiltered");
        eprintln!("error: {e}");
        std::process::abort();
    }
}

/// Compiles `kind`'s list to BPF.
pub fn compile(kind: ThreadKind, log: bool) -> Result<BpfProgram, SeccompError> {
    let mismatch = if log {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let build = |e| SeccompError::Build(kind.name(), e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, alts) in kind.table() {
        let list = match alts {
            None => Vec::new(),
            Some(alts) => {
                let mut list = Vec::new();
                for w in alts {
                    list.extend(rules_for(&w).map_err(build)?);
                }
                if list.is_empty() {
                    continue;
                }
                list
            }
        };
        rules.insert(nr, list);
    }
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

fn rules_for(w: &rules::When) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    use rules::When;
    let one = |index: u8, len, op, value| {
        SeccompCondition::new(index, len, op, value).and_then(|c| SeccompRule::new(vec![c]))
    };
    match w {
        When::Always => Ok(Vec::new()),
        When::ArgIn(i, values) => values
            .iter()
            .map(|v| one(*i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v))
            .collect(),
        When::Arg64In(i, values) => values
            .iter()
            .map(|v| one(*i, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, *v))
            .collect(),
        When::HasBits(i, bits) => Ok(vec![one(
            *i,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(*bits),
            *bits,
        )?]),
        When::Masked(i, mask, value) => Ok(vec![one(
            *i,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(*mask),
            *value,
        )?]),
    }
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

/// glibc's pthread_create tries `clone3` first, whose flags live in memory a filter cannot
/// read. A second filter answers it with ENOSYS, so glibc falls back to `clone`, whose flags
/// the lists check (threads only, never a new process). Installed once on the main thread;
/// every thread inherits it.
fn refuse_clone3() -> Result<(), SeccompError> {
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let build = |e| SeccompError::Build("clone3", e);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(build)?;
    let program = BpfProgram::try_from(filter).map_err(build)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install("clone3", e))
}

/// The syscall the debug trigger makes: in no thread kind's list.
pub const TRIGGER_SYSCALL: libc::c_long = libc::SYS_getppid;

/// Debug builds only: `FERRY_SECCOMP_TRIGGER=<kind>` makes threads of that kind make a syscall
/// outside their list right after installing their filter, so tests can see the filter kill
/// the process. Release builds have no such path.
#[cfg(debug_assertions)]
fn debug_trigger(kind: ThreadKind) {
    if std::env::var("FERRY_SECCOMP_TRIGGER").is_ok_and(|v| v == kind.name()) {
        // SAFETY: getppid has no arguments and no side effects.
        unsafe { libc::syscall(TRIGGER_SYSCALL) };
    }
}

#[cfg(not(debug_assertions))]
fn debug_trigger(_: ThreadKind) {}

#[cfg(test)]
mod tests;
