//! The small helper threads: the halt watch (`ferry_haltwatch`), the auto-converge throttle
//! of a migration (`ferry_throttle`) and the log/metrics writers (`ferry_log`,
//! `ferry_metrics`). None handles guest data; each gets only what its loop does.

use super::common;
use super::rules::{any, Allow};

/// `ferry_haltwatch`: samples each vCPU's halt state every 500 ms and ends the VM (an eventfd
/// write) when every vCPU is halted for good.
pub fn halt_watch() -> Vec<Allow> {
    common::runtime()
}

/// `ferry_throttle`: pauses and resumes the vCPUs on a duty cycle (channel requests and kick
/// signals, both in the runtime list) while a migration converges.
pub fn throttle() -> Vec<Allow> {
    let mut v = common::runtime();
    v.push(any(libc::SYS_read, "eventfd reads while pausing"));
    v
}

/// `ferry_log` and `ferry_metrics`: write queued lines to a file or FIFO.
pub fn sink() -> Vec<Allow> {
    let mut v = common::runtime();
    v.extend([
        any(libc::SYS_ppoll, "waiting for a FIFO reader to drain"),
        any(libc::SYS_poll, "waiting for a FIFO reader to drain"),
    ]);
    v
}
