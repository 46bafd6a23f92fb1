//! A hostile guest's virtio-blk queue: the descriptor table, the avail ring's heads and every
//! byte of guest memory come from the fuzzer (addresses out of memory, loops, bad `next`,
//! indirect tables, chains straddling the two memory regions, headers with any type and sector),
//! and the real transport and device process them over a null disk. Nothing may panic, and the
//! device may never publish more used entries than the guest made available.
#![no_main]

use ferry_devices::storage::null::NullDisk;
use ferry_devices::virtio::block::Block;
use ferry_devices::virtio::mmio::MmioTransport;
use ferry_devices::virtio::testing::{drive_to_driver_ok, TestDriver};
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Two regions so a buffer can cross from one mapping into the next.
const REGION: u64 = 64 << 10;
const QUEUE_SIZE: u16 = 16;
/// Guest bytes from the fuzzer are placed from here on, after the rings.
const DATA: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&heads, rest)) = rest.split_first() else {
        return;
    };
    let table_len = 16 * usize::from(QUEUE_SIZE);
    if rest.len() < table_len {
        return;
    }
    let (table, rest) = rest.split_at(table_len);
    let heads = usize::from(heads % (2 * QUEUE_SIZE as u8 + 1));
    if rest.len() < 2 * heads {
        return;
    }
    let (head_bytes, guest_bytes) = rest.split_at(2 * heads);

    let Ok(mem) = GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ]) else {
        return;
    };
    let Ok(block) = Block::new_shared("fuzz", Box::new(NullDisk::new(1 << 20, 8))) else {
        return;
    };
    let Ok(mut transport) = MmioTransport::new(mem.clone(), block.clone()) else {
        return;
    };
    let mut driver = TestDriver::new(mem.clone(), QUEUE_SIZE, 0);
    drive_to_driver_ok(&mut transport, &driver, flags & 1 != 0);

    let room = (2 * REGION - DATA) as usize;
    let guest_bytes = &guest_bytes[..guest_bytes.len().min(room)];
    mem.write_slice(guest_bytes, GuestAddress(DATA)).unwrap();
    mem.write_slice(table, driver.desc).unwrap();
    for head in head_bytes.chunks_exact(2) {
        driver.push_avail(u16::from_le_bytes([head[0], head[1]]));
    }
    if flags & 2 != 0 {
        // A driver that asks for interrupts at odd points.
        driver.set_used_event(u16::from(flags >> 2));
    }
    for _ in 0..3 {
        block.lock().unwrap().process_queue();
    }
    let mut used = 0usize;
    while driver.pop_used().is_some() {
        used += 1;
        assert!(used <= heads, "more used entries than available heads");
    }
});
