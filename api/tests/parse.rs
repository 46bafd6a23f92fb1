//! Every endpoint's routing and validation, without a socket: method + path + body → request or
//! the exact error status.

use ferry_api::*;

fn ok(method: &str, path: &str, body: &str) -> ApiRequest {
    match parse_request(method, path, body.as_bytes()) {
        Ok(request) => request,
        Err(e) => panic!("{method} {path} {body}: {e:?}"),
    }
}

fn status(method: &str, path: &str, body: &str) -> u16 {
    match parse_request(method, path, body.as_bytes()) {
        Ok(request) => panic!("{method} {path} {body}: accepted as {request:?}"),
        Err(e) => e.status(),
    }
}

fn bad(method: &str, path: &str, body: &str) -> String {
    match parse_request(method, path, body.as_bytes()) {
        Err(RequestError::BadRequest(message)) => message,
        other => panic!("{method} {path} {body}: expected 400, got {other:?}"),
    }
}

#[test]
fn routes_and_methods() {
    assert_eq!(ok("GET", "/", ""), ApiRequest::GetInstanceInfo);
    assert_eq!(
        ok("GET", "/machine-config", ""),
        ApiRequest::GetMachineConfig
    );
    assert_eq!(ok("GET", "/vm/config", ""), ApiRequest::GetVmConfig);
    assert_eq!(ok("GET", "/migration", ""), ApiRequest::GetMigration);
    assert_eq!(ok("GET", "/metrics", ""), ApiRequest::GetMetrics);
    for (method, path) in [
        ("PUT", "/"),
        ("POST", "/machine-config"),
        ("GET", "/boot-source"),
        ("GET", "/drives/a"),
        ("DELETE", "/network-interfaces/a"),
        ("GET", "/actions"),
        ("GET", "/vm"),
        ("PUT", "/vm/config"),
        ("GET", "/snapshot/create"),
        ("GET", "/logger"),
        ("PATCH", "/metrics"),
        ("PUT", "/migration"),
        ("GET", "/migration/send"),
        ("PUT", "/version"),
    ] {
        assert_eq!(status(method, path, "{}"), 405, "{method} {path}");
    }
    for path in [
        "/nope",
        "/machine-config/",
        "//",
        "/drives/a/b",
        "/vm/x",
        "/migration/x",
        "relative",
    ] {
        assert_eq!(status("GET", path, ""), 404, "{path}");
    }
    // Firecracker endpoints ferry lacks: a 400 that says so.
    assert!(bad("PATCH", "/balloon/hinting/start", "{}").contains("hinting"));
    assert!(bad("GET", "/mmds", "").contains("MMDS"));
    // /version is answered by the server itself.
    assert_eq!(status("GET", "/version", ""), 404);
}

