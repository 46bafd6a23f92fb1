//! vCPUs: one thread each, running `KVM_RUN` and dispatching exits to the buses.
//!
//! The controller talks to a vCPU thread through a [`VcpuHandle`]: it posts a [`VcpuRequest`] on the
//! thread's channel and kicks the thread with a signal, which sets `immediate_exit` in the thread's
//! `kvm_run` so that `KVM_RUN` returns at once (or is never entered) — no request is lost even if
//! the signal lands just before the ioctl. A paused vCPU blocks on its channel, serving state saves
//! and restores until it is resumed.

mod halt_watch;
mod kick;
mod state;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};

use ferry_devices::bus::Bus;
use ferry_devices::legacy::ExitCode;

pub use halt_watch::{HaltWatch, RunState, VcpuProbe};
pub use kick::install_kick_handler;
pub use state::VcpuState;

use crate::error::VmmError;
use crate::metrics::VcpuMetrics;

/// What the controller asks of a vCPU thread.
pub enum VcpuRequest {
    /// Stop running guest code and acknowledge on the given channel.
    Pause(Sender<()>),
    /// Continue running guest code.
    Resume,
    /// Capture the vCPU's state (only while paused).
    Save(Sender<Result<VcpuState, String>>),
    /// Apply a saved state (only while paused).
    Restore(Box<VcpuState>, Sender<Result<(), String>>),
    /// Report whether the vCPU could ever run again (see `halt_watch`); a paused or stopped vCPU
    /// answers `Live`, so the watch never ends a VM that is paused for a snapshot or migration.
    RunState(Sender<RunState>),
    /// End the thread.
    Exit,
}

/// The buses and exit signal every vCPU shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitCode>,
    pub metrics: Arc<VcpuMetrics>,
}

/// A vCPU before its thread starts.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

/// The controller's side of a running vCPU thread.
pub struct VcpuHandle {
    pub index: u8,
    requests: Sender<VcpuRequest>,
    thread: JoinHandle<()>,
}

/// How long the controller waits for a vCPU to acknowledge a request before calling it stuck.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl VcpuHandle {
    /// Posts `request` and kicks the thread out of `KVM_RUN`.
    pub fn send(&self, request: VcpuRequest) -> Result<(), VmmError> {
        self.requests
            .send(request)
            .map_err(|_| VmmError::VcpuGone(self.index))?;
        kick::kick(&self.thread);
        Ok(())
    }

    /// What the halt watch needs to ask this vCPU for its run state.
    pub fn probe(&self) -> VcpuProbe {
        VcpuProbe {
            requests: self.requests.clone(),
            thread: std::os::unix::thread::JoinHandleExt::as_pthread_t(&self.thread),
        }
    }

    /// Pauses the vCPU and waits until it has left guest mode.
    pub fn pause(&self) -> Result<(), VmmError> {
        let (tx, rx) = mpsc::channel();
        self.send(VcpuRequest::Pause(tx))?;
        self.wait(rx)
    }

    /// Saves the state of a paused vCPU.
    pub fn save(&self) -> Result<VcpuState, VmmError> {
        let (tx, rx) = mpsc::channel();
        self.send(VcpuRequest::Save(tx))?;
        self.wait(rx)?
            .map_err(|e| VmmError::Device(format!("saving vCPU {}: {e}", self.index)))
    }

    /// Restores the state of a paused vCPU.
    pub fn restore(&self, state: VcpuState) -> Result<(), VmmError> {
        let (tx, rx) = mpsc::channel();
        self.send(VcpuRequest::Restore(Box::new(state), tx))?;
        self.wait(rx)?
            .map_err(|e| VmmError::Device(format!("restoring vCPU {}: {e}", self.index)))
    }

    fn wait<T>(&self, rx: Receiver<T>) -> Result<T, VmmError> {
        rx.recv_timeout(ACK_TIMEOUT).map_err(|e| match e {
            RecvTimeoutError::Timeout => VmmError::Device(format!(
                "vCPU {} did not answer within {ACK_TIMEOUT:?}",
                self.index
            )),
            RecvTimeoutError::Disconnected => VmmError::VcpuGone(self.index),
        })
    }
}

