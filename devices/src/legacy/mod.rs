//! Legacy port-I/O devices: the COM1 UART, the i8042 with a keyboard (CPU reset, Ctrl-Alt-Del), the
//! ACPI power-management and power-button registers and the guest exit-code device for test
//! harnesses.

mod acpi_pm;
mod exit_device;
mod i8042;
mod serial;

pub use acpi_pm::{AcpiPm, AcpiPmState, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
pub use exit_device::{ExitCode, ExitDevice, DEFAULT_EXIT_PORT};
pub use i8042::{I8042State, KeyboardError, I8042, I8042_KBD_IRQ, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{EventFdTrigger, Serial, SerialOutput, SerialSnapshot, COM1_PORT, COM_PORT_LEN};
