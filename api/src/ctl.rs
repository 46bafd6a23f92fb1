//! `ferry ctl`: drive a running ferry through its API socket.
//!
//! The lead's CLI embeds [`CtlArgs`] as `ferry ctl`, calls [`run_ctl`], prints the returned text
//! and exits with [`CtlError::exit_code`] on error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{ApiClient, ClientError, HttpResponse};
use crate::migration::{
    MigrationState, MigrationStatus, DEFAULT_DOWNTIME_MS, DEFAULT_MAX_ITERATIONS,
};
use crate::models::{FullVmConfiguration, InstanceInfo, InstanceState};

/// Name of the state file in a `ferry ctl snapshot --to DIR` directory.
pub const SNAPSHOT_STATE_FILE: &str = "vmstate";
/// Name of the guest memory file in a snapshot directory.
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";
/// How often `migrate` polls `GET /migration` while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// `shutdown --graceful`'s default wait before the VM is ended.
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 30;
/// How long `shutdown` waits for ferry to exit once the VM was told to end.
const POWER_OFF_WAIT: Duration = Duration::from_secs(30);

/// `ferry ctl --api-socket PATH [--json] COMMAND`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct CtlArgs {
    /// The API socket of the ferry to control.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// A `ferry ctl` command.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum CtlCommand {
    /// Show the instance id, state and version.
    Info,
    /// Pause the guest's vCPUs.
    Pause,
    /// Resume a paused guest.
    Resume,
    /// End the guest: at once, or with `--graceful` ask it to shut down (ACPI power button, or
    /// Ctrl-Alt-Del for a guest without ACPI) and end it only if it has not after `--timeout`.
    Shutdown {
        /// Ask the guest first and wait for it to power off.
        #[arg(long)]
        graceful: bool,
        /// Seconds to wait for a graceful shutdown before ending the VM.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_S, requires = "graceful")]
        timeout: u64,
    },
    /// Make the guest see a drive's new size after its backing file or device grew.
    ResizeDisk {
        /// The drive id.
        id: String,
    },
    /// Write a snapshot (state + memory) into a directory; `ferry run --restore DIR` restores it.
    Snapshot {
        /// Directory to write (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Leave the guest paused afterwards.
        #[arg(long)]
        keep_paused: bool,
    },
    /// Live-migrate the guest to another ferry (`ferry receive`).
    Migrate {
        /// tcp:HOST:PORT or unix:PATH.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Downtime budget for the final round, ms.
        #[arg(long, value_name = "MS")]
        downtime_ms: Option<u64>,
        /// Pre-copy rounds before aborting (or forcing the switchover).
        #[arg(long, value_name = "N")]
        max_iterations: Option<u32>,
        /// Compare memory digests on both sides before resuming on the destination.
        #[arg(long)]
        verify: bool,
        /// Switch over at the iteration limit instead of aborting.
        #[arg(long)]
        force_switchover: bool,
        /// Return once started instead of waiting for the end.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        security: MigrationSecurityArgs,
    },
    /// Show migration progress or its result.
    MigrationStatus,
    /// Print the metrics (Prometheus text; with --json, an object of samples).
    Metrics,
}

/// How `ferry ctl migrate` protects the stream (the source ferry reads these files).
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct MigrationSecurityArgs {
    /// TLS 1.3: this source's certificate chain (PEM); needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA that signed the destination's certificate (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// The pre-shared-key channel: a file of at least 32 random bytes both sides hold.
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert")]
    pub psk_file: Option<PathBuf>,
    /// Allow a plain TCP stream to a non-loopback address (anyone on the path can read the
    /// guest's memory).
    #[arg(long)]
    pub insecure: bool,
}

/// An absolute form of a path given to ctl: the ferry that reads it has its own working
/// directory.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

impl MigrationSecurityArgs {
    /// The `tls`, `psk_file` and `insecure` fields of a migration body.
    fn add_to(&self, body: &mut Value) {
        if let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            body["tls"] =
                json!({ "cert": absolute(cert), "key": absolute(key), "ca": absolute(ca) });
        }
        if let Some(psk) = &self.psk_file {
            body["psk_file"] = json!(absolute(psk));
        }
        if self.insecure {
            body["insecure"] = json!(true);
        }
    }
}

/// Why a `ferry ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server refused the request; its fault message.
    #[error("{fault_message} (HTTP {status})")]
    Server { status: u16, fault_message: String },
    #[error("unexpected answer from ferry: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Usage(String),
    /// The migration ended without commit; the guest still runs on the source.
    #[error("migration failed: {0}")]
    MigrationFailed(String),
    /// The migration's outcome is unknown; the source guest is paused (see docs/migration.md).
    #[error("migration in doubt: {0}")]
    MigrationInDoubt(String),
}

