//! The receiving side (`ferry receive`): accept one stream, build the VM from the source's
//! configuration (with this host's maps applied), fill memory, restore state, and resume on
//! COMMIT. Any failure before COMMIT ends the receive with an error; the source keeps the guest.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use ferry_api::{NetBackendConfig, SerialConfig, VmConfig};

use super::admission::Admission;
use super::memory::{memory_digest, range_in_ram, receive_data, receive_zero};
use super::transport::{Listener, MigrationUrl, Security, Stream};
use super::wire::{self, SourceMessage, WireError};
use super::{MigrationError, MigrationStart};
use crate::builder::{build_vm_for_restore, BuildOptions};
use crate::controller::VmController;
use crate::vm_snapshot::VmSnapshot;
use crate::VmmError;

/// A source that says nothing for this long is considered gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Host-side resources that differ on this host.
#[derive(Clone, Debug, Default)]
pub struct ReceiveMaps {
    /// Drive id → path (file, block device, iSCSI URL).
    pub disks: HashMap<String, String>,
    /// Interface id → backend on this host.
    pub nets: HashMap<String, NetBackendConfig>,
    /// The vsock device's `uds_path` on this host (`--vsock-map`).
    pub vsock: Option<String>,
}

/// What the receiving ferry needs besides the stream.
pub struct ReceiveOptions {
    pub maps: ReceiveMaps,
    /// What the incoming configuration may name besides the maps.
    pub admission: Admission,
    /// Who may connect: the credentials a source must prove (plain: anyone who can connect).
    pub security: Security,
    /// This host's console, replacing the source's.
    pub serial: SerialConfig,
    pub build: BuildOptions,
}

/// Applies the maps to the source's configuration.
pub fn apply_maps(config: &mut VmConfig, maps: &ReceiveMaps) -> Result<(), VmmError> {
    for id in maps.disks.keys() {
        if !config.drives.iter().any(|d| &d.drive_id == id) {
            return Err(VmmError::Config(format!(
                "--disk-map names unknown drive '{id}'"
            )));
        }
    }
    for id in maps.nets.keys() {
        if !config.nets.iter().any(|n| &n.iface_id == id) {
            return Err(VmmError::Config(format!(
                "--net-map names unknown interface '{id}'"
            )));
        }
    }
    for drive in &mut config.drives {
        if let Some(path) = maps.disks.get(&drive.drive_id) {
            drive.path_on_host = path.clone();
        }
    }
    for net in &mut config.nets {
        if let Some(backend) = maps.nets.get(&net.iface_id) {
            net.backend = backend.clone();
        }
    }
    if let Some(path) = &maps.vsock {
        let vsock = config.vsock.as_mut().ok_or_else(|| {
            VmmError::Config("--vsock-map given, but the guest has no vsock device".into())
        })?;
        vsock.uds_path = path.clone();
    }
    Ok(())
}

/// Binds `listen` and receives one guest. Returns the running VM's controller.
pub fn receive(
    listen: &MigrationUrl,
    options: ReceiveOptions,
) -> Result<VmController, MigrationError> {
    let listener = Listener::bind(listen).map_err(|source| MigrationError::Connect {
        url: listen.to_string(),
        source,
    })?;
    log::info!("waiting for an incoming migration on {listen}");
    let stream = listener.accept(&options.security).map_err(WireError::Io)?;
    drop(listener);
    let mut replies = stream.try_clone().map_err(WireError::Io)?;
    match receive_on(stream, &mut replies, options) {
        Ok(controller) => Ok(controller),
        Err(e) => {
            // Best effort: tell the source why, so it can report it and keep the guest.
            let _ = wire::write_error(&mut replies, &e.to_string());
            replies.shutdown();
            Err(e)
        }
    }
}

