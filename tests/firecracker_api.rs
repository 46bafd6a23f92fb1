//! Firecracker API behaviour beyond the getting-started flow (`ferry firecracker`, the real
//! binary): the request body limit and the validation Firecracker does at request time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{http, wait_for_socket, FerryProcess, TempDir};

const DEADLINE: Duration = Duration::from_secs(120);

/// `ferry firecracker --api-sock DIR/fc.sock extra…`, waiting for the socket.
fn start(dir: &Path, extra: &[&str]) -> (FerryProcess, std::path::PathBuf) {
    let socket = dir.join("fc.sock");
    let mut args = vec!["firecracker", "--api-sock", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    let vm = FerryProcess::spawn(dir, "fc", &args);
    wait_for_socket(&socket, DEADLINE);
    (vm, socket)
}

/// A valid `PUT /machine-config` body padded with spaces to exactly `len` bytes.
fn padded_machine_config(len: usize) -> String {
    let mut body = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_string();
    assert!(len >= body.len());
    body.push_str(&" ".repeat(len - body.len()));
    body
}

#[test]
fn http_api_max_payload_size_bounds_request_bodies_with_400() {
    let dir = TempDir::new("fc-payload");
    let (_vm, socket) = start(dir.path(), &["--http-api-max-payload-size", "1000"]);
    let (status, body) = http(
        &socket,
        "PUT",
        "/machine-config",
        Some(&padded_machine_config(1000)),
    );
    assert_eq!(status, 204, "a body at the limit: {body}");
    let (status, body) = http(
        &socket,
        "PUT",
        "/machine-config",
        Some(&padded_machine_config(1001)),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1001") && body.contains("1000"), "{body}");
    // Still serving.
    assert_eq!(http(&socket, "GET", "/machine-config", None).0, 200);

    // Without the flag, Firecracker's default of 51200 bytes.
    let dir = TempDir::new("fc-payload-default");
    let (_vm, socket) = start(dir.path(), &[]);
    let (status, body) = http(
        &socket,
        "PUT",
        "/machine-config",
        Some(&padded_machine_config(51_200)),
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = http(
        &socket,
        "PUT",
        "/machine-config",
        Some(&padded_machine_config(51_201)),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn boot_source_with_a_missing_kernel_or_initrd_is_refused_at_put_time() {
    let dir = TempDir::new("fc-boot-source");
    let (_vm, socket) = start(dir.path(), &[]);
    let probe = common::probe_bin();
    let missing = dir.path().join("missing");
    let put =
        |body: serde_json::Value| http(&socket, "PUT", "/boot-source", Some(&body.to_string()));

    let (status, body) = put(serde_json::json!({"kernel_image_path": missing}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("cannot open kernel") && body.contains("missing"),
        "{body}"
    );
    let (status, body) = put(serde_json::json!({"kernel_image_path": dir.path()}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a regular file"), "{body}");
    let (status, body) =
        put(serde_json::json!({"kernel_image_path": probe, "initrd_path": missing}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot open initrd"), "{body}");
    // Nothing refused was kept.
    let (_, config) = http(&socket, "GET", "/vm/config", None);
    assert!(!config.contains("boot-source"), "{config}");

    let (status, body) = put(serde_json::json!({"kernel_image_path": probe}));
    assert_eq!(status, 204, "{body}");
}