impl CtlError {
    /// Process exit status: 1 for errors, 3 when a migration is in doubt (the orchestrator must
    /// decide which copy of the guest lives).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::MigrationInDoubt(_) => 3,
            _ => 1,
        }
    }
}

/// Runs one command against the ferry serving `socket`; returns what to print on success.
pub fn run_ctl(socket: &Path, command: CtlCommand, json: bool) -> Result<String, CtlError> {
    let api = Api(ApiClient::new(socket));
    match command {
        CtlCommand::Info => info(&api, json),
        CtlCommand::Pause => set_state(&api, "Paused", json),
        CtlCommand::Resume => set_state(&api, "Resumed", json),
        CtlCommand::Shutdown { graceful, timeout } => shutdown(&api, graceful, timeout, json),
        CtlCommand::ResizeDisk { id } => resize_disk(&api, &id, json),
        CtlCommand::Snapshot { to, keep_paused } => snapshot(&api, &to, keep_paused, json),
        CtlCommand::Migrate {
            to,
            downtime_ms,
            max_iterations,
            verify,
            force_switchover,
            detach,
            security,
        } => {
            let mut body = json!({
                "destination_url": to,
                "downtime_ms": downtime_ms.unwrap_or(DEFAULT_DOWNTIME_MS),
                "max_iterations": max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS),
                "verify": verify,
                "force_switchover": force_switchover,
            });
            security.add_to(&mut body);
            api.call("PUT", "/migration/send", Some(body))?;
            if detach {
                return Ok(done(
                    json,
                    &format!("migration to {to} started"),
                    json!({ "state": "sending" }),
                ));
            }
            wait_for_migration(&api, json)
        }
        CtlCommand::MigrationStatus => {
            let status = migration_status(&api)?;
            Ok(if json {
                pretty(&status)
            } else {
                describe_migration(&status)
            })
        }
        CtlCommand::Metrics => {
            let response = api.call("GET", "/metrics", None)?;
            let text = String::from_utf8_lossy(&response.body).into_owned();
            Ok(if json {
                pretty(&metrics_json(&text))
            } else {
                text
            })
        }
    }
}

/// An [`ApiClient`] that turns non-2xx answers into [`CtlError::Server`].
struct Api(ApiClient);

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<HttpResponse, CtlError> {
        let response = self.0.request(method, path, body.as_ref())?;
        if !(200..300).contains(&response.status) {
            return Err(CtlError::Server {
                status: response.status,
                fault_message: response.fault_message(),
            });
        }
        Ok(response)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let response = self.call("GET", path, None)?;
        serde_json::from_slice(&response.body)
            .map_err(|e| CtlError::BadResponse(format!("GET {path}: {e}")))
    }
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The output of a command that only acknowledges.
fn done(json: bool, text: &str, value: Value) -> String {
    if json {
        pretty(&value)
    } else {
        text.to_string()
    }
}

fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::NotStarted => "Not started",
        InstanceState::Running => "Running",
        InstanceState::Paused => "Paused",
    }
}

fn info(api: &Api, json: bool) -> Result<String, CtlError> {
    let info: InstanceInfo = api.get("/")?;
    Ok(if json {
        pretty(&info)
    } else {
        format!(
            "id: {}\nstate: {}\nvmm: {} {}",
            info.id,
            state_name(info.state),
            info.app_name,
            info.vmm_version
        )
    })
}

/// Whether the ferry behind the socket has exited (nothing accepts connections any more).
fn gone(api: &Api) -> bool {
    matches!(
        api.0.request("GET", "/", None),
        Err(ClientError::Connect(..))
    )
}

