//! Firecracker-shaped request and response bodies, and their mapping onto [`crate::config`].
//!
//! Field names, defaults and enum spellings follow Firecracker's API (its swagger and its serde
//! types), so the JSON that Firecracker clients send parses unchanged. Like Firecracker, every
//! request body uses `deny_unknown_fields`: a misspelt or unsupported field is a 400, never
//! silently ignored. ferry's own additions are marked "ferry extension".

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{
    BootSource, DriveConfig, EntropyConfig, HugePages, MachineConfig, NetBackendConfig, NetConfig,
    VmConfig, VsockConfig,
};
use crate::validate::{
    check_drive_path, check_id, check_ifname, check_path, check_text, parse_mac, MAX_BOOT_ARGS_LEN,
};
use crate::StaticCpuTemplate;

/// Most vCPUs a VM may have (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Most guest memory accepted, MiB (1 TiB): a bound on absurd requests, not a promise.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Smallest `mtu` of a network interface (IPv4's minimum datagram, as Firecracker).
pub const MIN_MTU: u16 = 68;
/// Most virtio-net queue pairs per interface (ferry extension `queues`).
pub const MAX_NET_QUEUES: u16 = 16;

impl MachineConfig {
    /// The checks Firecracker makes: 1..=32 vCPUs, SMT only with 1 or an even number of them,
    /// and a non-zero, bounded memory size.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(format!("vcpu_count must be between 1 and {MAX_VCPUS}"));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count & 1 == 1 {
            return Err("with smt enabled, vcpu_count must be 1 or an even number".into());
        }
        if self.mem_size_mib == 0 || self.mem_size_mib > MAX_MEM_MIB {
            return Err(format!("mem_size_mib must be between 1 and {MAX_MEM_MIB}"));
        }
        if self.huge_pages == HugePages::Hugetlb2M && !self.mem_size_mib.is_multiple_of(2) {
            return Err("with huge_pages \"2M\", mem_size_mib must be a multiple of 2".into());
        }
        Ok(())
    }
}

/// `cpu_template` by name, with ferry's own reason for names it does not take (`V1N1`).
fn parse_template_name(value: &Option<String>) -> Result<Option<StaticCpuTemplate>, String> {
    value.as_deref().map(str::parse).transpose()
}

/// `PUT /machine-config` as sent on the wire.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MachineConfigBody {
    vcpu_count: u8,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    cpu_template: Option<String>,
    #[serde(default)]
    huge_pages: Option<HugePages>,
    /// ferry extension (default true).
    #[serde(default)]
    acpi: Option<bool>,
}

impl MachineConfigBody {
    /// The machine, and the CPU template when the body names one (absent: keep the current one).
    pub(crate) fn into_config(self) -> Result<(MachineConfig, Option<StaticCpuTemplate>), String> {
        let template = parse_template_name(&self.cpu_template)?;
        let config = MachineConfig {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: self.smt,
            track_dirty_pages: self.track_dirty_pages,
            acpi: self.acpi.unwrap_or(true),
            huge_pages: self.huge_pages.unwrap_or_default(),
            cpu_template: template.unwrap_or_default(),
        };
        config.validate()?;
        Ok((config, template))
    }
}

/// `PATCH /machine-config`: the fields to change. At least one is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// ferry extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// Firecracker's static CPU template by name (`"None"` removes any template).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "template_name"
    )]
    pub cpu_template: Option<StaticCpuTemplate>,
}

