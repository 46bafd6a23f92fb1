//! Feeds arbitrary bytes to the destination's side of the migration protocol: the hello, then
//! message after message as `ferry receive` reads them (memory payloads consumed, JSON blobs
//! parsed into the real types). Nothing may panic, allocate without bound or accept a range
//! outside the (pretend) 64 MiB of guest RAM.
#![no_main]

use std::io::{Cursor, Read};

use ferry_vmm::migration::wire::{read_hello, read_source_message, SourceMessage};
use ferry_vmm::migration::MigrationStart;
use ferry_vmm::vm_snapshot::VmSnapshot;
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    if read_hello(&mut input).is_err() {
        return;
    }
    let in_ram = |gpa: u64, len: u64| gpa.checked_add(len).is_some_and(|end| end <= RAM);
    while let Ok(message) = read_source_message(&mut input, in_ram) {
        match message {
            SourceMessage::MemData { gpa, len } => {
                assert!(in_ram(gpa, u64::from(len)));
                let mut sink = Vec::new();
                if (&mut input).take(u64::from(len)).read_to_end(&mut sink).is_err() {
                    return;
                }
            }
            SourceMessage::MemZero { gpa, len } => assert!(in_ram(gpa, len)),
            SourceMessage::Config(json) => {
                let _ = serde_json::from_slice::<MigrationStart>(&json);
            }
            SourceMessage::State(json) => {
                let _ = serde_json::from_slice::<VmSnapshot>(&json);
            }
            SourceMessage::Commit | SourceMessage::Abort(_) => return,
            SourceMessage::Round(_) | SourceMessage::Digest(_) => {}
        }
    }
});
