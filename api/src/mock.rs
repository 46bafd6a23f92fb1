//! An in-memory [`ApiHandler`] that behaves like a ferry VMM without a VM: it keeps the
//! configuration, follows the instance state machine (pre-boot-only operations, InstanceStart
//! once, pause/resume only while started) and simulates a migration.
//!
//! It serves the API tests, the OpenAPI conformance run (`examples/mock_server.rs`) and, for the
//! VMM, as an executable statement of the semantics the real handler must have.

use std::sync::Mutex;

use crate::config::VmConfig;
use crate::handler::{ApiHandler, ApiResponse};
use crate::migration::{MigrationState, MigrationStatus};
use crate::models::{
    ActionType, Drive, FullVmConfiguration, InstanceInfo, InstanceState, LoggerConfig,
    MetricsConfig, NetworkInterface, VmState,
};
use crate::request::ApiRequest;

/// `GET /migration` polls before a simulated migration ends.
const MIGRATION_POLLS: u32 = 3;

#[derive(Default)]
struct State {
    config: VmConfig,
    drives: Vec<Drive>,
    nets: Vec<NetworkInterface>,
    started: bool,
    paused: bool,
    logger: Option<LoggerConfig>,
    metrics: Option<MetricsConfig>,
    migration: MigrationStatus,
    /// Destination of the running simulated migration.
    migration_target: String,
    handled: u64,
}

/// The mock VMM. Migrations to a URL containing "fail" fail, "doubt" end in doubt.
#[derive(Default)]
pub struct MockVmm {
    state: Mutex<State>,
}

impl MockVmm {
    pub fn new() -> Self {
        Self::default()
    }
}

fn pre_boot(s: &State, what: &str) -> Result<(), ApiResponse> {
    if s.started {
        return Err(ApiResponse::bad_request(format!(
            "{what} is only possible before the guest starts; it is running"
        )));
    }
    Ok(())
}

fn post_boot(s: &State, what: &str) -> Result<(), ApiResponse> {
    if !s.started {
        return Err(ApiResponse::bad_request(format!(
            "{what} is only possible once the guest has started"
        )));
    }
    Ok(())
}

fn instance_state(s: &State) -> InstanceState {
    match (s.started, s.paused) {
        (false, _) => InstanceState::NotStarted,
        (true, false) => InstanceState::Running,
        (true, true) => InstanceState::Paused,
    }
}

fn advance_migration(s: &mut State) {
    if s.migration.state != MigrationState::Sending {
        return;
    }
    s.migration.round += 1;
    s.migration.bytes_sent += 64 << 20;
    if s.migration.round < MIGRATION_POLLS {
        return;
    }
    if s.migration_target.contains("fail") {
        s.migration.state = MigrationState::Failed;
        s.migration.error = Some("destination refused the stream".into());
    } else if s.migration_target.contains("doubt") {
        s.migration.state = MigrationState::InDoubt;
        s.migration.error = Some("connection lost after commit".into());
        s.paused = true;
    } else {
        s.migration.state = MigrationState::Migrated;
        s.migration.total_ms = Some(120);
        s.migration.downtime_ms = Some(4);
        s.paused = true;
    }
}