/// `cpu_template` of a PATCH, parsed with [`parse_template_name`]'s reasons.
fn template_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<StaticCpuTemplate>, D::Error> {
    parse_template_name(&Option::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl MachineConfigUpdate {
    /// Checks what can be checked without the current configuration.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.vcpu_count.is_none()
            && self.mem_size_mib.is_none()
            && self.smt.is_none()
            && self.track_dirty_pages.is_none()
            && self.acpi.is_none()
            && self.huge_pages.is_none()
            && self.cpu_template.is_none()
        {
            return Err("empty PATCH request: give at least one machine-config field".into());
        }
        // Each field on its own must be valid whatever it is combined with.
        let probe = MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(1),
            mem_size_mib: self.mem_size_mib.unwrap_or(1),
            ..MachineConfig::default()
        };
        probe.validate()
    }

    /// The configuration after this update; the VMM calls it with its current one. Fails when
    /// the combination is invalid (e.g. `smt` on and an odd vCPU count).
    pub fn apply(&self, current: &MachineConfig) -> Result<MachineConfig, String> {
        let next = MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(current.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(current.mem_size_mib),
            smt: self.smt.unwrap_or(current.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(current.track_dirty_pages),
            acpi: self.acpi.unwrap_or(current.acpi),
            huge_pages: self.huge_pages.unwrap_or(current.huge_pages),
            cpu_template: current.cpu_template,
        };
        next.validate()?;
        Ok(next)
    }
}

impl BootSource {
    /// Paths without NUL, `boot_args` within the x86 command line size.
    pub fn validate(&self) -> Result<(), String> {
        check_path("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_path("initrd_path", initrd)?;
        }
        if let Some(args) = &self.boot_args {
            check_text("boot_args", args, MAX_BOOT_ARGS_LEN)?;
        }
        Ok(())
    }
}

/// A token bucket of a rate limiter (Firecracker's `TokenBucket`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens (bytes or operations) the bucket holds.
    pub size: u64,
    /// Extra tokens granted once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time: u64,
}

/// Longest `refill_time` accepted, in milliseconds (one day): a bound on absurd values.
pub const MAX_REFILL_TIME_MS: u64 = 24 * 3600 * 1000;

impl TokenBucket {
    /// `size` 0 means "no bucket" (how a PATCH removes a limit, as on Firecracker); a real
    /// bucket needs a `refill_time` of 1 ms. No `refill_time` may exceed one day, bucket or not
    /// (the OpenAPI document says so for every bucket).
    pub fn validate(&self, field: &str) -> Result<(), String> {
        if self.refill_time > MAX_REFILL_TIME_MS {
            return Err(format!(
                "{field}: refill_time {} ms is above the limit of {MAX_REFILL_TIME_MS} ms (one day)",
                self.refill_time
            ));
        }
        if self.size == 0 {
            return Ok(());
        }
        if self.refill_time == 0 {
            return Err(format!(
                "{field}: refill_time must be at least 1 ms for a bucket of size {}",
                self.size
            ));
        }
        Ok(())
    }
}

/// A device rate limiter (Firecracker's `RateLimiter`): bandwidth and/or operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    pub fn validate(&self, field: &str) -> Result<(), String> {
        if let Some(b) = &self.bandwidth {
            b.validate(&format!("{field}.bandwidth"))?;
        }
        if let Some(b) = &self.ops {
            b.validate(&format!("{field}.ops"))?;
        }
        Ok(())
    }

    /// The limiter as the configuration keeps it: buckets of size 0 dropped, `None` when no
    /// bucket is left (unlimited).
    pub fn normalized(limiter: Option<&RateLimiter>) -> Option<RateLimiter> {
        let keep = |b: &Option<TokenBucket>| b.clone().filter(|b| b.size != 0);
        let l = limiter?;
        let out = RateLimiter {
            bandwidth: keep(&l.bandwidth),
            ops: keep(&l.ops),
        };
        (out.bandwidth.is_some() || out.ops.is_some()).then_some(out)
    }

    /// `current` after a PATCH (Firecracker's update rules): a bucket given replaces the old one
    /// (size 0 removes it), a bucket not given stays.
    pub fn patched(current: Option<&RateLimiter>, patch: &RateLimiter) -> Option<RateLimiter> {
        let pick = |new: &Option<TokenBucket>, old: Option<&TokenBucket>| {
            new.clone().or_else(|| old.cloned())
        };
        let merged = RateLimiter {
            bandwidth: pick(&patch.bandwidth, current.and_then(|c| c.bandwidth.as_ref())),
            ops: pick(&patch.ops, current.and_then(|c| c.ops.as_ref())),
        };
        Self::normalized(Some(&merged))
    }
}

fn check_limiter(field: &str, limiter: &Option<RateLimiter>) -> Result<(), String> {
    limiter.as_ref().map_or(Ok(()), |l| l.validate(field))
}

/// `PUT /entropy` (Firecracker's `EntropyDeviceConfig`): the virtio-rng device, with an optional
/// rate limiter (bytes, and requests as ops).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl EntropyDevice {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_limiter("rate_limiter", &self.rate_limiter)
    }

    /// The configuration form (buckets of size 0 dropped, as for drives).
    pub fn to_config(&self) -> EntropyConfig {
        EntropyConfig {
            rate_limiter: RateLimiter::normalized(self.rate_limiter.as_ref()),
        }
    }

    /// The API form of a configured device (for `GET /vm/config`).
    pub fn from_config(config: &EntropyConfig) -> Self {
        Self {
            rate_limiter: config.rate_limiter.clone(),
        }
    }
}

