//! The ferry probe guest kernel (see README.md for tests, command line and output formats).
//! Built only for `x86_64-unknown-none` with the `kernel` feature; on the host this file
//! compiles to an empty program.
//!
//! Measured wall time of whole runs on the PVM build machine (2026-11-25), process start to exit:
//! - ferry (debug build, 256 MiB, best of 3): `boot` 46 ms (PVH) / 45 ms (`--boot linux`),
//!   `info` (includes the 10 ms TSC calibration) 54 ms, `smp` with 4 CPUs 59 ms, `serial`
//!   (4 KiB, one port exit per byte) 147 ms.
//! - QEMU 7.2 `-M microvm -accel kvm`, 256 MiB (QEMU's own start-up is ~70 ms of each):
//!   `boot` 80–110 ms, `serial` ~170 ms, `smp` (4 CPUs) ~110 ms, `blk` 256 KiB read ~130 ms,
//!   `blk` 4 MiB write + flush + read + verify ~270 ms, `net` 5 pings to slirp with
//!   `net_linger_ms=0` ~240 ms.
//! - `dirty`: the paced rate is within 0.1% of the request (64 MiB/s asked, 63.96 measured);
//!   unpaced, ring 3 stamps ~67 M pages/s.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
fn main() {}
