//! Counters the VMM keeps for the metrics endpoint: plain relaxed atomics, so hot paths pay one
//! uncontended add.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// vCPU exits by reason, summed over all vCPUs.
#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    pub io_in: Counter,
    pub io_out: Counter,
    pub mmio_read: Counter,
    pub mmio_write: Counter,
    /// Returns from KVM_RUN caused by a controller request.
    pub kicks: Counter,
    pub other: Counter,
}

/// The Prometheus text exposition of everything ferry counts.
pub fn prometheus_text(
    controller: &crate::controller::VmController,
    migration: &crate::migration::MigrationProgress,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = controller.state();
    let _ = writeln!(out, "# HELP ferry_vm_state 1 for the VM's current state.");
    let _ = writeln!(out, "# TYPE ferry_vm_state gauge");
    let _ = writeln!(out, "ferry_vm_state{{state=\"{}\"}} 1", state.name());
    if let Some(m) = controller.vcpu_metrics() {
        let _ = writeln!(
            out,
            "# HELP ferry_vcpu_exits_total vCPU exits by reason, all vCPUs."
        );
        let _ = writeln!(out, "# TYPE ferry_vcpu_exits_total counter");
        for (reason, counter) in [
            ("io_in", &m.io_in),
            ("io_out", &m.io_out),
            ("mmio_read", &m.mmio_read),
            ("mmio_write", &m.mmio_write),
            ("kick", &m.kicks),
            ("other", &m.other),
        ] {
            let _ = writeln!(
                out,
                "ferry_vcpu_exits_total{{reason=\"{reason}\"}} {}",
                counter.get()
            );
        }
    }
    if let Some(virtio) = controller.virtio() {
        virtio.write_metrics(&mut out);
    }
    let _ = writeln!(out, "# TYPE ferry_migration_bytes_sent_total counter");
    let _ = writeln!(
        out,
        "ferry_migration_bytes_sent_total {}",
        migration.bytes_sent
    );
    let _ = writeln!(out, "# TYPE ferry_migration_round gauge");
    let _ = writeln!(out, "ferry_migration_round {}", migration.round);
    let _ = writeln!(out, "# TYPE ferry_migration_dirty_rate_mib_s gauge");
    let _ = writeln!(
        out,
        "ferry_migration_dirty_rate_mib_s {}",
        migration.dirty_rate_mib_s
    );
    let _ = writeln!(out, "# TYPE ferry_migration_bandwidth_mib_s gauge");
    let _ = writeln!(
        out,
        "ferry_migration_bandwidth_mib_s {}",
        migration.bandwidth_mib_s
    );
    let _ = writeln!(out, "# TYPE ferry_migration_downtime_ms gauge");
    let _ = writeln!(out, "ferry_migration_downtime_ms {}", migration.downtime_ms);
    out
}

/// How often Firecracker writes its metrics line on its own (and so does ferry, once the guest
/// runs and a metrics path is configured).
pub const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// API requests that reached the VMM, counted in Firecracker's `get_api_requests`,
/// `put_api_requests` and `patch_api_requests` terms (`*_count` for every request, `*_fails` for
/// those answered with an error).
#[derive(Debug, Default)]
pub struct ApiCounters {
    counters: std::collections::BTreeMap<(&'static str, &'static str), Counter>,
}

impl ApiCounters {
    /// The (component, counter prefix) a request is counted under, if Firecracker counts it.
    fn slot(request: &ferry_api::ApiRequest) -> Option<(&'static str, &'static str)> {
        use ferry_api::ApiRequest as R;
        Some(match request {
            R::GetInstanceInfo => ("get_api_requests", "instance_info"),
            R::GetMachineConfig => ("get_api_requests", "machine_cfg"),
            R::PutMachineConfig(..) => ("put_api_requests", "machine_cfg"),
            R::PatchMachineConfig(_) => ("patch_api_requests", "machine_cfg"),
            R::PutBootSource(_) => ("put_api_requests", "boot_source"),
            R::PutDrive(_) => ("put_api_requests", "drive"),
            R::PatchDrive(_) => ("patch_api_requests", "drive"),
            R::PutNetworkInterface(_) => ("put_api_requests", "network"),
            R::PatchNetworkInterface(_) => ("patch_api_requests", "network"),
            R::Action(_) => ("put_api_requests", "actions"),
            R::PutLogger(_) => ("put_api_requests", "logger"),
            R::PutMetrics(_) => ("put_api_requests", "metrics"),
            R::PutBalloon(_) => ("put_api_requests", "balloon"),
            R::PatchBalloon(_) | R::PatchBalloonStats(_) => ("patch_api_requests", "balloon"),
            _ => return None,
        })
    }

