//! The API server over a real socket with the mock VMM: round trips, hostile clients, socket
//! ownership rules.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use common::{Mock, TempDir};
use ferry_api::mock::MockVmm;
use ferry_api::{serve, ApiError};
use serde_json::{json, Value};

fn expect(mock: &Mock, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let response = mock
        .client
        .request(method, path, body.as_ref())
        .expect("request");
    assert_eq!(
        response.status,
        status,
        "{method} {path}: {}",
        String::from_utf8_lossy(&response.body)
    );
    if status >= 400 {
        assert_eq!(response.content_type.as_deref(), Some("application/json"));
        let fault = response.json().expect("error body");
        assert!(
            fault["fault_message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{fault}"
        );
    }
    if status == 204 {
        assert!(response.body.is_empty());
    }
    response.json().expect("json")
}

#[test]
fn configure_boot_and_control_a_vm() {
    let mock = Mock::start("flow");
    let info = expect(&mock, "GET", "/", None, 200);
    assert_eq!(
        (info["state"].as_str(), info["app_name"].as_str()),
        (Some("Not started"), Some("ferry"))
    );
    let version = expect(&mock, "GET", "/version", None, 200);
    assert!(version["firecracker_version"].is_string() && version["ferry_version"].is_string());

    expect(
        &mock,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 2, "mem_size_mib": 256})),
        204,
    );
    expect(
        &mock,
        "PATCH",
        "/machine-config",
        Some(json!({"mem_size_mib": 512})),
        204,
    );
    let machine = expect(&mock, "GET", "/machine-config", None, 200);
    assert_eq!(
        (
            machine["vcpu_count"].as_u64(),
            machine["mem_size_mib"].as_u64()
        ),
        (Some(2), Some(512))
    );
    // Starting without a boot source is refused with a reason.
    expect(
        &mock,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
        400,
    );
    expect(
        &mock,
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": "/probe", "boot_args": "probe.test=boot"})),
        204,
    );
    let drive = json!({"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true, "is_read_only": false});
    expect(&mock, "PUT", "/drives/rootfs", Some(drive), 204);
    let net =
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"});
    expect(&mock, "PUT", "/network-interfaces/eth0", Some(net), 204);
    expect(&mock, "PUT", "/logger", Some(json!({"level": "Info"})), 204);
    expect(
        &mock,
        "PUT",
        "/metrics",
        Some(json!({"metrics_path": "/tmp/m.fifo"})),
        204,
    );
    // Post-boot-only updates before boot are refused.
    expect(
        &mock,
        "PATCH",
        "/drives/rootfs",
        Some(json!({"drive_id": "rootfs", "path_on_host": "/img"})),
        400,
    );
    expect(&mock, "PATCH", "/vm", Some(json!({"state": "Paused"})), 400);

    expect(
        &mock,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
        204,
    );
    assert_eq!(expect(&mock, "GET", "/", None, 200)["state"], "Running");
    // A second InstanceStart and pre-boot configuration after boot are refused.
    expect(
        &mock,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
        400,
    );
    expect(
        &mock,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 128})),
        400,
    );
    expect(
        &mock,
        "PATCH",
        "/drives/rootfs",
        Some(json!({"drive_id": "rootfs", "path_on_host": "/img2"})),
        204,
    );
    expect(
        &mock,
        "PATCH",
        "/network-interfaces/eth0",
        Some(
            json!({"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}),
        ),
        204,
    );
    expect(&mock, "PATCH", "/vm", Some(json!({"state": "Paused"})), 204);
    assert_eq!(expect(&mock, "GET", "/", None, 200)["state"], "Paused");
    expect(
        &mock,
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": "/s/vmstate", "mem_file_path": "/s/memory"})),
        204,
    );
    expect(
        &mock,
        "PATCH",
        "/vm",
        Some(json!({"state": "Resumed"})),
        204,
    );
    expect(
        &mock,
        "PUT",
        "/actions",
        Some(json!({"action_type": "FlushMetrics"})),
        204,
    );
    expect(
        &mock,
        "PUT",
        "/actions",
        Some(json!({"action_type": "SendCtrlAltDel"})),
        204,
    );

    let config = expect(&mock, "GET", "/vm/config", None, 200);
    assert_eq!(config["boot-source"]["kernel_image_path"], "/probe");
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
    assert_eq!(config["drives"][0]["path_on_host"], "/img2");
    assert_eq!(
        config["network-interfaces"][0]["guest_mac"],
        "06:00:ac:10:00:02"
    );

    let metrics = mock
        .client
        .request("GET", "/metrics", None)
        .expect("metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("text/plain")));
    assert!(String::from_utf8_lossy(&metrics.body).contains("ferry_api_requests_total "));

    expect(
        &mock,
        "PUT",
        "/migration/send",
        Some(json!({"destination_url": "tcp:127.0.0.1:4444", "verify": true})),
        204,
    );
    let mut state = Value::Null;
    for _ in 0..10 {
        state = expect(&mock, "GET", "/migration", None, 200);
        if state["state"] != "sending" {
            break;
        }
    }
    assert_eq!(state["state"], "migrated");
}

#[test]
fn receive_and_load_before_boot() {
    let mock = Mock::start("recv");
    let body = json!({"listen_url": "tcp:0.0.0.0:4444", "maps": {"drives": [{"drive_id": "root", "path_on_host": "/dev/loop0"}]}});
    expect(&mock, "PUT", "/migration/receive", Some(body), 204);
    assert_eq!(
        expect(&mock, "GET", "/migration", None, 200)["state"],
        "receiving"
    );
    let load = json!({"snapshot_path": "/s/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "/s/memory"}, "resume_vm": true});
    expect(&mock, "PUT", "/snapshot/load", Some(load.clone()), 204);
    assert_eq!(expect(&mock, "GET", "/", None, 200)["state"], "Running");
    expect(&mock, "PUT", "/snapshot/load", Some(load), 400);
}

#[test]
fn bad_requests_get_clean_errors() {
    let mock = Mock::start("bad");
    let raw = |method: &str, path: &str, body: &[u8]| {
        mock.client.raw(method, path, body).expect("request")
    };
    assert_eq!(raw("PUT", "/boot-source", b"{not json").status, 400);
    assert_eq!(
        raw("PUT", "/boot-source", b"{\"kernel_image_path\": \"\xff\"}").status,
        400
    );
    assert_eq!(
        raw(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 1e300, "mem_size_mib": 1}"#
        )
        .status,
        400
    );
    assert_eq!(raw("PUT", "/boot-source", b"").status, 400);
    let not_found = raw("GET", "/no/such/thing", b"");
    assert_eq!(not_found.status, 404);
    assert!(not_found.fault_message().contains("/no/such/thing"));
    let wrong = raw("DELETE", "/drives/a", b"");
    assert_eq!(
        (wrong.status, wrong.header("allow")),
        (405, Some("PUT, PATCH"))
    );
    assert_eq!(raw("GET", "/?x=1", b"").status, 200);
    // Bodies over the cap: 413, whether declared or not.
    let big = vec![b' '; ferry_api::MAX_BODY_BYTES + 1];
    assert_eq!(raw("PUT", "/boot-source", &big).status, 413);
    let mut stream = UnixStream::connect(&mock.socket).expect("connect");
    stream
        .write_all(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("write");
    let chunk = vec![b' '; 40_000];
    for _ in 0..2 {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = stream.write_all(&chunk);
        let _ = stream.write_all(b"\r\n");
    }
    let response = ferry_api::client::read_response(&mut stream).expect("response");
    assert_eq!(response.status, 413);
    // Still serving.
    expect(&mock, "GET", "/", None, 200);
}

/// Sends raw bytes and returns everything the server answers before closing.
fn exchange(mock: &Mock, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(&mock.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn garbage_and_nul_do_not_hurt() {
    let mock = Mock::start("garbage");
    let answer = exchange(&mock, b"\x00\x01\x02 garbage\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    let answer = exchange(&mock, b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    let huge_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200_000));
    let answer = exchange(&mock, huge_header.as_bytes());
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    let answer = exchange(
        &mock,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    // Pipelined requests are answered in order (the connection stays open: read both answers).
    let mut stream = UnixStream::connect(&mock.socket).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    // The server closes the idle connection after the (test) header timeout.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(
        answer.find("\"state\"") < answer.find("firecracker_version"),
        "{answer}"
    );
    expect(&mock, "GET", "/", None, 200);
}

#[test]
fn slow_clients_are_cut_off() {
    let mock = Mock::start("slow");
    // Headers never finished.
    let mut stream = UnixStream::connect(&mock.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
    // Body never finished.
    let mut stream = UnixStream::connect(&mock.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .expect("write");
    let response = ferry_api::client::read_response(&mut stream).expect("response");
    assert_eq!(response.status, 408);
    expect(&mock, "GET", "/", None, 200);
}

#[test]
fn concurrent_connections_are_capped() {
    let mock = Mock::start("conc");
    // Many clients at once, each with a request: all are answered (the cap is 8, but
    // connections finish quickly and the kernel queues the rest).
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let client = mock.client.clone();
            std::thread::spawn(move || client.request("GET", "/", None).map(|r| r.status))
        })
        .collect();
    let answered = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .filter(|r| matches!(r, Ok(200)))
        .count();
    assert!(answered >= 8, "only {answered} of 32 answered");
    // Idle connections beyond the cap are closed at once.
    let idle: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&mock.socket).expect("connect"))
        .collect();
    // The listen queue is FIFO: the server takes the eight idle connections before this one,
    // however slowly it runs. The timeout only guards against a hang.
    let mut extra = UnixStream::connect(&mock.socket).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    assert_eq!(
        extra.read(&mut buf).ok(),
        Some(0),
        "the connection over the cap is closed"
    );
    drop(idle);
    // The server frees the slots when it sees the hang-ups, at its own pace: wait for that.
    let start = std::time::Instant::now();
    loop {
        match mock.client.request("GET", "/", None) {
            Ok(response) if response.status == 200 => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(60),
                "the freed slots were never reused: {:?}",
                other.map(|r| r.status)
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_mode_stale_and_live() {
    let dir = TempDir::new("sock");
    let path = dir.path("api.sock");
    // A stale socket (bound, nobody listening any more) is replaced.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let server = serve(&path, Arc::new(MockVmm::new())).expect("serve over a stale socket");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A live one is refused.
    match serve(&path, Arc::new(MockVmm::new())) {
        Err(ApiError::InUse(_)) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    // The first server is unharmed.
    let client = ferry_api::client::ApiClient::new(&path);
    assert_eq!(
        client.request("GET", "/", None).expect("request").status,
        200
    );
    server.shutdown();
    assert!(!path.exists(), "shutdown removes the socket");
    // A regular file is never replaced.
    std::fs::write(&path, b"precious").expect("write");
    assert!(matches!(
        serve(&path, Arc::new(MockVmm::new())),
        Err(ApiError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    // Unusable paths.
    assert!(matches!(
        serve(&dir.path(&"x".repeat(120)), Arc::new(MockVmm::new())),
        Err(ApiError::BadPath(_))
    ));
    assert!(serve(&dir.path("missing-dir/api.sock"), Arc::new(MockVmm::new())).is_err());
}
