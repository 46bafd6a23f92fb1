//! Firecracker's process command line, so orchestrators that start the `firecracker` binary
//! themselves (Kata Containers, firecracker-containerd, flintlock, the SDKs) can start ferry in
//! its place: ferry takes this interface when its `argv[0]` is `firecracker` (a symlink) or when
//! started as `ferry firecracker …`.
//!
//! The flags map onto ferry's own start paths: an unconfigured VM served over the API (`ferry run
//! --api-socket`), or a VM built from Firecracker's JSON config file and booted at once, with or
//! without the API. The config file's sections go through the API's own request parser, so they
//! are validated exactly as the same bodies sent over the socket.

use crate::seccomp::{Policy, SeccompLevel};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_api::{parse_request, ApiRequest, LogLevel, LoggerConfig, VmConfig};

use crate::api_server::ApiService;
use crate::builder::BuildOptions;
use crate::cli::serial_config;
use crate::controller::VmController;
use crate::metrics::{ApiCounters, FirecrackerMetrics, StartupTimes};
use crate::VmmError;

/// Where Firecracker puts its API socket unless told otherwise.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's exit status for a command-line parsing error.
pub const EXIT_ARG_PARSING: u8 = 153;
/// Firecracker's exit status for a bad configuration (config file, log level).
pub const EXIT_BAD_CONFIGURATION: u8 = 152;
/// Firecracker's generic error status.
pub const EXIT_GENERIC: u8 = 1;

/// Why a Firecracker-style start failed, with Firecracker's exit status for it.
#[derive(Debug, thiserror::Error)]
pub enum FcError {
    #[error("{0} (see --help)")]
    Usage(String),
    #[error("{0}")]
    BadConfiguration(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

impl FcError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_ARG_PARSING,
            Self::BadConfiguration(_) => EXIT_BAD_CONFIGURATION,
            Self::Unsupported(_) | Self::Vmm(_) => EXIT_GENERIC,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Help,
    Version,
    SnapshotVersion,
    DescribeSnapshot(String),
    Run(Box<FcArgs>),
}

/// Firecracker's flags for running a microVM.
#[derive(Debug, PartialEq, Eq)]
pub struct FcArgs {
    pub api_sock: String,
    pub id: String,
    pub config_file: Option<String>,
    pub no_api: bool,
    pub level: Option<LogLevel>,
    pub log_path: Option<String>,
    pub module: Option<String>,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub metrics_path: Option<String>,
    /// Accepted; ferry has no boot-timer device.
    pub boot_timer: bool,
    /// No seccomp filters at all (Firecracker's `--no-seccomp`).
    pub no_seccomp: bool,
    /// Filters from a file compiled by Firecracker's seccompiler-bin instead of ferry's own.
    pub seccomp_filter: Option<String>,
    /// The API's request body limit (Firecracker's default, 51200, when absent); larger bodies
    /// get 400, as from Firecracker.
    pub http_api_max_payload_size: Option<u64>,
    /// Accepted; ferry has no MMDS.
    pub mmds_size_limit: Option<u64>,
    pub start_time_us: Option<u64>,
    pub start_time_cpu_us: Option<u64>,
    pub parent_cpu_time_us: Option<u64>,
}

impl Default for FcArgs {
    fn default() -> Self {
        Self {
            api_sock: DEFAULT_API_SOCK.to_string(),
            id: crate::logger::DEFAULT_INSTANCE_ID.to_string(),
            config_file: None,
            no_api: false,
            level: None,
            log_path: None,
            module: None,
            show_level: false,
            show_log_origin: false,
            metrics_path: None,
            boot_timer: false,
            no_seccomp: false,
            seccomp_filter: None,
            http_api_max_payload_size: None,
            mmds_size_limit: None,
            start_time_us: None,
            start_time_cpu_us: None,
            parent_cpu_time_us: None,
        }
    }
}

/// Flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "api-sock",
    "id",
    "config-file",
    "level",
    "log-path",
    "module",
    "metrics-path",
    "http-api-max-payload-size",
    "mmds-size-limit",
    "start-time-us",
    "start-time-cpu-us",
    "parent-cpu-time-us",
    "describe-snapshot",
    "seccomp-filter",
    "metadata",
];

