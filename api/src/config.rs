//! The VM configuration.

use serde::{Deserialize, Serialize};

use crate::models::{MachineConfigUpdate, RateLimiter};
use crate::StaticCpuTemplate;

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
    /// Firecracker's static CPU template (`T2`, `C3`, …); `None` when there is none or when a
    /// custom template (`VmConfig::cpu_template`) is set instead: the two share one slot.
    #[serde(default, skip_serializing_if = "StaticCpuTemplate::is_none")]
    pub cpu_template: StaticCpuTemplate,
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
            cpu_template: StaticCpuTemplate::None,
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
    /// A custom CPU template (`PUT /cpu-config`), applied to every vCPU. Set only through
    /// [`VmConfig::set_custom_cpu_template`], which clears a static one.
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
    /// `PUT /machine-config`: the new machine. `template` `None` (the field was absent) keeps the
    /// current CPU template, static or custom, as Firecracker does.
    pub fn put_machine(&mut self, machine: MachineConfig, template: Option<StaticCpuTemplate>) {
        self.machine = MachineConfig {
            cpu_template: self.machine.cpu_template,
            ..machine
        };
        if let Some(template) = template {
            self.set_static_cpu_template(template);
        }
    }

    /// `PATCH /machine-config`.
    pub fn patch_machine(&mut self, update: &MachineConfigUpdate) -> Result<(), String> {
        self.machine = update.apply(&self.machine)?;
        if let Some(template) = update.cpu_template {
            self.set_static_cpu_template(template);
        }
        Ok(())
    }

    /// A static template replaces a custom one (and `None` removes either): Firecracker keeps
    /// one CPU template per VM, the last one set.
    pub fn set_static_cpu_template(&mut self, template: StaticCpuTemplate) {
        self.machine.cpu_template = template;
        self.cpu_template = None;
    }

    /// `PUT /cpu-config`: a custom template replaces a static one.
    pub fn set_custom_cpu_template(&mut self, template: crate::CpuTemplate) {
        self.machine.cpu_template = StaticCpuTemplate::None;
        self.cpu_template = Some(template);
    }

    /// The template the vCPUs get: the custom one, else the static one's modifiers.
    pub fn effective_cpu_template(&self) -> Option<crate::CpuTemplate> {
        match (&self.cpu_template, self.machine.cpu_template) {
            (Some(custom), _) => Some(custom.clone()),
            (None, StaticCpuTemplate::None) => None,
            (None, name) => Some(name.template()),
        }
    }

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

#[cfg(test)]
mod cpu_template_slot_tests {
    use super::*;
    use crate::StaticCpuTemplate as S;

    fn custom() -> crate::CpuTemplate {
        crate::cpu_template::parse_template_json(
            r#"{"msr_modifiers": [{"addr": 16, "bitmap": "0b1"}]}"#,
        )
        .expect("template")
    }

    /// One slot, the last set wins (Firecracker's rule); an absent PUT field keeps the slot.
    #[test]
    fn static_and_custom_templates_replace_each_other() {
        let mut config = VmConfig::default();
        config.put_machine(MachineConfig::default(), Some(S::T2));
        assert_eq!(config.effective_cpu_template(), Some(S::T2.template()));
        config.set_custom_cpu_template(custom());
        assert_eq!(config.machine.cpu_template, S::None);
        assert_eq!(config.effective_cpu_template(), Some(custom()));
        config.put_machine(MachineConfig::default(), None);
        assert_eq!(config.cpu_template, Some(custom()), "absent field keeps it");
        let patch: MachineConfigUpdate =
            serde_json::from_str(r#"{"cpu_template": "C3"}"#).expect("patch");
        config.patch_machine(&patch).expect("patch applies");
        assert_eq!(
            (config.machine.cpu_template, &config.cpu_template),
            (S::C3, &None)
        );
        let patch: MachineConfigUpdate =
            serde_json::from_str(r#"{"vcpu_count": 2}"#).expect("patch");
        config.patch_machine(&patch).expect("patch applies");
        assert_eq!(
            config.machine.cpu_template,
            S::C3,
            "PATCH without the field keeps it"
        );
        config.put_machine(MachineConfig::default(), Some(S::None));
        assert_eq!(config.effective_cpu_template(), None);
        // The name travels with the configuration (snapshots), and is left out when None.
        let json = serde_json::to_string(&MachineConfig::default()).expect("json");
        assert!(!json.contains("cpu_template"), "{json}");
        let t2 = MachineConfig {
            cpu_template: S::T2,
            ..MachineConfig::default()
        };
        let json = serde_json::to_string(&t2).expect("json");
        assert!(json.contains(r#""cpu_template":"T2""#), "{json}");
        assert_eq!(
            serde_json::from_str::<MachineConfig>(&json).expect("back"),
            t2
        );
    }
}