    fn bump(&mut self, component: &'static str, name: &'static str) {
        self.counters.entry((component, name)).or_default().inc();
    }

    /// Counts `request` before it is carried out.
    pub fn requested(&mut self, request: &ferry_api::ApiRequest) {
        if let Some((component, prefix)) = Self::slot(request) {
            self.bump(component, count_name(prefix, false));
        }
    }

    /// Counts a failure of `request`.
    pub fn failed(&mut self, request: &ferry_api::ApiRequest) {
        if let Some((component, prefix)) = Self::slot(request) {
            self.bump(component, count_name(prefix, true));
        }
    }
}

/// `<prefix>_count` or `<prefix>_fails`, as static names.
fn count_name(prefix: &'static str, fails: bool) -> &'static str {
    match (prefix, fails) {
        ("instance_info", false) => "instance_info_count",
        ("machine_cfg", false) => "machine_cfg_count",
        ("machine_cfg", true) => "machine_cfg_fails",
        ("boot_source", false) => "boot_source_count",
        ("boot_source", true) => "boot_source_fails",
        ("drive", false) => "drive_count",
        ("drive", true) => "drive_fails",
        ("network", false) => "network_count",
        ("network", true) => "network_fails",
        ("actions", false) => "actions_count",
        ("actions", true) => "actions_fails",
        ("logger", false) => "logger_count",
        ("logger", true) => "logger_fails",
        ("metrics", false) => "metrics_count",
        ("metrics", true) => "metrics_fails",
        ("balloon", false) => "balloon_count",
        ("balloon", true) => "balloon_fails",
        (_, false) => "other_count",
        (_, true) => "other_fails",
    }
}

/// Process start-up figures Firecracker's jailer passes (`--start-time-us`,
/// `--start-time-cpu-us`, `--parent-cpu-time-us`), turned into `api_server` metrics when the API
/// starts serving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartupTimes {
    /// `process_startup_time_us`: monotonic now minus `--start-time-us`.
    pub startup_us: Option<u64>,
    /// `process_startup_time_cpu_us`: process CPU time minus `--start-time-cpu-us`, plus
    /// `--parent-cpu-time-us`.
    pub startup_cpu_us: Option<u64>,
}

impl StartupTimes {
    /// Measures now, against the times the jailer recorded.
    pub fn measure(
        start_us: Option<u64>,
        start_cpu_us: Option<u64>,
        parent_cpu_us: Option<u64>,
    ) -> Self {
        let clock_us = |clock: libc::clockid_t| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid timespec out-pointer.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
        };
        Self {
            startup_us: start_us.map(|s| clock_us(libc::CLOCK_MONOTONIC).saturating_sub(s)),
            startup_cpu_us: start_cpu_us.map(|s| {
                clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(s)
                    + parent_cpu_us.unwrap_or(0)
            }),
        }
    }
}

/// Metrics written as Firecracker writes them: one JSON object per line, per flush, with
/// `utc_timestamp_ms` and per-component objects. Counters report what happened since the
/// previous flush (Firecracker's `SharedIncMetric`); gauges report their value.
pub struct FirecrackerMetrics {
    sink: crate::sink::Sink,
    previous: std::collections::HashMap<String, u64>,
    last_flush: std::time::Instant,
    startup: StartupTimes,
    /// Top-level `"id"` of every line (`emit_id`).
    id: Option<String>,
    /// Top-level `"properties"` of every line.
    properties: Option<std::collections::BTreeMap<String, String>>,
}

