//! The registers of ferry's hardware-reduced ACPI platform: sleep control, sleep status and reset
//! (three consecutive I/O ports that the FADT points at), and the Generic Event Device's event
//! register after them (`ferry_arch::acpi`).
//!
//! The host presses the power button with [`AcpiPm::press_power_button`]: the event is latched in
//! the GED event register and the GED's interrupt raised; the guest's `_EVT` method reads the
//! register (which clears it) and notifies its power button driver. A guest that ignores the
//! button keeps running: what a press means is the guest's decision, as on real hardware.
//!
//! A guest powers off by writing `SLP_TYP(S5) << 2 | SLP_EN` to the sleep control register
//! (Linux's `poweroff` with ACPI), and may reset through the reset register. Both end the VM with
//! status 0, as a reset through the i8042 does. Other sleep states are not offered (only `\_S5_`
//! is in the DSDT), so any other value is logged and ignored.

use std::sync::Arc;

use ferry_arch::acpi::{
    GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_CONTROL_PORT, SLEEP_ENABLE, SLEEP_STATUS_PORT,
};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::legacy::ExitCode;
use crate::persist::{Persist, RestoreError};

/// Offsets from the first port (the sleep control register's).
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (SLEEP_STATUS_PORT - SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (RESET_PORT - SLEEP_CONTROL_PORT) as u64;
const GED_EVENTS: u64 = (GED_EVENT_PORT - SLEEP_CONTROL_PORT) as u64;
/// The first port and how many the device spans.
pub const ACPI_PM_PORT: u16 = SLEEP_CONTROL_PORT;
pub const ACPI_PM_PORT_LEN: u64 = GED_EVENTS + 1;
/// The `SLP_TYP` field of the sleep control register.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;

pub struct AcpiPm {
    exit: Arc<ExitCode>,
    /// Signals the GED's interrupt (an irqfd for `ferry_arch::layout::GED_IRQ`); `None` in unit
    /// tests of the sleep registers only.
    ged_irq: Option<EventFd>,
    /// Events the guest has not read yet (`GED_EVENT_*` bits).
    pending_events: u8,
}

/// What a snapshot or a migration carries: a button press the guest has not seen yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    pub pending_events: u8,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitCode>, ged_irq: Option<EventFd>) -> Self {
        Self {
            exit,
            ged_irq,
            pending_events: 0,
        }
    }

    /// Presses the power button: latches the event and interrupts the guest.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending_events |= GED_EVENT_POWER_BUTTON;
        self.raise()
    }

    fn raise(&self) -> std::io::Result<()> {
        match &self.ged_irq {
            Some(irq) => irq.write(1),
            None => Ok(()),
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            GED_EVENTS => std::mem::take(&mut self.pending_events),
            // Sleep status: never "woken" (WAK_STS clear).
            SLEEP_STATUS => 0,
            // The other registers are write-only.
            _ => 0,
        };
        if let Some(byte) = data.first_mut() {
            *byte = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL if value & SLEEP_ENABLE != 0 => {
                let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    log::info!("guest powered off through ACPI (S5)");
                    self.exit.request(0);
                } else {
                    log::warn!(
                        "guest asked for ACPI sleep type {sleep_type}, which is not offered"
                    );
                }
            }
            RESET if value == RESET_VALUE => {
                log::info!("guest reset through the ACPI reset register");
                self.exit.request(0);
            }
            _ => {}
        }
    }
}

impl Persist for AcpiPm {
    type State = AcpiPmState;

    fn save_state(&self) -> AcpiPmState {
        AcpiPmState {
            pending_events: self.pending_events,
        }
    }

    fn restore_state(&mut self, state: &AcpiPmState) -> Result<(), RestoreError> {
        if state.pending_events & !GED_EVENT_POWER_BUTTON != 0 {
            return Err(RestoreError::Invalid {
                device: "acpi-pm",
                reason: format!("unknown GED events {:#04x}", state.pending_events),
            });
        }
        self.pending_events = state.pending_events;
        // A press whose interrupt may not have reached the saved interrupt controller is
        // announced again; `_EVT` with nothing pending does nothing.
        if self.pending_events != 0 {
            self.raise().map_err(|source| RestoreError::Io {
                device: "acpi-pm",
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let exit = ExitCode::new().unwrap();
        let mut pm = AcpiPm::new(exit.clone(), None);
        // S5 without SLP_EN, and other sleep types, do nothing.
        pm.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]);
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLEEP_ENABLE]);
        pm.write(SLEEP_STATUS, &[0xff]);
        pm.write(RESET, &[0]);
        pm.write(SLEEP_CONTROL, &[]);
        assert_eq!(exit.get(), None);
        let mut status = [0xffu8];
        pm.read(SLEEP_STATUS, &mut status);
        assert_eq!(status, [0]);
        pm.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLEEP_ENABLE]);
        assert_eq!(exit.get(), Some(0));
    }

    #[test]
    fn reset_value_resets() {
        let exit = ExitCode::new().unwrap();
        let mut pm = AcpiPm::new(exit.clone(), None);
        pm.write(RESET, &[RESET_VALUE]);
        assert_eq!(exit.get(), Some(0));
    }

    #[test]
    fn power_button_latches_interrupts_and_clears_on_read() {
        let exit = ExitCode::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(exit.clone(), Some(irq.try_clone().unwrap()));
        let mut events = [0xffu8];
        pm.read(GED_EVENTS, &mut events);
        assert_eq!(events, [0], "nothing pending at power-on");
        pm.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        pm.read(GED_EVENTS, &mut events);
        assert_eq!(events, [GED_EVENT_POWER_BUTTON]);
        pm.read(GED_EVENTS, &mut events);
        assert_eq!(events, [0], "the read cleared the event");
        assert_eq!(exit.get(), None, "a press alone ends nothing");
        // Writes to the event register change nothing.
        pm.write(GED_EVENTS, &[0xff]);
        pm.read(GED_EVENTS, &mut events);
        assert_eq!(events, [0]);
    }

    #[test]
    fn a_pending_press_survives_save_and_restore() {
        let exit = ExitCode::new().unwrap();
        let mut pm = AcpiPm::new(exit.clone(), None);
        pm.press_power_button().unwrap();
        let saved = pm.save_state();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut restored = AcpiPm::new(exit, Some(irq.try_clone().unwrap()));
        restored.restore_state(&saved).unwrap();
        assert_eq!(irq.read().unwrap(), 1, "announced again after restore");
        let mut events = [0u8];
        restored.read(GED_EVENTS, &mut events);
        assert_eq!(events, [GED_EVENT_POWER_BUTTON]);
        assert!(restored
            .restore_state(&AcpiPmState {
                pending_events: 0x80
            })
            .is_err());
    }
}
