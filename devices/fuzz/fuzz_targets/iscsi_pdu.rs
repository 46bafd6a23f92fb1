//! PDU framing/decoding, login response parsing and the SCSI data parsers over arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_devices::storage::iscsi::fuzzing::decode_all(data);
});
