//! The `ferry` command line. Flags are parsed into the shared [`VmConfig`] so the command line and
//! the API build identical VMs.

use clap::{Args, Parser, Subcommand, ValueEnum};

use ferry_api::{
    BalloonConfig, BootSource, DriveConfig, EntropyConfig, HugePages, MachineConfig,
    NetBackendConfig, NetConfig, SerialConfig, SerialOutput, StaticCpuTemplate, VmConfig,
    VsockConfig,
};
use ferry_arch::boot::BootPreference;
use ferry_arch::cpuid::{feature_by_name, CpuFeature, HIDEABLE_FEATURES};

use crate::builder::BuildOptions;
use std::path::PathBuf;

use crate::migration::destination::ReceiveMaps;
use crate::migration::tls::TlsFiles;
use crate::migration::{MigrationUrl, SecurityOptions};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "A virtual machine monitor on Linux KVM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest (or restore a snapshot) and run it until it exits.
    Run(Box<RunArgs>),
    /// Wait for one incoming live migration and run the guest it brings.
    Receive(ReceiveArgs),
    /// Control a running ferry through its API socket.
    Ctl(ferry_api::CtlArgs),
    /// Take Firecracker's command line (`--api-sock`, `--config-file`, `--no-api`, …), as when
    /// started through a symlink named `firecracker`; `ferry firecracker --help` lists it.
    #[command(disable_help_flag = true)]
    Firecracker(FirecrackerArgs),
    /// Build a jail for one microVM and run the VMM in it, as Firecracker's `jailer` (`ferry
    /// jail --help` lists the flags; VMM arguments after `--`).
    #[command(disable_help_flag = true)]
    Jail(FirecrackerArgs),
}

/// Firecracker's arguments, parsed by [`crate::firecracker_cli`].
#[derive(Debug, Args)]
pub struct FirecrackerArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Where to listen: tcp:HOST:PORT or unix:PATH.
    #[arg(long, value_name = "URL", value_parser = parse_migration_url)]
    pub listen: MigrationUrl,
    /// Replace drive ID's host path on this host (file, block device or iscsi:// URL).
    #[arg(long = "disk-map", value_name = "ID=PATH", value_parser = parse_disk_map)]
    pub disk_maps: Vec<(String, String)>,
    /// Replace interface ID's backend on this host: ID=macvtap:NAME or ID=tap:NAME.
    #[arg(long = "net-map", value_name = "ID=KIND:NAME", value_parser = parse_net_map)]
    pub net_maps: Vec<(String, NetBackendConfig)>,
    /// The vsock device's Unix socket path on this host (the incoming uds_path is not used).
    #[arg(long = "vsock-map", value_name = "PATH", value_parser = parse_vsock_map)]
    pub vsock_map: Option<String>,
    /// Also admit host resources under PREFIX that the incoming configuration names (repeatable):
    /// a path prefix (resolved; no `..` or symlink escape), an iscsi://HOST:PORT/ URL prefix,
    /// tap:NAME-PREFIX or macvtap:NAME-PREFIX. Default: nothing outside the maps.
    #[arg(long = "allow-path", value_name = "PREFIX")]
    pub allow_paths: Vec<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Serve the HTTP API on this Unix socket once the guest runs here.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<String>,
    /// This host's serial console (the source's is not reused).
    #[arg(long, value_name = "stdio|file=PATH|none", value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_name = "LEVEL", value_parser = parse_log_level)]
    pub log_level: log::LevelFilter,
    /// seccomp filters on every thread: on (default: a syscall outside a thread's list kills
    /// ferry), off, or log (allowed and written to the kernel's audit log, for debugging).
    #[arg(long, default_value = "on", value_name = "on|off|log")]
    pub seccomp: crate::seccomp::SeccompLevel,
}

/// Who may send this ferry a guest (`ferry receive`).
#[derive(Debug, Default, Args)]
pub struct SecurityArgs {
    /// TLS 1.3: this destination's certificate chain (PEM); needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA whose certificates sources must present (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// The pre-shared-key channel: admit only sources holding this key file (≥ 32 random bytes).
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert")]
    pub psk_file: Option<PathBuf>,
    /// Allow listening for plain TCP on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
}

