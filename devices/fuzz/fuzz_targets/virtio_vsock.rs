//! A hostile guest's virtio-vsock queues: for RX, TX and the event queue the descriptor table and
//! the avail heads come from the fuzzer, with guest memory full of fuzzer bytes (packet headers
//! with any CIDs, ports, types, ops, lengths and credit figures, chains of any shape), under any
//! feature set the guest may accept. On the host side a service listens at `<uds_path>_52` (so
//! guest REQUESTs to port 52 connect) and a client sends fuzzer bytes as its `CONNECT` line and
//! data. The real device runs in a real event loop; nothing may panic or loop.
#![no_main]

#[path = "common/rings.rs"]
mod rings;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use ferry_devices::virtio::vsock::Vsock;
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use rings::{take, GuestRings, Rig, MEM};
use vm_memory::GuestAddress;

const GUEST_CID: u64 = 3;

/// This process's socket directory (one fuzzing process runs one input at a time).
fn socket_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    // RX, TX and the event queue.
    let Some(rings) = GuestRings::parse(&mut data, 3) else {
        return;
    };
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
    let Some(mut rig) = Rig::activate(mem, &vsock, &rings) else {
        return;
    };
    rig.fill(&rings, data);
    // A host client: its first bytes may or may not be a CONNECT line.
    let _client = UnixStream::connect(&uds).ok().map(|mut s| {
        let _ = s.write_all(client);
        s
    });
    rig.run(&rings);
});
