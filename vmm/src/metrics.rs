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