fn receive_on(
    stream: Stream,
    replies: &mut Stream,
    options: ReceiveOptions,
) -> Result<VmController, MigrationError> {
    stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .map_err(WireError::Io)?;
    let started = Instant::now();
    let mut input = BufReader::with_capacity(1 << 20, stream);
    wire::read_hello(&mut input)?;
    wire::write_reply(replies, wire::HELLO_OK).map_err(WireError::Io)?;

    let start: MigrationStart = match wire::read_source_message(&mut input, |_, _| false)? {
        SourceMessage::Config(json) => {
            serde_json::from_slice(&json).map_err(|source| WireError::Json {
                what: "configuration",
                source,
            })?
        }
        SourceMessage::Abort(reason) => return Err(MigrationError::Aborted(reason)),
        _ => {
            return Err(WireError::Unexpected {
                got: 0,
                expected: "CONFIG",
            }
            .into())
        }
    };
    let mut config = start.config;
    apply_maps(&mut config, &options.maps)?;
    // Before anything is opened: every host resource is mapped or allowed.
    options.admission.admit(&mut config, &options.maps)?;
    config.serial = options.serial;
    let built = build_vm_for_restore(&config, &options.build)?;
    let memory = built.memory.clone();
    let mut controller = VmController::prepare_restore(config.clone(), options.build, built)?;
    wire::write_reply(replies, wire::ACCEPTED).map_err(WireError::Io)?;

    let in_ram = |gpa: u64, len: u64| range_in_ram(&memory, gpa, len);
    let mut snapshot: Option<VmSnapshot> = None;
    let (mut bytes, mut rounds) = (0u64, 0u32);
    loop {
        match wire::read_source_message(&mut input, in_ram)? {
            SourceMessage::MemData { gpa, len } => {
                receive_data(&memory, &mut input, gpa, len).map_err(WireError::Io)?;
                bytes += u64::from(len);
            }
            SourceMessage::MemZero { gpa, len } => {
                receive_zero(&memory, gpa, len).map_err(WireError::Io)?
            }
            SourceMessage::Round(n) => {
                log::debug!("migration: round {n} received");
                rounds = n + 1;
            }
            SourceMessage::State(json) => {
                let mut state: VmSnapshot =
                    serde_json::from_slice(&json).map_err(|source| WireError::Json {
                        what: "VM state",
                        source,
                    })?;
                // The destination's own view of host resources wins.
                state.config = config.clone();
                snapshot = Some(state);
                if !start.verify {
                    break;
                }
            }
            SourceMessage::Digest(expected) => {
                if snapshot.is_none() {
                    return Err(WireError::Unexpected {
                        got: wire::DIGEST,
                        expected: "STATE before DIGEST",
                    }
                    .into());
                }
                let actual = memory_digest(&memory);
                if actual != expected {
                    log::error!("memory digest mismatch: {actual:#x} != {expected:#x}");
                    return Err(MigrationError::DigestMismatch);
                }
                break;
            }
            SourceMessage::Abort(reason) => return Err(MigrationError::Aborted(reason)),
            SourceMessage::Config(_) | SourceMessage::Commit => {
                return Err(WireError::Unexpected {
                    got: wire::CONFIG,
                    expected: "memory or state",
                }
                .into())
            }
        }
    }
    let snapshot = snapshot.ok_or(WireError::Unexpected {
        got: 0,
        expected: "STATE",
    })?;
    controller.apply_snapshot(&snapshot)?;
    wire::write_reply(replies, wire::READY).map_err(WireError::Io)?;

    match wire::read_source_message(&mut input, |_, _| false)? {
        SourceMessage::Commit => {}
        SourceMessage::Abort(reason) => return Err(MigrationError::Aborted(reason)),
        _ => {
            return Err(WireError::Unexpected {
                got: 0,
                expected: "COMMIT",
            }
            .into())
        }
    }
    controller.resume()?;
    if let Some(virtio) = controller.virtio() {
        virtio.announce();
    }
    wire::write_reply(replies, wire::COMMITTED).map_err(WireError::Io)?;
    let _ = replies.flush();
    // One machine-readable line on stderr whatever the log level, for orchestrators and logs.
    eprintln!(
        "{}",
        serde_json::json!({"event": "migration-completed", "side": "destination",
            "total_ms": started.elapsed().as_millis() as u64, "bytes": bytes, "rounds": rounds})
    );
    Ok(controller)
}
