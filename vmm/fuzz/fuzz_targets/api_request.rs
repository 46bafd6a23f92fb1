//! What a client that can reach the API socket or write a config file sends: any method, path and
//! body through the request parser (every endpoint's routing and validation, the JSON models),
//! the same bytes as a Firecracker `--config-file`, and as a Firecracker command line. Nothing
//! may panic; a refusal must carry a 4xx status and a message.
#![no_main]

use ferry_api::parse_request;
use ferry_vmm::firecracker_cli;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 6] = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // "path\nbody": the path as text (invalid UTF-8 is what the HTTP layer would refuse first).
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (path, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or(&[]);
    if let Ok(path) = std::str::from_utf8(path) {
        let method = METHODS[usize::from(selector) % METHODS.len()];
        if let Err(e) = parse_request(method, path, body) {
            let status = e.status();
            assert!((400..500).contains(&status), "{method} {path}: status {status}");
            assert!(!e.fault_message().is_empty());
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = firecracker_cli::parse_config_file(text);
        let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
        let _ = firecracker_cli::parse(&args);
    }
});
