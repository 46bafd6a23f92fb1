//! The i8042 keyboard controller, reduced to what guests use on a microVM: the CPU reset command
//! (`reboot=k` makes Linux write 0xfe to port 0x64), which ends the VM with status 0.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::legacy::ExitCode;

/// Ports 0x60..0x65 (data at 0x60, command/status at 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Converts a guest reset request into a clean VM exit.
pub struct I8042 {
    inner: vm_superio::I8042Device<ResetTrigger>,
}

struct ResetTrigger(Arc<ExitCode>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        log::info!("guest reset through the i8042");
        self.0.request(0);
        Ok(())
    }
}

impl I8042 {
    pub fn new(exit: Arc<ExitCode>) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(byte) = data.first_mut() {
            *byte = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if offset == COMMAND_OFFSET && value == CMD_RESET_CPU {
                log::debug!("i8042 reset command");
            }
            let _ = self.inner.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_exit_zero() {
        let exit = ExitCode::new().unwrap();
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), None, "0xfe to the data port is not a reset");
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.get(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), Some(0));
    }
}
