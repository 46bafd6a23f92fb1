//! VM-wide KVM state outside the vCPUs: the in-kernel PIC pair and IOAPIC, the PIT, and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::error::VmmError;

/// Interrupt controllers, timer and clock of a VM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmKvmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| VmmError::Kvm("KVM_GET_IRQCHIP", e))?;
    Ok(chip)
}

impl VmKvmState {
    /// Reads the state; vCPUs must be paused.
    pub fn save(vm: &VmFd) -> Result<Self, VmmError> {
        let mut clock = vm
            .get_clock()
            .map_err(|e| VmmError::Kvm("KVM_GET_CLOCK", e))?;
        // Only the clock value travels; flags describe the source host's TSC.
        clock.flags = 0;
        Ok(Self {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm
                .get_pit2()
                .map_err(|e| VmmError::Kvm("KVM_GET_PIT2", e))?,
            clock,
        })
    }

    /// Applies the state before vCPUs run.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmmError> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip)
                .map_err(|e| VmmError::Kvm("KVM_SET_IRQCHIP", e))?;
        }
        vm.set_pit2(&self.pit)
            .map_err(|e| VmmError::Kvm("KVM_SET_PIT2", e))?;
        vm.set_clock(&self.clock)
            .map_err(|e| VmmError::Kvm("KVM_SET_CLOCK", e))?;
        Ok(())
    }
}