impl SecurityArgs {
    pub fn options(&self) -> SecurityOptions {
        SecurityOptions {
            tls: match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                }),
                _ => None,
            },
            psk_file: self.psk_file.clone(),
            insecure: self.insecure,
        }
    }
}

impl ReceiveArgs {
    pub fn receive_maps(&self) -> ReceiveMaps {
        ReceiveMaps {
            disks: self.disk_maps.iter().cloned().collect(),
            nets: self.net_maps.iter().cloned().collect(),
            vsock: self.vsock_map.clone(),
        }
    }
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
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "api_socket"])]
    pub kernel: Option<String>,
    /// Restore the snapshot in DIR (written by `ferry ctl snapshot`) instead of booting.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline"])]
    pub restore: Option<String>,
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
    /// What backs guest memory: `none` (4 KiB pages, default), `transparent` (transparent huge
    /// pages advised), `2M` (reserved hugetlbfs pages; the host needs enough free ones).
    #[arg(long, default_value = "none", value_name = "none|transparent|2M", value_parser = parse_huge_pages)]
    pub huge_pages: HugePages,
    /// A CPU template: one of Firecracker's static templates by name (`T2`, `T2S`, `T2CL`, `T2A`,
    /// `C3`, as `machine-config.cpu_template`), or a FILE holding a custom template
    /// (Firecracker's JSON format, as for `PUT /cpu-config`). A file named like a template is
    /// given with a directory (`./T2`).
    #[arg(long, value_name = "NAME|FILE", value_parser = parse_cpu_template)]
    pub cpu_template: Option<CliCpuTemplate>,
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
    /// ACPI tables (devices, power off): `on` (default) or `off` (MP table and
    /// `virtio_mmio.device=` command-line entries only, for kernels built without ACPI).
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_acpi,
          action = clap::ArgAction::Set)]
    pub acpi: bool,
    /// CPUID features to hide from the guest, comma-separated (e.g. `avx512f,avx2`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_cpu_feature)]
    pub cpu_hide: Vec<&'static CpuFeature>,
    /// A virtio-blk disk (repeatable): a file, a block device (e.g. an LVM volume) or an
    /// iscsi://[user[%password]@]host[:port]/IQN/LUN URL.
    #[arg(long = "disk", value_name = "path=PATH[,id=ID][,readonly=on][,direct=on|off][,chap-secret-file=FILE][,bps=N][,iops=N]",
          value_parser = parse_disk)]
    pub disks: Vec<DriveConfig>,
    /// A virtio-net interface (repeatable).
    #[arg(long = "net", value_name = "macvtap=NAME|tap=NAME|fd=N[,mac=MAC][,id=ID][,mtu=N][,queues=N][,rx-bps=N][,tx-bps=N][,rx-pps=N][,tx-pps=N]",
          value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// A virtio-rng entropy device fed from the host's getrandom(2), optionally rate limited:
    /// `--entropy` alone, or `--entropy=bps=N,ops=N` (bytes and requests per second).
    #[arg(long, value_name = "bps=N,ops=N,bps-burst=N,ops-burst=N", num_args = 0..=1,
          require_equals = true, default_missing_value = "", value_parser = parse_entropy)]
    pub entropy: Option<EntropyConfig>,
    /// A virtio-vsock device: guest CID N (≥ 3); host clients connect to the Unix socket PATH
    /// (`CONNECT <port>`), guest connections to port P go to `PATH_P`.
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-balloon device: `--balloon amount_mib=N[,deflate_on_oom=on][,stats_s=N]
    /// [,free_page_reporting=on]` (target in MiB, statistics polling interval in seconds).
    #[arg(long, value_name = "amount_mib=N[,deflate_on_oom=on|off][,stats_s=N][,free_page_reporting=on|off]",
          value_parser = parse_balloon)]
    pub balloon: Option<BalloonConfig>,
    /// With --restore: replace drive ID's host path (as `ferry receive --disk-map`).
    #[arg(long = "disk-map", value_name = "ID=PATH", value_parser = parse_disk_map,
          requires = "restore")]
    pub disk_maps: Vec<(String, String)>,
    /// With --restore: replace interface ID's backend (as `ferry receive --net-map`).
    #[arg(long = "net-map", value_name = "ID=KIND:NAME", value_parser = parse_net_map,
          requires = "restore")]
    pub net_maps: Vec<(String, NetBackendConfig)>,
    /// With --restore: the vsock device's Unix socket path (as `ferry receive --vsock-map`).
    #[arg(long = "vsock-map", value_name = "PATH", value_parser = parse_vsock_map,
          requires = "restore")]
    pub vsock_map: Option<String>,
    /// With --restore: admit the snapshot's host resources under PREFIX (as `ferry receive
    /// --allow-path`).
    #[arg(long = "allow-path", value_name = "PREFIX", requires = "restore")]
    pub allow_paths: Vec<String>,
    /// With --restore: open whatever the snapshot names, unchecked — for a snapshot this host
    /// wrote and nobody else could change.
    #[arg(long, requires = "restore", conflicts_with = "allow_paths")]
    pub trust_snapshot: bool,
    /// Serve the HTTP API on this Unix socket. Without --kernel/--restore, wait to be configured
    /// through it.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<String>,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_name = "LEVEL", value_parser = parse_log_level)]
    pub log_level: log::LevelFilter,
    /// seccomp filters on every thread: on (default: a syscall outside a thread's list kills
    /// ferry), off, or log (allowed and written to the kernel's audit log, for debugging).
    #[arg(long, default_value = "on", value_name = "on|off|log")]
    pub seccomp: crate::seccomp::SeccompLevel,
}