fn handle(s: &mut State, request: ApiRequest) -> Result<ApiResponse, ApiResponse> {
    use ApiRequest as R;
    s.handled += 1;
    Ok(match request {
        R::GetInstanceInfo => ApiResponse::json(&InstanceInfo::new("mock", instance_state(s))),
        R::GetMachineConfig => ApiResponse::json(&s.config.machine),
        R::PutMachineConfig(machine, template) => {
            pre_boot(s, "machine-config")?;
            s.config.put_machine(machine, template);
            ApiResponse::NoContent
        }
        R::PatchMachineConfig(update) => {
            pre_boot(s, "machine-config")?;
            s.config
                .patch_machine(&update)
                .map_err(ApiResponse::bad_request)?;
            ApiResponse::NoContent
        }
        R::PutBootSource(boot) => {
            pre_boot(s, "boot-source")?;
            s.config.boot = Some(boot);
            ApiResponse::NoContent
        }
        R::PutDrive(drive) => {
            pre_boot(s, "adding a drive")?;
            s.config.put_drive(drive.to_config()).map_err(ApiResponse::bad_request)?;
            s.drives.retain(|d| d.drive_id != drive.drive_id);
            s.drives.push(drive);
            s.config.drives = s.drives.iter().map(Drive::to_config).collect();
            ApiResponse::NoContent
        }
        R::PatchDrive(patch) => {
            post_boot(s, "updating a drive")?;
            let drive = s
                .drives
                .iter_mut()
                .find(|d| d.drive_id == patch.drive_id)
                .ok_or_else(|| ApiResponse::bad_request(format!("no drive {}", patch.drive_id)))?;
            if let Some(path) = patch.path_on_host {
                drive.path_on_host = path;
            }
            if let Some(limiter) = &patch.rate_limiter {
                drive.rate_limiter =
                    crate::RateLimiter::patched(drive.rate_limiter.as_ref(), limiter);
            }
            s.config.drives = s.drives.iter().map(Drive::to_config).collect();
            ApiResponse::NoContent
        }
        R::PutNetworkInterface(iface) => {
            pre_boot(s, "adding a network interface")?;
            s.nets.retain(|n| n.iface_id != iface.iface_id);
            s.nets.push(iface);
            ApiResponse::NoContent
        }
        R::PatchNetworkInterface(patch) => {
            post_boot(s, "updating a network interface")?;
            let iface = s
                .nets
                .iter_mut()
                .find(|n| n.iface_id == patch.iface_id)
                .ok_or_else(|| ApiResponse::bad_request(format!("no network interface {}", patch.iface_id)))?;
            if let Some(rx) = &patch.rx_rate_limiter {
                iface.rx_rate_limiter =
                    crate::RateLimiter::patched(iface.rx_rate_limiter.as_ref(), rx);
            }
            if let Some(tx) = &patch.tx_rate_limiter {
                iface.tx_rate_limiter =
                    crate::RateLimiter::patched(iface.tx_rate_limiter.as_ref(), tx);
            }
            ApiResponse::NoContent
        }
        R::PutVsock(vsock) => {
            pre_boot(s, "adding a vsock device")?;
            s.config.vsock = Some(vsock.to_config());
            ApiResponse::NoContent
        }
        R::PutEntropy(entropy) => {
            pre_boot(s, "adding an entropy device")?;
            s.config.entropy = Some(entropy.to_config());
            ApiResponse::NoContent
        }
        R::GetBalloon => {
            let config = s
                .config
                .balloon
                .as_ref()
                .ok_or_else(|| ApiResponse::bad_request("no balloon device is configured"))?;
            ApiResponse::json(&crate::BalloonInfo {
                config: crate::Balloon::from_config(config),
                actual_mib: 0,
            })
        }
        R::PutBalloon(balloon) => {
            pre_boot(s, "configuring the balloon")?;
            if u64::from(balloon.amount_mib) > s.config.machine.mem_size_mib {
                return Err(ApiResponse::bad_request("balloon target larger than guest memory"));
            }
            s.config.balloon = Some(balloon.to_config());
            ApiResponse::NoContent
        }
        R::PatchBalloon(update) => {
            post_boot(s, "changing the balloon")?;
            let mem = s.config.machine.mem_size_mib;
            let balloon = s
                .config
                .balloon
                .as_mut()
                .ok_or_else(|| ApiResponse::bad_request("no balloon device is configured"))?;
            if u64::from(update.amount_mib) > mem {
                return Err(ApiResponse::bad_request("balloon target larger than guest memory"));
            }
            balloon.amount_mib = update.amount_mib;
            ApiResponse::NoContent
        }
        R::GetBalloonStats => {
            post_boot(s, "reading balloon statistics")?;
            let balloon = s
                .config
                .balloon
                .as_ref()
                .filter(|b| b.stats_polling_interval_s > 0)
                .ok_or_else(|| ApiResponse::bad_request("balloon statistics are not enabled"))?;
            let target_pages = balloon.amount_mib.saturating_mul(256);
            ApiResponse::json(&crate::BalloonStats {
                target_pages,
                target_mib: balloon.amount_mib,
                ..Default::default()
            })
        }
        R::PatchBalloonStats(update) => {
            post_boot(s, "changing balloon statistics")?;
            let balloon = s
                .config
                .balloon
                .as_mut()
                .ok_or_else(|| ApiResponse::bad_request("no balloon device is configured"))?;
            let (old, new) = (balloon.stats_polling_interval_s, update.stats_polling_interval_s);
            if old != new && (old == 0 || new == 0) {
                return Err(ApiResponse::bad_request(
                    "statistics cannot be enabled or disabled after boot",
                ));
            }
            balloon.stats_polling_interval_s = new;
            ApiResponse::NoContent
        }
        R::Action(ActionType::InstanceStart) => {
            pre_boot(s, "InstanceStart")?;
            if s.config.boot.is_none() {
                return Err(ApiResponse::bad_request("no boot source: PUT /boot-source first"));
            }
            s.started = true;
            ApiResponse::NoContent
        }
        R::Action(ActionType::SendCtrlAltDel) => {
            post_boot(s, "SendCtrlAltDel")?;
            ApiResponse::NoContent
        }
        R::Action(ActionType::PowerButton) => {
            post_boot(s, "PowerButton")?;
            if !s.config.machine.acpi {
                return Err(ApiResponse::bad_request(
                    "this guest has no ACPI power button (started with ACPI off)",
                ));
            }
            ApiResponse::NoContent
        }
        R::Action(ActionType::PowerOff) => {
            post_boot(s, "PowerOff")?;
            ApiResponse::NoContent
        }
        R::Action(ActionType::FlushMetrics) => {
            if s.metrics.is_none() {
                return Err(ApiResponse::bad_request("no metrics file: PUT /metrics first"));
            }
            ApiResponse::NoContent
        }
        R::PatchVm(state) => {
            post_boot(s, "pausing or resuming")?;
            s.paused = state == VmState::Paused;
            ApiResponse::NoContent
        }
        R::GetVmConfig => {
            let mut full = FullVmConfiguration::from_config(&s.config);
            full.drives = s.drives.clone();
            full.network_interfaces = s.nets.clone();
            full.logger = s.logger.clone();
            full.metrics = s.metrics.clone();
            ApiResponse::json(&full)
        }
        R::SnapshotCreate(_) => {
            if instance_state(s) != InstanceState::Paused {
                return Err(ApiResponse::bad_request("pause the guest before creating a snapshot"));
            }
            ApiResponse::NoContent
        }
        R::SnapshotLoad(load) => {
            pre_boot(s, "loading a snapshot")?;
            s.started = true;
            s.paused = !load.resume_vm;
            ApiResponse::NoContent
        }
        R::PutLogger(logger) => {
            s.logger = Some(logger);
            ApiResponse::NoContent
        }
        R::PutCpuConfig(template) => {
            pre_boot(s, "setting a CPU template")?;
            s.config.set_custom_cpu_template(template);
            ApiResponse::NoContent
        }
        R::PutMetrics(metrics) => {
            s.metrics = Some(metrics);
            ApiResponse::NoContent
        }
        R::MigrationSend(send) => {
            if instance_state(s) != InstanceState::Running || s.migration.state == MigrationState::Sending {
                return Err(ApiResponse::bad_request("only a running guest that is not migrating can be migrated"));
            }
            s.migration = MigrationStatus { state: MigrationState::Sending, ..Default::default() };
            s.migration_target = send.destination_url;
            ApiResponse::NoContent
        }
        R::MigrationReceive(_) => {
            pre_boot(s, "receiving a migration")?;
            s.migration = MigrationStatus { state: MigrationState::Receiving, ..Default::default() };
            ApiResponse::NoContent
        }
        R::GetMigration => {
            advance_migration(s);
            ApiResponse::json(&s.migration)
        }
        R::GetMetrics => ApiResponse::Text(format!(
            "# HELP ferry_api_requests_total API requests handled.\n# TYPE ferry_api_requests_total counter\nferry_api_requests_total {}\n",
            s.handled
        )),
    })
}

impl ApiHandler for MockVmm {
    fn handle(&self, request: ApiRequest) -> ApiResponse {
        match self.state.lock() {
            Ok(mut state) => handle(&mut state, request).unwrap_or_else(|e| e),
            Err(_) => ApiResponse::error(500, "mock state poisoned"),
        }
    }
}