/// Flags without a value.
const SWITCHES: &[&str] = &[
    "no-api",
    "show-level",
    "show-log-origin",
    "boot-timer",
    "no-seccomp",
    "version",
    "snapshot-version",
    "help",
    "enable-pci",
];

const HELP: &str = "\
Firecracker-compatible command line of ferry (started as `firecracker` or `ferry firecracker`).

  --api-sock PATH                   API socket (default /run/firecracker.socket)
  --id ID                           microVM id (default anonymous-instance)
  --config-file FILE                configure from Firecracker's JSON and boot at once
  --no-api                          no API socket (needs --config-file); exit with the guest
  --level LEVEL                     log level: Off, Error, Warning, Info, Debug, Trace
  --log-path PATH                   log to this file or FIFO (Firecracker's line format)
  --module MODULE                   log only this module path (e.g. ferry_vmm::vcpu)
  --show-level, --show-log-origin   add the level / file:line to log lines
  --metrics-path PATH               write Firecracker's JSON metrics lines to this file or FIFO
  --boot-timer                      accepted, no effect (ferry has no boot-timer device)
  --no-seccomp                      no seccomp filters (default: ferry's per-thread filters)
  --seccomp-filter FILE             filters compiled by Firecracker's seccompiler-bin (categories
                                    vmm, api, vcpu) instead of ferry's own
  --http-api-max-payload-size N     request body limit in bytes (default 51200); larger: 400
  --mmds-size-limit N               accepted, no effect (ferry has no MMDS)
  --start-time-us N, --start-time-cpu-us N, --parent-cpu-time-us N
                                    start-up times from the jailer, reported in the metrics
  --version                         print the Firecracker version ferry is compatible with
  --snapshot-version                print the snapshot data format version
  --describe-snapshot FILE          print the data format version of a snapshot state file
";

/// The version line clients parse: Firecracker's `Firecracker vX.Y.Z` (the API level ferry
/// speaks, as `GET /version` reports it), with ferry's own version after it on the same line,
/// so that the second space-separated word is still the version (Kata Containers reads it so).
pub fn version_line() -> String {
    format!(
        "Firecracker v{} (ferry {})",
        ferry_api::server::FIRECRACKER_API_VERSION,
        ferry_api::VERSION
    )
}

/// True when this process was started under a Firecracker name: a file name containing
/// `firecracker` (a symlink `firecracker`, or a release-style `firecracker-v1.7.0-x86_64`), the
/// same rule Firecracker's jailer applies to the binary it copies into the jail and executes.
pub fn invoked_as_firecracker(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.contains("firecracker"))
}

fn parse_number(flag: &str, value: &str) -> Result<u64, FcError> {
    value.parse().map_err(|_| {
        FcError::Usage(format!(
            "--{flag} {value}: expected a non-negative whole number"
        ))
    })
}

/// Firecracker's instance id rule: 1 to 64 characters, letters, digits and `-`.
fn check_instance_id(id: &str) -> Result<(), FcError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(FcError::Usage(format!(
            "--id {id:?}: use 1 to 64 letters, digits or '-'"
        )))
    }
}