impl FirecrackerMetrics {
    /// Opens `path` (file or FIFO; never blocks).
    pub fn open(path: &str) -> Result<Self, crate::VmmError> {
        Ok(Self {
            sink: crate::sink::Sink::open(path, "metrics")?,
            previous: Default::default(),
            last_flush: std::time::Instant::now(),
            startup: StartupTimes::default(),
            id: None,
            properties: None,
        })
    }

    /// Opens `config.metrics_path` with its `emit_id` (the instance id `id` on every line) and
    /// `properties`.
    pub fn open_config(
        config: &ferry_api::MetricsConfig,
        id: &str,
    ) -> Result<Self, crate::VmmError> {
        let mut metrics = Self::open(&config.metrics_path)?;
        metrics.id = config.emit_id.unwrap_or(false).then(|| id.to_string());
        metrics.properties = config.properties.clone();
        Ok(metrics)
    }

    /// The path metrics go to.
    pub fn path(&self) -> &str {
        self.sink.path()
    }

    /// Sets the start-up figures reported under `api_server`.
    pub fn set_startup(&mut self, startup: StartupTimes) {
        self.startup = startup;
    }

    /// Waits up to `timeout` for the lines written so far to reach the path.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        self.sink.drain(timeout)
    }

    /// Whether the periodic flush is due.
    pub fn due(&self) -> bool {
        self.last_flush.elapsed() >= FLUSH_PERIOD
    }

    /// Writes one metrics line.
    pub fn flush(&mut self, controller: &crate::controller::VmController, api: &ApiCounters) {
        let line = self.line(controller, api);
        self.sink.send(line.into_bytes());
        self.last_flush = std::time::Instant::now();
    }

    /// The counter's increase since the previous flush.
    fn delta(&mut self, key: String, value: u64) -> u64 {
        let before = self.previous.insert(key, value).unwrap_or(0);
        value.saturating_sub(before)
    }

    fn counters(
        &mut self,
        component: &str,
        values: &[(&'static str, u64)],
    ) -> serde_json::Map<String, serde_json::Value> {
        values
            .iter()
            .map(|(name, value)| {
                let delta = self.delta(format!("{component}.{name}"), *value);
                (name.to_string(), delta.into())
            })
            .collect()
    }

    /// One flush: the JSON object (without newline).
    pub fn line(
        &mut self,
        controller: &crate::controller::VmController,
        api: &ApiCounters,
    ) -> String {
        use serde_json::{json, Map, Value};
        let mut out = Map::new();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        out.insert("utc_timestamp_ms".into(), now_ms.into());
        if let Some(id) = &self.id {
            out.insert("id".into(), id.clone().into());
        }
        if let Some(properties) = &self.properties {
            out.insert("properties".into(), json!(properties));
        }
        out.insert(
            "api_server".into(),
            json!({
                "process_startup_time_us": self.startup.startup_us.unwrap_or(0),
                "process_startup_time_cpu_us": self.startup.startup_cpu_us.unwrap_or(0),
            }),
        );
        for component in ["get_api_requests", "put_api_requests", "patch_api_requests"] {
            let values: Vec<(&'static str, u64)> = api
                .counters
                .iter()
                .filter(|((c, _), _)| *c == component)
                .map(|((_, name), counter)| (*name, counter.get()))
                .collect();
            let object = self.counters(component, &values);
            out.insert(component.into(), Value::Object(object));
        }
        let mut block_total = [0u64; 5];
        let mut net_total = [0u64; 8];
        const BLOCK: [&str; 5] = [
            "read_bytes",
            "write_bytes",
            "flush_count",
            "execute_fails",
            "rate_limiter_throttled_events",
        ];
        const NET: [&str; 8] = [
            "rx_bytes_count",
            "rx_packets_count",
            "rx_fails",
            "rx_rate_limiter_throttled",
            "tx_bytes_count",
            "tx_packets_count",
            "tx_fails",
            "tx_rate_limiter_throttled",
        ];
        let devices = controller
            .virtio()
            .map(|v| v.device_metrics())
            .unwrap_or_default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for device in devices {
            match device {
                crate::virtio_devices::DeviceMetrics::Block(id, m) => {
                    let values = [
                        get(&m.read_bytes),
                        get(&m.write_bytes),
                        get(&m.flushes),
                        get(&m.errors),
                        get(&m.throttled),
                    ];
                    for (t, v) in block_total.iter_mut().zip(values) {
                        *t += v;
                    }
                    let named: Vec<_> = BLOCK.into_iter().zip(values).collect();
                    let key = format!("block_{id}");
                    let object = self.counters(&key, &named);
                    out.insert(key, Value::Object(object));
                }
                crate::virtio_devices::DeviceMetrics::Net(id, m) => {
                    let values = [
                        get(&m.rx_bytes),
                        get(&m.rx_frames),
                        get(&m.rx_dropped),
                        get(&m.rx_throttled),
                        get(&m.tx_bytes),
                        get(&m.tx_frames),
                        get(&m.tx_dropped),
                        get(&m.tx_throttled),
                    ];
                    for (t, v) in net_total.iter_mut().zip(values) {
                        *t += v;
                    }
                    let named: Vec<_> = NET.into_iter().zip(values).collect();
                    let key = format!("net_{id}");
                    let object = self.counters(&key, &named);
                    out.insert(key, Value::Object(object));
                }
                // Firecracker's `entropy` object (one device at most, so no per-device key).
                crate::virtio_devices::DeviceMetrics::Rng(m) => {
                    let named = [
                        ("entropy_event_count", get(&m.requests)),
                        ("entropy_bytes", get(&m.bytes)),
                        ("entropy_rate_limiter_throttled", get(&m.throttled)),
                        ("host_rng_fails", get(&m.host_fails)),
                        ("entropy_event_fails", get(&m.bad_buffers)),
                    ];
                    let object = self.counters("entropy", &named);
                    out.insert("entropy".into(), Value::Object(object));
                }
                // Firecracker's `vsock` object, with its names ("rx" towards the guest).
                crate::virtio_devices::DeviceMetrics::Vsock(m) => {
                    let named = [
                        ("rx_packets_count", get(&m.rx_packets)),
                        ("rx_bytes_count", get(&m.rx_bytes)),
                        ("tx_packets_count", get(&m.tx_packets)),
                        ("tx_bytes_count", get(&m.tx_bytes)),
                        ("conns_added", get(&m.conns_added)),
                        ("conns_removed", get(&m.conns_removed)),
                        ("conns_killed", get(&m.conns_killed)),
                        ("tx_write_fails", get(&m.tx_write_fails)),
                        ("rx_read_fails", get(&m.rx_read_fails)),
                        ("rx_queue_event_count", get(&m.rx_queue_events)),
                        ("tx_queue_event_count", get(&m.tx_queue_events)),
                        // ferry's own: no Firecracker counter means the same.
                        ("conns_refused", get(&m.conns_refused)),
                        ("bad_packets", get(&m.bad_packets)),
                        ("reset_events", get(&m.reset_events)),
                    ];
                    let object = self.counters("vsock", &named);
                    out.insert("vsock".into(), Value::Object(object));
                }
                // Firecracker's `balloon` object.
                crate::virtio_devices::DeviceMetrics::Balloon(m) => {
                    let named = [
                        ("activate_fails", get(&m.activate_fails)),
                        ("inflate_count", get(&m.inflate_count)),
                        ("deflate_count", get(&m.deflate_count)),
                        ("stats_updates_count", get(&m.stats_updates_count)),
                        ("stats_update_fails", get(&m.stats_update_fails)),
                        ("free_page_report_count", get(&m.free_page_report_count)),
                        ("free_page_report_freed", get(&m.free_page_report_freed)),
                        ("free_page_report_fails", get(&m.free_page_report_fails)),
                    ];
                    let object = self.counters("balloon", &named);
                    out.insert("balloon".into(), Value::Object(object));
                }
            }
        }
        let named: Vec<_> = BLOCK.into_iter().zip(block_total).collect();
        let object = self.counters("block", &named);
        out.insert("block".into(), Value::Object(object));
        let named: Vec<_> = NET.into_iter().zip(net_total).collect();
        let object = self.counters("net", &named);
        out.insert("net".into(), Value::Object(object));
        let vcpu = controller.vcpu_metrics().map_or([0; 4], |m| {
            [
                m.io_in.get(),
                m.io_out.get(),
                m.mmio_read.get(),
                m.mmio_write.get(),
            ]
        });
        let vcpu: Vec<_> = [
            "exit_io_in",
            "exit_io_out",
            "exit_mmio_read",
            "exit_mmio_write",
        ]
        .into_iter()
        .zip(vcpu)
        .collect();
        let object = self.counters("vcpu", &vcpu);
        out.insert("vcpu".into(), Value::Object(object));
        // A panic aborts ferry before anything could be written: while it writes, it is 0.
        out.insert("vmm".into(), json!({"panic_count": 0}));
        let logger = [
            ("missed_metrics_count", self.sink.missed()),
            ("metrics_fails", self.sink.failed()),
            ("missed_log_count", crate::logger::missed_lines()),
            ("log_fails", crate::logger::failed_lines()),
        ];
        let object = self.counters("logger", &logger);
        out.insert("logger".into(), Value::Object(object));
        Value::Object(out).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_lines_report_counter_increases_since_the_last_flush() {
        let path = std::env::temp_dir().join(format!("ferry-fcm-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut metrics = FirecrackerMetrics::open(path.to_str().unwrap()).unwrap();
        metrics.set_startup(StartupTimes {
            startup_us: Some(1234),
            startup_cpu_us: None,
        });
        let controller = crate::controller::VmController::new(
            ferry_api::VmConfig::default(),
            crate::builder::BuildOptions::default(),
        );
        let mut api = ApiCounters::default();
        let start = ferry_api::ApiRequest::Action(ferry_api::ActionType::InstanceStart);
        api.requested(&start);
        api.failed(&start);
        api.requested(&ferry_api::ApiRequest::GetInstanceInfo);
        let first: serde_json::Value =
            serde_json::from_str(&metrics.line(&controller, &api)).unwrap();
        assert!(first["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert_eq!(first["put_api_requests"]["actions_count"], 1);
        assert_eq!(first["put_api_requests"]["actions_fails"], 1);
        assert_eq!(first["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(first["api_server"]["process_startup_time_us"], 1234);
        assert_eq!(first["vcpu"]["exit_io_out"], 0);
        assert_eq!(first["block"]["read_bytes"], 0);
        api.requested(&start);
        let second: serde_json::Value =
            serde_json::from_str(&metrics.line(&controller, &api)).unwrap();
        assert_eq!(second["put_api_requests"]["actions_count"], 1);
        assert_eq!(second["put_api_requests"]["actions_fails"], 0);
        assert_eq!(second["get_api_requests"]["instance_info_count"], 0);
        // Values, not counters, repeat.
        assert_eq!(second["api_server"]["process_startup_time_us"], 1234);
        assert!(!metrics.due());
        assert!(second.get("id").is_none() && second.get("properties").is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn emit_id_and_properties_are_top_level_fields_of_every_line() {
        let path = std::env::temp_dir().join(format!("ferry-fcm-id-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let config = ferry_api::MetricsConfig {
            metrics_path: path.to_str().unwrap().into(),
            emit_id: Some(true),
            properties: Some([("pool".to_string(), "blue".to_string())].into()),
        };
        let mut metrics = FirecrackerMetrics::open_config(&config, "vm-7").unwrap();
        let controller = crate::controller::VmController::new(
            ferry_api::VmConfig::default(),
            crate::builder::BuildOptions::default(),
        );
        for _ in 0..2 {
            let line: serde_json::Value =
                serde_json::from_str(&metrics.line(&controller, &ApiCounters::default())).unwrap();
            assert_eq!(line["id"], "vm-7");
            assert_eq!(line["properties"], serde_json::json!({"pool": "blue"}));
        }
        // emit_id false: no id, properties still there.
        let config = ferry_api::MetricsConfig {
            emit_id: Some(false),
            ..config
        };
        let mut metrics = FirecrackerMetrics::open_config(&config, "vm-7").unwrap();
        let line: serde_json::Value =
            serde_json::from_str(&metrics.line(&controller, &ApiCounters::default())).unwrap();
        assert!(line.get("id").is_none());
        assert_eq!(line["properties"]["pool"], "blue");
        let _ = std::fs::remove_file(&path);
    }
}