impl RunArgs {
    /// The maps of `--restore` (as `ferry receive`'s).
    pub fn restore_maps(&self) -> ReceiveMaps {
        ReceiveMaps {
            disks: self.disk_maps.iter().cloned().collect(),
            nets: self.net_maps.iter().cloned().collect(),
            vsock: self.vsock_map.clone(),
        }
    }

    /// The VM configuration and build options these flags describe.
    pub fn to_config(&self, stdin_is_terminal: bool) -> (VmConfig, BuildOptions) {
        let serial = serial_config(self.serial.as_ref(), stdin_is_terminal);
        let mut config = VmConfig {
            machine: MachineConfig {
                vcpu_count: self.cpus,
                mem_size_mib: self.memory,
                acpi: self.acpi,
                huge_pages: self.huge_pages,
                ..Default::default()
            },
            boot: self.kernel.as_ref().map(|kernel| BootSource {
                kernel_image_path: kernel.clone(),
                initrd_path: self.initrd.clone(),
                boot_args: self.cmdline.clone(),
            }),
            serial,
            exit_device_port: self.exit_device,
            drives: with_default_ids(self.disks.clone(), "disk", |d| &mut d.drive_id),
            nets: with_default_ids(self.nets.clone(), "net", |n| &mut n.iface_id),
            cpu_template: None,
            entropy: self.entropy.clone(),
            vsock: self.vsock.clone(),
            balloon: self.balloon.clone(),
        };
        match &self.cpu_template {
            Some(CliCpuTemplate::Static(name)) => config.set_static_cpu_template(*name),
            Some(CliCpuTemplate::Custom(template)) => {
                config.set_custom_cpu_template(template.clone())
            }
            None => {}
        }
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

/// The console for a `--serial` value: stdout by default, stdin read on a terminal or when
/// `stdio` is explicit.
pub fn serial_config(flag: Option<&SerialOutput>, stdin_is_terminal: bool) -> SerialConfig {
    match flag {
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
    }
}

/// Gives entries without an `id=` the id `<prefix><index>`.
fn with_default_ids<T>(
    mut items: Vec<T>,
    prefix: &str,
    id: impl Fn(&mut T) -> &mut String,
) -> Vec<T> {
    for (i, item) in items.iter_mut().enumerate() {
        let id = id(item);
        if id.is_empty() {
            *id = format!("{prefix}{i}");
        }
    }
    items
}

/// Splits `key=value,key=value`; values may not contain commas.
fn key_values(text: &str) -> Result<Vec<(&str, &str)>, String> {
    text.split(',')
        .map(|part| {
            part.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("'{part}' in '{text}' is not key=value"))
        })
        .collect()
}

/// `--cpu-template`: a static template's name or a custom template's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliCpuTemplate {
    Static(StaticCpuTemplate),
    Custom(ferry_api::CpuTemplate),
}