/// Parses Firecracker's arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, FcError> {
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut switches: Vec<&str> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(FcError::Usage(format!(
                "unexpected argument '{arg}': arguments are --flags"
            )));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        let seen = values.iter().any(|(n, _)| *n == name) || switches.contains(&name);
        if seen {
            return Err(FcError::Usage(format!("--{name} is given more than once")));
        }
        if let Some(&known) = VALUE_FLAGS.iter().find(|f| **f == name) {
            let value = match inline {
                Some(value) => value,
                None => iter
                    .next()
                    .filter(|v| !v.starts_with("--"))
                    .cloned()
                    .ok_or_else(|| FcError::Usage(format!("--{name} needs a value")))?,
            };
            values.push((known, value));
        } else if let Some(&known) = SWITCHES.iter().find(|f| **f == name) {
            if inline.is_some() {
                return Err(FcError::Usage(format!("--{name} takes no value")));
            }
            switches.push(known);
        } else {
            return Err(FcError::Usage(format!(
                "unknown argument '--{name}' (ferry accepts Firecracker's arguments; see --help)"
            )));
        }
    }
    let switch = |name: &str| switches.contains(&name);
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    if switch("help") {
        return Ok(Invocation::Help);
    }
    if switch("version") {
        return Ok(Invocation::Version);
    }
    if switch("snapshot-version") {
        return Ok(Invocation::SnapshotVersion);
    }
    if let Some(path) = value("describe-snapshot") {
        return Ok(Invocation::DescribeSnapshot(path));
    }
    if switch("no-seccomp") && value("seccomp-filter").is_some() {
        return Err(FcError::Usage(
            "--no-seccomp and --seccomp-filter exclude each other".into(),
        ));
    }
    if switch("no-api") && value("config-file").is_none() {
        return Err(FcError::Usage("--no-api requires --config-file".into()));
    }
    if value("metadata").is_some() {
        return Err(FcError::Unsupported(
            "--metadata: ferry does not implement the microVM metadata service (MMDS)".into(),
        ));
    }
    if switch("enable-pci") {
        return Err(FcError::Unsupported(
            "--enable-pci: ferry has no PCI; devices are virtio-mmio".into(),
        ));
    }
    let mut fc = FcArgs::default();
    if let Some(sock) = value("api-sock") {
        fc.api_sock = sock;
    }
    if let Some(id) = value("id") {
        check_instance_id(&id)?;
        fc.id = id;
    }
    fc.config_file = value("config-file");
    fc.no_api = switch("no-api");
    fc.level = value("level")
        .map(|level| {
            LogLevel::parse(&level).map_err(|e| FcError::BadConfiguration(format!("--level: {e}")))
        })
        .transpose()?;
    fc.log_path = value("log-path");
    fc.module = value("module");
    fc.show_level = switch("show-level");
    fc.show_log_origin = switch("show-log-origin");
    fc.metrics_path = value("metrics-path");
    fc.boot_timer = switch("boot-timer");
    fc.no_seccomp = switch("no-seccomp");
    fc.seccomp_filter = value("seccomp-filter");
    let number = |name: &str| value(name).map(|v| parse_number(name, &v)).transpose();
    fc.http_api_max_payload_size = number("http-api-max-payload-size")?;
    fc.mmds_size_limit = number("mmds-size-limit")?;
    fc.start_time_us = number("start-time-us")?;
    fc.start_time_cpu_us = number("start-time-cpu-us")?;
    fc.parent_cpu_time_us = number("parent-cpu-time-us")?;
    Ok(Invocation::Run(Box::new(fc)))
}

/// Firecracker's config file, read into ferry's configuration.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFile {
    pub vm: VmConfig,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<ferry_api::MetricsConfig>,
}

/// Config-file sections for devices ferry does not implement.
const UNSUPPORTED_SECTIONS: &[(&str, &str)] = &[
    ("mmds-config", "the microVM metadata service (MMDS)"),
    ("memory-hotplug", "memory hotplug"),
    ("serial", "serial configuration"),
    ("pmem", "pmem devices"),
];

/// Parses one section as the body of `PUT path`, with the API's validation.
fn section(section: &str, path: &str, body: &serde_json::Value) -> Result<ApiRequest, FcError> {
    let bytes = body.to_string();
    parse_request("PUT", path, bytes.as_bytes()).map_err(|e| {
        FcError::BadConfiguration(format!("config file: {section}: {}", e.fault_message()))
    })
}