#[test]
fn method_not_allowed_lists_methods() {
    match parse_request("DELETE", "/machine-config", b"") {
        Err(RequestError::MethodNotAllowed { allow, .. }) => assert_eq!(allow, "GET, PUT, PATCH"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bodies_must_be_json() {
    assert!(bad("PUT", "/boot-source", "").contains("empty"));
    assert!(bad("PUT", "/boot-source", "  \n").contains("empty"));
    assert!(bad("PUT", "/boot-source", "{").contains("invalid JSON"));
    assert!(bad("PUT", "/boot-source", "[]").contains("invalid JSON"));
    assert!(bad("PUT", "/boot-source", "null").contains("invalid JSON"));
    let invalid_utf8 = b"{\"kernel_image_path\": \"\xff\xfe\"}";
    assert_eq!(
        parse_request("PUT", "/boot-source", invalid_utf8).map_err(|e| e.status()),
        Err(400)
    );
    // serde would take a struct's fields in order from an array; the API does not.
    assert!(bad("PUT", "/machine-config", "[1, 128]").contains("array"));
    assert!(bad("PUT", "/logger", "[null]").contains("array"));
    assert!(bad(
        "PATCH",
        "/drives/a",
        r#"{"drive_id": "a", "rate_limiter": [null, null]}"#
    )
    .contains("array"));
    let deep = "[".repeat(10_000);
    assert_eq!(status("PUT", "/machine-config", &deep), 400);
}

#[test]
fn machine_config() {
    assert_eq!(
        ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 512, "smt": true, "track_dirty_pages": true, "cpu_template": "None"}"#
        ),
        ApiRequest::PutMachineConfig(
            MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 512,
                smt: true,
                track_dirty_pages: true,
                acpi: true,
                huge_pages: HugePages::None,
                cpu_template: StaticCpuTemplate::None,
            },
            Some(StaticCpuTemplate::None)
        )
    );
    assert_eq!(
        ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "acpi": false}"#
        ),
        ApiRequest::PutMachineConfig(
            MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                acpi: false,
                huge_pages: HugePages::None,
                cpu_template: StaticCpuTemplate::None,
            },
            None
        )
    );
    assert_eq!(
        ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#
        ),
        ApiRequest::PutMachineConfig(
            MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                acpi: true,
                huge_pages: HugePages::None,
                cpu_template: StaticCpuTemplate::None,
            },
            None
        )
    );
    for (text, huge_pages) in [
        ("None", HugePages::None),
        ("Transparent", HugePages::Transparent),
        ("2M", HugePages::Hugetlb2M),
    ] {
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "{text}"}}"#);
        match ok("PUT", "/machine-config", &body) {
            ApiRequest::PutMachineConfig(config, _) => assert_eq!(config.huge_pages, huge_pages),
            other => panic!("{other:?}"),
        }
    }
    for body in [
        r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
        r#"{"vcpu_count": 33, "mem_size_mib": 128}"#,
        r#"{"vcpu_count": 300, "mem_size_mib": 128}"#,
        r#"{"vcpu_count": -1, "mem_size_mib": 128}"#,
        r#"{"vcpu_count": 1.5, "mem_size_mib": 128}"#,
        r#"{"vcpu_count": "1", "mem_size_mib": 128}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551615}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 99999999999999999999999}"#,
        r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "V1N1"}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "t2"}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": 2}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#,
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "acpi": "off"}"#,
        r#"{"mem_size_mib": 128}"#,
    ] {
        assert_eq!(status("PUT", "/machine-config", body), 400, "{body}");
    }
    match ok("PATCH", "/machine-config", r#"{"mem_size_mib": 1024}"#) {
        ApiRequest::PatchMachineConfig(update) => {
            let next = update.apply(&MachineConfig::default()).expect("apply");
            assert_eq!((next.vcpu_count, next.mem_size_mib), (1, 1024));
            assert!(next.acpi, "PATCH keeps ACPI as it was");
            let smt = MachineConfig {
                vcpu_count: 3,
                ..MachineConfig::default()
            };
            let with_smt: MachineConfigUpdate =
                serde_json::from_str(r#"{"smt": true}"#).expect("update");
            assert!(with_smt.apply(&smt).is_err());
        }
        other => panic!("{other:?}"),
    }
    assert!(bad("PATCH", "/machine-config", "{}").contains("empty PATCH"));
    // null is "absent" (Firecracker's Option fields): all-null is empty too.
    assert!(bad(
        "PATCH",
        "/machine-config",
        r#"{"acpi": null, "cpu_template": null, "huge_pages": null}"#
    )
    .contains("empty PATCH"));
    assert!(bad("PATCH", "/machine-config", r#"{"cpu_template": "V1N1"}"#).contains("aarch64"));
    assert_eq!(
        status("PATCH", "/machine-config", r#"{"vcpu_count": 0}"#),
        400
    );
    assert_eq!(
        status("PATCH", "/machine-config", r#"{"mem_size_mib": 0}"#),
        400
    );
}

/// The static CPU templates Firecracker knows on x86_64 are accepted by name; `V1N1` (aarch64)
/// is refused with its reason.
#[test]
fn machine_config_cpu_templates() {
    for (name, template) in [
        ("C3", StaticCpuTemplate::C3),
        ("T2", StaticCpuTemplate::T2),
        ("T2S", StaticCpuTemplate::T2S),
        ("T2CL", StaticCpuTemplate::T2CL),
        ("T2A", StaticCpuTemplate::T2A),
        ("None", StaticCpuTemplate::None),
    ] {
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "{name}"}}"#);
        match ok("PUT", "/machine-config", &body) {
            ApiRequest::PutMachineConfig(machine, given) => {
                assert_eq!((machine.cpu_template, given), (template, Some(template)));
            }
            other => panic!("{other:?}"),
        }
        match ok(
            "PATCH",
            "/machine-config",
            &format!(r#"{{"cpu_template": "{name}"}}"#),
        ) {
            ApiRequest::PatchMachineConfig(update) => {
                assert_eq!(update.cpu_template, Some(template));
            }
            other => panic!("{other:?}"),
        }
    }
    let err = bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "V1N1"}"#,
    );
    assert!(err.contains("aarch64"), "{err}");
}

#[test]
fn boot_source() {
    assert_eq!(
        ok(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "probe.test=boot"}"#
        ),
        ApiRequest::PutBootSource(BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some("probe.test=boot".into())
        })
    );
    for body in [
        r#"{"kernel_image_path": ""}"#,
        r#"{"kernel_image_path": "/k\u0000x"}"#,
        r#"{"kernel_image_path": "/k", "initrd_path": "/i\u0000"}"#,
        r#"{"kernel_image_path": 5}"#,
        r#"{"initrd_path": "/i"}"#,
        r#"{"kernel_image_path": "/k", "extra": true}"#,
    ] {
        assert_eq!(status("PUT", "/boot-source", body), 400, "{body}");
    }
    let long = format!(
        r#"{{"kernel_image_path": "/k", "boot_args": "{}"}}"#,
        "a".repeat(2049)
    );
    assert_eq!(status("PUT", "/boot-source", &long), 400);
}

