//! virtio devices on the MMIO transport.