/// The id a list entry names in `field`, for the request path (a missing or malformed id is
/// reported by the body's own validation).
fn entry_id<'a>(entry: &'a serde_json::Value, field: &str) -> &'a str {
    entry
        .get(field)
        .and_then(|v| v.as_str())
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .unwrap_or("unnamed")
}

/// Reads Firecracker's JSON configuration (`boot-source`, `machine-config`, `drives`,
/// `network-interfaces`, `cpu-config`, `entropy`, `vsock`, `balloon`, `logger`, `metrics`).
pub fn parse_config_file(text: &str) -> Result<ConfigFile, FcError> {
    let bad = |msg: String| FcError::BadConfiguration(format!("config file: {msg}"));
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(sections) = value else {
        return Err(bad("expected a JSON object".into()));
    };
    let mut out = ConfigFile::default();
    let mut has_boot_source = false;
    for (name, body) in &sections {
        if let Some((_, what)) = UNSUPPORTED_SECTIONS.iter().find(|(n, _)| n == name) {
            return Err(FcError::BadConfiguration(format!(
                "config file: {name}: ferry does not implement {what}"
            )));
        }
        let list = |key: &str| -> Result<&Vec<serde_json::Value>, FcError> {
            body.as_array()
                .ok_or_else(|| bad(format!("{key} must be a JSON array")))
        };
        match name.as_str() {
            "boot-source" => {
                let ApiRequest::PutBootSource(boot) = section(name, "/boot-source", body)? else {
                    return Err(bad("boot-source: unexpected request".into()));
                };
                out.vm.boot = Some(boot);
                has_boot_source = true;
            }
            "machine-config" => {
                let ApiRequest::PutMachineConfig(machine, template) =
                    section(name, "/machine-config", body)?
                else {
                    return Err(bad("machine-config: unexpected request".into()));
                };
                // Firecracker applies the file's cpu-config after its machine-config: a custom
                // template wins over a static one whatever the order of the sections.
                let custom = out.vm.cpu_template.take();
                out.vm.put_machine(machine, template);
                if let Some(custom) = custom {
                    out.vm.set_custom_cpu_template(custom);
                }
            }
            "drives" => {
                for drive in list(name)? {
                    let path = format!("/drives/{}", entry_id(drive, "drive_id"));
                    let ApiRequest::PutDrive(drive) = section(name, &path, drive)? else {
                        return Err(bad("drives: unexpected request".into()));
                    };
                    if out.vm.drives.iter().any(|d| d.drive_id == drive.drive_id) {
                        return Err(bad(format!("drives: '{}' appears twice", drive.drive_id)));
                    }
                    out.vm
                        .put_drive(drive.to_config())
                        .map_err(|e| bad(format!("drives: {e}")))?;
                }
            }
            "network-interfaces" => {
                for iface in list(name)? {
                    let path = format!("/network-interfaces/{}", entry_id(iface, "iface_id"));
                    let ApiRequest::PutNetworkInterface(iface) = section(name, &path, iface)?
                    else {
                        return Err(bad("network-interfaces: unexpected request".into()));
                    };
                    if out.vm.nets.iter().any(|n| n.iface_id == iface.iface_id) {
                        return Err(bad(format!(
                            "network-interfaces: '{}' appears twice",
                            iface.iface_id
                        )));
                    }
                    out.vm.nets.push(iface.to_config());
                }
            }
            "cpu-config" => {
                let ApiRequest::PutCpuConfig(template) = section(name, "/cpu-config", body)? else {
                    return Err(bad("cpu-config: unexpected request".into()));
                };
                out.vm.set_custom_cpu_template(template);
            }
            "entropy" => {
                let ApiRequest::PutEntropy(entropy) = section(name, "/entropy", body)? else {
                    return Err(bad("entropy: unexpected request".into()));
                };
                out.vm.entropy = Some(entropy.to_config());
            }
            "vsock" => {
                let ApiRequest::PutVsock(vsock) = section(name, "/vsock", body)? else {
                    return Err(bad("vsock: unexpected request".into()));
                };
                out.vm.vsock = Some(vsock.to_config());
            }
            "balloon" => {
                let ApiRequest::PutBalloon(balloon) = section(name, "/balloon", body)? else {
                    return Err(bad("balloon: unexpected request".into()));
                };
                out.vm.balloon = Some(balloon.to_config());
            }
            "logger" => {
                let ApiRequest::PutLogger(logger) = section(name, "/logger", body)? else {
                    return Err(bad("logger: unexpected request".into()));
                };
                out.logger = Some(logger);
            }
            "metrics" => {
                let ApiRequest::PutMetrics(metrics) = section(name, "/metrics", body)? else {
                    return Err(bad("metrics: unexpected request".into()));
                };
                out.metrics = Some(metrics);
            }
            other => {
                return Err(bad(format!(
                    "unknown section '{other}' (known: boot-source, machine-config, drives, \
                     network-interfaces, cpu-config, entropy, vsock, balloon, logger, metrics)"
                )))
            }
        }
    }
    if !has_boot_source {
        return Err(bad("boot-source is required".into()));
    }
    Ok(out)
}

