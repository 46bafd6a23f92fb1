//! `ferry ctl` against the mock VMM over a real socket.

mod common;

use common::Mock;
use ferry_api::{run_ctl, CtlCommand, CtlError};
use serde_json::{json, Value};

fn boot(mock: &Mock) {
    for (method, path, body) in [
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/probe"}),
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true}),
        ),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
    ] {
        assert_eq!(
            mock.client
                .request(method, path, Some(&body))
                .expect("request")
                .status,
            204
        );
    }
}

fn ctl(mock: &Mock, command: CtlCommand, json: bool) -> Result<String, CtlError> {
    run_ctl(&mock.socket, command, json)
}

fn migrate(to: &str, detach: bool) -> CtlCommand {
    CtlCommand::Migrate {
        to: to.into(),
        downtime_ms: Some(50),
        max_iterations: None,
        verify: true,
        force_switchover: false,
        detach,
        security: Default::default(),
    }
}

#[test]
fn info_pause_resume_metrics() {
    let mock = Mock::start("ctl-basic");
    let text = ctl(&mock, CtlCommand::Info, false).expect("info");
    assert!(text.contains("state: Not started"), "{text}");
    // Errors carry the server's fault message.
    match ctl(&mock, CtlCommand::Pause, false) {
        Err(CtlError::Server {
            status: 400,
            fault_message,
        }) => assert!(fault_message.contains("started"), "{fault_message}"),
        other => panic!("{other:?}"),
    }
    boot(&mock);
    assert_eq!(
        ctl(&mock, CtlCommand::Pause, false).expect("pause"),
        "paused"
    );
    let info: Value =
        serde_json::from_str(&ctl(&mock, CtlCommand::Info, true).expect("info")).expect("json");
    assert_eq!(info["state"], "Paused");
    assert_eq!(
        ctl(&mock, CtlCommand::Resume, false).expect("resume"),
        "resumed"
    );
    // `shutdown` waits for the process to end, which a mock never does: tests/power.rs runs it
    // against the real ferry.
    let metrics = ctl(&mock, CtlCommand::Metrics, false).expect("metrics");
    assert!(metrics.contains("ferry_api_requests_total"));
    let metrics: Value =
        serde_json::from_str(&ctl(&mock, CtlCommand::Metrics, true).expect("metrics"))
            .expect("json");
    assert!(metrics["ferry_api_requests_total"]
        .as_f64()
        .is_some_and(|n| n > 0.0));
}

#[test]
fn resize_disk_patches_the_same_path() {
    let mock = Mock::start("ctl-resize");
    boot(&mock);
    let text = ctl(
        &mock,
        CtlCommand::ResizeDisk {
            id: "rootfs".into(),
        },
        false,
    )
    .expect("resize");
    assert!(text.contains("/img"), "{text}");
    assert!(matches!(
        ctl(&mock, CtlCommand::ResizeDisk { id: "nope".into() }, false),
        Err(CtlError::Usage(_))
    ));
}

#[test]
fn snapshot_pauses_and_resumes() {
    let mock = Mock::start("ctl-snap");
    boot(&mock);
    let dir = mock.dir.path("snap");
    let out = ctl(
        &mock,
        CtlCommand::Snapshot {
            to: dir.clone(),
            keep_paused: false,
        },
        true,
    )
    .expect("snapshot");
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(out["state"], "Running");
    assert!(out["snapshot_path"]
        .as_str()
        .is_some_and(|p| p.ends_with("snap/vmstate")));
    assert!(dir.is_dir());
    ctl(
        &mock,
        CtlCommand::Snapshot {
            to: dir,
            keep_paused: true,
        },
        false,
    )
    .expect("snapshot");
    assert!(ctl(&mock, CtlCommand::Info, false)
        .expect("info")
        .contains("state: Paused"));
}

#[test]
fn migrate_waits_for_the_outcome() {
    let mock = Mock::start("ctl-migrate-ok");
    boot(&mock);
    let text = ctl(&mock, migrate("tcp:127.0.0.1:4444", false), false).expect("migrate");
    assert!(text.contains("state: migrated"), "{text}");
    assert!(text.contains("downtime: 4 ms"), "{text}");

    let mock = Mock::start("ctl-migrate-fail");
    boot(&mock);
    match ctl(&mock, migrate("tcp:fail:1", false), false) {
        Err(e @ CtlError::MigrationFailed(_)) => assert_eq!(e.exit_code(), 1),
        other => panic!("{other:?}"),
    }

    let mock = Mock::start("ctl-migrate-doubt");
    boot(&mock);
    match ctl(&mock, migrate("tcp:doubt:1", false), false) {
        Err(e @ CtlError::MigrationInDoubt(_)) => assert_eq!(e.exit_code(), 3),
        other => panic!("{other:?}"),
    }

    let mock = Mock::start("ctl-migrate-detach");
    boot(&mock);
    assert!(ctl(&mock, migrate("unix:/tmp/x", true), false)
        .expect("detach")
        .contains("started"));
    let status: Value =
        serde_json::from_str(&ctl(&mock, CtlCommand::MigrationStatus, true).expect("status"))
            .expect("json");
    assert_eq!(status["state"], "sending");
    // A bad URL is refused by the server with its reason.
    match ctl(&mock, migrate("ftp://x", false), false) {
        Err(CtlError::Server {
            status: 400,
            fault_message,
        }) => assert!(fault_message.contains("tcp:HOST:PORT")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_server_is_a_clear_error() {
    let dir = common::TempDir::new("ctl-none");
    match run_ctl(&dir.path("none.sock"), CtlCommand::Info, false) {
        Err(e) => assert!(e.to_string().contains("cannot connect"), "{e}"),
        Ok(text) => panic!("{text}"),
    }
}
