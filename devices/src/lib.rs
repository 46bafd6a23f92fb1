//! ferry's emulated devices.
//!
//! * [`bus`]: the port-I/O and MMIO buses that route vCPU exits to devices.
//! * [`legacy`]: the 8250 UART, the i8042 reset controller and the exit-code device.
//! * [`virtio`]: the virtio-mmio transport and the virtio devices (block, net) with their backends.
//! * [`rate_limiter`]: token buckets (bandwidth, ops) that throttle virtio devices.
//! * [`persist`]: the save/restore seam every device implements; migration, snapshots and the API
//!   all go through it.

pub mod bus;
pub mod legacy;
pub mod net;
pub mod persist;
pub mod rate_limiter;
pub mod storage;
pub mod thread_hook;
pub mod virtio;

/// Guest memory as every device sees it: mmap-backed regions with a dirty bitmap, so that writes a
/// device makes into guest memory are visible to live migration.
pub use ferry_arch::GuestMemory;