/// A template's name wins; otherwise an existing file is read; otherwise a bare word is taken
/// for a mistyped name (the error lists the names) and anything else for a missing file.
fn parse_cpu_template(value: &str) -> Result<CliCpuTemplate, String> {
    let name = value.parse::<StaticCpuTemplate>();
    let bare_word = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric());
    match name {
        Ok(name) => return Ok(CliCpuTemplate::Static(name)),
        Err(e) if bare_word && !std::path::Path::new(value).exists() => return Err(e),
        Err(_) => {}
    }
    let text = std::fs::read_to_string(value).map_err(|e| format!("{value}: {e}"))?;
    ferry_api::cpu_template::parse_template_json(&text)
        .map(CliCpuTemplate::Custom)
        .map_err(|e| format!("{value}: {e}"))
}

fn parse_huge_pages(value: &str) -> Result<HugePages, String> {
    match value.to_ascii_lowercase().as_str() {
        "none" => Ok(HugePages::None),
        "transparent" => Ok(HugePages::Transparent),
        "2m" => Ok(HugePages::Hugetlb2M),
        _ => Err(format!(
            "--huge-pages {value:?}: use none, transparent or 2M"
        )),
    }
}

fn parse_acpi(value: &str) -> Result<bool, String> {
    on_off("--acpi", value)
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id '{id}': use 1 to 64 letters, digits, '_' or '-'"
        ))
    }
}

fn parse_disk(text: &str) -> Result<DriveConfig, String> {
    let mut drive = DriveConfig {
        drive_id: String::new(),
        path_on_host: String::new(),
        is_root_device: false,
        is_read_only: false,
        partuuid: None,
        direct: None,
        chap_secret_file: None,
        rate_limiter: None,
    };
    let mut limit = crate::rate_limit::CliLimit::default();
    for (key, value) in key_values(text)? {
        match key {
            "path" => drive.path_on_host = value.to_string(),
            "id" => {
                check_id(value)?;
                drive.drive_id = value.to_string();
            }
            "readonly" => drive.is_read_only = on_off(key, value)?,
            "root" => drive.is_root_device = on_off(key, value)?,
            "partuuid" => drive.partuuid = Some(value.to_string()),
            "direct" => drive.direct = Some(on_off(key, value)?),
            "chap-secret-file" => drive.chap_secret_file = Some(value.to_string()),
            other if limit.accept(other, value, "iops")? => {}
            other => {
                return Err(format!(
                    "unknown disk option '{other}' (known: path, id, readonly, root, partuuid, direct, chap-secret-file, bps, iops, bps-burst, iops-burst)"
                ))
            }
        }
    }
    drive.rate_limiter = limit.build("", "iops")?;
    if drive.path_on_host.is_empty() {
        return Err(format!("'{text}': path=PATH is required"));
    }
    Ok(drive)
}

