//! ferry's log: records go to stderr (env_logger's format) until a log path is configured
//! (`PUT /logger`, Firecracker's `--log-path` or the config file's `logger`), then to that file
//! or FIFO in Firecracker's line format, through a non-blocking [`Sink`].
//!
//! The level is `log::max_level()`, so changing it at run time (`PUT /logger` with `level`)
//! takes effect at once.

use std::sync::{OnceLock, RwLock};

use ferry_api::{LogLevel, LoggerConfig};

use crate::sink::Sink;
use crate::VmmError;

/// Instance id in log lines when none was given (Firecracker's default too).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

struct FileOutput {
    sink: Sink,
    show_level: bool,
    show_origin: bool,
}

struct FerryLogger {
    stderr: env_logger::Logger,
    output: RwLock<Option<FileOutput>>,
    instance_id: RwLock<String>,
    /// Only records from this module path (and its submodules) are logged.
    module: RwLock<Option<String>>,
}

static LOGGER: OnceLock<FerryLogger> = OnceLock::new();

impl log::Log for FerryLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let module = self.module.read().unwrap_or_else(|p| p.into_inner());
        if !module_matches(module.as_deref(), record.module_path()) {
            return;
        }
        let output = self.output.read().unwrap_or_else(|p| p.into_inner());
        match output.as_ref() {
            Some(out) => {
                let id = self.instance_id.read().unwrap_or_else(|p| p.into_inner());
                out.sink
                    .send(format_line(record, &id, out.show_level, out.show_origin).into_bytes());
            }
            None => self.stderr.log(record),
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Installs ferry's logger at `level` (once per process; later calls only set the level).
pub fn init(level: log::LevelFilter) {
    let logger = LOGGER.get_or_init(|| FerryLogger {
        stderr: env_logger::Builder::new()
            .filter_level(log::LevelFilter::Trace)
            .format_target(false)
            .build(),
        output: RwLock::new(None),
        instance_id: RwLock::new(DEFAULT_INSTANCE_ID.to_string()),
        module: RwLock::new(None),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Sets the instance id shown in log lines (Firecracker's `--id`).
pub fn set_instance_id(id: &str) {
    if let Some(logger) = LOGGER.get() {
        *logger
            .instance_id
            .write()
            .unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }
}

/// Applies a logger configuration: level, and where records go. Opening the path never blocks
/// (a FIFO nobody reads yet is fine); a path that cannot be opened is an error and changes
/// nothing.
pub fn configure(config: &LoggerConfig) -> Result<(), VmmError> {
    let output = match &config.log_path {
        Some(path) => Some(FileOutput {
            sink: Sink::open(path, "log")?,
            show_level: config.show_level.unwrap_or(false),
            show_origin: config.show_log_origin.unwrap_or(false),
        }),
        None => None,
    };
    if let Some(level) = config.level {
        log::set_max_level(level_filter(level));
    }
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    if let Some(module) = &config.module {
        *logger.module.write().unwrap_or_else(|p| p.into_inner()) = Some(module.clone());
    }
    let mut current = logger.output.write().unwrap_or_else(|p| p.into_inner());
    match output {
        Some(output) => *current = Some(output),
        None => {
            // Only the flags changed: keep the destination.
            if let Some(out) = current.as_mut() {
                if let Some(show) = config.show_level {
                    out.show_level = show;
                }
                if let Some(show) = config.show_log_origin {
                    out.show_origin = show;
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `timeout` for the log lines written so far to reach the configured log path
/// (before the process exits).
pub fn drain(timeout: std::time::Duration) {
    if let Some(logger) = LOGGER.get() {
        let out = logger.output.read().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = out.as_ref() {
            out.sink.drain(timeout);
        }
    }
}

/// Lines dropped because the log output could not keep up (Firecracker's
/// `logger.missed_log_count`).
pub fn missed_lines() -> u64 {
    LOGGER
        .get()
        .and_then(|l| {
            let out = l.output.read().unwrap_or_else(|p| p.into_inner());
            out.as_ref().map(|o| o.sink.missed())
        })
        .unwrap_or(0)
}

/// Lines the log output failed to write (Firecracker's `logger.log_fails`).
pub fn failed_lines() -> u64 {
    LOGGER
        .get()
        .and_then(|l| {
            let out = l.output.read().unwrap_or_else(|p| p.into_inner());
            out.as_ref().map(|o| o.sink.failed())
        })
        .unwrap_or(0)
}

/// Whether a record from `path` passes the module filter `module` (a module path such as
/// `ferry_vmm::api_server`; its submodules pass too).
fn module_matches(module: Option<&str>, path: Option<&str>) -> bool {
    match (module, path) {
        (None, _) => true,
        (Some(module), Some(path)) => {
            path == module
                || path
                    .strip_prefix(module)
                    .is_some_and(|rest| rest.starts_with("::"))
        }
        (Some(_), None) => false,
    }
}

/// The `log` filter for an API log level.
pub fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Off => log::LevelFilter::Off,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warning => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// One log line as Firecracker writes it:
/// `TIMESTAMP [INSTANCE:THREAD(:LEVEL)(:FILE:LINE)] MESSAGE`.
fn format_line(record: &log::Record, id: &str, show_level: bool, show_origin: bool) -> String {
    let thread = std::thread::current();
    let mut prefix = format!("{id}:{}", thread.name().unwrap_or("-"));
    if show_level {
        prefix.push(':');
        prefix.push_str(record.level().as_str());
    }
    if show_origin {
        prefix.push_str(&format!(
            ":{}:{}",
            record.file().unwrap_or("?"),
            record.line().unwrap_or(0)
        ));
    }
    format!("{} [{prefix}] {}", utc_timestamp(), record.args())
}

/// Now as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` (UTC).
fn utc_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_nanos())
}

fn format_utc(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000000");
        assert_eq!(
            format_utc(1_795_000_000, 5),
            "2026-11-18T11:06:40.000000005"
        );
        assert_eq!(format_utc(951_782_400, 0), "2000-02-29T00:00:00.000000000");
    }

    #[test]
    fn module_filter() {
        assert!(module_matches(None, Some("ferry_vmm::vcpu")));
        assert!(module_matches(Some("ferry_vmm"), Some("ferry_vmm::vcpu")));
        assert!(module_matches(
            Some("ferry_vmm::vcpu"),
            Some("ferry_vmm::vcpu")
        ));
        assert!(!module_matches(
            Some("ferry_vmm::vcpu"),
            Some("ferry_vmm::vcpus")
        ));
        assert!(!module_matches(
            Some("ferry_devices"),
            Some("ferry_vmm::vcpu")
        ));
        assert!(!module_matches(Some("ferry_vmm"), None));
    }

    #[test]
    fn line_format_follows_firecracker() {
        let record = log::Record::builder()
            .args(format_args!("hello"))
            .level(log::Level::Warn)
            .file(Some("vmm/src/x.rs"))
            .line(Some(7))
            .build();
        let line = format_line(&record, "vm1", true, true);
        let (_, rest) = line.split_once(' ').unwrap();
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("-");
        assert_eq!(rest, format!("[vm1:{name}:WARN:vmm/src/x.rs:7] hello"));
        let line = format_line(&record, "vm1", false, false);
        assert!(line.ends_with(&format!("[vm1:{name}] hello")), "{line}");
    }
}
