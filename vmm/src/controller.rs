//! The VM controller: the one object that owns a VM and moves it through its states.
//!
//! ```text
//! Configured --start--> Running <--pause/resume--> Paused
//!      |                   |                          |
//!      +-------------------+---------stop-------------+--> Stopped
//! ```
//! The command line drives it directly; the API thread drives it through requests. Nothing else
//! changes VM state.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use ferry_api::VmConfig;
use ferry_arch::GuestMemory;
use ferry_devices::legacy::{ExitCode, Serial};

use crate::builder::{build_vm, BuildOptions};
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::metrics::VcpuMetrics;
use crate::vcpu::{install_kick_handler, VcpuHandle, VcpuRequest, VcpuState};
use crate::virtio_devices::VirtioDevices;

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Configured,
    Running,
    Paused,
    Stopped,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Configured => "not started",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        }
    }
}

/// A VM with its threads.
struct RunningVm {
    _vm: Arc<VmFd>,
    memory: GuestMemory,
    vcpus: Vec<VcpuHandle>,
    _event_loop: EventLoop,
    _serial: Arc<Mutex<Serial>>,
    exit: Arc<ExitCode>,
    metrics: Arc<VcpuMetrics>,
    _virtio: VirtioDevices,
}

/// Owns the configuration and, once started, the VM.
pub struct VmController {
    config: VmConfig,
    options: BuildOptions,
    state: VmState,
    vm: Option<RunningVm>,
}

impl VmController {
    pub fn new(config: VmConfig, options: BuildOptions) -> Self {
        Self {
            config,
            options,
            state: VmState::Configured,
            vm: None,
        }
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The configuration, for changes allowed only before boot.
    pub fn config_mut(&mut self, action: &'static str) -> Result<&mut VmConfig, VmmError> {
        self.expect(VmState::Configured, action)?;
        Ok(&mut self.config)
    }

    fn expect(&self, state: VmState, action: &'static str) -> Result<(), VmmError> {
        if self.state == state {
            Ok(())
        } else {
            Err(VmmError::InvalidState {
                state: self.state.name(),
                action,
            })
        }
    }

    /// Builds and boots the VM.
    pub fn start(&mut self) -> Result<(), VmmError> {
        self.expect(VmState::Configured, "starting the VM")?;
        install_kick_handler()?;
        let built = build_vm(&self.config, &self.options)?;
        let event_loop = EventLoop::start(built.subscribers)?;
        let mut vcpus = Vec::with_capacity(built.vcpus.len());
        for vcpu in built.vcpus {
            vcpus.push(vcpu.start(built.context.clone(), false)?);
        }
        self.vm = Some(RunningVm {
            _vm: built.vm,
            memory: built.memory,
            vcpus,
            _event_loop: event_loop,
            _serial: built.serial,
            exit: built.context.exit.clone(),
            metrics: built.context.metrics.clone(),
            _virtio: built.virtio,
        });
        self.state = VmState::Running;
        Ok(())
    }

    fn running(&self) -> Result<&RunningVm, VmmError> {
        self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action: "this",
        })
    }

    /// Stops every vCPU at its next instruction boundary.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        self.expect(VmState::Running, "pausing")?;
        for vcpu in &self.running()?.vcpus {
            vcpu.pause()?;
        }
        self.state = VmState::Paused;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), VmmError> {
        self.expect(VmState::Paused, "resuming")?;
        for vcpu in &self.running()?.vcpus {
            vcpu.send(VcpuRequest::Resume)?;
        }
        self.state = VmState::Running;
        Ok(())
    }

    /// Saves every vCPU (the VM must be paused).
    pub fn save_vcpus(&self) -> Result<Vec<VcpuState>, VmmError> {
        self.expect(VmState::Paused, "saving vCPU state")?;
        self.running()?.vcpus.iter().map(VcpuHandle::save).collect()
    }

    /// Guest memory, once the VM exists.
    pub fn memory(&self) -> Option<&GuestMemory> {
        self.vm.as_ref().map(|vm| &vm.memory)
    }

    pub fn vcpu_metrics(&self) -> Option<&VcpuMetrics> {
        self.vm.as_ref().map(|vm| vm.metrics.as_ref())
    }

    /// Blocks until the guest (or a vCPU failure) ends the VM; returns the exit status.
    pub fn wait_for_exit(&mut self) -> Result<i32, VmmError> {
        let vm = self.running()?;
        loop {
            if let Some(code) = vm.exit.get() {
                self.stop();
                return Ok(code);
            }
            // Blocking read: the eventfd is non-blocking, so wait for it with poll.
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(vm.exit.eventfd()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, -1) };
            let _ = vm.exit.eventfd().read();
        }
    }

    /// Ends the VM's vCPU threads. Idempotent.
    pub fn stop(&mut self) {
        if let Some(vm) = &self.vm {
            for vcpu in &vm.vcpus {
                let _ = vcpu.send(VcpuRequest::Exit);
            }
        }
        self.state = VmState::Stopped;
    }
}
