//! The complete saved state of a VM except guest memory: configuration, vCPUs, KVM's VM-wide state
//! and every device. Migration streams it at switchover; snapshots write it to a file. Both use
//! [`crate::controller::VmController::save_snapshot`] and
//! [`crate::controller::VmController::restore`], so there is one save/restore path.

use serde::{Deserialize, Serialize};

use ferry_api::VmConfig;
use ferry_devices::legacy::SerialSnapshot;

use crate::legacy::LegacySnapshot;
use crate::vcpu::VcpuState;
use crate::virtio_devices::VirtioSnapshot;
use crate::vm_state::VmKvmState;

/// Bumped whenever a field changes meaning; a restore refuses other versions.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub version: u32,
    pub config: VmConfig,
    pub vcpus: Vec<VcpuState>,
    pub kvm: VmKvmState,
    pub serial: SerialSnapshot,
    /// The keyboard controller and the ACPI power button (absent in snapshots from before they
    /// were saved).
    #[serde(default)]
    pub legacy: LegacySnapshot,
    pub virtio: VirtioSnapshot,
}
