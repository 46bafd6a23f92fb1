//! COM1 (8250/16550 at 0x3f8): the report channel. Output waits for THRE once per 16 bytes (the
//! FIFO depth) instead of once per byte, so each byte costs about one port exit.

use super::io::{inb, outb, outsb};
use core::sync::atomic::{AtomicBool, Ordering};
use ferry_probe::SERIAL_PORT as COM1;

const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;
/// THRE polls before writing anyway (a UART that never drains must not hang the probe).
const THRE_POLLS: u32 = 1_000;

/// Set once THRE polling timed out: the UART does not report THRE, so stop asking (each poll
/// is a port exit).
static THRE_BROKEN: AtomicBool = AtomicBool::new(false);

/// Programs 115200 8N1 with FIFOs enabled and interrupts off.
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x80); // DLAB
    outb(THR, 1); // divisor low: 115200 baud
    outb(IER, 0); // divisor high
    outb(LCR, 0x03); // 8N1
    outb(FCR, 0xc7); // enable + clear FIFOs
    outb(MCR, 0x03); // DTR, RTS
}

/// Writes `bytes`.
pub fn write(bytes: &[u8]) {
    for chunk in bytes.chunks(16) {
        if !THRE_BROKEN.load(Ordering::Relaxed) {
            let mut polls = 0;
            while inb(LSR) & LSR_THRE == 0 {
                polls += 1;
                if polls == THRE_POLLS {
                    THRE_BROKEN.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        outsb(THR, chunk);
    }
}
