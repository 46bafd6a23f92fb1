//! A session with commands in flight receiving arbitrary bytes from a target (first byte selects
//! the digests in force).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_devices::storage::iscsi::fuzzing::session_feed(data);
});
