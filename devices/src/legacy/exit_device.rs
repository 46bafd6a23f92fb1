//! The exit-code device: the guest writes a byte V to its port and ferry exits with status V.
//! It is what QEMU's `isa-debug-exit` is for, minus the `(V << 1) | 1` encoding: test harnesses
//! get the guest's own value.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Port used when `--exit-device` gives none (QEMU's isa-debug-exit default).
pub const DEFAULT_EXIT_PORT: u16 = 0xf4;

/// The exit request shared between the device (vCPU thread) and the controller: the value the guest
/// wrote, and an eventfd the controller waits on.
pub struct ExitCode {
    code: AtomicI32,
    evt: EventFd,
}

impl ExitCode {
    /// No code yet.
    pub const UNSET: i32 = -1;

    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            code: AtomicI32::new(Self::UNSET),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// Records `code` (the first request wins) and wakes the controller.
    pub fn request(&self, code: i32) {
        let _ = self
            .code
            .compare_exchange(Self::UNSET, code, Ordering::SeqCst, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal the VM exit: {e}");
        }
    }

    /// The requested exit status, if any.
    pub fn get(&self) -> Option<i32> {
        match self.code.load(Ordering::SeqCst) {
            Self::UNSET => None,
            code => Some(code),
        }
    }

    /// Readable once an exit was requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// One-port device turning a guest write into a VM exit with that status.
pub struct ExitDevice {
    exit: Arc<ExitCode>,
}

impl ExitDevice {
    pub fn new(exit: Arc<ExitCode>) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only the first byte of the port counts; wider writes (outw/outl) use their low byte.
        if offset == 0 {
            if let Some(&value) = data.first() {
                log::debug!("guest requested exit with status {value}");
                self.exit.request(i32::from(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_sets_the_status_and_wakes_the_controller() {
        let exit = ExitCode::new().unwrap();
        let mut dev = ExitDevice::new(exit.clone());
        assert_eq!(exit.get(), None);
        dev.write(0, &[42, 0, 0, 0]);
        assert_eq!(exit.get(), Some(42));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
        dev.write(0, &[7]);
        assert_eq!(exit.get(), Some(42), "the first request wins");
        dev.write(1, &[9]);
        dev.write(0, &[]);
    }
}
