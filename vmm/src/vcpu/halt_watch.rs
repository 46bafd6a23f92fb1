//! Ends the VM when the guest has stopped every vCPU for good.
//!
//! A Linux guest without a power-off method (no ACPI, or ACPI off) turns `poweroff` into a halt:
//! each CPU runs `cli; hlt` forever. With KVM's in-kernel LAPIC such a vCPU blocks inside
//! `KVM_RUN` and never exits to ferry, so the VMM would stay up, an orphan holding its disks and
//! taps. A vCPU halted with interrupts disabled can only be woken by an NMI, INIT or SIPI, which
//! only another running vCPU could send (ferry's devices raise maskable interrupts only), and a
//! vCPU waiting for SIPI needs one too. So when every vCPU is in one of those states, with at
//! least one halted, nothing can ever run again: ferry treats that as a power-off and exits 0.
//!
//! The watch thread asks each vCPU every [`CHECK_INTERVAL`] (a kick out of `KVM_RUN` that costs
//! one exit; a halted vCPU goes back to its halt) and acts only after [`CONFIRMATIONS`] checks in
//! a row agree, so a vCPU that wakes between two checks is never mistaken for a stopped one.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VcpuFd;

use ferry_devices::legacy::ExitCode;

use super::kick;
use super::VcpuRequest;

/// Time between two checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Consecutive checks that must find the guest stopped (5 s). Generous on purpose: a guest that
/// really powered off stays halted for good, so waiting costs only seconds, while a transient
/// misreading (the nested lab once saw a Linux guest end during boot, cause not yet known) must
/// never end a live guest.
const CONFIRMATIONS: u32 = 10;
/// How long a check waits for a vCPU's answer (a paused or busy thread answers late).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a vCPU reports about itself when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Executing, or halted with interrupts enabled (a timer or device can wake it).
    Live,
    /// Halted with interrupts disabled.
    HaltedForGood,
    /// Waiting for INIT/SIPI (an AP never started, or stopped by INIT).
    WaitingForSipi,
}

/// Reads the run state of the vCPU owned by the calling thread.
pub fn run_state(fd: &VcpuFd) -> RunState {
    const RFLAGS_IF: u64 = 1 << 9;
    let (Ok(mp), Ok(regs)) = (fd.get_mp_state(), fd.get_regs()) else {
        return RunState::Live;
    };
    classify(mp.mp_state, regs.rflags & RFLAGS_IF != 0)
}

/// The run state for a KVM multiprocessing state and the guest's interrupt flag.
pub fn classify(mp_state: u32, interrupts_enabled: bool) -> RunState {
    match mp_state {
        kvm_bindings::KVM_MP_STATE_HALTED if !interrupts_enabled => RunState::HaltedForGood,
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => {
            RunState::WaitingForSipi
        }
        _ => RunState::Live,
    }
}

/// True when the states say no vCPU can ever run again.
pub fn all_stopped(states: &[RunState]) -> bool {
    states.iter().all(|s| *s != RunState::Live) && states.contains(&RunState::HaltedForGood)
}

/// How the watch reaches one vCPU thread.
pub struct VcpuProbe {
    pub requests: Sender<VcpuRequest>,
    pub thread: libc::pthread_t,
}

/// The running watch; dropping it stops the thread (before the vCPU threads it signals go away).
pub struct HaltWatch {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HaltWatch {
    pub fn start(vcpus: Vec<VcpuProbe>, exit: Arc<ExitCode>) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferry_haltwatch".into())
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::HaltWatch);
                watch(&vcpus, &exit, &stopped)
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for HaltWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(vcpus: &[VcpuProbe], exit: &ExitCode, stopped: &Receiver<()>) {
    let mut agreeing = 0;
    loop {
        match stopped.recv_timeout(CHECK_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if exit.get().is_some() {
            return;
        }
        let Some(states) = ask_all(vcpus) else {
            return;
        };
        agreeing = if all_stopped(&states) {
            agreeing + 1
        } else {
            0
        };
        if agreeing >= CONFIRMATIONS {
            log::info!("every vCPU halted with interrupts off: the guest powered off");
            exit.request(0);
            return;
        }
    }
}

/// Asks every vCPU for its state; `None` when a vCPU thread is gone (the VM is ending).
fn ask_all(vcpus: &[VcpuProbe]) -> Option<Vec<RunState>> {
    let mut answers = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let (tx, rx) = mpsc::channel();
        vcpu.requests.send(VcpuRequest::RunState(tx)).ok()?;
        kick::kick_pthread(vcpu.thread);
        answers.push(rx);
    }
    answers
        .into_iter()
        // A late answer (a paused vCPU, a busy host) counts as live: the next check asks again.
        .map(|rx| Some(rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or(RunState::Live)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{
        KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
        KVM_MP_STATE_UNINITIALIZED,
    };

    #[test]
    fn a_halt_is_final_only_with_interrupts_off() {
        assert_eq!(
            classify(KVM_MP_STATE_HALTED, false),
            RunState::HaltedForGood
        );
        assert_eq!(classify(KVM_MP_STATE_HALTED, true), RunState::Live);
        assert_eq!(classify(KVM_MP_STATE_RUNNABLE, false), RunState::Live);
        assert_eq!(
            classify(KVM_MP_STATE_UNINITIALIZED, true),
            RunState::WaitingForSipi
        );
        assert_eq!(
            classify(KVM_MP_STATE_INIT_RECEIVED, false),
            RunState::WaitingForSipi
        );
    }

    #[test]
    fn the_guest_is_stopped_only_when_no_vcpu_can_run_again() {
        use RunState::*;
        assert!(all_stopped(&[HaltedForGood]));
        assert!(all_stopped(&[HaltedForGood, HaltedForGood]));
        assert!(all_stopped(&[HaltedForGood, WaitingForSipi]));
        assert!(!all_stopped(&[HaltedForGood, Live]));
        // APs waiting for SIPI while the BSP runs (or waits too, which no guest can do alone).
        assert!(!all_stopped(&[Live, WaitingForSipi]));
        assert!(!all_stopped(&[WaitingForSipi, WaitingForSipi]));
        assert!(!all_stopped(&[]));
    }
}
