//! VM-wide KVM state outside the vCPUs: the in-kernel PIC pair and IOAPIC, the PIT, and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
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
    /// `clock.realtime` is the host's wall clock at the save (the host's KVM stamps it).
    #[serde(default)]
    pub clock_has_realtime: bool,
    /// On restore, advance kvmclock by the wall-clock time since the save (Firecracker's
    /// `clock_realtime`); chosen by the loader, never saved.
    #[serde(skip)]
    pub advance_clock_to_realtime: bool,
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
        let clock_has_realtime = clock.flags & KVM_CLOCK_REALTIME != 0;
        // Only the clock value (and its wall-clock stamp) travels; the other flags describe the
        // source host's TSC.
        clock.flags = 0;
        Ok(Self {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm
                .get_pit2()
                .map_err(|e| VmmError::Kvm("KVM_GET_PIT2", e))?,
            clock,
            clock_has_realtime,
            advance_clock_to_realtime: false,
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
        let mut clock = self.clock;
        if self.advance_clock_to_realtime {
            if !self.clock_has_realtime {
                return Err(VmmError::Config(
                    "clock_realtime: the saved clock has no wall-clock stamp (the saving host's \
                     KVM gave none: its TSC is not stable)"
                        .into(),
                ));
            }
            // KVM adds the wall-clock time elapsed since `realtime` to the clock.
            clock.flags = KVM_CLOCK_REALTIME;
        }
        vm.set_clock(&clock)
            .map_err(|e| VmmError::Kvm("KVM_SET_CLOCK", e))?;
        Ok(())
    }
}
