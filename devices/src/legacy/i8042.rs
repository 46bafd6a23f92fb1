//! The i8042 keyboard controller with one PS/2 keyboard behind it, reduced to what guests use on a
//! microVM:
//!
//! - the CPU reset line (`reboot=k` makes Linux write 0xfe to port 0x64), which ends the VM with
//!   status 0;
//! - enough of the controller and of a keyboard for Linux's `i8042` and `atkbd` drivers to find a
//!   keyboard without waiting on timeouts (self test, command byte, keyboard id, LEDs, typematic
//!   rate, scan code set), so that
//! - the host can press Ctrl-Alt-Del (Firecracker's `SendCtrlAltDel`): the scan codes arrive on
//!   IRQ 1 one byte at a time, as a real keyboard sends them, and the guest's own Ctrl-Alt-Del
//!   handling runs (Linux: `ctrl_alt_del()` → SIGINT to init, or a reboot).
//!
//! There is no AUX (mouse) port: Linux's loop test reads the echo as keyboard data and the AUX
//! interface test answers "clock line stuck", so Linux gives the port up at once.
//!
//! The output buffer of a real 8042 holds one byte; a controller command's answer replaces it,
//! while keyboard bytes wait their turn (the keyboard holds them until the buffer is free). The
//! queue here is bounded, so a guest that never reads cannot make it grow.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::legacy::ExitCode;
use crate::persist::{Persist, RestoreError};

/// Ports 0x60..0x65 (data at 0x60, command/status at 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;
/// The ISA interrupt of the keyboard port.
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_NOT_INHIBITED: u8 = 1 << 4;

// Controller command byte ("CTR") bits.
const CTR_KBD_INTERRUPT: u8 = 1 << 0;
const CTR_SYSTEM_FLAG: u8 = 1 << 2;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;
/// After power-on: keyboard interrupt on, POST passed, no AUX port, no translation (the guest
/// gets scan code set 2, which Linux's atkbd reads natively).
const CTR_POWER_ON: u8 = CTR_KBD_INTERRUPT | CTR_SYSTEM_FLAG | CTR_AUX_DISABLED;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

// Controller answers.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
const INTERFACE_CLOCK_STUCK_LOW: u8 = 0x01;
/// Output port after power-on: the CPU not held in reset, A20 enabled.
const OUTPUT_PORT_POWER_ON: u8 = 0x03;

// Keyboard commands (written to port 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_CODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// An MF2 keyboard's id.
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_CURRENT_SET: u8 = 2;

/// Ctrl, Alt and Delete pressed, then released in reverse order: scan code set 2 (the keyboard's
/// own), and set 1 for a guest that asked the controller to translate.
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// How many keyboard bytes may wait for the guest.
const QUEUE_LIMIT: usize = 32;

/// Why a key press could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyboardError {
    #[error("the guest has not read the keyboard's earlier bytes ({0} waiting); try again later")]
    QueueFull(usize),
    #[error("raising the keyboard interrupt: {0}")]
    Interrupt(String),
}

/// The controller's registers and the bytes waiting for the guest: everything a snapshot or a
/// migration carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    pub control: u8,
    pub output_port: u8,
    /// The answer to a controller command, read before any keyboard byte.
    pub controller_answer: Option<u8>,
    /// Keyboard bytes in arrival order; the first is in the output buffer once no controller
    /// answer is.
    pub keyboard_bytes: Vec<u8>,
    /// A controller command waiting for its parameter on the data port.
    pub pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter (LEDs, typematic rate, scan code set).
    pub pending_keyboard_command: Option<u8>,
    pub last_write_was_command: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            control: CTR_POWER_ON,
            output_port: OUTPUT_PORT_POWER_ON,
            controller_answer: None,
            keyboard_bytes: Vec::new(),
            pending_command: None,
            pending_keyboard_command: None,
            last_write_was_command: false,
        }
    }
}

/// The i8042 and its keyboard.
pub struct I8042 {
    exit: Arc<ExitCode>,
    /// Signals IRQ 1 (an irqfd). `None` in unit tests of the reset path only.
    irq: Option<EventFd>,
    control: u8,
    output_port: u8,
    controller_answer: Option<u8>,
    keyboard_bytes: VecDeque<u8>,
    pending_command: Option<u8>,
    pending_keyboard_command: Option<u8>,
    last_write_was_command: bool,
}

