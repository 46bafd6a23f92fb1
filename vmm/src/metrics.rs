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
