//! The tests of what a host presses: `keyboard` (Ctrl-Alt-Del on the i8042, Firecracker's
//! `SendCtrlAltDel`) and `power_button` (the ACPI power button through the Generic Event Device).
//!
//! Both poll their registers (the probe runs with interrupts off) and print a `ready` line once
//! they listen, so a harness presses only then. Each waits at most [`WAIT_MS`] (a hang bound).

use super::{fail_str, io, pass, say, tsc, State};
use ferry_probe::fmt::LineBuf;

/// How long a test waits for the press (guest time): a bound against hanging, not a timing.
const WAIT_MS: u64 = 300_000;
/// How long one controller answer may take (it is immediate on ferry).
const ANSWER_MS: u64 = 1_000;

const I8042_DATA: u16 = 0x60;
const I8042_STATUS: u16 = 0x64;
const STATUS_OUTPUT_FULL: u8 = 1;
/// Ctrl, Alt, Delete pressed and released, scan code set 2 (the controller does not translate).
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

fn read_byte(ms: u64) -> Option<u8> {
    let deadline = tsc::deadline_ms(ms);
    while !tsc::expired(deadline) {
        if io::inb(I8042_STATUS) & STATUS_OUTPUT_FULL != 0 {
            return Some(io::inb(I8042_DATA));
        }
    }
    None
}

fn ready(test: &str) {
    let mut l = LineBuf::new();
    l.str("probe: ").str(test).str(": ready");
    say(&l);
}

/// `keyboard`: checks the controller and the keyboard answer as Linux's drivers expect (self
/// test 0x55; keyboard id ACK 0xab 0x83), then waits for Ctrl-Alt-Del's scan codes.
pub fn keyboard() {
    while io::inb(I8042_STATUS) & STATUS_OUTPUT_FULL != 0 {
        io::inb(I8042_DATA);
    }
    io::outb(I8042_STATUS, 0xaa);
    if read_byte(ANSWER_MS) != Some(0x55) {
        fail_str("the i8042 self test did not answer 0x55");
        return;
    }
    io::outb(I8042_DATA, 0xf2);
    let id = [
        read_byte(ANSWER_MS),
        read_byte(ANSWER_MS),
        read_byte(ANSWER_MS),
    ];
    if id != [Some(0xfa), Some(0xab), Some(0x83)] {
        fail_str("the keyboard did not answer its id (ACK 0xab 0x83)");
        return;
    }
    ready("keyboard");
    let mut got = [0u8; CTRL_ALT_DEL.len()];
    for slot in got.iter_mut() {
        match read_byte(WAIT_MS) {
            Some(b) => *slot = b,
            None => {
                fail_str("no Ctrl-Alt-Del arrived");
                return;
            }
        }
    }
    let mut l = LineBuf::new();
    l.str("ctrl-alt-del=").dec(u64::from(got == CTRL_ALT_DEL));
    l.str(" scancodes=");
    for (i, b) in got.iter().enumerate() {
        if i > 0 {
            l.str(",");
        }
        l.hex_fixed(u64::from(*b), 2);
    }
    if got == CTRL_ALT_DEL {
        pass(&l);
    } else {
        super::fail(&l);
    }
}

/// `power_button`: finds the event register in the DSDT, waits for the button, then powers off
/// through S5 as a guest that handles the button does (the VMM must end the VM).
pub fn power_button(st: &State) {
    let (Some(port), Some(off)) = (st.ged_event_port, st.acpi_power_off) else {
        fail_str("no power button event register or no S5 in the ACPI tables");
        return;
    };
    ready("power_button");
    let deadline = tsc::deadline_ms(WAIT_MS);
    let events = loop {
        let events = io::inb(port);
        if events != 0 {
            break events;
        }
        if tsc::expired(deadline) {
            fail_str("the power button was never pressed");
            return;
        }
    };
    let mut l = LineBuf::new();
    l.str("pressed events=")
        .hex(u64::from(events))
        .str(" port=")
        .hex(u64::from(port));
    pass(&l);
    io::outb(off.sleep_control_port, off.command());
    loop {
        // SAFETY: nothing is left to run; the VMM ends the VM on the write above.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