impl I8042 {
    /// `irq` is the eventfd registered as KVM's irqfd for [`I8042_KBD_IRQ`].
    pub fn new(exit: Arc<ExitCode>, irq: Option<EventFd>) -> Self {
        let mut dev = Self {
            exit,
            irq,
            control: 0,
            output_port: 0,
            controller_answer: None,
            keyboard_bytes: VecDeque::with_capacity(QUEUE_LIMIT),
            pending_command: None,
            pending_keyboard_command: None,
            last_write_was_command: false,
        };
        dev.apply(&I8042State::default());
        dev
    }

    /// Presses and releases Ctrl-Alt-Del, as Firecracker's `SendCtrlAltDel` does.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), KeyboardError> {
        let codes: &[u8] = if self.control & CTR_TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if self.keyboard_bytes.len() + codes.len() > QUEUE_LIMIT {
            return Err(KeyboardError::QueueFull(self.keyboard_bytes.len()));
        }
        let was_idle = self.output_empty();
        self.keyboard_bytes.extend(codes);
        if was_idle {
            self.raise_keyboard_interrupt()
                .map_err(|e| KeyboardError::Interrupt(e.to_string()))?;
        }
        Ok(())
    }

    fn output_empty(&self) -> bool {
        self.controller_answer.is_none() && self.keyboard_bytes.is_empty()
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED;
        if !self.output_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    /// The guest reads the output buffer; the next keyboard byte, if any, takes its place and
    /// interrupts again.
    fn read_data(&mut self) -> u8 {
        if let Some(answer) = self.controller_answer.take() {
            return answer;
        }
        let byte = self.keyboard_bytes.pop_front().unwrap_or(0);
        if !self.keyboard_bytes.is_empty() {
            self.interrupt_or_log();
        }
        byte
    }

    /// A controller command's answer replaces whatever answer the buffer held.
    fn answer(&mut self, byte: u8) {
        self.controller_answer = Some(byte);
    }

    /// A byte from the keyboard: queued, and announced on IRQ 1 when it is next to be read.
    fn keyboard_sends(&mut self, bytes: &[u8]) {
        let was_idle = self.output_empty();
        for &b in bytes {
            if self.keyboard_bytes.len() < QUEUE_LIMIT {
                self.keyboard_bytes.push_back(b);
            } else {
                log::warn!("i8042: keyboard queue full, a byte for the guest was dropped");
            }
        }
        if was_idle && !self.keyboard_bytes.is_empty() {
            self.interrupt_or_log();
        }
    }

    fn raise_keyboard_interrupt(&self) -> std::io::Result<()> {
        if self.control & CTR_KBD_INTERRUPT == 0 {
            return Ok(());
        }
        match &self.irq {
            Some(irq) => irq.write(1),
            None => Ok(()),
        }
    }

    fn interrupt_or_log(&self) {
        if let Err(e) = self.raise_keyboard_interrupt() {
            log::warn!("i8042: cannot raise IRQ {I8042_KBD_IRQ}: {e}");
        }
    }

    fn command(&mut self, command: u8) {
        self.last_write_was_command = true;
        match command {
            CMD_READ_CTR => self.answer(self.control),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_TO_AUX => self.pending_command = Some(command),
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX => self.answer(INTERFACE_CLOCK_STUCK_LOW),
            CMD_SELF_TEST => self.answer(SELF_TEST_PASSED),
            CMD_TEST_KBD => self.answer(INTERFACE_OK),
            CMD_DISABLE_KBD | CMD_ENABLE_KBD => {}
            CMD_READ_INPUT_PORT => self.answer(0),
            CMD_READ_OUTPUT_PORT => self.answer(self.output_port),
            CMD_RESET_CPU => {
                log::info!("guest reset through the i8042");
                self.exit.request(0);
            }
            other => log::debug!("i8042: command {other:#04x} ignored"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_write_was_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => {
                let was_enabled = self.control & CTR_KBD_INTERRUPT != 0;
                self.control = value;
                // Bytes that waited while the interrupt was off are announced now.
                if !was_enabled
                    && self.controller_answer.is_none()
                    && !self.keyboard_bytes.is_empty()
                {
                    self.interrupt_or_log();
                }
            }
            Some(CMD_WRITE_OUTPUT_PORT) => self.output_port = value,
            Some(CMD_WRITE_KBD_BUFFER) => self.keyboard_sends(&[value]),
            // No AUX port: the loop answer comes back as keyboard data, which Linux reads as "no
            // AUX port" (an AT-style controller).
            Some(CMD_WRITE_AUX_BUFFER) => self.answer(value),
            Some(CMD_WRITE_TO_AUX) => {}
            _ => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard_command(&mut self, value: u8) {
        if let Some(command) = self.pending_keyboard_command.take() {
            // The parameter of LEDs / typematic rate / scan code set; set 0 asks which set is on.
            if command == KBD_SCAN_CODE_SET && value == 0 {
                self.keyboard_sends(&[KBD_ACK, KBD_CURRENT_SET]);
            } else {
                self.keyboard_sends(&[KBD_ACK]);
            }
            return;
        }
        match value {
            KBD_SET_LEDS | KBD_SET_TYPEMATIC | KBD_SCAN_CODE_SET => {
                self.pending_keyboard_command = Some(value);
                self.keyboard_sends(&[KBD_ACK]);
            }
            KBD_ECHO => self.keyboard_sends(&[KBD_ECHO]),
            KBD_GET_ID => self.keyboard_sends(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_RESET => {
                self.keyboard_bytes.clear();
                self.keyboard_sends(&[KBD_ACK, KBD_SELF_TEST_PASSED]);
            }
            // Enable, disable, defaults, typematic modes, resend: acknowledged.
            _ => self.keyboard_sends(&[KBD_ACK]),
        }
    }

    fn apply(&mut self, state: &I8042State) {
        self.control = state.control;
        self.output_port = state.output_port;
        self.controller_answer = state.controller_answer;
        self.keyboard_bytes = state.keyboard_bytes.iter().copied().collect();
        self.pending_command = state.pending_command;
        self.pending_keyboard_command = state.pending_keyboard_command;
        self.last_write_was_command = state.last_write_was_command;
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
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
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

impl Persist for I8042 {
    type State = I8042State;

    fn save_state(&self) -> I8042State {
        I8042State {
            control: self.control,
            output_port: self.output_port,
            controller_answer: self.controller_answer,
            keyboard_bytes: self.keyboard_bytes.iter().copied().collect(),
            pending_command: self.pending_command,
            pending_keyboard_command: self.pending_keyboard_command,
            last_write_was_command: self.last_write_was_command,
        }
    }

    fn restore_state(&mut self, state: &I8042State) -> Result<(), RestoreError> {
        if state.keyboard_bytes.len() > QUEUE_LIMIT {
            return Err(RestoreError::Invalid {
                device: "i8042",
                reason: format!(
                    "{} keyboard bytes waiting, more than {QUEUE_LIMIT}",
                    state.keyboard_bytes.len()
                ),
            });
        }
        self.apply(state);
        // An interrupt raised just before the save may not have reached the saved interrupt
        // controller: announce a waiting byte again (a spare interrupt finds the buffer empty and
        // is ignored by the guest).
        if self.controller_answer.is_none() && !self.keyboard_bytes.is_empty() {
            self.raise_keyboard_interrupt()
                .map_err(|source| RestoreError::Io {
                    device: "i8042",
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, Arc<ExitCode>, EventFd) {
        let exit = ExitCode::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(exit.clone(), Some(irq.try_clone().unwrap()));
        (dev, exit, irq)
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut b = [0];
        dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    /// Interrupts signalled since the last call.
    fn interrupts(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    /// Reads every byte the guest would get, as Linux's interrupt handler does (status, then data).
    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(dev) & STATUS_OUTPUT_FULL != 0 {
            out.push(data(dev));
        }
        out
    }

    #[test]
    fn reset_command_requests_exit_zero() {
        let (mut dev, exit, _irq) = device();
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), None, "0xfe to the data port is not a reset");
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.get(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), Some(0));
    }

    /// What Linux's i8042 driver does at boot: flush, self test, read and write the command byte,
    /// and the AUX checks, each answered at once (no timeouts) and without interrupts.
    #[test]
    fn linux_controller_probe_is_answered_without_timeouts() {
        let (mut dev, exit, irq) = device();
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0, "nothing to flush");
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(drain(&mut dev), [SELF_TEST_PASSED]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut dev), [CTR_POWER_ON]);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_POWER_ON & !CTR_KBD_INTERRUPT]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut dev), [CTR_POWER_ON & !CTR_KBD_INTERRUPT]);
        // The AUX loop echo comes back as keyboard data (no AUX flag), the AUX test fails.
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_BUFFER]);
        dev.write(DATA_OFFSET, &[0x5a]);
        assert_eq!(
            status(&mut dev) & (STATUS_OUTPUT_FULL | 1 << 5),
            STATUS_OUTPUT_FULL
        );
        // Linux gives up on the echo without reading it; the next command's answer replaces it.
        dev.write(COMMAND_OFFSET, &[CMD_TEST_AUX]);
        assert_eq!(drain(&mut dev), [INTERFACE_CLOCK_STUCK_LOW]);
        dev.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(drain(&mut dev), [INTERFACE_OK]);
        assert_eq!(interrupts(&irq), 0, "controller answers are polled");
        assert_eq!(exit.get(), None);
    }

    /// What Linux's atkbd does over the interrupt: id, scan code set, enable, LEDs, typematic.
    #[test]
    fn keyboard_commands_are_acknowledged_on_the_interrupt() {
        let (mut dev, _exit, irq) = device();
        dev.write(DATA_OFFSET, &[KBD_GET_ID]);
        assert_eq!(interrupts(&irq), 1);
        assert_eq!(data(&mut dev), KBD_ACK);
        assert_eq!(interrupts(&irq), 1, "the next byte interrupts again");
        assert_eq!(drain(&mut dev), KBD_ID);
        dev.write(DATA_OFFSET, &[KBD_SCAN_CODE_SET]);
        dev.write(DATA_OFFSET, &[0]);
        assert_eq!(drain(&mut dev), [KBD_ACK, KBD_ACK, KBD_CURRENT_SET]);
        for (cmd, param) in [(KBD_SET_LEDS, 0b010), (KBD_SET_TYPEMATIC, 0x20)] {
            dev.write(DATA_OFFSET, &[cmd]);
            assert_eq!(drain(&mut dev), [KBD_ACK]);
            dev.write(DATA_OFFSET, &[param]);
            assert_eq!(drain(&mut dev), [KBD_ACK]);
        }
        dev.write(DATA_OFFSET, &[0xf4]);
        assert_eq!(drain(&mut dev), [KBD_ACK]);
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(drain(&mut dev), [KBD_ACK, KBD_SELF_TEST_PASSED]);
        dev.write(DATA_OFFSET, &[KBD_ECHO]);
        assert_eq!(drain(&mut dev), [KBD_ECHO]);
    }

    #[test]
    fn ctrl_alt_del_arrives_as_scan_codes_one_interrupt_per_byte() {
        let (mut dev, exit, irq) = device();
        dev.send_ctrl_alt_del().unwrap();
        let mut got = Vec::new();
        while status(&mut dev) & STATUS_OUTPUT_FULL != 0 {
            assert_eq!(interrupts(&irq), 1, "byte {} announced", got.len());
            got.push(data(&mut dev));
        }
        assert_eq!(interrupts(&irq), 0);
        assert_eq!(got, CTRL_ALT_DEL_SET2);
        assert_eq!(exit.get(), None, "the guest decides what Ctrl-Alt-Del does");

        // A guest that asked for translation gets set 1.
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_POWER_ON | CTR_TRANSLATE]);
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn keys_wait_while_the_interrupt_is_off_and_the_queue_is_bounded() {
        let (mut dev, _exit, irq) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_POWER_ON & !CTR_KBD_INTERRUPT]);
        dev.send_ctrl_alt_del().unwrap();
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(interrupts(&irq), 0);
        assert_eq!(
            dev.send_ctrl_alt_del(),
            Err(KeyboardError::QueueFull(2 * CTRL_ALT_DEL_SET2.len()))
        );
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_POWER_ON]);
        assert_eq!(
            interrupts(&irq),
            1,
            "enabling the interrupt announces the waiting bytes"
        );
        assert_eq!(drain(&mut dev).len(), 2 * CTRL_ALT_DEL_SET2.len());
        // A guest writing commands without ever reading cannot grow the queue.
        for _ in 0..1000 {
            dev.write(DATA_OFFSET, &[KBD_GET_ID]);
        }
        assert_eq!(drain(&mut dev).len(), QUEUE_LIMIT);
    }

    #[test]
    fn state_round_trips_and_a_waiting_byte_is_announced_after_restore() {
        let (mut dev, _exit, _irq) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_POWER_ON | CTR_TRANSLATE]);
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(data(&mut dev), CTRL_ALT_DEL_SET1[0]);
        dev.write(DATA_OFFSET, &[KBD_SET_LEDS]);
        let saved = dev.save_state();
        let json = serde_json::to_string(&saved).unwrap();

        let (mut restored, _exit2, irq2) = device();
        restored
            .restore_state(&serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(restored.save_state(), saved);
        assert_eq!(interrupts(&irq2), 1);
        let mut rest = CTRL_ALT_DEL_SET1[1..].to_vec();
        rest.push(KBD_ACK);
        assert_eq!(drain(&mut restored), rest);
        restored.write(DATA_OFFSET, &[0b100]);
        assert_eq!(
            drain(&mut restored),
            [KBD_ACK],
            "the LED parameter was still expected"
        );

        let mut hostile = saved.clone();
        hostile.keyboard_bytes = vec![0; QUEUE_LIMIT + 1];
        assert!(restored.restore_state(&hostile).is_err());
    }
}