fn parse_net(text: &str) -> Result<NetConfig, String> {
    let mut backend = None;
    let mut net = NetConfig {
        iface_id: String::new(),
        backend: NetBackendConfig::Fd(-1),
        guest_mac: None,
        mtu: None,
        queues: 1,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let mut rx_limit = crate::rate_limit::CliLimit::default();
    let mut tx_limit = crate::rate_limit::CliLimit::default();
    for (key, value) in key_values(text)? {
        let chosen = match key {
            "macvtap" => Some(NetBackendConfig::Macvtap(value.to_string())),
            "tap" => Some(NetBackendConfig::Tap(value.to_string())),
            "fd" => Some(NetBackendConfig::Fd(
                value
                    .parse()
                    .ok()
                    .filter(|fd: &i32| *fd >= 0)
                    .ok_or_else(|| format!("fd={value}: expected a file descriptor number"))?,
            )),
            "mac" => {
                check_mac(value)?;
                net.guest_mac = Some(value.to_ascii_lowercase());
                None
            }
            "id" => {
                check_id(value)?;
                net.iface_id = value.to_string();
                None
            }
            "mtu" => {
                net.mtu = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|m: &u16| *m >= ferry_api::MIN_MTU)
                        .ok_or_else(|| format!("mtu={value}: expected 68 to 65535"))?,
                );
                None
            }
            "queues" => {
                net.queues = value
                    .parse()
                    .ok()
                    .filter(|q| (1..=16).contains(q))
                    .ok_or_else(|| format!("queues={value}: expected 1 to 16"))?;
                None
            }
            other
                if match other.split_at_checked(3) {
                    Some(("rx-", k)) => rx_limit.accept(k, value, "pps")?,
                    Some(("tx-", k)) => tx_limit.accept(k, value, "pps")?,
                    _ => false,
                } =>
            {
                None
            }
            other => {
                return Err(format!(
                    "unknown net option '{other}' (known: macvtap, tap, fd, mac, id, mtu, queues, rx-bps, rx-pps, tx-bps, tx-pps, and their -burst)"
                ))
            }
        };
        if let Some(chosen) = chosen {
            if backend.replace(chosen).is_some() {
                return Err(format!("'{text}': give one of macvtap=, tap= or fd="));
            }
        }
    }
    net.backend =
        backend.ok_or_else(|| format!("'{text}': macvtap=NAME, tap=NAME or fd=N is required"))?;
    net.rx_rate_limiter = rx_limit.build("rx-", "pps")?;
    net.tx_rate_limiter = tx_limit.build("tx-", "pps")?;
    Ok(net)
}

/// `--entropy` options: none (an unlimited device), or rate limits in the `--disk` style with
/// `ops` (requests) as the operations.
fn parse_entropy(text: &str) -> Result<EntropyConfig, String> {
    let mut limit = crate::rate_limit::CliLimit::default();
    if !text.is_empty() {
        for (key, value) in key_values(text)? {
            if !limit.accept(key, value, "ops")? {
                return Err(format!(
                    "unknown entropy option '{key}' (known: bps, ops, bps-burst, ops-burst)"
                ));
            }
        }
    }
    Ok(EntropyConfig {
        rate_limiter: limit.build("", "ops")?,
    })
}

/// `--vsock cid=N,uds=PATH`, checked as `PUT /vsock`'s body.
fn parse_vsock(text: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for (key, value) in key_values(text)? {
        match key {
            "cid" => cid = Some(parse_number_u64(key, value)?),
            "uds" => uds = Some(value.to_string()),
            _ => return Err(format!("unknown vsock option '{key}' (known: cid, uds)")),
        }
    }
    let device = ferry_api::Vsock {
        guest_cid: cid.ok_or("--vsock needs cid=N")?,
        uds_path: uds.ok_or("--vsock needs uds=PATH")?,
        vsock_id: None,
    };
    device.validate().map_err(|e| format!("--vsock: {e}"))?;
    Ok(device.to_config())
}

fn parse_number_u64(key: &str, value: &str) -> Result<u64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{key}={value}: not a number"));
    }
    value
        .parse()
        .map_err(|_| format!("{key}={value}: too large"))
}

fn parse_vsock_map(text: &str) -> Result<String, String> {
    ferry_api::check_uds_path("--vsock-map", text)?;
    Ok(text.to_string())
}