impl Vcpu {
    /// Starts the vCPU thread. With `start_paused` it waits for a `Resume` before running guest
    /// code (used when state is restored first).
    pub fn start(self, ctx: VcpuContext, start_paused: bool) -> Result<VcpuHandle, VmmError> {
        let (tx, rx) = mpsc::channel();
        let index = self.index;
        let thread = std::thread::Builder::new()
            .name(format!("ferry_vcpu{index}"))
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Vcpu);
                self.run(ctx, rx, start_paused)
            })
            .map_err(VmmError::io(format!("spawning vCPU {index} thread")))?;
        Ok(VcpuHandle {
            index,
            requests: tx,
            thread,
        })
    }

    fn run(mut self, ctx: VcpuContext, requests: Receiver<VcpuRequest>, start_paused: bool) {
        kick::register_current_thread(&mut self.fd);
        if start_paused && !self.park(&requests) {
            return;
        }
        loop {
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(outcome) = handle_exit(self.index, exit, &ctx) {
                        match outcome {
                            Outcome::Exit { code, dump } => {
                                // After a reset the guest asked for (i8042, ACPI), Linux may still
                                // triple-fault on its way down: only an unasked-for end is news.
                                if dump && ctx.exit.get().is_none() {
                                    log::error!("vCPU {}: {}", self.index, register_dump(&self.fd));
                                }
                                ctx.exit.request(code);
                                // Stay parked so the controller can still save state or join.
                                self.wait_for_exit(&requests);
                                return;
                            }
                        }
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    ctx.metrics.kicks.inc();
                    if !self.serve_requests(&requests) {
                        return;
                    }
                }
                Err(e) => {
                    log::error!("vCPU {}: KVM_RUN failed: {e}", self.index);
                    ctx.exit.request(1);
                    self.wait_for_exit(&requests);
                    return;
                }
            }
        }
    }

    /// Handles queued requests after a kick; false when the thread must end.
    fn serve_requests(&mut self, requests: &Receiver<VcpuRequest>) -> bool {
        while let Ok(request) = requests.try_recv() {
            match request {
                VcpuRequest::Pause(ack) => {
                    let _ = ack.send(());
                    if !self.park(requests) {
                        return false;
                    }
                }
                VcpuRequest::Resume => {}
                VcpuRequest::RunState(reply) => {
                    let _ = reply.send(halt_watch::run_state(&self.fd));
                }
                VcpuRequest::Save(reply) => {
                    let _ = reply.send(Err("the vCPU is running; pause it first".into()));
                }
                VcpuRequest::Restore(_, reply) => {
                    let _ = reply.send(Err("the vCPU is running; pause it first".into()));
                }
                VcpuRequest::Exit => return false,
            }
        }
        true
    }

    /// Blocks while paused, serving saves and restores; false when the thread must end.
    fn park(&mut self, requests: &Receiver<VcpuRequest>) -> bool {
        loop {
            match requests.recv() {
                Ok(VcpuRequest::Resume) => {
                    self.fd.set_kvm_immediate_exit(0);
                    return true;
                }
                Ok(VcpuRequest::Pause(ack)) => {
                    let _ = ack.send(());
                }
                Ok(VcpuRequest::RunState(reply)) => {
                    let _ = reply.send(RunState::Live);
                }
                Ok(VcpuRequest::Save(reply)) => {
                    let _ = reply.send(VcpuState::save(&self.fd).map_err(|e| e.to_string()));
                }
                Ok(VcpuRequest::Restore(state, reply)) => {
                    let _ = reply.send(state.restore(&self.fd).map_err(|e| e.to_string()));
                }
                Ok(VcpuRequest::Exit) | Err(_) => return false,
            }
        }
    }

    /// After the guest asked to stop: answer requests (state saves still work) until told to exit.
    fn wait_for_exit(&mut self, requests: &Receiver<VcpuRequest>) {
        loop {
            match requests.recv() {
                Ok(VcpuRequest::Pause(ack)) => {
                    let _ = ack.send(());
                }
                Ok(VcpuRequest::Save(reply)) => {
                    let _ = reply.send(VcpuState::save(&self.fd).map_err(|e| e.to_string()));
                }
                Ok(VcpuRequest::Restore(_, reply)) => {
                    let _ = reply.send(Err("the guest has stopped".into()));
                }
                Ok(VcpuRequest::RunState(reply)) => {
                    let _ = reply.send(RunState::Live);
                }
                Ok(VcpuRequest::Resume) => {}
                Ok(VcpuRequest::Exit) | Err(_) => return,
            }
        }
    }
}

enum Outcome {
    /// The VM must end with this status; `dump` logs the registers first.
    Exit { code: i32, dump: bool },
}

const STOP: Option<Outcome> = Some(Outcome::Exit {
    code: 0,
    dump: false,
});
const FAIL: Option<Outcome> = Some(Outcome::Exit {
    code: 1,
    dump: true,
});

/// Routes one exit. Returns `Some` when the VM must stop.
fn handle_exit(index: u8, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Option<Outcome> {
    let m = &ctx.metrics;
    match exit {
        VcpuExit::IoIn(port, data) => {
            m.io_in.inc();
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            m.io_out.inc();
            if !ctx.pio.write(u64::from(port), data) {
                log::trace!("vCPU {index}: write to unhandled port {port:#x}");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            m.mmio_read.inc();
            if !ctx.mmio.read(addr, data) {
                log::debug!("vCPU {index}: read from unmapped MMIO {addr:#x}");
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            m.mmio_write.inc();
            if !ctx.mmio.write(addr, data) {
                log::debug!("vCPU {index}: write to unmapped MMIO {addr:#x}");
            }
            None
        }
        VcpuExit::Hlt => {
            m.other.inc();
            log::info!("vCPU {index} halted with interrupts off; stopping the VM");
            STOP
        }
        VcpuExit::Shutdown => {
            m.other.inc();
            // A triple fault is a reset as far as the guest's hardware goes (status 0, as a
            // reset), but one that nobody asked for: the registers say where it happened.
            log::warn!("vCPU {index}: guest shutdown (triple fault or reset)");
            Some(Outcome::Exit {
                code: 0,
                dump: true,
            })
        }
        VcpuExit::SystemEvent(kind, _) => {
            m.other.inc();
            match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    log::info!("vCPU {index}: guest power-off/reset");
                    STOP
                }
                other => {
                    log::error!("vCPU {index}: guest system event {other} (crash)");
                    FAIL
                }
            }
        }
        VcpuExit::InternalError => {
            m.other.inc();
            log::error!("vCPU {index}: KVM internal error (emulation failure?)");
            FAIL
        }
        VcpuExit::FailEntry(reason, cpu) => {
            m.other.inc();
            log::error!(
                "vCPU {index}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}"
            );
            FAIL
        }
        other => {
            m.other.inc();
            log::error!("vCPU {index}: unexpected exit {other:?}");
            FAIL
        }
    }
}

/// A readable dump of a vCPU's registers, logged when the guest dies in an unexpected way.
pub fn register_dump(fd: &VcpuFd) -> String {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#018x} rsp={:#018x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} \
             cs={:#x}(l={} db={}) idt={:#x}/{:#x} gdt={:#x}/{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.cs.l,
            s.cs.db,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit
        ),
        (Err(e), _) | (_, Err(e)) => format!("<registers unavailable: {e}>"),
    }
}
