//! The control queue (virtio 1.2 §5.1.6.5): `class u8, command u8, data…` (device-readable),
//! then `ack u8` (device-writable).
//!
//! Supported: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (with MQ) and VIRTIO_NET_CTRL_ANNOUNCE_ACK (with
//! GUEST_ANNOUNCE). Everything else answers VIRTIO_NET_ERR, which drivers handle: the features
//! that would send them (CTRL_RX, CTRL_VLAN, CTRL_MAC_ADDR, …) are not offered.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ,
    VIRTIO_NET_OK, VIRTIO_NET_S_ANNOUNCE,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::config::has;
use super::{notify_guest, Active, Net, NetMetrics, MAX_CHAIN_DESCS};
use crate::GuestMemory;

/// Bytes of command read; every supported command is far shorter.
const CMD_MAX: usize = 16;

/// A command as read from a chain.
struct Command {
    buf: [u8; CMD_MAX],
    /// Readable bytes in the chain (may exceed `CMD_MAX`).
    len: usize,
    ack: GuestAddress,
}

impl Net {
    /// Runs every queued control command. Returns whether the pairs in use changed.
    pub(super) fn process_ctrl(&mut self, a: &mut Active) -> bool {
        let Some(ci) = a.ctrl.filter(|_| !a.broken) else {
            return false;
        };
        let mut used = false;
        let mut pairs_changed = false;
        while let Some(chain) = a.queues[ci].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let used_len = match read_command(chain, &a.mem) {
                Some(cmd) => {
                    let (ack, changed) = self.run_command(a, &cmd);
                    pairs_changed |= changed;
                    if let Err(e) = a.mem.write_obj(ack, cmd.ack) {
                        log::warn!("virtio-net: cannot write control ack: {e}");
                    }
                    1
                }
                None => {
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    0
                }
            };
            if a.queues[ci].add_used(&a.mem, head, used_len).is_err() {
                Net::break_device(a, "cannot write the control used ring");
                return pairs_changed;
            }
            used = true;
        }
        if used {
            notify_guest(&mut a.queues[ci], &a.mem, &a.interrupt);
        }
        pairs_changed
    }

    /// Executes one command; returns the ack byte and whether the pairs in use changed.
    fn run_command(&mut self, a: &mut Active, cmd: &Command) -> (u8, bool) {
        let class = u32::from(cmd.buf[0]);
        let command = u32::from(cmd.buf[1]);
        let data = &cmd.buf[2..cmd.len.min(CMD_MAX)];
        let features = self.acked_features;
        match (class, command) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)
                if has(features, VIRTIO_NET_F_MQ) && cmd.len == 4 =>
            {
                let n = u16::from_le_bytes([data[0], data[1]]);
                if n == 0 || n > a.usable_pairs {
                    return (VIRTIO_NET_ERR as u8, false);
                }
                let changed = n != a.curr_pairs;
                a.curr_pairs = n;
                if changed {
                    self.apply_pairs(n);
                }
                (VIRTIO_NET_OK as u8, changed)
            }
            (VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK)
                if has(features, VIRTIO_NET_F_GUEST_ANNOUNCE) =>
            {
                self.status
                    .fetch_and(!(VIRTIO_NET_S_ANNOUNCE as u16), Ordering::SeqCst);
                (VIRTIO_NET_OK as u8, false)
            }
            _ => {
                log::debug!("virtio-net: unsupported control command {class}/{command}");
                (VIRTIO_NET_ERR as u8, false)
            }
        }
    }
}

/// Reads class, command and data from the readable part and locates the ack byte (the first
/// writable byte). `None` for a malformed chain: fewer than two readable bytes, no writable
/// byte, readable after writable, buffers outside guest memory.
fn read_command<I>(chain: I, mem: &GuestMemory) -> Option<Command>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut cmd = Command {
        buf: [0; CMD_MAX],
        len: 0,
        ack: GuestAddress(0),
    };
    let mut ack = None;
    for (n, d) in chain.enumerate() {
        if n >= MAX_CHAIN_DESCS {
            return None;
        }
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return None;
        }
        if d.is_write_only() {
            ack.get_or_insert(d.addr());
        } else {
            if ack.is_some() {
                return None;
            }
            if cmd.len < CMD_MAX {
                let take = (CMD_MAX - cmd.len).min(len);
                mem.read_slice(&mut cmd.buf[cmd.len..cmd.len + take], d.addr())
                    .ok()?;
            }
            cmd.len = cmd.len.saturating_add(len);
        }
    }
    cmd.ack = ack?;
    (cmd.len >= 2).then_some(cmd)
}