/// Longest `uds_path`: a Unix socket address holds 107 bytes and a NUL. Guest connections to
/// port P use `<uds_path>_P`, up to 11 bytes longer; those that do not fit are refused (RST).
pub const MAX_UDS_PATH_LEN: usize = 107;

/// `PUT /vsock` (Firecracker's `Vsock`): the virtio-vsock device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u64,
    pub uds_path: String,
    /// Deprecated by Firecracker and ignored (there is one vsock device); accepted so old
    /// clients work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// Checks a vsock `uds_path` (also a snapshot's `vsock_override` and a `--vsock-map`).
pub fn check_uds_path(what: &str, path: &str) -> Result<(), String> {
    check_path(what, path)?;
    if path.len() > MAX_UDS_PATH_LEN {
        return Err(format!(
            "{what} is longer than {MAX_UDS_PATH_LEN} bytes (a Unix socket address)"
        ));
    }
    Ok(())
}

impl Vsock {
    /// The checks of `PUT /vsock` (also applied to `--vsock` and the config file).
    pub fn validate(&self) -> Result<(), String> {
        // 0-2 are the hypervisor, local and host addresses; u32::MAX is VMADDR_CID_ANY, and
        // guests address CIDs in 32 bits.
        if !(3..u64::from(u32::MAX)).contains(&self.guest_cid) {
            return Err(format!(
                "guest_cid must be between 3 and {} (got {})",
                u32::MAX - 1,
                self.guest_cid
            ));
        }
        // `vsock_id` is not checked: Firecracker ignores it too, and it is never used.
        check_uds_path("uds_path", &self.uds_path)
    }

    pub fn to_config(&self) -> VsockConfig {
        VsockConfig {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
        }
    }

    /// The API form of a configured device (for `GET /vm/config`).
    pub fn from_config(config: &VsockConfig) -> Self {
        Self {
            guest_cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
            vsock_id: None,
        }
    }
}

/// Block cache mode: `Unsafe` ignores guest flushes, `Writeback` honours them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

/// Block I/O engine: `Sync` (blocking syscalls) or `Async` (io_uring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

/// `PUT /drives/{drive_id}` (Firecracker's `Drive`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    /// A file, a block device, or (ferry extension) an `iscsi://` URL.
    pub path_on_host: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub io_engine: IoEngine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// ferry extension: O_DIRECT on/off; absent means the backend's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// ferry extension: file holding iSCSI CHAP secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret_file: Option<String>,
}

impl Drive {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_id("drive_id", &self.drive_id)?;
        check_drive_path(&self.path_on_host)?;
        if let Some(partuuid) = &self.partuuid {
            check_text("partuuid", partuuid, 64)?;
        }
        if let Some(file) = &self.chap_secret_file {
            check_path("chap_secret_file", file)?;
        }
        check_limiter("rate_limiter", &self.rate_limiter)?;
        Ok(())
    }

    /// The part of this drive that [`VmConfig`] models.
    pub fn to_config(&self) -> DriveConfig {
        DriveConfig {
            drive_id: self.drive_id.clone(),
            path_on_host: self.path_on_host.clone(),
            is_root_device: self.is_root_device,
            is_read_only: self.is_read_only,
            partuuid: self.partuuid.clone(),
            direct: self.direct,
            chap_secret_file: self.chap_secret_file.clone(),
            rate_limiter: RateLimiter::normalized(self.rate_limiter.as_ref()),
        }
    }

    /// The API form of a configured drive (for `GET /vm/config`); unmodelled fields default.
    pub fn from_config(config: &DriveConfig) -> Self {
        Self {
            drive_id: config.drive_id.clone(),
            path_on_host: config.path_on_host.clone(),
            is_root_device: config.is_root_device,
            is_read_only: config.is_read_only,
            partuuid: config.partuuid.clone(),
            cache_type: CacheType::default(),
            io_engine: IoEngine::default(),
            rate_limiter: config.rate_limiter.clone(),
            direct: config.direct,
            chap_secret_file: config.chap_secret_file.clone(),
        }
    }
}

