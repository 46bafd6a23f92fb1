//! Serving the HTTP API: the API thread (ferry-api) validates requests and forwards them over a
//! channel; this module answers them on the main thread, which owns the [`VmController`]. vCPU
//! and device threads never wait on the API.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use ferry_api::{
    ActionType, ApiRequest, ApiResponse, ChannelHandler, FullVmConfiguration, InstanceInfo,
    InstanceState, MigrationState, MigrationStatus, PendingRequest,
};

use crate::builder::BuildOptions;
use crate::controller::{VmController, VmState};
use crate::metrics::{ApiCounters, FirecrackerMetrics};
use crate::migration::admission::Admission;
use crate::migration::destination::{receive, ReceiveMaps, ReceiveOptions};
use crate::migration::source::migrate;
use crate::migration::tls::TlsFiles;
use crate::migration::{
    MigrationPhase, MigrationProgress, MigrationUrl, Security, SecurityOptions, SendOptions,
};
use crate::{snapshot, VmmError};

/// How long the process stays up after answering a request that ended the guest.
const ANSWER_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest the process waits at exit for metrics and log lines to reach their paths (only a
/// full FIFO that nobody reads makes it wait that long).
pub const EXIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Process exit status when a migration ended in doubt (see docs/migration.md).
pub const EXIT_IN_DOUBT: u8 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The main thread's side of the API.
pub struct ApiService {
    controller: Arc<Mutex<VmController>>,
    requests: Receiver<PendingRequest>,
    wake: Arc<EventFd>,
    migration: Arc<Mutex<MigrationProgress>>,
    /// Set by a finished migration: the process exits with this status.
    finished: Arc<Mutex<Option<u8>>>,
    /// Where `FlushMetrics` and the periodic flush write (`PUT /metrics`), in Firecracker's
    /// JSON lines.
    fc_metrics: Option<FirecrackerMetrics>,
    api_counters: ApiCounters,
    /// `id` of `GET /` (Firecracker's `--id`).
    instance_id: String,
    _server: ferry_api::ApiServerHandle,
}

impl ApiService {
    /// Binds the socket and starts the API thread with ferry's limits.
    pub fn start(socket: &Path, controller: Arc<Mutex<VmController>>) -> Result<Self, VmmError> {
        Self::start_with(socket, controller, ferry_api::ServerOptions::default())
    }

    /// [`ApiService::start`] with other server limits (Firecracker's, for `ferry firecracker`).
    pub fn start_with(
        socket: &Path,
        controller: Arc<Mutex<VmController>>,
        options: ferry_api::ServerOptions,
    ) -> Result<Self, VmmError> {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::io("API eventfd"))?);
        let waker = wake.clone();
        let (handler, requests) = ChannelHandler::new(move || {
            let _ = waker.write(1);
        });
        let server = ferry_api::serve_with(socket, Arc::new(handler), options)
            .map_err(|e| VmmError::Config(e.to_string()))?;
        Ok(Self {
            controller,
            requests,
            wake,
            migration: Arc::new(Mutex::new(MigrationProgress::default())),
            finished: Arc::new(Mutex::new(None)),
            fc_metrics: None,
            api_counters: ApiCounters::default(),
            instance_id: "ferry".to_string(),
            _server: server,
        })
    }

    /// Sets the instance id `GET /` reports.
    pub fn set_instance_id(&mut self, id: &str) {
        self.instance_id = id.to_string();
    }

    /// Sets where metrics go, as a `PUT /metrics` would (which is then refused).
    pub fn set_metrics(&mut self, metrics: FirecrackerMetrics) {
        self.fc_metrics = Some(metrics);
    }

    /// Serves requests until the guest exits or a migration hands it over; returns the status.
    pub fn run(&mut self) -> Result<u8, VmmError> {
        let mut last_answer: Option<std::time::Instant> = None;
        // Answers go back through the API thread; give it time to write the last one (say, to
        // the shutdown request that ended the guest) before the process exits.
        let linger = |last: Option<std::time::Instant>| {
            if let Some(left) = last.and_then(|t| ANSWER_FLUSH.checked_sub(t.elapsed())) {
                std::thread::sleep(left);
            }
        };
        loop {
            let finished = *lock(&self.finished);
            if let Some(status) = finished {
                self.flush_at_exit();
                linger(last_answer);
                return Ok(status);
            }
            let exit = lock(&self.controller).exit_code().cloned();
            if let Some(code) = exit.as_ref().and_then(|e| e.get()) {
                lock(&self.controller).stop();
                self.flush_at_exit();
                linger(last_answer);
                return Ok(u8::try_from(code).unwrap_or(1));
            }
            let mut fds = vec![libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(exit) = &exit {
                fds.push(libc::pollfd {
                    fd: exit.eventfd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // A bounded wait so a migration that finishes is noticed even without a request.
            // SAFETY: valid pollfd array of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
            let _ = self.wake.read();
            while let Ok(pending) = self.requests.try_recv() {
                let response = self.handle(pending.request.clone());
                pending.respond(response);
                last_answer = Some(std::time::Instant::now());
            }
            if let Some(metrics) = self.fc_metrics.as_mut().filter(|m| m.due()) {
                let c = lock(&self.controller);
                if c.state() != VmState::Configured {
                    metrics.flush(&c, &self.api_counters);
                }
            }
        }
    }

    /// As Firecracker does when the VM ends: a last metrics line, and a bounded wait for it and
    /// the log to reach their paths.
    fn flush_at_exit(&mut self) {
        if let Some(metrics) = self.fc_metrics.as_mut() {
            metrics.flush(&lock(&self.controller), &self.api_counters);
            metrics.drain(EXIT_DRAIN);
        }
        crate::logger::drain(EXIT_DRAIN);
    }

    fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        self.api_counters.requested(&request);
        match self.dispatch(request.clone()) {
            Ok(response) => response,
            Err(e) => {
                self.api_counters.failed(&request);
                ApiResponse::bad_request(e.to_string())
            }
        }
    }

    fn dispatch(&mut self, request: ApiRequest) -> Result<ApiResponse, VmmError> {
        let mut c = lock(&self.controller);
        Ok(match request {
            ApiRequest::GetInstanceInfo => {
                let state = match c.state() {
                    VmState::Configured => InstanceState::NotStarted,
                    VmState::Running => InstanceState::Running,
                    VmState::Paused | VmState::Stopped => InstanceState::Paused,
                };
                ApiResponse::json(&InstanceInfo::new(self.instance_id.clone(), state))
            }
            ApiRequest::GetMachineConfig => ApiResponse::json(&c.config().machine),
            ApiRequest::PutMachineConfig(machine, template) => {
                c.config_mut("changing the machine configuration after boot")?
                    .put_machine(machine, template);
                ApiResponse::NoContent
            }
            ApiRequest::PatchMachineConfig(update) => {
                let config = c.config_mut("changing the machine configuration after boot")?;
                config.patch_machine(&update).map_err(VmmError::Config)?;
                ApiResponse::NoContent
            }
            ApiRequest::PutBootSource(boot) => {
                let config = c.config_mut("changing the boot source after boot")?;
                crate::builder::check_boot_source(&boot)?;
                config.boot = Some(boot);
                ApiResponse::NoContent
            }
            ApiRequest::PutDrive(drive) => {
                let config = c.config_mut("adding drives after boot")?;
                config
                    .put_drive(drive.to_config())
                    .map_err(VmmError::Config)?;
                ApiResponse::NoContent
            }
            ApiRequest::PatchDrive(patch) => {
                if c.state() == VmState::Configured {
                    return Err(VmmError::Config(
                        "PATCH /drives is for a running VM; use PUT before boot".into(),
                    ));
                }
                // The path first: a backing that cannot be opened leaves the drive, limits
                // included, as it was.
                if let Some(path) = &patch.path_on_host {
                    c.patch_drive_path(&patch.drive_id, path)?;
                }
                if let Some(limiter) = &patch.rate_limiter {
                    c.patch_drive_rate_limiter(&patch.drive_id, limiter)?;
                }
                ApiResponse::NoContent
            }
            ApiRequest::PutNetworkInterface(iface) => {
                let config = c.config_mut("adding network interfaces after boot")?;
                let net = iface.to_config();
                match config.nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
                    Some(existing) => *existing = net,
                    None => config.nets.push(net),
                }
                ApiResponse::NoContent
            }
            ApiRequest::PutVsock(vsock) => {
                c.config_mut("adding a vsock device after boot")?.vsock = Some(vsock.to_config());
                ApiResponse::NoContent
            }
            ApiRequest::PutEntropy(entropy) => {
                c.config_mut("adding an entropy device after boot")?.entropy =
                    Some(entropy.to_config());
                ApiResponse::NoContent
            }
            ApiRequest::GetBalloon => ApiResponse::json(&crate::balloon::get(&c)?),
            ApiRequest::PutBalloon(balloon) => {
                crate::balloon::put(&mut c, &balloon)?;
                ApiResponse::NoContent
            }
            ApiRequest::PatchBalloon(update) => {
                crate::balloon::patch(&mut c, &update)?;
                ApiResponse::NoContent
            }
            ApiRequest::GetBalloonStats => ApiResponse::json(&crate::balloon::stats(&c)?),
            ApiRequest::PatchBalloonStats(update) => {
                crate::balloon::patch_stats(&mut c, &update)?;
                ApiResponse::NoContent
            }
            ApiRequest::PatchNetworkInterface(patch) => {
                c.patch_net_rate_limiters(&patch)?;
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::InstanceStart) => {
                c.start()?;
                log::info!("guest started");
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                c.legacy()?.send_ctrl_alt_del()?;
                log::info!("Ctrl-Alt-Del pressed on the guest's keyboard");
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::PowerButton) => {
                c.legacy()?.press_power_button()?;
                log::info!("ACPI power button pressed");
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::PowerOff) => {
                let exit = c.exit_code().cloned().ok_or(VmmError::InvalidState {
                    state: c.state().name(),
                    action: "powering off",
                })?;
                log::info!("VM powered off through the API");
                exit.request(0);
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::FlushMetrics) => {
                if let Some(metrics) = &mut self.fc_metrics {
                    metrics.flush(&c, &self.api_counters);
                }
                ApiResponse::NoContent
            }
            ApiRequest::PatchVm(ferry_api::VmState::Paused) => {
                c.pause()?;
                ApiResponse::NoContent
            }
            ApiRequest::PatchVm(ferry_api::VmState::Resumed) => {
                c.resume()?;
                ApiResponse::NoContent
            }
            ApiRequest::GetVmConfig => {
                ApiResponse::json(&FullVmConfiguration::from_config(c.config()))
            }
            ApiRequest::SnapshotCreate(req) => {
                let kind = match req.snapshot_type {
                    ferry_api::SnapshotType::Full => snapshot::Kind::Full,
                    ferry_api::SnapshotType::Diff => snapshot::Kind::Diff,
                };
                snapshot::create(
                    &mut c,
                    Path::new(&req.snapshot_path),
                    Path::new(&req.mem_file_path),
                    kind,
                )?;
                ApiResponse::NoContent
            }
            ApiRequest::SnapshotLoad(req) => {
                if c.state() != VmState::Configured {
                    return Err(VmmError::InvalidState {
                        state: c.state().name(),
                        action: "loading a snapshot (only before boot)",
                    });
                }
                let mut saved = snapshot::read_state(Path::new(&req.snapshot_path))?;
                saved.config.serial = c.config().serial.clone();
                saved.config.machine.track_dirty_pages |= req.track_dirty_pages;
                for o in &req.network_overrides {
                    let net = saved
                        .config
                        .nets
                        .iter_mut()
                        .find(|n| n.iface_id == o.iface_id)
                        .ok_or_else(|| {
                            VmmError::Config(format!(
                                "network_overrides: the snapshot has no interface '{}'",
                                o.iface_id
                            ))
                        })?;
                    net.backend = ferry_api::NetBackendConfig::Tap(o.host_dev_name.clone());
                }
                if let Some(o) = &req.vsock_override {
                    let vsock = saved.config.vsock.as_mut().ok_or_else(|| {
                        VmmError::Config("vsock_override: the snapshot has no vsock device".into())
                    })?;
                    vsock.uds_path = o.uds_path.clone();
                }
                saved.kvm.advance_clock_to_realtime = req.clock_realtime;
                let diffs: Vec<&Path> = req.mem_diff_paths.iter().map(Path::new).collect();
                let mut restored = snapshot::restore_chain(
                    Path::new(&req.mem_file_path),
                    &diffs,
                    &saved,
                    BuildOptions::default(),
                )?;
                if req.resume_vm {
                    restored.resume()?;
                }
                *c = restored;
                ApiResponse::NoContent
            }
            ApiRequest::PutLogger(logger) => {
                // Opens without blocking: a FIFO nobody reads yet is fine.
                crate::logger::configure(&logger)?;
                if let Some(path) = &logger.log_path {
                    log::info!("logging to {path}");
                }
                ApiResponse::NoContent
            }
            ApiRequest::PutCpuConfig(template) => {
                c.config_mut("setting a CPU template after boot")?
                    .set_custom_cpu_template(template);
                ApiResponse::NoContent
            }
            ApiRequest::PutMetrics(metrics) => {
                if let Some(current) = &self.fc_metrics {
                    // Firecracker initialises its metrics once.
                    return Err(VmmError::Config(format!(
                        "metrics are already configured (to {}); they can be set once",
                        current.path()
                    )));
                }
                self.fc_metrics = Some(FirecrackerMetrics::open_config(
                    &metrics,
                    &self.instance_id,
                )?);
                ApiResponse::NoContent
            }
            ApiRequest::MigrationSend(req) => {
                if lock(&self.migration).state == MigrationPhase::Active {
                    return Err(VmmError::Config("a migration is already running".into()));
                }
                let url: MigrationUrl = req.destination_url.parse().map_err(VmmError::Config)?;
                if c.state() != VmState::Running {
                    return Err(VmmError::InvalidState {
                        state: c.state().name(),
                        action: "migrating",
                    });
                }
                // Credentials are read now: a missing or bad file is this request's 400.
                let security = Security::for_url(
                    &security_options(req.tls.as_ref(), req.psk_file.as_deref(), req.insecure),
                    &url,
                )
                .map_err(VmmError::Config)?;
                let options = SendOptions {
                    downtime_ms: req.downtime_ms,
                    max_iterations: req.max_iterations,
                    verify: req.verify,
                    force_switchover: req.force_switchover,
                    auto_converge: req.auto_converge,
                    security,
                };
                drop(c);
                self.spawn_migration(url, options)?;
                ApiResponse::NoContent
            }
            ApiRequest::MigrationReceive(req) => {
                if c.state() != VmState::Configured {
                    return Err(VmmError::InvalidState {
                        state: c.state().name(),
                        action: "receiving a migration (only before boot)",
                    });
                }
                if lock(&self.migration).state == MigrationPhase::Receiving {
                    return Err(VmmError::Config("already receiving a migration".into()));
                }
                let url: MigrationUrl = req.listen_url.parse().map_err(VmmError::Config)?;
                let maps = ReceiveMaps {
                    disks: req
                        .maps
                        .drives
                        .iter()
                        .map(|d| (d.drive_id.clone(), d.path_on_host.clone()))
                        .collect(),
                    nets: req
                        .maps
                        .network_interfaces
                        .iter()
                        .map(|n| {
                            let iface = ferry_api::NetworkInterface {
                                iface_id: n.iface_id.clone(),
                                host_dev_name: n.host_dev_name.clone(),
                                guest_mac: None,
                                mtu: None,
                                rx_rate_limiter: None,
                                tx_rate_limiter: None,
                                host_dev_type: n.host_dev_type,
                                queues: None,
                            };
                            (n.iface_id.clone(), iface.to_config().backend)
                        })
                        .collect(),
                    vsock: req.maps.vsock.as_ref().map(|v| v.uds_path.clone()),
                };
                let security = Security::for_url(
                    &security_options(req.tls.as_ref(), req.psk_file.as_deref(), req.insecure),
                    &url,
                )
                .map_err(VmmError::Config)?;
                let options = ReceiveOptions {
                    maps,
                    admission: Admission::new(&req.allow_paths)?,
                    security,
                    serial: c.config().serial.clone(),
                    build: BuildOptions::default(),
                };
                drop(c);
                self.spawn_receive(url, options)?;
                ApiResponse::NoContent
            }
            ApiRequest::GetMigration => ApiResponse::json(&self.migration_status()),
            ApiRequest::GetMetrics => ApiResponse::Text(self.metrics_text(&c)),
        })
    }

    fn spawn_migration(&self, url: MigrationUrl, options: SendOptions) -> Result<(), VmmError> {
        let controller = self.controller.clone();
        let progress = self.migration.clone();
        let finished = self.finished.clone();
        let wake = self.wake.clone();
        lock(&progress).state = MigrationPhase::Active;
        // The migration thread's seccomp filter has no openat: open what it reads here.
        crate::migration::memory::preopen();
        std::thread::Builder::new()
            .name("ferry_migration".into())
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::MigrationSend);
                let result = migrate(&controller, &url, &options, &progress);
                let status = match &result {
                    Ok(summary) => {
                        log::info!("migration to {url} completed: {summary:?}");
                        Some(0)
                    }
                    Err(crate::migration::MigrationError::InDoubt(e)) => {
                        log::error!("migration in doubt: {e}");
                        Some(EXIT_IN_DOUBT)
                    }
                    Err(e) => {
                        log::error!("migration to {url} failed; the guest keeps running here: {e}");
                        None
                    }
                };
                if let Some(status) = status {
                    // Let pollers of GET /migration see the final state before the socket goes.
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    *lock(&finished) = Some(status);
                    let _ = wake.write(1);
                }
            })
            .map_err(VmmError::io("spawning the migration thread"))?;
        Ok(())
    }

    /// Receives a migration in the background; the received VM replaces the (empty) controller.
    fn spawn_receive(&self, url: MigrationUrl, options: ReceiveOptions) -> Result<(), VmmError> {
        let controller = self.controller.clone();
        let progress = self.migration.clone();
        let wake = self.wake.clone();
        *lock(&progress) = MigrationProgress {
            state: MigrationPhase::Receiving,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        std::thread::Builder::new()
            .name("ferry_receive".into())
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::MigrationReceive);
                let result = receive(&url, options);
                let mut p = lock(&progress);
                p.total_ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(received) => {
                        *lock(&controller) = received;
                        p.state = MigrationPhase::Received;
                    }
                    Err(e) => {
                        log::error!("incoming migration failed: {e}");
                        p.state = MigrationPhase::Failed;
                        p.error = Some(e.to_string());
                    }
                }
                drop(p);
                let _ = wake.write(1);
            })
            .map_err(VmmError::io("spawning the receive thread"))?;
        Ok(())
    }

    fn migration_status(&self) -> MigrationStatus {
        let p = lock(&self.migration).clone();
        let state = match p.state {
            MigrationPhase::None => MigrationState::Idle,
            MigrationPhase::Active => MigrationState::Sending,
            MigrationPhase::Completed => MigrationState::Migrated,
            MigrationPhase::Failed => MigrationState::Failed,
            MigrationPhase::InDoubt => MigrationState::InDoubt,
            MigrationPhase::Receiving => MigrationState::Receiving,
            MigrationPhase::Received => MigrationState::Completed,
        };
        let finished = state.is_final() && state != MigrationState::Idle;
        MigrationStatus {
            state,
            round: p.round,
            bytes_sent: p.bytes_sent,
            dirty_rate_mib_s: p.dirty_rate_mib_s,
            bandwidth_mib_s: p.bandwidth_mib_s,
            expected_downtime_ms: p.expected_downtime_ms,
            total_ms: finished.then_some(p.total_ms),
            downtime_ms: (state == MigrationState::Migrated).then_some(p.downtime_ms),
            error: p.error,
        }
    }

    fn metrics_text(&self, c: &VmController) -> String {
        crate::metrics::prometheus_text(c, &lock(&self.migration))
    }
}

/// The protection an API body asked for, as the transport takes it.
fn security_options(
    tls: Option<&ferry_api::MigrationTls>,
    psk_file: Option<&str>,
    insecure: bool,
) -> SecurityOptions {
    SecurityOptions {
        tls: tls.map(|t| TlsFiles {
            cert: t.cert.clone().into(),
            key: t.key.clone().into(),
            ca: t.ca.clone().into(),
        }),
        psk_file: psk_file.map(Into::into),
        insecure,
    }
}
