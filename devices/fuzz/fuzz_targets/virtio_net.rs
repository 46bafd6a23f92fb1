//! A hostile guest's virtio-net queues: for RX, TX and the control queue the descriptor table and
//! the avail heads come from the fuzzer, with guest memory full of fuzzer bytes (vnet headers with
//! any flags, GSO types and checksum offsets, frames of any length, control commands of any class),
//! under any feature set the guest may accept. A frame from the host side (a socket pair stands in
//! for the tap) is delivered into whatever RX buffers the guest offered. The real device runs in a
//! real event loop; nothing may panic or loop.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use ferry_devices::net::{MacAddr, NetBackend};
use ferry_devices::virtio::net::Net;
use ferry_devices::virtio::testing::TestDriver;
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

fn socketpair() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    // SAFETY: on success both fds are fresh and owned here.
    (r == 0).then(|| unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

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
    let Some(frame_len) = take(&mut data, 2) else {
        return;
    };
    let frame_len = usize::from(u16::from_le_bytes([frame_len[0], frame_len[1]]));
    let frame_len = frame_len.min(data.len());
    let frame = take(&mut data, frame_len).unwrap_or(&[]);

    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    let Some((ours, peer)) = socketpair() else {
        return;
    };
    let Ok(backend) = NetBackend::from_sockets(vec![ours], MacAddr([2, 0, 0, 0, 0, 1])) else {
        return;
    };
    let Ok(net) = Net::new_shared(backend) else {
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
        let mut n = net.lock().unwrap();
        n.ack_features(features);
        if n.activate(mem.clone(), Arc::new(interrupt), queues).is_err() {
            return;
        }
    }
    let Ok(mut em) = EventManager::<Arc<Mutex<Net>>>::new() else {
        return;
    };
    em.add_subscriber(net.clone());

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
    if !frame.is_empty() {
        // SAFETY: writes from a live buffer; a refused datagram is simply not delivered.
        unsafe { libc::write(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    }
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
