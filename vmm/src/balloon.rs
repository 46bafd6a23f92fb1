//! The balloon's API operations (`/balloon`, `/balloon/statistics`) on the controller, with
//! Firecracker's rules: `PUT` before boot only; `PATCH` and statistics after boot only;
//! statistics cannot be switched on or off after boot; a target above guest memory is refused.
//! Every refusal is a 400, as on Firecracker.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use ferry_api::{Balloon, BalloonInfo, BalloonStats, BalloonStatsUpdate, BalloonUpdate};
use ferry_devices::virtio::balloon::config::{mib_to_pages, pages_to_mib};
use ferry_devices::virtio::balloon::Balloon as Device;

use crate::controller::{VmController, VmState};
use crate::virtio_devices::check_balloon_target;
use crate::VmmError;

fn lock(m: &std::sync::Mutex<Device>) -> std::sync::MutexGuard<'_, Device> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /balloon`: the configuration with the live target, and what the guest holds.
pub fn get(c: &VmController) -> Result<BalloonInfo, VmmError> {
    let config = c
        .config()
        .balloon
        .as_ref()
        .ok_or_else(|| VmmError::Config("no balloon device is configured".into()))?;
    let actual_mib = c
        .virtio()
        .and_then(|v| v.balloon())
        .map_or(0, |b| pages_to_mib(lock(b).actual_pages()));
    Ok(BalloonInfo {
        config: Balloon::from_config(config),
        actual_mib,
    })
}

/// `PUT /balloon` (before boot).
pub fn put(c: &mut VmController, balloon: &Balloon) -> Result<(), VmmError> {
    let config = c.config_mut("configuring the balloon after boot")?;
    check_balloon_target(balloon.amount_mib, config.machine.mem_size_mib)?;
    config.balloon = Some(balloon.to_config());
    Ok(())
}

/// `PATCH /balloon` (after boot): a new target, told to the driver at once.
pub fn patch(c: &mut VmController, update: &BalloonUpdate) -> Result<(), VmmError> {
    let mem_size_mib = c.config().machine.mem_size_mib;
    let (device, config) = c.running_balloon("changing the balloon before boot")?;
    check_balloon_target(update.amount_mib, mem_size_mib)?;
    lock(&device).set_target_pages(mib_to_pages(update.amount_mib));
    config.amount_mib = update.amount_mib;
    log::info!("balloon target now {} MiB", update.amount_mib);
    Ok(())
}

/// `GET /balloon/statistics` (after boot, statistics enabled).
pub fn stats(c: &VmController) -> Result<BalloonStats, VmmError> {
    if c.state() == VmState::Configured {
        return Err(VmmError::InvalidState {
            state: c.state().name(),
            action: "reading balloon statistics before boot",
        });
    }
    let device = c
        .virtio()
        .and_then(|v| v.balloon())
        .ok_or_else(|| VmmError::Config("no balloon device is configured".into()))?;
    let b = lock(device);
    let s = b
        .latest_stats()
        .map_err(|e| VmmError::Config(e.to_string()))?;
    Ok(BalloonStats {
        target_pages: b.target_pages(),
        actual_pages: b.actual_pages(),
        target_mib: pages_to_mib(b.target_pages()),
        actual_mib: pages_to_mib(b.actual_pages()),
        swap_in: s.swap_in,
        swap_out: s.swap_out,
        major_faults: s.major_faults,
        minor_faults: s.minor_faults,
        free_memory: s.free_memory,
        total_memory: s.total_memory,
        available_memory: s.available_memory,
        disk_caches: s.disk_caches,
        hugetlb_allocations: s.hugetlb_allocations,
        hugetlb_failures: s.hugetlb_failures,
        oom_kill: s.oom_kill,
        alloc_stall: s.alloc_stall,
        async_scan: s.async_scan,
        direct_scan: s.direct_scan,
        async_reclaim: s.async_reclaim,
        direct_reclaim: s.direct_reclaim,
    })
}

/// `PATCH /balloon/statistics` (after boot): a new polling interval.
pub fn patch_stats(c: &mut VmController, update: &BalloonStatsUpdate) -> Result<(), VmmError> {
    let (device, config) = c.running_balloon("changing balloon statistics before boot")?;
    lock(&device)
        .set_stats_interval(update.stats_polling_interval_s)
        .map_err(|e| VmmError::Config(e.to_string()))?;
    config.stats_polling_interval_s = update.stats_polling_interval_s;
    Ok(())
}

/// Appends the balloon's counters and sizes in Prometheus text format.
pub fn write_metrics(b: &Device, out: &mut String) {
    let m = b.metrics();
    for (name, value) in [
        ("inflate", &m.inflate_count),
        ("deflate", &m.deflate_count),
        ("stats_updates", &m.stats_updates_count),
        ("stats_update_fails", &m.stats_update_fails),
        ("released_bytes", &m.released_bytes),
        ("bad_pfns", &m.bad_pfns),
        ("release_fails", &m.release_fails),
        ("free_page_reports", &m.free_page_report_count),
        ("free_page_report_bytes", &m.free_page_report_freed),
        ("free_page_report_fails", &m.free_page_report_fails),
        ("activate_fails", &m.activate_fails),
    ] {
        let _ = writeln!(
            out,
            "ferry_balloon_{name}_total {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "ferry_balloon_target_pages {}", b.target_pages());
    let _ = writeln!(out, "ferry_balloon_actual_pages {}", b.actual_pages());
}
