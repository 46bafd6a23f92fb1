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

use ferry_devices::persist::Persist;

use crate::builder::{build_vm, build_vm_for_restore, BuildOptions, BuiltVm};
use crate::error::VmmError;
use crate::event_loop::{EventLoop, ParkGuard};
use crate::legacy::LegacyDevices;
use crate::metrics::VcpuMetrics;
use crate::vcpu::{install_kick_handler, HaltWatch, VcpuHandle, VcpuRequest, VcpuState};
use crate::virtio_devices::VirtioDevices;
use crate::vm_snapshot::{VmSnapshot, SNAPSHOT_VERSION};
use crate::vm_state::VmKvmState;

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
    /// First field: dropped (and its thread joined) before the vCPU handles it signals.
    _halt_watch: HaltWatch,
    vm: Arc<VmFd>,
    memory: GuestMemory,
    vcpus: Vec<VcpuHandle>,
    event_loop: EventLoop,
    /// Set while paused: the device thread is parked too.
    parked: Option<ParkGuard>,
    serial: Arc<Mutex<Serial>>,
    legacy: LegacyDevices,
    exit: Arc<ExitCode>,
    metrics: Arc<VcpuMetrics>,
    virtio: VirtioDevices,
}

impl RunningVm {
    /// Starts the device thread and the vCPU threads of a built VM.
    fn start(built: BuiltVm, paused: bool) -> Result<Self, VmmError> {
        install_kick_handler()?;
        let event_loop = EventLoop::start(built.subscribers)?;
        let mut vcpus = Vec::with_capacity(built.vcpus.len());
        for vcpu in built.vcpus {
            vcpus.push(vcpu.start(built.context.clone(), paused)?);
        }
        let probes = vcpus.iter().map(VcpuHandle::probe).collect();
        let halt_watch = HaltWatch::start(probes, built.context.exit.clone())
            .map_err(VmmError::io("spawning the halt watch thread"))?;
        Ok(Self {
            _halt_watch: halt_watch,
            vm: built.vm,
            memory: built.memory,
            vcpus,
            event_loop,
            parked: None,
            serial: built.serial,
            legacy: built.legacy,
            exit: built.context.exit.clone(),
            metrics: built.context.metrics.clone(),
            virtio: built.virtio,
        })
    }
}

/// Owns the configuration and, once started, the VM.
pub struct VmController {
    config: VmConfig,
    options: BuildOptions,
    state: VmState,
    vm: Option<RunningVm>,
    /// The dirty log holds exactly the pages changed since the last snapshot this VM was saved
    /// to or restored from, so a `Diff` snapshot may be taken (see `snapshot`).
    diff_base: bool,
}

