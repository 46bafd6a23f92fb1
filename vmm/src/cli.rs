//! The `ferry` command line. Flags are parsed into the shared [`VmConfig`] so the command line and
//! the API build identical VMs.

use clap::{Args, Parser, Subcommand, ValueEnum};

use ferry_api::{BootSource, MachineConfig, SerialConfig, SerialOutput, VmConfig};
use ferry_arch::boot::BootPreference;
use ferry_arch::cpuid::{feature_by_name, CpuFeature, HIDEABLE_FEATURES};

use crate::builder::BuildOptions;

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "A virtual machine monitor on Linux KVM")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest and run it until it exits.
    Run(RunArgs),
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    /// PVH when the ELF kernel has a PVH note, else the Linux 64-bit boot protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol (zero page in RSI).
    Linux,
    /// The PVH entry (hvm_start_info in EBX); the kernel must have a PVH note.
    Pvh,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot: ELF vmlinux (with or without PVH note) or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: String,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<String>,
    /// Text appended to the kernel command line (after `console=ttyS0 reboot=k panic=1`).
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u8,
    /// Guest memory: a number of MiB, or with a K/M/G suffix.
    #[arg(long, default_value = "256M", value_name = "SIZE", value_parser = parse_memory_mib)]
    pub memory: u64,
    /// Serial console: `stdio` (stdin feeds the guest), `file=PATH` or `none`.
    /// Without this flag output goes to stdout and stdin is read only on a terminal.
    #[arg(long, value_name = "stdio|file=PATH|none", value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// Add the exit-code device: a guest byte V written to PORT (default 0xf4) ends ferry with
    /// status V.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "0xf4",
          value_parser = parse_port)]
    pub exit_device: Option<u16>,
    /// Boot protocol.
    #[arg(long, value_enum, default_value_t = BootArg::Auto)]
    pub boot: BootArg,
    /// CPUID features to hide from the guest, comma-separated (e.g. `avx512f,avx2`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_cpu_feature)]
    pub cpu_hide: Vec<&'static CpuFeature>,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_name = "LEVEL", value_parser = parse_log_level)]
    pub log_level: log::LevelFilter,
}

impl RunArgs {
    /// The VM configuration and build options these flags describe.
    pub fn to_config(&self, stdin_is_terminal: bool) -> (VmConfig, BuildOptions) {
        let serial = match &self.serial {
            None => SerialConfig {
                output: SerialOutput::Stdio,
                stdin: stdin_is_terminal,
            },
            Some(SerialOutput::Stdio) => SerialConfig {
                output: SerialOutput::Stdio,
                stdin: true,
            },
            Some(other) => SerialConfig {
                output: other.clone(),
                stdin: false,
            },
        };
        let config = VmConfig {
            machine: MachineConfig {
                vcpu_count: self.cpus,
                mem_size_mib: self.memory,
                ..Default::default()
            },
            boot: Some(BootSource {
                kernel_image_path: self.kernel.clone(),
                initrd_path: self.initrd.clone(),
                boot_args: self.cmdline.clone(),
            }),
            serial,
            exit_device_port: self.exit_device,
            drives: Vec::new(),
            nets: Vec::new(),
        };
        let options = BuildOptions {
            boot: match self.boot {
                BootArg::Auto => BootPreference::Auto,
                BootArg::Linux => BootPreference::Linux,
                BootArg::Pvh => BootPreference::Pvh,
            },
            hidden_cpu_features: self.cpu_hide.iter().map(|f| **f).collect(),
        };
        (config, options)
    }
}

/// Parses `512M`, `1G`, `262144K` or a bare number of MiB into MiB.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit_kib) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1u64),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 10),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 20),
        Some(_) => (text, 1 << 10),
        None => return Err("empty memory size".into()),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512M or 2G"))?;
    let kib = value
        .checked_mul(unit_kib)
        .ok_or_else(|| format!("'{text}' is too large"))?;
    if kib % 1024 != 0 {
        return Err(format!("'{text}' is not a whole number of MiB"));
    }
    let mib = kib / 1024;
    if mib == 0 {
        return Err("memory size must be above zero".into());
    }
    Ok(mib)
}