/// `--balloon` options, Firecracker's names (`stats_s` for `stats_polling_interval_s`).
fn parse_balloon(text: &str) -> Result<BalloonConfig, String> {
    let mut balloon = BalloonConfig::default();
    let mut amount = None;
    for (key, value) in key_values(text)? {
        match key {
            "amount_mib" => {
                amount = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| format!("amount_mib={value}: expected MiB (a number)"))?,
                )
            }
            "deflate_on_oom" => balloon.deflate_on_oom = on_off(key, value)?,
            "stats_s" => {
                balloon.stats_polling_interval_s = value
                    .parse::<u16>()
                    .map_err(|_| format!("stats_s={value}: expected seconds (0-65535)"))?
            }
            "free_page_reporting" => balloon.free_page_reporting = on_off(key, value)?,
            _ => {
                return Err(format!(
                    "unknown balloon option '{key}' (known: amount_mib, deflate_on_oom, \
                     stats_s, free_page_reporting)"
                ))
            }
        }
    }
    balloon.amount_mib = amount.ok_or_else(|| format!("'{text}': amount_mib=N is required"))?;
    Ok(balloon)
}

fn check_mac(text: &str) -> Result<(), String> {
    let parts: Vec<&str> = text.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "mac={text}: expected six hex bytes like 52:54:00:12:34:56"
        ))
    }
}

fn parse_migration_url(text: &str) -> Result<MigrationUrl, String> {
    text.parse()
}

fn parse_disk_map(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((id, path)) if !id.is_empty() && !path.is_empty() => Ok((id.into(), path.into())),
        _ => Err(format!("'{text}': expected ID=PATH")),
    }
}