impl VmController {
    pub fn new(config: VmConfig, options: BuildOptions) -> Self {
        Self {
            config,
            options,
            state: VmState::Configured,
            vm: None,
            diff_base: false,
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
        let built = build_vm(&self.config, &self.options)?;
        // A MAC ferry chose (random for a tap without `mac=`) becomes part of the configuration:
        // a destination or a restore must give the guest the same one, whatever tap it opens.
        for (id, mac) in built.virtio.net_macs() {
            if let Some(net) = self.config.nets.iter_mut().find(|n| n.iface_id == id) {
                net.guest_mac = Some(mac);
            }
        }
        self.vm = Some(RunningVm::start(built, false)?);
        self.state = VmState::Running;
        Ok(())
    }

    /// Builds a VM from `snapshot`'s configuration (as already adjusted by the caller, e.g. with
    /// migration maps), lets `fill_memory` load guest memory, applies the saved state and leaves
    /// the VM paused. The caller resumes it.
    pub fn restore(
        snapshot: &VmSnapshot,
        options: BuildOptions,
        fill_memory: impl FnOnce(&GuestMemory) -> Result<(), VmmError>,
    ) -> Result<Self, VmmError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(VmmError::Config(format!(
                "saved state version {} is not supported (this ferry reads version {SNAPSHOT_VERSION})",
                snapshot.version
            )));
        }
        let built = build_vm_for_restore(&snapshot.config, &options)?;
        fill_memory(&built.memory)?;
        let mut controller = Self::prepare_restore(snapshot.config.clone(), options, built)?;
        controller.apply_snapshot(snapshot)?;
        // Memory was filled behind KVM's back: the log is clean, and the snapshot is the base.
        controller.diff_base = snapshot.config.machine.track_dirty_pages;
        Ok(controller)
    }

    /// Builds an empty VM for `config` whose memory and state will be restored later (migration
    /// receives memory over many rounds before the state arrives). The VM starts paused.
    pub fn prepare_restore(
        config: VmConfig,
        options: BuildOptions,
        built: BuiltVm,
    ) -> Result<Self, VmmError> {
        let vm = RunningVm::start(built, true)?;
        Ok(Self {
            config,
            options,
            state: VmState::Paused,
            vm: Some(vm),
            diff_base: false,
        })
    }

    /// Whether a `Diff` snapshot has a base: the last snapshot saved or loaded, with nothing
    /// having consumed the dirty log since.
    pub fn diff_base_ready(&self) -> bool {
        self.diff_base
    }

    pub fn set_diff_base(&mut self, ready: bool) {
        self.diff_base = ready;
    }

    /// A migration attempt reads the dirty log: a later diff would miss what it consumed.
    pub fn invalidate_diff_base(&mut self) {
        self.diff_base = false;
    }

    /// Applies a saved state to a paused VM built for it.
    pub fn apply_snapshot(&mut self, snapshot: &VmSnapshot) -> Result<(), VmmError> {
        self.expect(VmState::Paused, "restoring state")?;
        let vm = self.running()?;
        if snapshot.vcpus.len() != vm.vcpus.len() {
            return Err(VmmError::Config(format!(
                "the saved state has {} vCPUs, this VM has {}",
                snapshot.vcpus.len(),
                vm.vcpus.len()
            )));
        }
        snapshot.kvm.restore(&vm.vm)?;
        for (handle, state) in vm.vcpus.iter().zip(&snapshot.vcpus) {
            handle.restore(state.clone_state())?;
        }
        vm.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore_state(&snapshot.serial)
            .map_err(|e| VmmError::Device(e.to_string()))?;
        vm.legacy.restore(&snapshot.legacy)?;
        vm.virtio.restore(&snapshot.virtio)?;
        Ok(())
    }

    /// Captures the whole VM state except memory; the VM must be paused.
    pub fn save_snapshot(&self) -> Result<VmSnapshot, VmmError> {
        self.expect(VmState::Paused, "saving the VM state")?;
        let vm = self.running()?;
        Ok(VmSnapshot {
            version: SNAPSHOT_VERSION,
            config: self.config.clone(),
            vcpus: self.save_vcpus()?,
            kvm: VmKvmState::save(&vm.vm)?,
            serial: vm
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .save_state(),
            legacy: vm.legacy.save(),
            virtio: vm.virtio.save(),
        })
    }

    /// The KVM VM, for dirty-page logging.
    pub fn vm_fd(&self) -> Option<&Arc<VmFd>> {
        self.vm.as_ref().map(|vm| &vm.vm)
    }

    /// The virtio devices (for resize, announce, quiesce).
    pub fn virtio(&self) -> Option<&VirtioDevices> {
        self.vm.as_ref().map(|vm| &vm.virtio)
    }

    /// `PATCH /drives/{id}`'s rate limiter: the running device and the configuration change
    /// together (see `rate_limit`).
    pub fn patch_drive_rate_limiter(
        &mut self,
        drive_id: &str,
        patch: &ferry_api::RateLimiter,
    ) -> Result<(), VmmError> {
        let vm = self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action: "changing a rate limiter",
        })?;
        crate::rate_limit::patch_drive(&mut self.config, &vm.virtio, drive_id, patch)
    }

    /// `PATCH /drives/{id}`'s `path_on_host`. The drive's current path re-reads its size (online
    /// resize); another path puts the running drive on that backing (Firecracker's swap) and the
    /// configuration follows, so `GET /vm/config`, snapshots and migrations name the new path.
    pub fn patch_drive_path(&mut self, drive_id: &str, path: &str) -> Result<(), VmmError> {
        let vm = self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action: "changing a drive",
        })?;
        let drive = self
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive_id)
            .ok_or_else(|| VmmError::Config(format!("no drive '{drive_id}'")))?;
        if drive.path_on_host == path {
            vm.virtio.resize_drive(drive_id)?;
            return Ok(());
        }
        let swapped = ferry_api::DriveConfig {
            path_on_host: path.to_string(),
            ..drive.clone()
        };
        let capacity = vm.virtio.swap_drive(&swapped)?;
        log::info!("drive '{drive_id}' now on {path} ({capacity} bytes)");
        *drive = swapped;
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}`: the running device and the configuration change
    /// together.
    pub fn patch_net_rate_limiters(
        &mut self,
        patch: &ferry_api::NetworkInterfacePatch,
    ) -> Result<(), VmmError> {
        let vm = self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action: "changing a rate limiter",
        })?;
        crate::rate_limit::patch_net(
            &mut self.config,
            &vm.virtio,
            &patch.iface_id,
            patch.rx_rate_limiter.as_ref(),
            patch.tx_rate_limiter.as_ref(),
        )
    }

    /// The running balloon and its configuration entry, changed together by `PATCH /balloon`
    /// and `PATCH /balloon/statistics` (so snapshots and migrations carry the current values).
    /// Before boot these requests are refused, as on Firecracker.
    pub fn running_balloon(
        &mut self,
        action: &'static str,
    ) -> Result<
        (
            Arc<Mutex<ferry_devices::virtio::balloon::Balloon>>,
            &mut ferry_api::BalloonConfig,
        ),
        VmmError,
    > {
        let vm = self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action,
        })?;
        match (vm.virtio.balloon(), self.config.balloon.as_mut()) {
            (Some(device), Some(config)) => Ok((device.clone(), config)),
            _ => Err(VmmError::Config("no balloon device is configured".into())),
        }
    }

    /// The exit signal of the running VM.
    /// The keyboard and the power button, for `SendCtrlAltDel` and a graceful shutdown.
    pub fn legacy(&self) -> Result<&LegacyDevices, VmmError> {
        self.vm
            .as_ref()
            .map(|vm| &vm.legacy)
            .ok_or(VmmError::InvalidState {
                state: self.state.name(),
                action: "pressing a key or a button",
            })
    }

    pub fn exit_code(&self) -> Option<&Arc<ExitCode>> {
        self.vm.as_ref().map(|vm| &vm.exit)
    }

    /// Ends the controller's VM after a successful migration: the destination owns the guest now.
    pub fn forget_migrated(&mut self) {
        // The destination owns the guest and its disks now: the device thread stays parked for
        // good, so not even a stale queue notification can touch shared storage from here.
        if let Some(guard) = self.vm.as_mut().and_then(|vm| vm.parked.take()) {
            std::mem::forget(guard);
        }
        self.stop();
        self.vm = None;
    }

    fn running(&self) -> Result<&RunningVm, VmmError> {
        self.vm.as_ref().ok_or(VmmError::InvalidState {
            state: self.state.name(),
            action: "this",
        })
    }

    /// Stops every vCPU at its next instruction boundary, then the device thread, so nothing
    /// changes guest memory or device state until [`VmController::resume`].
    pub fn pause(&mut self) -> Result<(), VmmError> {
        self.expect(VmState::Running, "pausing")?;
        let vm = self.vm.as_mut().ok_or(VmmError::InvalidState {
            state: "not started",
            action: "pausing",
        })?;
        for vcpu in &vm.vcpus {
            vcpu.pause()?;
        }
        vm.parked = Some(vm.event_loop.park()?);
        self.state = VmState::Paused;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), VmmError> {
        self.expect(VmState::Paused, "resuming")?;
        let vm = self.vm.as_mut().ok_or(VmmError::InvalidState {
            state: "not started",
            action: "resuming",
        })?;
        // Devices first: a vCPU's first kick must find the device thread running.
        vm.parked = None;
        for vcpu in &vm.vcpus {
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
