//! Attaching virtio-mmio devices (block, net) to a VM: a window on the MMIO bus, an ioeventfd per
//! queue, an irqfd per device, and a `virtio_mmio.device=` command-line entry.

use kvm_ioctls::VmFd;

use ferry_api::VmConfig;
use ferry_arch::GuestMemory;
use ferry_devices::bus::Bus;

use crate::error::VmmError;
use crate::event_loop::Subscriber;

/// Saved state of every virtio device, in attachment order.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct VirtioSnapshot {
    pub devices: Vec<serde_json::Value>,
}

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

    /// Saves every device (VM paused).
    pub fn save(&self) -> VirtioSnapshot {
        VirtioSnapshot::default()
    }

    /// Restores every device (VM not yet running).
    pub fn restore(&self, snapshot: &VirtioSnapshot) -> Result<(), VmmError> {
        if snapshot.devices.len() != self.entries.len() {
            return Err(VmmError::Config(format!(
                "the saved state has {} virtio devices, this VM has {}",
                snapshot.devices.len(),
                self.entries.len()
            )));
        }
        Ok(())
    }

    /// Completes or hands over in-flight requests and flushes disks (VM paused, before save).
    pub fn quiesce(&self) -> Result<(), VmmError> {
        Ok(())
    }

    /// Re-reads a drive's size (and optionally switches its path), then tells the guest.
    pub fn resize_drive(&self, drive_id: &str, _path: Option<&str>) -> Result<(), VmmError> {
        Err(VmmError::Config(format!("no drive '{drive_id}'")))
    }

    /// Appends per-device counters in Prometheus text format.
    pub fn write_metrics(&self, _out: &mut String) {}

    /// Tells the network where the guest is now (after a migration).
    pub fn announce(&self) {}

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