/// `PATCH /drives/{drive_id}`: a new path (or the same one: re-read the size, i.e. online
/// resize) and/or a new rate limiter. At least one is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl DrivePatch {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_id("drive_id", &self.drive_id)?;
        check_limiter("rate_limiter", &self.rate_limiter)?;
        match (&self.path_on_host, &self.rate_limiter) {
            (None, None) => {
                Err("empty PATCH request: give path_on_host and/or rate_limiter".into())
            }
            (Some(path), _) => check_drive_path(path),
            (None, Some(_)) => Ok(()),
        }
    }
}

/// The kind of host device behind a network interface (ferry extension `host_dev_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostDevType {
    Tap,
    Macvtap,
    /// Output only: an fd inherited from the orchestrator on the command line.
    Fd,
}

/// `PUT /network-interfaces/{iface_id}` (Firecracker's `NetworkInterface`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    /// A tap interface, or (ferry extension) a macvtap interface.
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU for the guest (VIRTIO_NET_F_MTU), 68–65535; also set on the host interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// ferry extension: "tap" or "macvtap"; absent means detect from sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev_type: Option<HostDevType>,
    /// ferry extension: queue pairs (multiqueue when > 1); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
}

impl NetworkInterface {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_id("iface_id", &self.iface_id)?;
        if self.host_dev_type == Some(HostDevType::Fd) {
            return Err("host_dev_type \"fd\" is only available on the command line".into());
        }
        check_ifname("host_dev_name", &self.host_dev_name)?;
        if let Some(mac) = &self.guest_mac {
            parse_mac("guest_mac", mac)?;
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(format!("mtu {mtu} is below the IPv4 minimum of {MIN_MTU}"));
            }
        }
        if let Some(queues) = self.queues {
            if queues == 0 || queues > MAX_NET_QUEUES {
                return Err(format!("queues must be between 1 and {MAX_NET_QUEUES}"));
            }
        }
        check_limiter("rx_rate_limiter", &self.rx_rate_limiter)?;
        check_limiter("tx_rate_limiter", &self.tx_rate_limiter)?;
        Ok(())
    }

    /// The host device kind: the explicit `host_dev_type`, else macvtap when sysfs says the
    /// interface is one (`/sys/class/net/NAME/macvtap` exists), else tap.
    pub fn resolved_dev_type(&self) -> HostDevType {
        self.host_dev_type.unwrap_or_else(|| {
            if Path::new("/sys/class/net")
                .join(&self.host_dev_name)
                .join("macvtap")
                .is_dir()
            {
                HostDevType::Macvtap
            } else {
                HostDevType::Tap
            }
        })
    }

    /// The part of this interface that [`VmConfig`] models. `Macvtap` carries the interface
    /// name; the net backend finds its `/dev/tapN` node. Reads sysfs when the type is absent.
    pub fn to_config(&self) -> NetConfig {
        let name = self.host_dev_name.clone();
        let backend = match self.resolved_dev_type() {
            HostDevType::Macvtap => NetBackendConfig::Macvtap(name),
            HostDevType::Tap | HostDevType::Fd => NetBackendConfig::Tap(name),
        };
        NetConfig {
            iface_id: self.iface_id.clone(),
            backend,
            guest_mac: self.guest_mac.clone(),
            mtu: self.mtu,
            queues: self.queues.unwrap_or(1),
            rx_rate_limiter: RateLimiter::normalized(self.rx_rate_limiter.as_ref()),
            tx_rate_limiter: RateLimiter::normalized(self.tx_rate_limiter.as_ref()),
        }
    }

    /// The API form of a configured interface (for `GET /vm/config`).
    pub fn from_config(config: &NetConfig) -> Self {
        let (host_dev_name, kind) = match &config.backend {
            NetBackendConfig::Tap(name) => (name.clone(), HostDevType::Tap),
            NetBackendConfig::Macvtap(name) => (name.clone(), HostDevType::Macvtap),
            NetBackendConfig::Fd(fd) => (format!("fd:{fd}"), HostDevType::Fd),
        };
        Self {
            iface_id: config.iface_id.clone(),
            host_dev_name,
            guest_mac: config.guest_mac.clone(),
            mtu: config.mtu,
            rx_rate_limiter: config.rx_rate_limiter.clone(),
            tx_rate_limiter: config.tx_rate_limiter.clone(),
            host_dev_type: Some(kind),
            queues: Some(config.queues),
        }
    }
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters. At least one is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterfacePatch {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_id("iface_id", &self.iface_id)?;
        if self.rx_rate_limiter.is_none() && self.tx_rate_limiter.is_none() {
            return Err("empty PATCH request: give rx_rate_limiter and/or tx_rate_limiter".into());
        }
        check_limiter("rx_rate_limiter", &self.rx_rate_limiter)?;
        check_limiter("tx_rate_limiter", &self.tx_rate_limiter)
    }
}

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's i8042 keyboard, as Firecracker does; the guest decides
    /// what it means (Linux: its init's Ctrl-Alt-Del handling, or a reboot).
    SendCtrlAltDel,
    FlushMetrics,
    /// ferry's extension: press the ACPI power button (the guest shuts down cleanly if it
    /// handles the button). 400 for a guest started with ACPI off.
    PowerButton,
    /// ferry's extension: end the VM at once, as pulling the power cord does (ferry exits 0).
    PowerOff,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    pub(crate) action_type: ActionType,
}