/// Runs ferry with Firecracker's command line `args` (without the program name); returns the
/// process exit status.
pub fn main(args: &[String]) -> u8 {
    let result = parse(args).and_then(|invocation| match invocation {
        Invocation::Help => {
            print!("{}\n{HELP}", version_line());
            Ok(0)
        }
        Invocation::Version => {
            println!("{}", version_line());
            Ok(0)
        }
        Invocation::SnapshotVersion => {
            println!("{}", snapshot_version(crate::vm_snapshot::SNAPSHOT_VERSION));
            Ok(0)
        }
        Invocation::DescribeSnapshot(path) => {
            println!("{}", describe_snapshot(&path)?);
            Ok(0)
        }
        Invocation::Run(fc) => run(&fc),
    });
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// A snapshot data format version as Firecracker prints it (`vMAJOR.MINOR.PATCH`).
fn snapshot_version(version: u32) -> String {
    format!("v{version}.0.0")
}

/// The data format version of a ferry snapshot state file.
fn describe_snapshot(path: &str) -> Result<String, FcError> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }
    let text = std::fs::read_to_string(path)
        .map_err(VmmError::io(format!("reading snapshot state {path}")))?;
    let state: Versioned = serde_json::from_str(&text).map_err(|e| {
        FcError::BadConfiguration(format!("{path} is not a ferry snapshot state file: {e}"))
    })?;
    Ok(snapshot_version(state.version))
}

/// The seccomp policy the flags ask for; a filter file is read (and checked) here.
fn seccomp_policy(fc: &FcArgs) -> Result<Policy, FcError> {
    if fc.no_seccomp {
        return Ok(Policy::Off);
    }
    match &fc.seccomp_filter {
        Some(path) => crate::seccomp::firecracker::load(path)
            .map(Policy::Custom)
            .map_err(|e| FcError::BadConfiguration(e.to_string())),
        None => Ok(SeccompLevel::On.policy()),
    }
}

