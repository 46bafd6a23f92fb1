//! The VM configuration.

use serde::{Deserialize, Serialize};

use crate::models::RateLimiter;

/// Default guest memory, MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Kernel command line ferry always starts with; the user's text is appended.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// What backs guest memory (Firecracker's `huge_pages`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// Ordinary pages with `madvise(MADV_HUGEPAGE)`: the kernel may back them with transparent
    /// huge pages.
    Transparent,
    /// hugetlbfs 2 MiB pages (`MAP_HUGETLB`), reserved when the VM starts: the host must have
    /// enough of them free (`/proc/sys/vm/nr_hugepages`).
    #[serde(rename = "2M")]
    Hugetlb2M,
}

/// `machine-config`: vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// ferry extension: describe the machine to the guest with ACPI tables (devices, power off).
    /// Off: only the MP table and `virtio_mmio.device=` on the command line, for kernels built
    /// without ACPI.
    #[serde(default = "acpi_default")]
    pub acpi: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

fn acpi_default() -> bool {
    true
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            acpi: true,
            huge_pages: HugePages::None,
        }
    }
}

/// `boot-source`: what to boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Text appended to [`DEFAULT_CMDLINE`]. (Firecracker replaces its default with `boot_args`;
    /// ferry keeps the defaults because its console and reboot handling rely on them.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Where the serial port's output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialOutput {
    /// stdout; stdin feeds the guest when it is a terminal or when chosen explicitly.
    #[default]
    Stdio,
    /// Append to a file.
    File(String),
    /// Discard.
    None,
}

/// The serial console.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialConfig {
    pub output: SerialOutput,
    /// Read guest input from stdin (set by `--serial stdio`, or automatically on a terminal).
    #[serde(default)]
    pub stdin: bool,
}

/// A block device (`--disk`, `PUT /drives/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveConfig {
    pub drive_id: String,
    /// A file, a block device, or an `iscsi://` URL (ferry extension).
    pub path_on_host: String,
    #[serde(default)]
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    /// For the root device: the partition's UUID, so the guest gets `root=PARTUUID=…` instead of
    /// `root=/dev/vda` (as Firecracker does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// O_DIRECT: `None` means the backend's default (on for block devices, off for files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// File holding iSCSI CHAP secrets, so they stay out of `ps` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret_file: Option<String>,
    /// Requests and bytes limit; `None`: unlimited (buckets of size 0 are never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// A network interface (`--net`, `PUT /network-interfaces/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub iface_id: String,
    pub backend: NetBackendConfig,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`. Defaults to the macvtap's own MAC, or a generated one for tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Queue pairs (multiqueue when > 1).
    #[serde(default = "one")]
    pub queues: u16,
    /// MTU told to the guest (VIRTIO_NET_F_MTU) and set on the host interface; `None`: neither
    /// (the guest picks its default, 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Frames and bytes limits towards the guest and from it; `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// The entropy device (`--entropy`, `PUT /entropy`): a virtio-rng fed from the host's
/// `getrandom(2)`. At most one per VM, as on Firecracker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyConfig {
    /// Requests and bytes limit; `None`: unlimited (buckets of size 0 are never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// The vsock device (`--vsock`, `PUT /vsock`): guest AF_VSOCK streams meet host Unix sockets
/// (`docs/api.md`, vsock device). At most one per VM, as on Firecracker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 to 2^32 - 2).
    pub guest_cid: u64,
    /// Where ferry listens for host-initiated connections; guest connections to port P go to
    /// `<uds_path>_P`.
    pub uds_path: String,
}

/// The balloon device (`--balloon`, `PUT /balloon`): a virtio-balloon the host inflates to take
/// guest memory back. At most one per VM, as on Firecracker. `amount_mib` follows `PATCH
/// /balloon`, so a snapshot or migration carries the current target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// Target size in MiB (at most the guest's memory).
    pub amount_mib: u32,
    /// Let the guest take pages back from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0: no statistics queue.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page reporting (VIRTIO_BALLOON_F_REPORTING): the guest hands free page blocks over.
    #[serde(default)]
    pub free_page_reporting: bool,
}

fn one() -> u16 {
    1
}

/// The host side of a network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetBackendConfig {
    /// A tap interface, attached to or created.
    Tap(String),
    /// A macvtap interface (its `/dev/tapN` node).
    Macvtap(String),
    /// An already-open tap/macvtap fd inherited from the orchestrator.
    Fd(i32),
}

/// Everything needed to build a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub machine: MachineConfig,
    pub boot: Option<BootSource>,
    pub serial: SerialConfig,
    /// Port of the guest exit-code device, when enabled.
    pub exit_device_port: Option<u16>,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
    /// A custom CPU template (`PUT /cpu-config`), applied to every vCPU.
    #[serde(default)]
    pub cpu_template: Option<crate::CpuTemplate>,
    /// The entropy device, when configured (absent in older snapshots: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// The vsock device, when configured (absent in older snapshots: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// The balloon device, when configured (absent in older snapshots: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
}

impl VmConfig {
    /// Adds `drive`, or replaces the drive with its id. Refuses a second root device, as
    /// Firecracker does: the guest gets one `root=`.
    pub fn put_drive(&mut self, drive: DriveConfig) -> Result<(), String> {
        let other_root = self
            .drives
            .iter()
            .find(|d| d.is_root_device && d.drive_id != drive.drive_id);
        if let (true, Some(other)) = (drive.is_root_device, other_root) {
            return Err(format!(
                "drive '{}' is already the root device; only one drive can be",
                other.drive_id
            ));
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    /// The root drive, if one is marked.
    pub fn root_drive(&self) -> Option<&DriveConfig> {
        self.drives.iter().find(|d| d.is_root_device)
    }
}

#[cfg(test)]
mod put_drive_tests {
    use super::*;

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: format!("/img/{id}"),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            direct: None,
            chap_secret_file: None,
            rate_limiter: None,
        }
    }

    #[test]
    fn one_root_device_at_most_and_replacement_by_id() {
        let mut config = VmConfig::default();
        config.put_drive(drive("data", false)).unwrap();
        config.put_drive(drive("rootfs", true)).unwrap();
        let err = config.put_drive(drive("other", true)).unwrap_err();
        assert!(err.contains("'rootfs' is already the root device"), "{err}");
        assert_eq!(config.drives.len(), 2);
        // The root drive itself may be replaced; another drive may become root once it is not.
        config.put_drive(drive("rootfs", true)).unwrap();
        config.put_drive(drive("rootfs", false)).unwrap();
        config.put_drive(drive("data", true)).unwrap();
        assert_eq!(
            config.root_drive().map(|d| d.drive_id.as_str()),
            Some("data")
        );
        assert_eq!(config.drives.len(), 2);
    }
}
