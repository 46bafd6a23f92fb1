//! x86_64 architecture support for ferry: the guest memory layout, boot protocol structures
//! (zero page, PVH start info, MP table), CPUID and the initial vCPU register state.
//!
//! Nothing here touches devices or threads; the VMM calls these pieces in order while building a VM.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

/// Guest memory with a dirty bitmap on every region: writes made by devices through vm-memory are
/// recorded, and live migration ORs them with KVM's own dirty log.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