/// `PATCH /vm`: the state to move to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmStateBody {
    pub(crate) state: VmState,
}

/// Full or diff (pages dirtied since the last snapshot; needs `track_dirty_pages`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// `PUT /snapshot/create`. Firecracker requires the VM to be paused first; so does ferry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the device and vCPU state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
}

impl SnapshotCreate {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_path("snapshot_path", &self.snapshot_path)?;
        check_path("mem_file_path", &self.mem_file_path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackend {
    backend_type: MemBackendType,
    backend_path: String,
}

#[derive(Deserialize)]
enum MemBackendType {
    File,
    Uffd,
}

/// `PUT /snapshot/load` as sent on the wire: the memory file comes either as the deprecated
/// `mem_file_path` or as `mem_backend` of type `File`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotLoadBody {
    snapshot_path: String,
    #[serde(default)]
    mem_file_path: Option<String>,
    #[serde(default)]
    mem_backend: Option<MemBackend>,
    #[serde(default)]
    enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    track_dirty_pages: Option<bool>,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    clock_realtime: bool,
    #[serde(default)]
    mem_diff_paths: Vec<String>,
    #[serde(default)]
    vsock_override: Option<VsockOverride>,
}

/// Firecracker's `VsockOverride`: the restored vsock device listens on another `uds_path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// A network interface of the snapshot that opens a different host device on load (Firecracker's
/// `network_overrides`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`, normalised: only allowed before the VM is configured or started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    pub mem_file_path: String,
    pub track_dirty_pages: bool,
    pub resume_vm: bool,
    /// Host devices for the snapshot's interfaces (tap names), by interface id.
    pub network_overrides: Vec<NetworkOverride>,
    /// Advance the guest's kvmclock by the wall-clock time since the snapshot was taken.
    pub clock_realtime: bool,
    /// ferry's extension: memory files of `Diff` snapshots, applied in order over
    /// `mem_file_path` (the base).
    pub mem_diff_paths: Vec<String>,
    /// A new `uds_path` for the snapshot's vsock device.
    pub vsock_override: Option<VsockOverride>,
}

impl SnapshotLoadBody {
    pub(crate) fn into_request(self) -> Result<SnapshotLoad, String> {
        check_path("snapshot_path", &self.snapshot_path)?;
        let mem_file_path = match (self.mem_file_path, self.mem_backend) {
            (Some(path), None) => path,
            (
                None,
                Some(MemBackend {
                    backend_type: MemBackendType::File,
                    backend_path,
                }),
            ) => backend_path,
            (
                None,
                Some(MemBackend {
                    backend_type: MemBackendType::Uffd,
                    ..
                }),
            ) => return Err("mem_backend type Uffd is not supported by ferry; use File".into()),
            (Some(_), Some(_)) => {
                return Err("give either mem_file_path or mem_backend, not both".into())
            }
            (None, None) => return Err("missing mem_backend (or mem_file_path)".into()),
        };
        check_path("mem_backend.backend_path", &mem_file_path)?;
        for (i, o) in self.network_overrides.iter().enumerate() {
            check_id("network_overrides[].iface_id", &o.iface_id)?;
            if o.host_dev_name.is_empty() || o.host_dev_name.len() > 15 {
                return Err(format!(
                    "network_overrides[{i}].host_dev_name must be an interface name of 1 to 15 bytes"
                ));
            }
            if self.network_overrides[..i]
                .iter()
                .any(|p| p.iface_id == o.iface_id)
            {
                return Err(format!(
                    "network_overrides names interface '{}' twice",
                    o.iface_id
                ));
            }
        }
        for path in &self.mem_diff_paths {
            check_path("mem_diff_paths[]", path)?;
        }
        if let Some(o) = &self.vsock_override {
            check_uds_path("vsock_override.uds_path", &o.uds_path)?;
        }
        Ok(SnapshotLoad {
            snapshot_path: self.snapshot_path,
            mem_file_path,
            track_dirty_pages: self
                .track_dirty_pages
                .or(self.enable_diff_snapshots)
                .unwrap_or(false),
            resume_vm: self.resume_vm,
            network_overrides: self.network_overrides,
            clock_realtime: self.clock_realtime,
            mem_diff_paths: self.mem_diff_paths,
            vsock_override: self.vsock_override,
        })
    }
}

