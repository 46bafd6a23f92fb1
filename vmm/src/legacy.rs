//! The legacy devices the host acts on while the guest runs: the i8042 (Ctrl-Alt-Del) and the
//! ACPI power button, with their part of the saved VM state. (The serial port has its own path:
//! its output and input live in the event loop.)

use std::sync::{Arc, Mutex, MutexGuard};

use ferry_devices::legacy::{AcpiPm, AcpiPmState, I8042State, I8042};
use ferry_devices::persist::Persist;
use serde::{Deserialize, Serialize};

use crate::error::VmmError;

/// The legacy devices' saved state. Both fields default, so a snapshot written before they were
/// saved still restores (to a power-on keyboard and no pending button press).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacySnapshot {
    #[serde(default)]
    pub i8042: Option<I8042State>,
    #[serde(default)]
    pub acpi_pm: Option<AcpiPmState>,
}

/// Handles on the devices that sit on the port-I/O bus.
#[derive(Clone)]
pub struct LegacyDevices {
    pub i8042: Arc<Mutex<I8042>>,
    /// Present when the guest was given ACPI tables.
    pub acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LegacyDevices {
    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        lock(&self.i8042)
            .send_ctrl_alt_del()
            .map_err(|e| VmmError::Device(format!("SendCtrlAltDel: {e}")))
    }

    /// Presses the ACPI power button. A guest booted without ACPI has none: that is an error the
    /// caller must see, not a press that silently goes nowhere.
    pub fn press_power_button(&self) -> Result<(), VmmError> {
        let pm = self.acpi_pm.as_ref().ok_or_else(|| {
            VmmError::Config(
                "this guest has no ACPI power button (started with ACPI off); \
                 use SendCtrlAltDel or end the VM"
                    .into(),
            )
        })?;
        lock(pm)
            .press_power_button()
            .map_err(|e| VmmError::Device(format!("raising the power button interrupt: {e}")))
    }

    pub fn save(&self) -> LegacySnapshot {
        LegacySnapshot {
            i8042: Some(lock(&self.i8042).save_state()),
            acpi_pm: self.acpi_pm.as_ref().map(|pm| lock(pm).save_state()),
        }
    }

    pub fn restore(&self, saved: &LegacySnapshot) -> Result<(), VmmError> {
        let device = |e: ferry_devices::persist::RestoreError| VmmError::Device(e.to_string());
        if let Some(state) = &saved.i8042 {
            lock(&self.i8042).restore_state(state).map_err(device)?;
        }
        match (&self.acpi_pm, &saved.acpi_pm) {
            (Some(pm), Some(state)) => lock(pm).restore_state(state).map_err(device)?,
            (None, Some(state)) if state.pending_events != 0 => {
                return Err(VmmError::Device(
                    "the saved VM had ACPI with a pending power button press; this one has no ACPI"
                        .into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}
