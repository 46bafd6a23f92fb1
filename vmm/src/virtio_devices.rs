//! Attaching virtio-mmio devices (block, net) to a VM: a window on the MMIO bus, an ioeventfd per
//! queue, an irqfd per device, and a `virtio_mmio.device=` command-line entry.

use kvm_ioctls::VmFd;

use ferry_api::VmConfig;
use ferry_arch::GuestMemory;
use ferry_devices::bus::Bus;

use crate::error::VmmError;
use crate::event_loop::Subscriber;

/// The virtio devices of a VM.
#[derive(Default)]
pub struct VirtioDevices {
    entries: Vec<String>,
    subscribers: Vec<Subscriber>,
}

impl VirtioDevices {
    /// `virtio_mmio.device=` entries for the kernel command line.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.entries.clone()
    }

    /// Event-loop subscribers of the devices.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.subscribers.clone()
    }
}

/// Creates every configured virtio device.
pub fn attach_virtio_devices(
    config: &VmConfig,
    _vm: &VmFd,
    _memory: &GuestMemory,
    _mmio: &mut Bus,
) -> Result<VirtioDevices, VmmError> {
    if !config.drives.is_empty() || !config.nets.is_empty() {
        return Err(VmmError::Config(
            "virtio devices are not available in this build yet".into(),
        ));
    }
    Ok(VirtioDevices::default())
}