fn parse_serial(text: &str) -> Result<SerialOutput, String> {
    match text {
        "stdio" => Ok(SerialOutput::Stdio),
        "none" => Ok(SerialOutput::None),
        _ => match text.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.to_string())),
            _ => Err(format!("'{text}': expected stdio, file=PATH or none")),
        },
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not an I/O port (0 to 0xffff)"))
}

fn parse_cpu_feature(text: &str) -> Result<&'static CpuFeature, String> {
    feature_by_name(text).ok_or_else(|| {
        let names: Vec<&str> = HIDEABLE_FEATURES.iter().map(|f| f.name).collect();
        format!("unknown CPU feature '{text}'; known: {}", names.join(", "))
    })
}

fn parse_log_level(text: &str) -> Result<log::LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("'{text}': expected off, error, warn, info, debug or trace"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_devices::legacy::DEFAULT_EXIT_PORT;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["ferry", "run"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(run) => run,
        })
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("262144K"), Ok(256));
        assert_eq!(parse_memory_mib("64"), Ok(64));
        for bad in ["", "M", "12X", "-1G", "1000K", "0", "99999999999999999G"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_exit_device() {
        let args = run_args(&["--kernel", "k"]).unwrap();
        assert_eq!((args.cpus, args.memory, args.exit_device), (1, 256, None));
        let args = run_args(&["--kernel", "k", "--exit-device"]).unwrap();
        assert_eq!(args.exit_device, Some(DEFAULT_EXIT_PORT));
        let args = run_args(&["--kernel", "k", "--exit-device=0x501"]).unwrap();
        assert_eq!(args.exit_device, Some(0x501));
        assert!(run_args(&["--kernel", "k", "--exit-device=0x10000"]).is_err());
    }

    #[test]
    fn config_from_flags() {
        let args = run_args(&[
            "--kernel", "vmlinux", "--cmdline", "quiet", "--cpus", "2", "--memory", "1G",
            "--serial", "file=/tmp/out", "--boot", "linux", "--cpu-hide", "avx,avx2",
        ])
        .unwrap();
        let (config, options) = args.to_config(true);
        assert_eq!(config.machine.vcpu_count, 2);
        assert_eq!(config.machine.mem_size_mib, 1024);
        assert_eq!(config.serial.output, SerialOutput::File("/tmp/out".into()));
        assert!(!config.serial.stdin);
        assert_eq!(config.boot.unwrap().boot_args.as_deref(), Some("quiet"));
        assert_eq!(options.boot, BootPreference::Linux);
        assert_eq!(options.hidden_cpu_features.len(), 2);
    }

    #[test]
    fn bad_values_are_rejected_with_reasons() {
        let err = run_args(&["--kernel", "k", "--serial", "tcp"]).unwrap_err();
        assert!(err.to_string().contains("expected stdio, file=PATH or none"));
        let err = run_args(&["--kernel", "k", "--cpu-hide", "warp"]).unwrap_err();
        assert!(err.to_string().contains("unknown CPU feature"));
        assert!(run_args(&["--kernel", "k", "--cpus", "300"]).is_err());
        assert!(run_args(&["--cpus", "1"]).is_err(), "--kernel is required");
        let err = run_args(&["--kernel", "k", "--log-level", "loud"]).unwrap_err();
        assert!(err.to_string().contains("expected off"));
    }

    #[test]
    fn serial_stdio_reads_stdin_even_without_terminal() {
        let (config, _) = run_args(&["--kernel", "k", "--serial", "stdio"])
            .unwrap()
            .to_config(false);
        assert!(config.serial.stdin);
        let (config, _) = run_args(&["--kernel", "k"]).unwrap().to_config(false);
        assert!(!config.serial.stdin);
    }
}
