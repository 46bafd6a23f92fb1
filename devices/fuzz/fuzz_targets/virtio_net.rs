//! A hostile guest's virtio-net queues: for RX, TX and the control queue the descriptor table and
//! the avail heads come from the fuzzer, with guest memory full of fuzzer bytes (vnet headers with
//! any flags, GSO types and checksum offsets, frames of any length, control commands of any class),
//! under any feature set the guest may accept. A frame from the host side (a socket pair stands in
//! for the tap) is delivered into whatever RX buffers the guest offered. The real device runs in a
//! real event loop; nothing may panic or loop.
#![no_main]

#[path = "common/rings.rs"]
mod rings;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferry_devices::net::{MacAddr, NetBackend};
use ferry_devices::virtio::net::Net;
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use rings::{take, GuestRings, Rig, MEM};
use vm_memory::GuestAddress;

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

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    // RX, TX and the control queue.
    let Some(rings) = GuestRings::parse(&mut data, 3) else {
        return;
    };
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
    let Some(mut rig) = Rig::activate(mem, &net, &rings) else {
        return;
    };
    rig.fill(&rings, data);
    if !frame.is_empty() {
        // SAFETY: writes from a live buffer; a refused datagram is simply not delivered.
        unsafe { libc::write(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    }
    rig.run(&rings);
});