#[test]
fn drives() {
    let body = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback", "io_engine": "Async", "partuuid": "abcd-01",
        "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}, "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}}"#;
    match ok("PUT", "/drives/rootfs", body) {
        ApiRequest::PutDrive(drive) => {
            assert_eq!(drive.cache_type, CacheType::Writeback);
            assert_eq!(drive.io_engine, IoEngine::Async);
            assert_eq!(
                drive
                    .rate_limiter
                    .and_then(|r| r.ops)
                    .map(|b| b.one_time_burst),
                Some(Some(5))
            );
            let config = Drive::from_config(&DriveConfig {
                drive_id: "x".into(),
                path_on_host: "/y".into(),
                is_root_device: false,
                is_read_only: true,
                partuuid: Some("abcd-01".into()),
                direct: None,
                chap_secret_file: None,
                rate_limiter: None,
            });
            assert!(config.to_config().is_read_only);
            assert_eq!(config.partuuid.as_deref(), Some("abcd-01"));
            assert_eq!(config.to_config().partuuid.as_deref(), Some("abcd-01"));
        }
        other => panic!("{other:?}"),
    }
    match ok(
        "PUT",
        "/drives/d1",
        r#"{"drive_id": "d1", "path_on_host": "iscsi://127.0.0.1:3260/iqn.2026-11.test:disk0/1", "is_root_device": false}"#,
    ) {
        ApiRequest::PutDrive(drive) => {
            let config = drive.to_config();
            assert_eq!(
                (
                    config.is_read_only,
                    config.path_on_host.starts_with("iscsi://")
                ),
                (false, true)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(bad(
        "PUT",
        "/drives/other",
        r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true}"#
    )
    .contains("differs"));
    assert!(bad(
        "PUT",
        "/drives/",
        r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true}"#
    )
    .contains("missing drive id"));
    for (path, body) in [
        (
            "/drives/a%20b",
            r#"{"drive_id": "a%20b", "path_on_host": "/img", "is_root_device": true}"#,
        ),
        (
            "/drives/a.b",
            r#"{"drive_id": "a.b", "path_on_host": "/img", "is_root_device": true}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "", "is_root_device": true}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/x\u0000", "is_root_device": true}"#,
        ),
        ("/drives/a", r#"{"drive_id": "a", "path_on_host": "/img"}"#),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true, "cache_type": "None"}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true, "io_engine": "uring"}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true, "socket": "/vhost"}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1}}}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": 1}}}"#,
        ),
        (
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "iscsi://", "is_root_device": true}"#,
        ),
    ] {
        assert_eq!(status("PUT", path, body), 400, "{path} {body}");
    }
    let id65 = "x".repeat(65);
    assert_eq!(
        status(
            "PUT",
            &format!("/drives/{id65}"),
            &format!(r#"{{"drive_id": "{id65}", "path_on_host": "/i", "is_root_device": false}}"#)
        ),
        400
    );

    assert_eq!(
        ok(
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/img"}"#
        ),
        ApiRequest::PatchDrive(DrivePatch {
            drive_id: "rootfs".into(),
            path_on_host: Some("/img".into()),
            rate_limiter: None
        })
    );
    assert!(bad("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#).contains("empty PATCH"));
    assert_eq!(
        status(
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "is_read_only": true}"#
        ),
        400
    );
    assert_eq!(
        status(
            "PATCH",
            "/drives/x",
            r#"{"drive_id": "rootfs", "path_on_host": "/img"}"#
        ),
        400
    );
}

#[test]
fn network_interfaces() {
    match ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "mvt0", "guest_mac": "06:00:ac:10:00:02", "host_dev_type": "macvtap", "queues": 2,
        "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
    ) {
        ApiRequest::PutNetworkInterface(iface) => {
            let config = iface.to_config();
            assert_eq!(config.backend, NetBackendConfig::Macvtap("mvt0".into()));
            assert_eq!(config.queues, 2);
            assert_eq!(
                NetworkInterface::from_config(&config).host_dev_type,
                Some(HostDevType::Macvtap)
            );
        }
        other => panic!("{other:?}"),
    }
    match ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "ferrytest-nx0"}"#,
    ) {
        // No such interface in sysfs: tap.
        ApiRequest::PutNetworkInterface(iface) => assert_eq!(
            iface.to_config().backend,
            NetBackendConfig::Tap("ferrytest-nx0".into())
        ),
        other => panic!("{other:?}"),
    }
    for mtu in [68, 1400, 9000, 65535] {
        let body = format!(r#"{{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": {mtu}}}"#);
        match ok("PUT", "/network-interfaces/eth0", &body) {
            ApiRequest::PutNetworkInterface(iface) => {
                let config = iface.to_config();
                assert_eq!(config.mtu, Some(mtu));
                assert_eq!(NetworkInterface::from_config(&config).mtu, Some(mtu));
            }
            other => panic!("{other:?}"),
        }
    }
    for body in [
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 65536}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": -1}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:5e:00:00:01"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "a-name-too-long-for-linux"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "../etc"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "host_dev_type": "fd"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "host_dev_type": "vde"}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "queues": 0}"#,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "allow_mmds_requests": true}"#,
        r#"{"iface_id": "eth0"}"#,
        r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#,
    ] {
        assert_eq!(
            status("PUT", "/network-interfaces/eth0", body),
            400,
            "{body}"
        );
    }
    assert!(matches!(
        ok(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 5, "refill_time": 10}}}"#
        ),
        ApiRequest::PatchNetworkInterface(_)
    ));
    assert!(bad(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0"}"#
    )
    .contains("empty PATCH"));
    assert!(bad("PUT", "/network-interfaces", r#"{}"#).contains("missing iface id"));
}

#[test]
fn rate_limiter_values_are_checked() {
    // A bucket that never refills, or refills over more than a day: 400 with the field named.
    assert!(bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 0}}}"#
    )
    .contains("rate_limiter.bandwidth: refill_time must be at least 1 ms"));
    assert!(bad(
        "PATCH",
        "/drives/a",
        r#"{"drive_id": "a", "rate_limiter": {"ops": {"size": 10, "refill_time": 100000000000}}}"#
    )
    .contains("rate_limiter.ops: refill_time"));
    assert!(bad(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#
    )
    .contains("tx_rate_limiter.ops"));
    assert!(bad(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 0}}}"#
    )
    .contains("rx_rate_limiter.bandwidth"));
    assert!(bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 18446744073709551616, "refill_time": 1}}}"#
    )
    .contains("invalid"));
    // No refill_time may exceed a day, even on a size-0 (removing) bucket: the schema says so.
    assert!(bad(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 0, "refill_time": 86400001}}}"#
    )
    .contains("tx_rate_limiter.ops: refill_time 86400001 ms is above the limit"));
    // Size 0 is "no bucket" (Firecracker's way to remove a limit): accepted, and not kept.
    let ApiRequest::PutDrive(drive) = ok(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "path_on_host": "/img", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}, "ops": {"size": 100, "refill_time": 1000}}}"#,
    ) else {
        panic!("not a drive");
    };
    let kept = drive.to_config().rate_limiter.unwrap();
    assert!(kept.bandwidth.is_none());
    assert_eq!(kept.ops.as_ref().map(|b| b.size), Some(100));
    assert_eq!(
        Drive::from_config(&drive.to_config()).rate_limiter,
        Some(kept)
    );
}

