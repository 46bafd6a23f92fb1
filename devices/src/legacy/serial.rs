//! The COM1 8250/16550 UART (vm-superio's register model) with its output sink and interrupt.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::persist::{Persist, RestoreError};

pub const COM1_PORT: u16 = 0x3f8;
pub const COM_PORT_LEN: u16 = 8;

/// Raises the UART's interrupt through an eventfd registered with KVM as an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest output goes.
pub enum SerialOutput {
    /// The process's stdout, written unbuffered so each byte is visible at once (harnesses
    /// timestamp the first byte; interactive users see prompts without a newline).
    Stdout(ManuallyDrop<File>),
    /// A file, appended to.
    File(File),
    /// Discarded.
    Sink,
}

impl SerialOutput {
    pub fn stdout() -> Self {
        // SAFETY: fd 1 is open for the life of the process; ManuallyDrop keeps us from closing it.
        Self::Stdout(ManuallyDrop::new(unsafe { File::from_raw_fd(1) }))
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(f) => f.write(buf),
            Self::File(f) => f.write(buf),
            Self::Sink => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART as a bus device.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, SerialOutput>,
    /// Set once an output error was logged, so a closed stdout does not flood the log.
    output_failed: bool,
}

impl Serial {
    pub fn new(interrupt: EventFd, output: SerialOutput) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger(interrupt), output),
            output_failed: false,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.inner.fifo_capacity().min(input.len());
        match self.inner.enqueue_raw_bytes(&input[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(byte), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *byte = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.inner.write(offset, value) {
            if !self.output_failed {
                log::warn!("serial output failed (further errors not logged): {e:?}");
                self.output_failed = true;
            }
        }
    }
}

/// Serialisable UART registers and pending input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl Persist for Serial {
    type State = SerialSnapshot;

    fn save_state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn restore_state(&mut self, state: &SerialSnapshot) -> Result<(), RestoreError> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        // Rebuild around the same interrupt and output.
        let placeholder = vm_superio::Serial::new(
            EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
                RestoreError::Io {
                    device: "serial",
                    source,
                }
            })?),
            SerialOutput::Sink,
        );
        let old = std::mem::replace(&mut self.inner, placeholder);
        let trigger = EventFdTrigger(old.interrupt_evt().0.try_clone().map_err(|source| {
            RestoreError::Io {
                device: "serial",
                source,
            }
        })?);
        let output = old.into_writer();
        self.inner =
            vm_superio::Serial::from_state(&s, trigger, NoEvents, output).map_err(|e| {
                RestoreError::Invalid {
                    device: "serial",
                    reason: format!("{e:?}"),
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    fn read(dev: &mut Serial, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_the_file_and_registers_behave() {
        let mut tmp = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        let out = tmp.try_clone().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = Serial::new(irq.try_clone().unwrap(), SerialOutput::File(out));
        // Transmitter empty and holding register empty at reset.
        assert_eq!(read(&mut dev, LSR) & 0x60, 0x60);
        dev.write(SCR, &[0x5a]);
        assert_eq!(read(&mut dev, SCR), 0x5a);
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        let mut text = String::new();
        use std::io::Seek;
        tmp.seek(io::SeekFrom::Start(0)).unwrap();
        tmp.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hi\n");
        // No interrupt was enabled, so none was raised.
        assert!(irq.read().is_err());
        assert!(tmp.as_raw_fd() >= 0);
    }

    #[test]
    fn input_raises_the_receive_interrupt_and_survives_a_snapshot() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = Serial::new(irq.try_clone().unwrap(), SerialOutput::Sink);
        dev.write(IER, &[0x01]); // receive-data-available interrupt
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        dev.write(LCR, &[0x03]);
        let saved = dev.save_state();
        assert_eq!(saved.in_buffer, b"ab");

        let mut restored = Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialOutput::Sink,
        );
        restored.restore_state(&saved).unwrap();
        assert_eq!(read(&mut restored, LCR), 0x03);
        assert_eq!(read(&mut restored, THR), b'a');
        assert_eq!(read(&mut restored, THR), b'b');
        assert_eq!(restored.save_state().in_buffer, b"");
    }
}