/// Polls until ferry has exited or `wait` has passed; true when it exited.
fn wait_gone(api: &Api, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if gone(api) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Ends the VM at once (`PowerOff`) and waits for ferry to exit.
fn power_off(api: &Api) -> Result<(), CtlError> {
    match api.call(
        "PUT",
        "/actions",
        Some(json!({ "action_type": "PowerOff" })),
    ) {
        Ok(_) => {}
        // It ended on its own between the last look and this request.
        Err(CtlError::Client(ClientError::Connect(..))) => return Ok(()),
        Err(e) => return Err(e),
    }
    if wait_gone(api, POWER_OFF_WAIT) {
        Ok(())
    } else {
        Err(CtlError::BadResponse(format!(
            "ferry still answers {} s after PowerOff",
            POWER_OFF_WAIT.as_secs()
        )))
    }
}

/// `shutdown [--graceful [--timeout S]]`.
fn shutdown(api: &Api, graceful: bool, timeout: u64, json: bool) -> Result<String, CtlError> {
    if !graceful {
        power_off(api)?;
        return Ok(done(
            json,
            "powered off",
            json!({ "graceful": false, "powered_off": true }),
        ));
    }
    // The ACPI power button; a guest started without ACPI has none: Ctrl-Alt-Del instead.
    let asked = match api.call(
        "PUT",
        "/actions",
        Some(json!({ "action_type": "PowerButton" })),
    ) {
        Ok(_) => "PowerButton",
        Err(CtlError::Server {
            status: 400,
            fault_message,
        }) if fault_message.contains("ACPI") => {
            api.call(
                "PUT",
                "/actions",
                Some(json!({ "action_type": "SendCtrlAltDel" })),
            )?;
            "SendCtrlAltDel"
        }
        Err(e) => return Err(e),
    };
    if wait_gone(api, Duration::from_secs(timeout)) {
        return Ok(done(
            json,
            &format!("guest shut down ({asked})"),
            json!({ "graceful": true, "requested_with": asked }),
        ));
    }
    power_off(api)?;
    Ok(done(
        json,
        &format!("guest did not shut down within {timeout} s after {asked}; powered off"),
        json!({ "graceful": false, "requested_with": asked, "powered_off": true }),
    ))
}

fn set_state(api: &Api, state: &str, json: bool) -> Result<String, CtlError> {
    api.call("PATCH", "/vm", Some(json!({ "state": state })))?;
    Ok(done(json, &state.to_lowercase(), json!({ "state": state })))
}

fn resize_disk(api: &Api, id: &str, json: bool) -> Result<String, CtlError> {
    let config: FullVmConfiguration = api.get("/vm/config")?;
    let drive = config
        .drives
        .iter()
        .find(|d| d.drive_id == id)
        .ok_or_else(|| CtlError::Usage(format!("no drive with id {id:?}")))?;
    let path = drive.path_on_host.clone();
    api.call(
        "PATCH",
        &format!("/drives/{id}"),
        Some(json!({ "drive_id": id, "path_on_host": path })),
    )?;
    Ok(done(
        json,
        &format!("drive {id}: size re-read from {path}"),
        json!({ "drive_id": id, "path_on_host": path }),
    ))
}

fn snapshot(api: &Api, dir: &Path, keep_paused: bool, json: bool) -> Result<String, CtlError> {
    // The server may run in another directory: send absolute paths.
    let dir =
        std::path::absolute(dir).map_err(|e| CtlError::Usage(format!("{}: {e}", dir.display())))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", dir.display())))?;
    let state = dir.join(SNAPSHOT_STATE_FILE);
    let memory = dir.join(SNAPSHOT_MEMORY_FILE);
    let info: InstanceInfo = api.get("/")?;
    let was_running = info.state == InstanceState::Running;
    if was_running {
        api.call("PATCH", "/vm", Some(json!({ "state": "Paused" })))?;
    }
    let created = api.call(
        "PUT",
        "/snapshot/create",
        Some(json!({
            "snapshot_type": "Full",
            "snapshot_path": state.to_string_lossy(),
            "mem_file_path": memory.to_string_lossy(),
        })),
    );
    // Resume even when the snapshot failed: a failed snapshot must not stop the guest.
    let resumed = was_running && !keep_paused;
    if resumed {
        api.call("PATCH", "/vm", Some(json!({ "state": "Resumed" })))?;
    }
    created?;
    let after = if resumed || !was_running {
        state_name(info.state)
    } else {
        "Paused"
    };
    Ok(done(
        json,
        &format!(
            "snapshot written to {} (guest {})",
            dir.display(),
            after.to_lowercase()
        ),
        json!({ "snapshot_path": state, "mem_file_path": memory, "state": after }),
    ))
}

fn migration_status(api: &Api) -> Result<MigrationStatus, CtlError> {
    api.get("/migration")
}

fn describe_migration(s: &MigrationStatus) -> String {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!(
        "state: {state}\nround: {}\nbytes sent: {}\ndirty rate: {:.1} MiB/s\nbandwidth: {:.1} MiB/s\nexpected downtime: {} ms",
        s.round, s.bytes_sent, s.dirty_rate_mib_s, s.bandwidth_mib_s, s.expected_downtime_ms
    );
    if let Some(total) = s.total_ms {
        out.push_str(&format!("\ntotal time: {total} ms"));
    }
    if let Some(downtime) = s.downtime_ms {
        out.push_str(&format!("\ndowntime: {downtime} ms"));
    }
    if let Some(error) = &s.error {
        out.push_str(&format!("\nerror: {error}"));
    }
    out
}

/// Polls `GET /migration` until the migration ends. Exits 0 only once the destination has
/// committed.
fn wait_for_migration(api: &Api, json: bool) -> Result<String, CtlError> {
    let mut last_seen = MigrationState::Sending;
    loop {
        let status = match migration_status(api) {
            Ok(status) => status,
            // The source ferry exits after a migration commits; losing it is only ambiguous
            // if the commit was not seen yet.
            Err(CtlError::Client(e)) => {
                return Err(CtlError::MigrationInDoubt(format!(
                    "lost contact with the source ferry while {}: {e}; its exit status tells the outcome",
                    serde_json::to_value(last_seen).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
                )))
            }
            Err(e) => return Err(e),
        };
        last_seen = status.state;
        match status.state {
            MigrationState::Migrated | MigrationState::Completed => {
                return Ok(if json {
                    pretty(&status)
                } else {
                    describe_migration(&status)
                })
            }
            MigrationState::Failed => {
                return Err(CtlError::MigrationFailed(
                    status.error.unwrap_or_else(|| "no reason given".into()),
                ))
            }
            MigrationState::InDoubt => {
                return Err(CtlError::MigrationInDoubt(
                    status.error.unwrap_or_else(|| "no reason given".into()),
                ))
            }
            MigrationState::Idle => {
                return Err(CtlError::BadResponse(
                    "the migration is not running (state idle)".into(),
                ))
            }
            MigrationState::Sending | MigrationState::Receiving => {
                std::thread::sleep(POLL_INTERVAL)
            }
        }
    }
}

/// Prometheus text → `{"name{labels}": value}` for `--json`.
pub fn metrics_json(text: &str) -> Value {
    let mut samples = serde_json::Map::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some((name, value)) = line.rsplit_once(' ') {
            let value = value.parse::<f64>().ok().map_or(Value::Null, Value::from);
            samples.insert(name.trim().to_string(), value);
        }
    }
    Value::Object(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    #[test]
    fn parses_command_lines() {
        let cli = Cli::parse_from([
            "ferry",
            "--api-socket",
            "/s",
            "migrate",
            "--to",
            "tcp:h:1",
            "--downtime-ms",
            "50",
            "--verify",
            "--json",
        ]);
        assert!(cli.ctl.json);
        assert_eq!(
            cli.ctl.command,
            CtlCommand::Migrate {
                to: "tcp:h:1".into(),
                downtime_ms: Some(50),
                max_iterations: None,
                verify: true,
                force_switchover: false,
                detach: false,
                security: MigrationSecurityArgs::default(),
            }
        );
        // TLS needs all three files; TLS and a PSK exclude each other; paths become absolute.
        let tls = [
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
        ];
        let base = ["ferry", "--api-socket", "/s", "migrate", "--to", "tcp:h:1"];
        let parse = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(argv)
        };
        assert!(parse(&tls[..2]).is_err());
        assert!(parse(&[&tls[..], &["--psk-file", "k"]].concat()).is_err());
        let Ok(Cli {
            ctl:
                CtlArgs {
                    command: CtlCommand::Migrate { security, .. },
                    ..
                },
        }) = parse(&tls)
        else {
            panic!("TLS flags refused");
        };
        let mut body = json!({});
        security.add_to(&mut body);
        assert!(body["tls"]["cert"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')));
        let cli = Cli::parse_from([
            "ferry",
            "--api-socket",
            "/s",
            "snapshot",
            "--to",
            "d",
            "--keep-paused",
        ]);
        assert_eq!(
            cli.ctl.command,
            CtlCommand::Snapshot {
                to: "d".into(),
                keep_paused: true
            }
        );
        let cli = Cli::parse_from(["ferry", "--api-socket", "/s", "resize-disk", "root"]);
        assert_eq!(
            cli.ctl.command,
            CtlCommand::ResizeDisk { id: "root".into() }
        );
        assert!(Cli::try_parse_from(["ferry", "--api-socket", "/s", "bogus"]).is_err());
    }

    #[test]
    fn metrics_to_json() {
        let v =
            metrics_json("# HELP x y\n# TYPE x counter\nx_total{dev=\"a\"} 3\ny 1.5\nbad NaNx\n");
        assert_eq!(
            v,
            json!({ "x_total{dev=\"a\"}": 3.0, "y": 1.5, "bad": null })
        );
    }

    #[test]
    fn in_doubt_has_its_own_exit_code() {
        assert_eq!(CtlError::MigrationInDoubt("x".into()).exit_code(), 3);
        assert_eq!(CtlError::MigrationFailed("x".into()).exit_code(), 1);
    }
}