/// Log verbosity; parsed case-insensitively as Firecracker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Parses a level name, in any case (`Warning` or `Warn` for warnings), as Firecracker does.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "level {text:?} is not one of Off, Error, Warning, Info, Debug, Trace"
                ))
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoggerBody {
    #[serde(default)]
    log_path: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    show_level: Option<bool>,
    #[serde(default)]
    show_log_origin: Option<bool>,
    #[serde(default)]
    module: Option<String>,
}

/// `PUT /logger`: where ferry's log goes and how verbose it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggerConfig {
    pub log_path: Option<String>,
    pub level: Option<LogLevel>,
    pub show_level: Option<bool>,
    pub show_log_origin: Option<bool>,
    /// Only log records from this module path.
    pub module: Option<String>,
}

impl LoggerBody {
    pub(crate) fn into_request(self) -> Result<LoggerConfig, String> {
        if let Some(path) = &self.log_path {
            check_path("log_path", path)?;
        }
        if let Some(module) = &self.module {
            check_text("module", module, 256)?;
        }
        Ok(LoggerConfig {
            log_path: self.log_path,
            level: self.level.as_deref().map(LogLevel::parse).transpose()?,
            show_level: self.show_level,
            show_log_origin: self.show_log_origin,
            module: self.module,
        })
    }
}

/// `PUT /metrics`: the file (or FIFO) that `FlushMetrics` writes JSON metrics to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
    /// Add the instance id (`--id`) to every line as a top-level `"id"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Operator-defined strings added to every line as a top-level `"properties"` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<std::collections::BTreeMap<String, String>>,
}

/// Most `properties` of `PUT /metrics`, and the longest key or value: bounds on what every
/// metrics line carries.
pub const MAX_METRICS_PROPERTIES: usize = 64;
const MAX_METRICS_PROPERTY_LEN: usize = 256;

impl MetricsConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_path("metrics_path", &self.metrics_path)?;
        let Some(properties) = &self.properties else {
            return Ok(());
        };
        if properties.len() > MAX_METRICS_PROPERTIES {
            return Err(format!(
                "properties: at most {MAX_METRICS_PROPERTIES} entries, not {}",
                properties.len()
            ));
        }
        for (key, value) in properties {
            check_text("properties key", key, MAX_METRICS_PROPERTY_LEN)?;
            check_text("properties value", value, MAX_METRICS_PROPERTY_LEN)?;
        }
        Ok(())
    }
}

/// `state` of `GET /`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    pub app_name: String,
}

impl InstanceInfo {
    /// The answer to `GET /` for instance `id` in `state`.
    pub fn new(id: impl Into<String>, state: InstanceState) -> Self {
        Self {
            id: id.into(),
            state,
            vmm_version: crate::VERSION.to_string(),
            app_name: "ferry".to_string(),
        }
    }
}

/// `GET /vm/config` response in Firecracker's `FullVmConfiguration` shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfiguration {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    pub balloon: Option<crate::Balloon>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

impl FullVmConfiguration {
    /// The API view of `config`. The VMM may then overwrite `drives`/`network_interfaces` with
    /// the exact bodies it was given, to echo fields [`VmConfig`] does not model.
    pub fn from_config(config: &VmConfig) -> Self {
        Self {
            boot_source: config.boot.clone(),
            machine_config: config.machine.clone(),
            drives: config.drives.iter().map(Drive::from_config).collect(),
            network_interfaces: config
                .nets
                .iter()
                .map(NetworkInterface::from_config)
                .collect(),
            entropy: config.entropy.as_ref().map(EntropyDevice::from_config),
            vsock: config.vsock.as_ref().map(Vsock::from_config),
            balloon: config.balloon.as_ref().map(crate::Balloon::from_config),
            logger: None,
            metrics: None,
        }
    }
}