fn run(fc: &FcArgs) -> Result<u8, FcError> {
    // Before the log file, the config file or the API socket is opened: every thread runs
    // filtered.
    crate::seccomp::init(seccomp_policy(fc)?).map_err(VmmError::from)?;
    crate::logger::init(
        fc.level
            .map(crate::logger::level_filter)
            .unwrap_or(log::LevelFilter::Warn),
    );
    crate::logger::set_instance_id(&fc.id);
    if fc.log_path.is_some() || fc.module.is_some() {
        crate::logger::configure(&LoggerConfig {
            log_path: fc.log_path.clone(),
            level: fc.level,
            show_level: Some(fc.show_level),
            show_log_origin: Some(fc.show_log_origin),
            module: fc.module.clone(),
        })?;
    }
    if fc.boot_timer {
        log::info!("--boot-timer: ferry has no boot-timer device; ignored");
    }
    let startup = StartupTimes::measure(
        fc.start_time_us,
        fc.start_time_cpu_us,
        fc.parent_cpu_time_us,
    );
    let mut metrics = fc
        .metrics_path
        .as_deref()
        .map(FirecrackerMetrics::open)
        .transpose()?;
    let file = match &fc.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                FcError::BadConfiguration(format!("cannot read config file {path}: {e}"))
            })?;
            Some(parse_config_file(&text)?)
        }
        None => None,
    };
    let serial = serial_config(None, std::io::stdin().is_terminal());
    let mut config = VmConfig {
        serial,
        ..VmConfig::default()
    };
    if let Some(file) = &file {
        config = VmConfig {
            serial: config.serial,
            ..file.vm.clone()
        };
        if let Some(logger) = &file.logger {
            crate::logger::configure(logger)?;
        }
        if let Some(section) = &file.metrics {
            if metrics.is_some() {
                return Err(FcError::BadConfiguration(
                    "config file: metrics: already configured by --metrics-path".into(),
                ));
            }
            metrics = Some(FirecrackerMetrics::open_config(section, &fc.id)?);
        }
    }
    if let Some(metrics) = metrics.as_mut() {
        metrics.set_startup(startup);
    }
    let mut controller = VmController::new(config, BuildOptions::default());
    if file.is_some() {
        controller.start()?;
        log::info!("guest started from the config file");
    }
    if fc.no_api {
        return Ok(run_without_api(controller, metrics)?);
    }
    let controller = Arc::new(Mutex::new(controller));
    let max_payload = fc
        .http_api_max_payload_size
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut service = ApiService::start_with(
        Path::new(&fc.api_sock),
        controller,
        ferry_api::ServerOptions::firecracker(max_payload),
    )?;
    service.set_instance_id(&fc.id);
    if let Some(metrics) = metrics {
        service.set_metrics(metrics);
    }
    Ok(service.run()?)
}

