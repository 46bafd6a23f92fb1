//! Pure logic of the ferry probe guest.
//!
//! The probe (`src/main.rs`, built for `x86_64-unknown-none`) is a tiny kernel that ferry, QEMU
//! and Firecracker boot to exercise their devices; it reports over the serial port. Everything
//! that does not touch hardware lives here, is `no_std`, and is unit-tested on the host:
//! command-line parsing, boot-information parsing (PVH `hvm_start_info`, Linux `boot_params`),
//! MP-table and ACPI MADT parsing, CRC-32, the block test pattern, entropy checks, packet building/parsing,
//! virtqueue layout math and report-line formatting.
//!
//! The constants below are the probe's guest-physical contract with host-side tests.
#![no_std]

pub mod balloon;
pub mod bootinfo;
pub mod cmdline;
pub mod crc32;
pub mod entropy;
pub mod fmt;
pub mod net;
pub mod pattern;
pub mod serial_text;
pub mod tables;
pub mod virtq;
pub mod vsock;

/// Guest-physical address of the region the `dirty` test writes: 64 MiB, above the probe image
/// (loaded at 1 MiB, well under 8 MiB) and anything a VMM places in low memory. The region is
/// `probe.dirty_mib` MiB long and must lie in RAM.
///
/// Every 4 KiB page of the region gets, at its start, a 16-byte stamp: the page index within the
/// region (u64, little endian) and the pass number in which it was written (u64, starting at 1).
pub const DIRTY_REGION_GPA: u64 = 64 << 20;

/// Guest-physical address of the `dirty` test's status page, the 4 KiB page just below the
/// region. Layout (all u64, little endian):
/// - `+0`: the number of completed passes over the whole region (0 while the first is running);
/// - `+8`: [`DIRTY_MAGIC`] once the test runs;
/// - `+16`: the region size in MiB;
/// - `+24`: the pacing rate in MiB/s (0 = unpaced).
pub const DIRTY_COUNTER_GPA: u64 = DIRTY_REGION_GPA - 0x1000;

/// Value at `DIRTY_COUNTER_GPA + 8` while the dirty test runs ("DIRTYPRB" in little endian).
pub const DIRTY_MAGIC: u64 = u64::from_le_bytes(*b"DIRTYPRB");

/// Guest-physical address of the `blk` test's round status page, the 4 KiB page below the dirty
/// status page, written when `probe.blk_rounds` is not 1. Layout (all u64, little endian):
/// - `+0`: rounds whose read-back verified (round `r`, from 1, wrote seed `SEED + r - 1`); while
///   it reads `C`, every written sector holds the pattern of seed `SEED + C - 1` (none when `C` is
///   0: the disk's previous contents) or, where round `C + 1` got to it, `SEED + C`;
/// - `+8`: [`BLK_ROUNDS_MAGIC`] once the first round started;
/// - `+16`: `SEED`.
///
/// Host tests pause the VM, read this page from a snapshot and check the disk against it.
pub const BLK_STATUS_GPA: u64 = DIRTY_COUNTER_GPA - 0x1000;

/// Value at `BLK_STATUS_GPA + 8` while blk rounds run ("BLKROUND" in little endian).
pub const BLK_ROUNDS_MAGIC: u64 = u64::from_le_bytes(*b"BLKROUND");

/// Guest-physical page where the AP start-up trampoline is copied (SIPI vector 0x03). It is
/// below 1 MiB as real mode requires; boot information there has been copied out by then.
pub const AP_TRAMPOLINE_GPA: u64 = 0x3000;

/// I/O port the probe writes its exit status to (ferry's exit device; QEMU's
/// `isa-debug-exit,iobase=0xf4`).
pub const EXIT_PORT: u16 = 0xf4;

/// I/O port of the serial console (COM1, 8250/16550).
pub const SERIAL_PORT: u16 = 0x3f8;

/// The probe identity-maps guest-physical memory below this address (2 MiB pages, static
/// tables in the image); memory above it is never touched.
pub const IDENTITY_MAP_LIMIT: u64 = 8 << 30;

/// TSC frequency (kHz) assumed when neither `probe.tsc_khz=` nor CPUID reports it.
pub const DEFAULT_TSC_KHZ: u64 = 2_000_000;
