//! A hostile guest's virtio-vsock queues: for RX, TX and the event queue the descriptor table and
//! the avail heads come from the fuzzer, with guest memory full of fuzzer bytes (packet headers
//! with any CIDs, ports, types, ops, lengths and credit figures, chains of any shape), under any
//! feature set the guest may accept. On the host side a service listens at `<uds_path>_52` (so
//! guest REQUESTs to port 52 connect) and a client sends fuzzer bytes as its `CONNECT` line and
//! data. The real device runs in a real event loop; nothing may panic or loop.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use ferry_devices::virtio::testing::TestDriver;
use ferry_devices::virtio::vsock::Vsock;
use ferry_devices::virtio::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
const MEM: u64 = 128 << 10;
/// Rings of queue i at `i * RING_STRIDE`; fuzzer bytes from DATA on.
const RING_STRIDE: u64 = 0x400;
const DATA: u64 = 0x1000;
const TABLE: usize = 16 * QUEUE_SIZE as usize;
const GUEST_CID: u64 = 3;

fn queue_for(d: &TestDriver, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(d.size);
    q.set_desc_table_address(Some(d.desc.0 as u32), Some((d.desc.0 >> 32) as u32));
    q.set_avail_ring_address(Some(d.avail.0 as u32), Some((d.avail.0 >> 32) as u32));
    q.set_used_ring_address(Some(d.used.0 as u32), Some((d.used.0 >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Some(q)
}

/// Takes `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

/// This process's socket directory (one fuzzing process runs one input at a time).
fn socket_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(features) = take(&mut data, 8) else {
        return;
    };
    let features = u64::from_le_bytes(features.try_into().unwrap_or([0; 8]));
    let Some(tables) = take(&mut data, 3 * TABLE) else {
        return;
    };
    let Some(counts) = take(&mut data, 3) else {
        return;
    };
    let mut heads = Vec::new();
    for &count in counts {
        let n = usize::from(count % (QUEUE_SIZE as u8 + 1));
        let Some(bytes) = take(&mut data, 2 * n) else {
            return;
        };
        heads.push(bytes);
    }
    let Some(client_len) = take(&mut data, 1) else {
        return;
    };
    let client_len = usize::from(client_len[0]).min(data.len());
    let client = take(&mut data, client_len).unwrap_or(&[]);

    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    let dir = socket_dir();
    let uds = dir.join("v.sock");
    let service = dir.join("v.sock_52");
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&service);
    let Ok(_listener) = UnixListener::bind(&service) else {
        return;
    };
    let Ok(vsock) = Vsock::new_shared(GUEST_CID, &uds) else {
        return;
    };
    let event_idx = features & (1 << 29) != 0;
    let mut drivers: Vec<TestDriver> = (0..3u64)
        .map(|i| TestDriver::new(mem.clone(), QUEUE_SIZE, i * RING_STRIDE))
        .collect();
    let mut evts = Vec::new();
    let mut queues = Vec::new();
    for d in &drivers {
        let (Ok(evt), Some(queue)) = (EventFd::new(EFD_NONBLOCK), queue_for(d, event_idx)) else {
            return;
        };
        let evt = Arc::new(evt);
        evts.push(evt.clone());
        queues.push(VirtioQueue { queue, notify: evt });
    }
    let Ok(interrupt) = VirtioInterrupt::new() else {
        return;
    };
    {
        let mut v = vsock.lock().unwrap();
        v.ack_features(features);
        if v.activate(mem.clone(), Arc::new(interrupt), queues).is_err() {
            return;
        }
    }
    let Ok(mut em) = EventManager::<Arc<Mutex<Vsock>>>::new() else {
        return;
    };
    em.add_subscriber(vsock.clone());

    let room = (MEM - DATA) as usize;
    mem.write_slice(&data[..data.len().min(room)], GuestAddress(DATA))
        .unwrap();
    for (i, d) in drivers.iter_mut().enumerate() {
        mem.write_slice(&tables[i * TABLE..(i + 1) * TABLE], d.desc)
            .unwrap();
        for head in heads[i].chunks_exact(2) {
            d.push_avail(u16::from_le_bytes([head[0], head[1]]));
        }
    }
    // A host client: its first bytes may or may not be a CONNECT line.
    let _client = UnixStream::connect(&uds).ok().map(|mut s| {
        let _ = s.write_all(client);
        s
    });
    for evt in &evts {
        let _ = evt.write(1);
    }
    // Bounded: a device that keeps generating events for ever would show as a timeout.
    for _ in 0..64 {
        match em.run_with_timeout(0) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    for (i, d) in drivers.iter_mut().enumerate() {
        let mut used = 0usize;
        while d.pop_used().is_some() {
            used += 1;
            assert!(used <= heads[i].len() / 2, "queue {i}: more used than available");
        }
    }
});