fn parse_net_map(text: &str) -> Result<(String, NetBackendConfig), String> {
    let err = || format!("'{text}': expected ID=macvtap:NAME or ID=tap:NAME");
    let (id, backend) = text.split_once('=').ok_or_else(err)?;
    let backend = match backend.split_once(':') {
        Some(("macvtap", name)) if !name.is_empty() => NetBackendConfig::Macvtap(name.into()),
        Some(("tap", name)) if !name.is_empty() => NetBackendConfig::Tap(name.into()),
        _ => return Err(err()),
    };
    if id.is_empty() {
        return Err(err());
    }
    Ok((id.into(), backend))
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
            Command::Run(run) => *run,
            _ => panic!("not a run command"),
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

    /// `--cpu-template` takes a static template's name or a custom template's file.
    #[test]
    fn cpu_template_name_or_file() {
        let config = |args: &[&str]| run_args(args).unwrap().to_config(false).0;
        let t2s = config(&["--kernel", "k", "--cpu-template", "T2S"]);
        assert_eq!(t2s.machine.cpu_template, StaticCpuTemplate::T2S);
        assert_eq!(t2s.cpu_template, None);
        let dir = std::env::temp_dir().join(format!("ferry-cli-tmpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("custom.json");
        std::fs::write(
            &file,
            r#"{"msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b0"}]}"#,
        )
        .unwrap();
        let custom = config(&["--kernel", "k", "--cpu-template", file.to_str().unwrap()]);
        assert_eq!(custom.machine.cpu_template, StaticCpuTemplate::None);
        assert_eq!(custom.cpu_template.map(|t| t.msrs.len()), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
        let err = run_args(&["--kernel", "k", "--cpu-template", "T3"]).unwrap_err();
        assert!(err.to_string().contains("T2CL"), "{err}");
        let err = run_args(&["--kernel", "k", "--cpu-template", "V1N1"]).unwrap_err();
        assert!(err.to_string().contains("aarch64"), "{err}");
        let err = run_args(&["--kernel", "k", "--cpu-template", "/no/such.json"]).unwrap_err();
        assert!(err.to_string().contains("/no/such.json"), "{err}");
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
            "--kernel",
            "vmlinux",
            "--cmdline",
            "quiet",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--serial",
            "file=/tmp/out",
            "--boot",
            "linux",
            "--cpu-hide",
            "avx,avx2",
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
        assert!(err
            .to_string()
            .contains("expected stdio, file=PATH or none"));
        let err = run_args(&["--kernel", "k", "--cpu-hide", "warp"]).unwrap_err();
        assert!(err.to_string().contains("unknown CPU feature"));
        assert!(run_args(&["--kernel", "k", "--cpus", "300"]).is_err());
        assert!(run_args(&["--cpus", "1"]).is_err(), "--kernel is required");
        let err = run_args(&["--kernel", "k", "--log-level", "loud"]).unwrap_err();
        assert!(err.to_string().contains("expected off"));
    }

    #[test]
    fn receive_flags() {
        let cli = Cli::try_parse_from([
            "ferry",
            "receive",
            "--listen",
            "tcp:127.0.0.1:7000",
            "--disk-map",
            "root=/dev/vg/a",
            "--net-map",
            "eth0=macvtap:mvt1",
        ])
        .unwrap();
        let Command::Receive(args) = cli.command else {
            panic!("expected receive");
        };
        assert_eq!(args.listen, MigrationUrl::Tcp("127.0.0.1:7000".into()));
        let maps = args.receive_maps();
        assert_eq!(
            maps.disks.get("root").map(String::as_str),
            Some("/dev/vg/a")
        );
        assert_eq!(
            maps.nets.get("eth0"),
            Some(&NetBackendConfig::Macvtap("mvt1".into()))
        );
        for bad in [
            ["--net-map", "eth0=bridge:br0"],
            ["--disk-map", "=x"],
            ["--listen", "udp:1"],
        ] {
            let mut argv = vec!["ferry", "receive", "--listen", "unix:/tmp/x"];
            argv.extend_from_slice(&bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disks_and_nets() {
        let args = run_args(&[
            "--kernel", "k",
            "--disk", "path=/img/a.raw",
            "--disk", "path=iscsi://u%p@h:3261/iqn.2026-11.x:t/1,id=data,readonly=on,direct=off,chap-secret-file=/s",
            "--net", "macvtap=mvt0,mac=52:54:00:AB:cd:01,queues=2",
            "--net", "tap=tap0,id=lan",
        ])
        .unwrap();
        let (config, _) = args.to_config(false);
        assert_eq!(config.drives[0].drive_id, "disk0");
        assert_eq!(config.drives[0].path_on_host, "/img/a.raw");
        let d = &config.drives[1];
        assert_eq!(
            (d.drive_id.as_str(), d.is_read_only, d.direct),
            ("data", true, Some(false))
        );
        assert_eq!(d.chap_secret_file.as_deref(), Some("/s"));
        let n = &config.nets[0];
        assert_eq!(n.iface_id, "net0");
        assert_eq!(n.backend, NetBackendConfig::Macvtap("mvt0".into()));
        assert_eq!(n.guest_mac.as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(n.queues, 2);
        assert_eq!(config.nets[1].iface_id, "lan");
        assert_eq!(config.nets[1].backend, NetBackendConfig::Tap("tap0".into()));
    }

    #[test]
    fn rate_limits_on_disks_and_nets() {
        let args = run_args(&[
            "--kernel",
            "k",
            "--disk",
            "path=/a,bps=4M,iops=1000,iops-burst=100",
            "--net",
            "tap=t,rx-bps=100M,tx-pps=20000,tx-bps=1G,tx-bps-burst=1M",
        ])
        .unwrap();
        let (config, _) = args.to_config(false);
        let d = config.drives[0].rate_limiter.as_ref().unwrap();
        assert_eq!(
            d.bandwidth.as_ref().map(|b| (b.size, b.refill_time)),
            Some((4 << 20, 1000))
        );
        assert_eq!(
            d.ops
                .as_ref()
                .map(|b| (b.size, b.refill_time, b.one_time_burst)),
            Some((100, 100, Some(100)))
        );
        let n = &config.nets[0];
        let rx = n.rx_rate_limiter.as_ref().unwrap();
        assert!(rx.ops.is_none() && rx.bandwidth.is_some());
        let tx = n.tx_rate_limiter.as_ref().unwrap();
        assert_eq!(
            tx.ops.as_ref().map(|b| (b.size, b.refill_time)),
            Some((2000, 100))
        );
        assert_eq!(
            tx.bandwidth.as_ref().and_then(|b| b.one_time_burst),
            Some(1 << 20)
        );
        assert!(config.drives.iter().all(|d| d.drive_id != "x"));
        for bad in [
            "path=/a,bps=0",
            "path=/a,iops=x",
            "path=/a,bps-burst=5",
            "path=/a,pps=5",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        for bad in [
            "tap=t,rx-bps=0",
            "tap=t,bps=5",
            "tap=t,rx-iops=5",
            "tap=t,tx-pps-burst=1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn balloon_flag() {
        let (config, _) = run_args(&["--kernel", "k"]).unwrap().to_config(false);
        assert_eq!(config.balloon, None);
        let (config, _) = run_args(&[
            "--kernel",
            "k",
            "--balloon",
            "amount_mib=64,deflate_on_oom=on,stats_s=2",
        ])
        .unwrap()
        .to_config(false);
        assert_eq!(
            config.balloon,
            Some(BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 2,
                free_page_reporting: false,
            })
        );
        for bad in [
            "deflate_on_oom=on",
            "amount_mib=-1",
            "amount_mib=1,stats_s=70000",
            "amount_mib=1,bogus=1",
            "amount_mib=1,deflate_on_oom=maybe",
        ] {
            assert!(
                run_args(&["--kernel", "k", "--balloon", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn entropy_flag_alone_or_with_limits() {
        let (config, _) = run_args(&["--kernel", "k"]).unwrap().to_config(false);
        assert_eq!(config.entropy, None, "no device unless asked for");
        let (config, _) = run_args(&["--kernel", "k", "--entropy"])
            .unwrap()
            .to_config(false);
        assert_eq!(config.entropy, Some(EntropyConfig::default()));
        let (config, _) = run_args(&["--kernel", "k", "--entropy=bps=64K,ops=100,ops-burst=5"])
            .unwrap()
            .to_config(false);
        let limiter = config.entropy.unwrap().rate_limiter.unwrap();
        assert_eq!(
            limiter.bandwidth.map(|b| (b.size, b.refill_time)),
            Some((64 << 10, 1000))
        );
        assert_eq!(
            limiter
                .ops
                .map(|b| (b.size, b.refill_time, b.one_time_burst)),
            Some((10, 100, Some(5)))
        );
        for bad in ["bps=0", "iops=5", "ops-burst=3", "junk"] {
            let flag = format!("--entropy={bad}");
            assert!(run_args(&["--kernel", "k", &flag]).is_err(), "{bad}");
        }
    }

    #[test]
    fn vsock_flag_and_map() {
        let (config, _) = run_args(&["--kernel", "k", "--vsock", "cid=3,uds=/run/v.sock"])
            .unwrap()
            .to_config(false);
        assert_eq!(
            config.vsock,
            Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into()
            })
        );
        for bad in [
            "cid=2,uds=/v",
            "cid=4294967295,uds=/v",
            "cid=x,uds=/v",
            "cid=3",
            "uds=/v",
            "cid=3,uds=/v,port=5",
        ] {
            assert!(
                run_args(&["--kernel", "k", "--vsock", bad]).is_err(),
                "{bad}"
            );
        }
        let args = run_args(&["--restore", "/s", "--vsock-map", "/run/here.sock"]).unwrap();
        assert_eq!(args.restore_maps().vsock.as_deref(), Some("/run/here.sock"));
        assert!(run_args(&["--restore", "/s", "--vsock-map", ""]).is_err());
    }

    #[test]
    fn bad_disks_and_nets() {
        for bad in [
            "id=x",
            "path=",
            "path=/a,readonly=maybe",
            "path=/a,size=3",
            "path=/a,id=bad id",
            "junk",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        for bad in [
            "mac=52:54:00:00:00:01",
            "tap=a,macvtap=b",
            "fd=-1",
            "fd=x",
            "tap=t,mac=1:2:3",
            "tap=t,queues=0",
            "tap=t,queues=99",
            "bridge=br0",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restore_replaces_kernel() {
        let args = run_args(&["--restore", "/snap"]).unwrap();
        assert_eq!(args.restore.as_deref(), Some("/snap"));
        assert!(args.to_config(false).0.boot.is_none());
        assert!(run_args(&["--restore", "/snap", "--kernel", "k"]).is_err());
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
