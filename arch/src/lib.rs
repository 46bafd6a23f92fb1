//! x86_64 architecture support for ferry.

/// Guest memory with a dirty bitmap on every region (see `ferry_devices` and live migration).
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
