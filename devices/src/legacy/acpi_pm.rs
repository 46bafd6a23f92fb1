//! The registers of ferry's hardware-reduced ACPI platform: sleep control, sleep status and reset,
//! three consecutive I/O ports that the FADT points at (`ferry_arch::acpi`).
//!
//! A guest powers off by writing `SLP_TYP(S5) << 2 | SLP_EN` to the sleep control register
//! (Linux's `poweroff` with ACPI), and may reset through the reset register. Both end the VM with
//! status 0, as a reset through the i8042 does. Other sleep states are not offered (only `\_S5_`
//! is in the DSDT), so any other value is logged and ignored.

use std::sync::Arc;

use ferry_arch::acpi::{
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_ENABLE, SLEEP_STATUS_PORT,
};

use crate::bus::BusDevice;
use crate::legacy::ExitCode;

/// Offsets from the first port (the sleep control register's).
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (SLEEP_STATUS_PORT - SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (RESET_PORT - SLEEP_CONTROL_PORT) as u64;
/// The first port and how many the device spans.
pub const ACPI_PM_PORT: u16 = SLEEP_CONTROL_PORT;
pub const ACPI_PM_PORT_LEN: u64 = RESET + 1;
/// The `SLP_TYP` field of the sleep control register.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;

pub struct AcpiPm {
    exit: Arc<ExitCode>,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitCode>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken". The other registers are write-only and read as 0.
        data.fill(0);
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
            SLEEP_CONTROL | SLEEP_STATUS | RESET => {}
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let exit = ExitCode::new().unwrap();
        let mut pm = AcpiPm::new(exit.clone());
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
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(RESET, &[RESET_VALUE]);
        assert_eq!(exit.get(), Some(0));
    }
}
