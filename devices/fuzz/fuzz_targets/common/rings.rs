//! What the event-loop fuzz targets (virtio-net, virtio-vsock) share: the fuzzer's input read as
//! a feature set plus, for each queue, a descriptor table and avail heads; the device activated
//! on rings in a small guest memory; the rings filled; the event loop run a bounded number of
//! rounds; and the one rule every device must keep, never more used entries than available.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use ferry_devices::virtio::testing::TestDriver;
use ferry_devices::virtio::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use ferry_devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const QUEUE_SIZE: u16 = 16;
pub const MEM: u64 = 128 << 10;
/// Rings of queue i at `i * RING_STRIDE`; fuzzer bytes from DATA on.
const RING_STRIDE: u64 = 0x400;
const DATA: u64 = 0x1000;
const TABLE: usize = 16 * QUEUE_SIZE as usize;

/// Takes `n` bytes off the front of `data`.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

/// The guest's side of `queues` queues, read off the front of the input.
pub struct GuestRings<'a> {
    pub features: u64,
    tables: &'a [u8],
    heads: Vec<&'a [u8]>,
}

impl<'a> GuestRings<'a> {
    pub fn parse(data: &mut &'a [u8], queues: usize) -> Option<Self> {
        let features = u64::from_le_bytes(take(data, 8)?.try_into().ok()?);
        let tables = take(data, queues * TABLE)?;
        let counts = take(data, queues)?;
        let mut heads = Vec::with_capacity(queues);
        for &count in counts {
            let n = usize::from(count % (QUEUE_SIZE as u8 + 1));
            heads.push(take(data, 2 * n)?);
        }
        Some(Self {
            features,
            tables,
            heads,
        })
    }
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

/// A device activated on one ring per queue in guest memory, in its own event loop.
pub struct Rig<D: VirtioDevice + MutEventSubscriber + 'static> {
    pub mem: GuestMemory,
    drivers: Vec<TestDriver>,
    evts: Vec<Arc<EventFd>>,
    em: EventManager<Arc<Mutex<D>>>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Rig<D> {
    /// Acknowledges the input's features and activates `device`; `None` when it refuses.
    pub fn activate(mem: GuestMemory, device: &Arc<Mutex<D>>, rings: &GuestRings) -> Option<Self> {
        let event_idx = rings.features & (1 << 29) != 0;
        let drivers: Vec<TestDriver> = (0..rings.heads.len() as u64)
            .map(|i| TestDriver::new(mem.clone(), QUEUE_SIZE, i * RING_STRIDE))
            .collect();
        let mut evts = Vec::new();
        let mut queues = Vec::new();
        for d in &drivers {
            let evt = Arc::new(EventFd::new(EFD_NONBLOCK).ok()?);
            evts.push(evt.clone());
            queues.push(VirtioQueue {
                queue: queue_for(d, event_idx)?,
                notify: evt,
            });
        }
        let interrupt = Arc::new(VirtioInterrupt::new().ok()?);
        {
            let mut d = device.lock().unwrap();
            d.ack_features(rings.features);
            d.activate(mem.clone(), interrupt, queues).ok()?;
        }
        let mut em = EventManager::<Arc<Mutex<D>>>::new().ok()?;
        em.add_subscriber(device.clone());
        Some(Self {
            mem,
            drivers,
            evts,
            em,
        })
    }

    /// Places the rest of the input in guest memory and each queue's table, and makes its heads
    /// available.
    pub fn fill(&mut self, rings: &GuestRings, data: &[u8]) {
        let room = (MEM - DATA) as usize;
        self.mem
            .write_slice(&data[..data.len().min(room)], GuestAddress(DATA))
            .unwrap();
        for (i, d) in self.drivers.iter_mut().enumerate() {
            self.mem
                .write_slice(&rings.tables[i * TABLE..(i + 1) * TABLE], d.desc)
                .unwrap();
            for head in rings.heads[i].chunks_exact(2) {
                d.push_avail(u16::from_le_bytes([head[0], head[1]]));
            }
        }
    }

    /// Notifies every queue and runs the event loop until it goes quiet, at most 64 rounds (a
    /// device that keeps generating events for ever shows as a timeout); then checks that no
    /// queue published more used entries than the guest made available.
    pub fn run(&mut self, rings: &GuestRings) {
        for evt in &self.evts {
            let _ = evt.write(1);
        }
        for _ in 0..64 {
            match self.em.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        for (i, d) in self.drivers.iter_mut().enumerate() {
            let mut used = 0usize;
            while d.pop_used().is_some() {
                used += 1;
                assert!(
                    used <= rings.heads[i].len() / 2,
                    "queue {i}: more used than available"
                );
            }
        }
    }
}