/// Runs the booted guest until it ends, writing metrics every [`crate::metrics::FLUSH_PERIOD`].
fn run_without_api(
    mut controller: VmController,
    mut metrics: Option<FirecrackerMetrics>,
) -> Result<u8, VmmError> {
    let api = ApiCounters::default();
    let exit = controller
        .exit_code()
        .cloned()
        .ok_or(VmmError::InvalidState {
            state: controller.state().name(),
            action: "running without the API",
        })?;
    loop {
        if let Some(code) = exit.get() {
            controller.stop();
            // As Firecracker does when the VM ends: a last metrics line.
            if let Some(metrics) = metrics.as_mut() {
                metrics.flush(&controller, &api);
                metrics.drain(crate::api_server::EXIT_DRAIN);
            }
            crate::logger::drain(crate::api_server::EXIT_DRAIN);
            return Ok(u8::try_from(code).unwrap_or(EXIT_GENERIC));
        }
        if let Some(metrics) = metrics.as_mut().filter(|m| m.due()) {
            metrics.flush(&controller, &api);
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(exit.eventfd()),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; woken by the guest's exit, or each second for metrics.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        let _ = exit.eventfd().read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn run_args(list: &[&str]) -> FcArgs {
        match parse(&args(list)) {
            Ok(Invocation::Run(fc)) => *fc,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_firecracker() {
        let fc = run_args(&[]);
        assert_eq!(fc.api_sock, "/run/firecracker.socket");
        assert_eq!(fc.id, "anonymous-instance");
        assert!(!fc.no_api);
    }

    #[test]
    fn every_firecracker_flag_is_understood() {
        let fc = run_args(&[
            "--api-sock",
            "/tmp/s",
            "--id",
            "vm-1",
            "--config-file=/tmp/c.json",
            "--no-api",
            "--level",
            "Debug",
            "--log-path",
            "/tmp/log",
            "--module",
            "vmm",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/tmp/m",
            "--boot-timer",
            "--no-seccomp",
            "--http-api-max-payload-size",
            "51200",
            "--mmds-size-limit",
            "1024",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
        ]);
        assert_eq!(fc.api_sock, "/tmp/s");
        assert_eq!(fc.id, "vm-1");
        assert_eq!(fc.config_file.as_deref(), Some("/tmp/c.json"));
        assert!(fc.no_api && fc.show_level && fc.show_log_origin && fc.boot_timer);
        assert_eq!(fc.level, Some(LogLevel::Debug));
        assert_eq!(fc.http_api_max_payload_size, Some(51200));
        assert_eq!(
            (
                fc.start_time_us,
                fc.start_time_cpu_us,
                fc.parent_cpu_time_us
            ),
            (Some(1), Some(2), Some(3))
        );
    }

    #[test]
    fn refusals_carry_firecracker_exit_codes() {
        let code = |list: &[&str]| parse(&args(list)).unwrap_err().exit_code();
        assert_eq!(code(&["--bogus"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["positional"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--no-api"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--api-sock"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--id", "a", "--id", "b"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--id", "bad_id"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--start-time-us", "soon"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--version=1"]), EXIT_ARG_PARSING);
        assert_eq!(code(&["--level", "loud"]), EXIT_BAD_CONFIGURATION);
        assert_eq!(
            code(&["--seccomp-filter", "/f", "--no-seccomp"]),
            EXIT_ARG_PARSING
        );
    }

    #[test]
    fn information_flags() {
        assert_eq!(parse(&args(&["--version"])).unwrap(), Invocation::Version);
        assert_eq!(parse(&args(&["--help"])).unwrap(), Invocation::Help);
        assert_eq!(
            parse(&args(&["--describe-snapshot", "/s"])).unwrap(),
            Invocation::DescribeSnapshot("/s".into())
        );
        let line = version_line();
        // Kata Containers takes the second space-separated word, strips the 'v', and needs a
        // semantic version of at least 0.21.1.
        let second = line.split(' ').nth(1).unwrap();
        assert_eq!(second, "v1.7.0");
        assert!(line.starts_with("Firecracker v"));
        assert!(line.contains(ferry_api::VERSION));
    }

    #[test]
    fn ferry_firecracker_passes_every_argument_through() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "ferry",
            "firecracker",
            "--help",
            "--api-sock",
            "/s",
            "--bogus=1",
        ])
        .unwrap();
        let crate::cli::Command::Firecracker(fc) = cli.command else {
            panic!("expected the firecracker subcommand");
        };
        assert_eq!(fc.args, ["--help", "--api-sock", "/s", "--bogus=1"]);
    }

    #[test]
    fn argv0_firecracker() {
        assert!(invoked_as_firecracker("/usr/bin/firecracker"));
        assert!(invoked_as_firecracker("firecracker"));
        assert!(!invoked_as_firecracker("/usr/bin/ferry"));
        assert!(invoked_as_firecracker(
            "/srv/jail/firecracker-v1.7.0-x86_64"
        ));
        assert!(!invoked_as_firecracker("/opt/firecracker/bin/ferry"));
    }

    #[test]
    fn config_file_maps_onto_vm_config() {
        let file = parse_config_file(
            r#"{
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": false},
              "drives": [
                {"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": true},
                {"drive_id": "data", "path_on_host": "/d", "is_root_device": false, "is_read_only": false}
              ],
              "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                 "rx_rate_limiter": {}, "tx_rate_limiter": {}}
              ],
              "entropy": {"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}},
              "balloon": {"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 2},
              "logger": {"log_path": "/tmp/l", "level": "Debug"},
              "metrics": {"metrics_path": "/tmp/m"}
            }"#,
        )
        .unwrap();
        assert_eq!(file.vm.machine.vcpu_count, 2);
        assert_eq!(file.vm.machine.mem_size_mib, 512);
        assert_eq!(file.vm.boot.as_ref().unwrap().kernel_image_path, "/k");
        assert_eq!(file.vm.drives.len(), 2);
        assert!(file.vm.drives[0].is_root_device && file.vm.drives[0].is_read_only);
        assert_eq!(file.vm.nets[0].iface_id, "eth0");
        assert_eq!(file.logger.unwrap().level, Some(LogLevel::Debug));
        assert_eq!(
            file.metrics.as_ref().map(|m| m.metrics_path.as_str()),
            Some("/tmp/m")
        );
        let entropy = file.vm.entropy.and_then(|e| e.rate_limiter).unwrap();
        assert_eq!(entropy.bandwidth.map(|b| b.size), Some(1000));
        assert_eq!(
            file.vm.balloon,
            Some(ferry_api::BalloonConfig {
                amount_mib: 16,
                deflate_on_oom: true,
                stats_polling_interval_s: 2,
                free_page_reporting: false,
            })
        );
        // Without the section, no entropy device.
        let file = parse_config_file(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
        assert_eq!(file.vm.entropy, None);
        assert_eq!(file.vm.vsock, None);
        let file = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/run/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(
            file.vm.vsock,
            Some(ferry_api::VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into()
            })
        );
    }

    /// `machine-config.cpu_template` names a static template; a `cpu-config` section in the same
    /// file wins over it, as Firecracker applies cpu-config last.
    #[test]
    fn config_file_cpu_templates() {
        let file = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2S"}}"#,
        )
        .unwrap();
        assert_eq!(
            file.vm.machine.cpu_template,
            ferry_api::StaticCpuTemplate::T2S
        );
        assert_eq!(file.vm.cpu_template, None);
        let file = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"},
                "cpu-config": {"msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b0"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            file.vm.machine.cpu_template,
            ferry_api::StaticCpuTemplate::None
        );
        assert_eq!(file.vm.cpu_template.map(|t| t.msrs.len()), Some(1));
        let err = parse_config_file(
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "V1N1"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("aarch64"), "{err}");
    }

    #[test]
    fn config_file_is_validated_like_the_api() {
        let err = |text: &str| parse_config_file(text).unwrap_err().to_string();
        assert!(err("{}").contains("boot-source is required"));
        assert!(err("[]").contains("JSON object"));
        assert!(err("{").contains("invalid JSON"));
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"},
                        "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#);
        assert!(
            e.contains("machine-config") && e.contains("vcpu_count"),
            "{e}"
        );
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k", "bogus": 1}}"#);
        assert!(e.contains("unknown field"), "{e}");
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"},
                        "vsock": {"guest_cid": 2, "uds_path": "/v"}}"#);
        assert!(e.contains("vsock") && e.contains("guest_cid"), "{e}");
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"}, "entropy": {"bogus": 1}}"#);
        assert!(e.contains("entropy") && e.contains("unknown field"), "{e}");
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"}, "frobnicator": {}}"#);
        assert!(e.contains("unknown section"), "{e}");
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [
              {"drive_id": "a", "path_on_host": "/a", "is_root_device": true},
              {"drive_id": "b", "path_on_host": "/b", "is_root_device": true}]}"#);
        assert!(e.contains("root device"), "{e}");
        let e = err(r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [
              {"path_on_host": "/a", "is_root_device": false}]}"#);
        assert!(e.contains("drive_id"), "{e}");
        assert_eq!(
            parse_config_file("{}").unwrap_err().exit_code(),
            EXIT_BAD_CONFIGURATION
        );
    }
}