#[test]
fn rate_limiter_patches_follow_firecracker() {
    let bucket = |size, refill_time| TokenBucket {
        size,
        one_time_burst: None,
        refill_time,
    };
    let current = RateLimiter {
        bandwidth: Some(bucket(1000, 100)),
        ops: Some(bucket(10, 1000)),
    };
    // A bucket given replaces, one not given stays.
    let patch = RateLimiter {
        bandwidth: Some(bucket(2000, 100)),
        ops: None,
    };
    assert_eq!(
        RateLimiter::patched(Some(&current), &patch),
        Some(RateLimiter {
            bandwidth: Some(bucket(2000, 100)),
            ops: Some(bucket(10, 1000)),
        })
    );
    // Size 0 removes a bucket; removing the last leaves no limiter.
    let off = RateLimiter {
        bandwidth: Some(bucket(0, 0)),
        ops: Some(bucket(0, 0)),
    };
    assert_eq!(RateLimiter::patched(Some(&current), &off), None);
    assert_eq!(
        RateLimiter::patched(None, &patch),
        Some(RateLimiter {
            bandwidth: Some(bucket(2000, 100)),
            ops: None,
        })
    );
}

#[test]
fn actions_and_vm_state() {
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ApiRequest::Action(ActionType::InstanceStart)
    );
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        ApiRequest::Action(ActionType::SendCtrlAltDel)
    );
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
        ApiRequest::Action(ActionType::FlushMetrics)
    );
    for body in [
        r#"{"action_type": "Reboot"}"#,
        r#"{"action_type": "instancestart"}"#,
        r#"{}"#,
        r#"{"action_type": "InstanceStart", "payload": 1}"#,
    ] {
        assert_eq!(status("PUT", "/actions", body), 400, "{body}");
    }
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ApiRequest::PatchVm(VmState::Paused)
    );
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        ApiRequest::PatchVm(VmState::Resumed)
    );
    assert_eq!(status("PATCH", "/vm", r#"{"state": "Running"}"#), 400);
}

#[test]
fn snapshots() {
    assert_eq!(
        ok(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s/state", "mem_file_path": "/s/mem"}"#
        ),
        ApiRequest::SnapshotCreate(SnapshotCreate {
            snapshot_type: SnapshotType::Full,
            snapshot_path: "/s/state".into(),
            mem_file_path: "/s/mem".into()
        })
    );
    assert_eq!(
        status(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s/state"}"#
        ),
        400
    );
    assert_eq!(
        status(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "", "mem_file_path": "/m"}"#
        ),
        400
    );
    assert_eq!(
        status(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Incremental"}"#
        ),
        400
    );
    let load = SnapshotLoad {
        snapshot_path: "/s".into(),
        mem_file_path: "/m".into(),
        track_dirty_pages: true,
        resume_vm: true,
        network_overrides: vec![],
        clock_realtime: false,
        mem_diff_paths: vec![],
        vsock_override: None,
    };
    assert_eq!(
        ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "track_dirty_pages": true, "resume_vm": true}"#
        ),
        ApiRequest::SnapshotLoad(load.clone())
    );
    assert_eq!(
        ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true, "resume_vm": true}"#
        ),
        ApiRequest::SnapshotLoad(load)
    );
    assert!(bad(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#
    )
    .contains("Uffd"));
    assert!(bad("PUT", "/snapshot/load", r#"{"snapshot_path": "/s"}"#).contains("missing"));
    // Firecracker's other fields, and ferry's diff chain.
    match ok(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}], "clock_realtime": true, "mem_diff_paths": ["/d1", "/d2"]}"#,
    ) {
        ApiRequest::SnapshotLoad(l) => {
            assert_eq!(
                l.network_overrides,
                vec![NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap9".into()
                }]
            );
            assert!(l.clock_realtime);
            assert_eq!(l.mem_diff_paths, ["/d1", "/d2"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": []}"#
        ),
        ApiRequest::SnapshotLoad(_)
    ));
    let ApiRequest::SnapshotLoad(load) = ok(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"uds_path": "/v"}}"#,
    ) else {
        panic!("not SnapshotLoad");
    };
    assert_eq!(
        load.vsock_override.map(|o| o.uds_path).as_deref(),
        Some("/v")
    );
    assert!(bad(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"uds_path": ""}}"#
    )
    .contains("vsock_override.uds_path"));
    assert!(bad(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"path": "/v"}}"#
    )
    .contains("unknown field"));
    assert!(bad("PUT", "/snapshot/load", r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "a", "host_dev_name": "u"}]}"#).contains("twice"));
    assert!(bad("PUT", "/snapshot/load", r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": "a-name-that-is-too-long"}]}"#).contains("host_dev_name"));
    assert!(bad(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_diff_paths": [""]}"#
    )
    .contains("mem_diff_paths"));
    assert!(bad("PUT", "/snapshot/load", r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#).contains("not both"));
}

#[test]
fn logger_and_metrics() {
    match ok(
        "PUT",
        "/logger",
        r#"{"log_path": "/l", "level": "warning", "show_level": true}"#,
    ) {
        ApiRequest::PutLogger(logger) => assert_eq!(
            (logger.level, logger.show_level),
            (Some(LogLevel::Warning), Some(true))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok("PUT", "/logger", "{}"),
        ApiRequest::PutLogger(LoggerConfig::default())
    );
    assert_eq!(status("PUT", "/logger", r#"{"level": "Loud"}"#), 400);
    assert_eq!(status("PUT", "/logger", r#"{"log_path": "/a\u0000"}"#), 400);
    assert_eq!(
        ok("PUT", "/metrics", r#"{"metrics_path": "/m"}"#),
        ApiRequest::PutMetrics(MetricsConfig {
            metrics_path: "/m".into(),
            emit_id: None,
            properties: None,
        })
    );
    match ok(
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/m", "emit_id": true, "properties": {"pool": "a", "zone": "z1"}}"#,
    ) {
        ApiRequest::PutMetrics(m) => {
            assert_eq!(m.emit_id, Some(true));
            assert_eq!(m.properties.unwrap()["zone"], "z1");
        }
        other => panic!("{other:?}"),
    }
    for body in [
        r#"{"metrics_path": "/m", "properties": {"a": 1}}"#,
        r#"{"metrics_path": "/m", "properties": ["a"]}"#,
        r#"{"metrics_path": "/m", "emit_id": "yes"}"#,
    ] {
        assert_eq!(status("PUT", "/metrics", body), 400, "{body}");
    }
    assert_eq!(status("PUT", "/metrics", r#"{"metrics_path": ""}"#), 400);
    assert_eq!(status("PUT", "/metrics", r#"{}"#), 400);
}

#[test]
fn migration() {
    match ok(
        "PUT",
        "/migration/send",
        r#"{"destination_url": "tcp:10.0.0.2:4444"}"#,
    ) {
        ApiRequest::MigrationSend(send) => {
            assert_eq!(
                (
                    send.downtime_ms,
                    send.max_iterations,
                    send.verify,
                    send.force_switchover,
                    send.auto_converge
                ),
                (300, 30, false, false, true)
            );
            assert_eq!(
                send.destination(),
                Ok(MigrationUrl::Tcp {
                    host: "10.0.0.2".into(),
                    port: 4444
                })
            );
        }
        other => panic!("{other:?}"),
    }
    for body in [
        r#"{"destination_url": "http://x"}"#,
        r#"{"destination_url": "tcp:h:1", "downtime_ms": 0}"#,
        r#"{"destination_url": "tcp:h:1", "max_iterations": 0}"#,
        r#"{"destination_url": "tcp:h:1", "downtime_ms": 18446744073709551616}"#,
        r#"{"destination_url": "tcp:h:1", "speed": 1}"#,
        r#"{}"#,
    ] {
        assert_eq!(status("PUT", "/migration/send", body), 400, "{body}");
    }
    match ok(
        "PUT",
        "/migration/receive",
        r#"{"listen_url": "unix:/run/m.sock", "maps": {"drives": [{"drive_id": "root", "path_on_host": "/dev/vg/root"}], "network_interfaces": [{"iface_id": "eth0", "host_dev_name": "mvt1", "host_dev_type": "macvtap"}]}}"#,
    ) {
        ApiRequest::MigrationReceive(receive) => {
            assert_eq!(
                receive.listen(),
                Ok(MigrationUrl::Unix("/run/m.sock".into()))
            );
            assert_eq!(receive.maps.drives.len(), 1);
            assert_eq!(
                receive.maps.network_interfaces[0].host_dev_type,
                Some(HostDevType::Macvtap)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status(
            "PUT",
            "/migration/receive",
            r#"{"listen_url": "unix:/m", "maps": {"drives": [{"drive_id": "a b", "path_on_host": "/x"}]}}"#
        ),
        400
    );
    assert_eq!(
        status(
            "PUT",
            "/migration/receive",
            r#"{"listen_url": "unix:/m", "maps": {"network_interfaces": [{"iface_id": "e", "host_dev_name": "x/y"}]}}"#
        ),
        400
    );
}

#[test]
fn responses_have_firecracker_shapes() {
    let info =
        serde_json::to_value(InstanceInfo::new("vm1", InstanceState::NotStarted)).expect("json");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "ferry");
    let config = VmConfig {
        boot: Some(BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        }),
        ..VmConfig::default()
    };
    let full = serde_json::to_value(FullVmConfiguration::from_config(&config)).expect("json");
    assert_eq!(full["boot-source"]["kernel_image_path"], "/k");
    assert_eq!(full["machine-config"]["vcpu_count"], 1);
    assert!(full["drives"].as_array().is_some_and(|d| d.is_empty()));
    assert!(full["network-interfaces"].is_array());
    let status = serde_json::to_value(MigrationStatus {
        state: MigrationState::InDoubt,
        ..Default::default()
    })
    .expect("json");
    assert_eq!(status["state"], "in-doubt");
}

#[test]
fn entropy_device_body_and_validation() {
    assert_eq!(
        ok("PUT", "/entropy", "{}"),
        ApiRequest::PutEntropy(EntropyDevice::default())
    );
    let ApiRequest::PutEntropy(device) = ok(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100},
                             "ops": {"size": 0, "refill_time": 10}}}"#,
    ) else {
        panic!("not PutEntropy");
    };
    // A bucket of size 0 means no limit of that kind; it is not kept.
    let config = device.to_config();
    let limiter = config.rate_limiter.expect("bandwidth kept");
    assert_eq!(limiter.bandwidth.map(|b| b.size), Some(1000));
    assert!(limiter.ops.is_none());
    assert!(bad(
        "PUT",
        "/entropy",
        r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 0}}}"#
    )
    .contains("refill_time"));
    assert!(bad("PUT", "/entropy", r#"{"bogus": 1}"#).contains("unknown field"));
    assert!(bad("PUT", "/entropy", "").contains("empty"));
    assert_eq!(status("GET", "/entropy", ""), 405);
    assert_eq!(status("PATCH", "/entropy", "{}"), 405);
}

#[test]
fn vsock_device_body_and_validation() {
    assert_eq!(
        ok(
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/run/v.sock"}"#
        ),
        ApiRequest::PutVsock(Vsock {
            guest_cid: 3,
            uds_path: "/run/v.sock".into(),
            vsock_id: None,
        })
    );
    // Firecracker's deprecated vsock_id is accepted and has no effect.
    let ApiRequest::PutVsock(v) = ok(
        "PUT",
        "/vsock",
        r#"{"vsock_id": "1", "guest_cid": 4294967294, "uds_path": "./v.sock"}"#,
    ) else {
        panic!("not PutVsock");
    };
    assert_eq!(
        v.to_config(),
        VsockConfig {
            guest_cid: u64::from(u32::MAX - 1),
            uds_path: "./v.sock".into()
        }
    );
    for cid in ["0", "2", "4294967295", "-1", "3.5"] {
        let body = format!(r#"{{"guest_cid": {cid}, "uds_path": "/v"}}"#);
        assert_eq!(status("PUT", "/vsock", &body), 400, "cid {cid}");
    }
    assert!(bad("PUT", "/vsock", r#"{"guest_cid": 3}"#).contains("uds_path"));
    assert!(bad("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": ""}"#).contains("uds_path"));
    let long = format!(r#"{{"guest_cid": 3, "uds_path": "/{}"}}"#, "a".repeat(107));
    assert!(bad("PUT", "/vsock", &long).contains("Unix socket"));
    assert!(bad(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/v", "x": 1}"#
    )
    .contains("unknown field"));
    assert_eq!(status("GET", "/vsock", ""), 405);
    // Shown in the configuration.
    let config = VmConfig {
        vsock: Some(v.to_config()),
        ..VmConfig::default()
    };
    let shown = serde_json::to_value(FullVmConfiguration::from_config(&config)).unwrap();
    assert_eq!(shown["vsock"]["guest_cid"], 4294967294u64);
    assert_eq!(shown["vsock"]["uds_path"], "./v.sock");
}
