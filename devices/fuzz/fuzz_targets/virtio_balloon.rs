//! A hostile guest's virtio-balloon queues: one of the inflate, deflate, statistics and free
//! page reporting queues gets a descriptor table and avail heads from the fuzzer, and every
//! byte of guest memory is the fuzzer's too (pfns anywhere, including the pages holding the
//! rings themselves, odd lengths, loops, indirect tables, statistics buffers of any size, report
//! ranges crossing regions). The real transport and device process them. Nothing may panic,
//! and no queue may get more used entries than the guest made available.
#![no_main]

use ferry_devices::virtio::balloon::{Balloon, BalloonSettings};
use ferry_devices::virtio::mmio::MmioTransport;
use ferry_devices::virtio::testing::{drive_queues_to_driver_ok, TestDriver};
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Two regions so a buffer can cross from one mapping into the next.
const REGION: u64 = 64 << 10;
const QUEUE_SIZE: u16 = 16;
const QUEUES: usize = 4;
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
    let Ok(balloon) = Balloon::new_shared(BalloonSettings {
        target_pages: 16,
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_reporting: true,
    }) else {
        return;
    };
    let Ok(mut transport) = MmioTransport::new(mem.clone(), balloon.clone()) else {
        return;
    };
    let mut drivers: Vec<TestDriver> = (0..QUEUES)
        .map(|i| TestDriver::new(mem.clone(), QUEUE_SIZE, 0x200 * i as u64))
        .collect();
    let refs: Vec<Option<&TestDriver>> = drivers.iter().map(Some).collect();
    drive_queues_to_driver_ok(&mut transport, &refs, flags & 1 != 0);

    let q = usize::from(flags >> 1) % QUEUES;
    let room = (2 * REGION - DATA) as usize;
    let guest_bytes = &guest_bytes[..guest_bytes.len().min(room)];
    mem.write_slice(guest_bytes, GuestAddress(DATA)).unwrap();
    mem.write_slice(table, drivers[q].desc).unwrap();
    for head in head_bytes.chunks_exact(2) {
        drivers[q].push_avail(u16::from_le_bytes([head[0], head[1]]));
    }
    for round in 0..3 {
        let mut b = balloon.lock().unwrap();
        b.process_queue(q);
        if round == 1 {
            // The polling timer's action: give the held statistics buffer back.
            b.request_stats();
        }
    }
    let mut used = 0usize;
    while drivers[q].pop_used().is_some() {
        used += 1;
        assert!(used <= heads, "more used entries than available heads");
    }
});
