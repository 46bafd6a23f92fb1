//! Building a VM from a [`VmConfig`]: KVM VM and irqchip, memory, devices, kernel, boot
//! information and vCPUs, in that order. The result is a [`Vm`] ready to start.

use std::fs::{File, OpenOptions};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use ferry_api::{
    DriveConfig, HugePages, SerialOutput as SerialOutputConfig, VmConfig, DEFAULT_CMDLINE,
};
use ferry_arch::boot::{self, BootPreference, LoadedInitrd};
use ferry_arch::cpuid::{filter_cpuid, CpuFeature};
use ferry_arch::layout::{virtio_mmio_addr, VIRTIO_IRQ_FIRST, VIRTIO_MMIO_SIZE};
use ferry_arch::layout::{GED_IRQ, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, MPTABLE_ADDR, SERIAL_IRQ};
use ferry_arch::regs::{self, BootProtocol};
use ferry_arch::{acpi, mptable, GuestMemory};
use ferry_devices::bus::Bus;
use ferry_devices::legacy::{
    AcpiPm, ExitCode, ExitDevice, Serial, SerialOutput, ACPI_PM_PORT, ACPI_PM_PORT_LEN, COM1_PORT,
    COM_PORT_LEN, I8042, I8042_KBD_IRQ, I8042_PORT_BASE, I8042_PORT_LEN,
};
use vm_memory::Bytes;

use crate::error::VmmError;
use crate::event_loop::{SerialInput, Subscriber};
use crate::kvm::open_kvm;
use crate::legacy::LegacyDevices;
use crate::memory::{advise_huge_pages, create_guest_memory, register_memory};
use crate::metrics::VcpuMetrics;
use crate::vcpu::{Vcpu, VcpuContext};
use crate::virtio_devices::{attach_virtio_devices, VirtioDevices};

/// Options of a build that are not part of the guest-visible configuration.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    pub boot: BootPreference,
    /// CPUID features to hide from the guest.
    pub hidden_cpu_features: Vec<CpuFeature>,
}

/// A built, not yet running VM.
pub struct BuiltVm {
    pub kvm: Kvm,
    pub vm: Arc<VmFd>,
    pub memory: GuestMemory,
    pub vcpus: Vec<Vcpu>,
    pub context: VcpuContext,
    pub serial: Arc<Mutex<Serial>>,
    pub legacy: LegacyDevices,
    pub subscribers: Vec<Subscriber>,
    pub virtio: VirtioDevices,
}

/// How the VM's initial state is produced.
pub enum BuildMode {
    /// Load the kernel and set up boot registers.
    Boot,
    /// Memory and device/vCPU state will come from a snapshot or a migration stream.
    Restore,
}

/// Builds everything; on any error nothing keeps running.
pub fn build_vm(config: &VmConfig, options: &BuildOptions) -> Result<BuiltVm, VmmError> {
    build(config, options, BuildMode::Boot)
}

/// Builds the VM without loading a kernel, for restoring saved state into it.
pub fn build_vm_for_restore(
    config: &VmConfig,
    options: &BuildOptions,
) -> Result<BuiltVm, VmmError> {
    build(config, options, BuildMode::Restore)
}

fn build(config: &VmConfig, options: &BuildOptions, mode: BuildMode) -> Result<BuiltVm, VmmError> {
    let cpus = config.machine.vcpu_count;
    if cpus == 0 || cpus > mptable::MAX_CPUS {
        return Err(VmmError::Config(format!(
            "vCPU count must be 1 to {}, not {cpus}",
            mptable::MAX_CPUS
        )));
    }
    // Open user-supplied files first: a typo fails fast, before any KVM work.
    let boot_files = match mode {
        BuildMode::Boot => Some(open_boot_files(config)?),
        BuildMode::Restore => None,
    };
    let serial_output = open_serial_output(&config.serial.output)?;

    let kvm = open_kvm()?;
    let vm = kvm
        .create_vm()
        .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| VmmError::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let mem_size = config.machine.mem_size_mib << 20;
    let memory = create_guest_memory(mem_size, config.machine.huge_pages)?;
    if matches!(mode, BuildMode::Restore) && config.machine.huge_pages == HugePages::None {
        // All of a restored guest's memory is about to be written at once: transparent huge
        // pages make that one fault per 2 MiB instead of one per 4 KiB.
        advise_huge_pages(&memory);
    }
    // Creating the PIT (a kernel thread) and the first memory slot each block for milliseconds
    // inside KVM without using the CPU; overlap them with each other and with device setup and
    // kernel loading.
    std::thread::scope(|scope| {
        let pit = scope.spawn(|| {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit)
                .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))
        });
        let slots = scope.spawn(|| register_memory(&vm, &memory, config.machine.track_dirty_pages));
        let rest = build_rest(
            config,
            options,
            &kvm,
            &vm,
            &memory,
            boot_files,
            serial_output,
        );
        let joined = |r: std::thread::Result<Result<(), VmmError>>| {
            r.unwrap_or_else(|_| Err(VmmError::Device("a VM setup thread panicked".into())))
        };
        joined(pit.join())?;
        joined(slots.join())?;
        rest
    })
    .map(|parts| BuiltVm {
        kvm,
        vm: Arc::new(vm),
        memory,
        vcpus: parts.vcpus,
        context: parts.context,
        serial: parts.serial,
        legacy: parts.legacy,
        subscribers: parts.subscribers,
        virtio: parts.virtio,
    })
}

/// What the rest of the build produces.
struct BuiltParts {
    vcpus: Vec<Vcpu>,
    context: VcpuContext,
    serial: Arc<Mutex<Serial>>,
    legacy: LegacyDevices,
    subscribers: Vec<Subscriber>,
    virtio: VirtioDevices,
}

/// Devices, boot information and vCPUs (everything after the VM and its memory exist).
fn build_rest(
    config: &VmConfig,
    options: &BuildOptions,
    kvm: &Kvm,
    vm: &VmFd,
    memory: &GuestMemory,
    boot_files: Option<BootFiles>,
    serial_output: SerialOutput,
) -> Result<BuiltParts, VmmError> {
    let cpus = config.machine.vcpu_count;
    // Legacy devices.
    let exit = ExitCode::new().map_err(VmmError::io("creating the exit eventfd"))?;
    let mut pio = Bus::new();
    let serial_irq = irqfd(vm, SERIAL_IRQ, "serial")?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, serial_output)));
    pio.insert(
        serial.clone(),
        u64::from(COM1_PORT),
        u64::from(COM_PORT_LEN),
    )?;
    let keyboard_irq = irqfd(vm, I8042_KBD_IRQ, "i8042 keyboard")?;
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone(), Some(keyboard_irq))));
    pio.insert(
        i8042.clone(),
        u64::from(I8042_PORT_BASE),
        u64::from(I8042_PORT_LEN),
    )?;
    let acpi_pm = if config.machine.acpi {
        let ged_irq = irqfd(vm, GED_IRQ, "ACPI GED")?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(exit.clone(), Some(ged_irq))));
        pio.insert(pm.clone(), u64::from(ACPI_PM_PORT), ACPI_PM_PORT_LEN)?;
        Some(pm)
    } else {
        None
    };
    let legacy = LegacyDevices { i8042, acpi_pm };
    if let Some(port) = config.exit_device_port {
        pio.insert(
            Arc::new(Mutex::new(ExitDevice::new(exit.clone()))),
            u64::from(port),
            1,
        )?;
    }
    let mut subscribers: Vec<Subscriber> = Vec::new();
    if config.serial.stdin {
        subscribers.push(Arc::new(Mutex::new(SerialInput::new(serial.clone()))));
    }

    // virtio devices, announced in the DSDT or on the command line.
    let mut mmio = Bus::new();
    let virtio = attach_virtio_devices(config, vm, memory, &mut mmio)?;
    subscribers.extend(virtio.subscribers());

    let boot = match boot_files {
        Some(files) => Some(load_boot(config, options, memory, files, &virtio)?),
        None => None,
    };
    let mp = mptable::build(MPTABLE_ADDR, cpus).map_err(|e| VmmError::Config(e.to_string()))?;
    if boot.is_some() {
        memory
            .write_slice(&mp, vm_memory::GuestAddress(MPTABLE_ADDR))
            .map_err(|e| VmmError::Device(format!("writing the MP table: {e}")))?;
    }

    // vCPUs.
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let cpu_template = crate::cpu_template::resolve(config, &base_cpuid)?;
    if let Some(template) = &cpu_template {
        crate::cpu_template::check_kvm_capabilities(kvm, &template.kvm_capabilities)?;
    }
    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    for index in 0..cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
        let mut cpuid = base_cpuid.clone();
        filter_cpuid(&mut cpuid, index, cpus, &options.hidden_cpu_features);
        if let Some(template) = &cpu_template {
            crate::cpu_template::apply_cpuid(&mut cpuid, &template.cpuid)?;
        }
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VmmError::Kvm("KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&fd)?;
        if let Some(template) = &cpu_template {
            crate::cpu_template::apply_msrs(&fd, &template.msrs)?;
        }
        regs::setup_lint(&fd)?;
        // Application processors wait for INIT/SIPI; only the BSP gets the boot state.
        if let (0, Some(boot)) = (index, &boot) {
            regs::setup_regs(&fd, boot.protocol, boot.entry)?;
            regs::setup_sregs(&fd, boot.protocol)?;
            regs::setup_fpu(&fd)?;
        }
        vcpus.push(Vcpu { index, fd });
    }

    let context = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        exit,
        metrics: Arc::new(VcpuMetrics::default()),
    };
    Ok(BuiltParts {
        vcpus,
        context,
        serial,
        legacy,
        subscribers,
        virtio,
    })
}

/// An eventfd registered as KVM's irqfd for `gsi`.
fn irqfd(vm: &VmFd, gsi: u32, what: &str) -> Result<EventFd, VmmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::io(format!("{what} eventfd")))?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
    Ok(fd)
}

/// The kernel and initrd, opened.
struct BootFiles {
    kernel_path: String,
    kernel: File,
    initrd: Option<File>,
}

/// What Firecracker checks when `PUT /boot-source` arrives: the kernel (and the initrd, if given)
/// can be opened for reading and are regular files. Refusing then, rather than at
/// `InstanceStart`, tells the client which request was wrong. (The files are opened again at
/// boot; a file removed in between fails there.)
pub fn check_boot_source(source: &ferry_api::BootSource) -> Result<(), VmmError> {
    let check = |path: &str, kernel: bool| {
        let error = |source: std::io::Error| {
            let path = path.to_string();
            if kernel {
                VmmError::KernelOpen { path, source }
            } else {
                VmmError::InitrdOpen { path, source }
            }
        };
        let meta = File::open(path).and_then(|f| f.metadata()).map_err(error)?;
        if meta.is_file() {
            Ok(())
        } else {
            Err(error(std::io::Error::other("not a regular file")))
        }
    };
    check(&source.kernel_image_path, true)?;
    if let Some(initrd) = &source.initrd_path {
        check(initrd, false)?;
    }
    Ok(())
}

fn open_boot_files(config: &VmConfig) -> Result<BootFiles, VmmError> {
    let source = config
        .boot
        .as_ref()
        .ok_or_else(|| VmmError::Config("no kernel configured".into()))?;
    let kernel = File::open(&source.kernel_image_path).map_err(|e| VmmError::KernelOpen {
        path: source.kernel_image_path.clone(),
        source: e,
    })?;
    let initrd = match &source.initrd_path {
        Some(path) => Some(File::open(path).map_err(|e| VmmError::InitrdOpen {
            path: path.clone(),
            source: e,
        })?),
        None => None,
    };
    Ok(BootFiles {
        kernel_path: source.kernel_image_path.clone(),
        kernel,
        initrd,
    })
}

/// Where the BSP starts.
struct BootEntry {
    entry: u64,
    protocol: BootProtocol,
}

/// Loads kernel and initrd and writes the command line, boot information and boot tables.
fn load_boot(
    config: &VmConfig,
    options: &BuildOptions,
    memory: &GuestMemory,
    mut files: BootFiles,
    virtio: &VirtioDevices,
) -> Result<BootEntry, VmmError> {
    let mem_size = config.machine.mem_size_mib << 20;
    let loaded = boot::load_kernel(memory, &mut files.kernel, options.boot).map_err(|source| {
        VmmError::Boot {
            path: files.kernel_path.clone(),
            source,
        }
    })?;
    let initrd: Option<LoadedInitrd> = match files.initrd.as_mut() {
        Some(file) => Some(boot::load_initrd(memory, file, loaded.end)?),
        None => None,
    };
    let user_args = config.boot.as_ref().and_then(|b| b.boot_args.as_deref());
    // Devices are announced once: in the DSDT with ACPI, else on the command line.
    let (rsdp, device_entries) = if config.machine.acpi {
        let rsdp = write_acpi_tables(memory, config.machine.vcpu_count, virtio)?;
        (Some(rsdp), Vec::new())
    } else {
        (None, virtio.cmdline_entries())
    };
    let cmdline = build_cmdline(user_args, &device_entries, config.root_drive());
    boot::write_cmdline(memory, &cmdline)?;
    match loaded.protocol {
        BootProtocol::Pvh => boot::write_pvh_info(memory, mem_size, cmdline.len(), initrd, rsdp)?,
        BootProtocol::Linux64 => boot::write_zero_page(
            memory,
            mem_size,
            cmdline.len(),
            loaded.setup_header,
            initrd,
            rsdp,
        )?,
    }
    regs::write_boot_tables(memory, loaded.protocol)?;
    Ok(BootEntry {
        entry: loaded.entry,
        protocol: loaded.protocol,
    })
}

/// Writes the ACPI tables for `cpus` vCPUs and the attached virtio devices; returns the RSDP's
/// address.
fn write_acpi_tables(
    memory: &GuestMemory,
    cpus: u8,
    virtio: &VirtioDevices,
) -> Result<u64, VmmError> {
    let devices: Vec<acpi::MmioDevice> = (0..virtio.cmdline_entries().len() as u32)
        .map(|index| acpi::MmioDevice {
            base: virtio_mmio_addr(index),
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_IRQ_FIRST + index,
        })
        .collect();
    let tables = acpi::build(cpus, &devices).map_err(|e| VmmError::Config(e.to_string()))?;
    for (addr, bytes) in &tables.blobs {
        memory
            .write_slice(bytes, vm_memory::GuestAddress(*addr))
            .map_err(|e| VmmError::Device(format!("writing the ACPI tables: {e}")))?;
    }
    Ok(tables.rsdp_addr)
}

/// ferry's defaults, then the virtio devices, then the user's text, then, for a root drive, what
/// Firecracker appends for it (`root=/dev/vda` or `root=PARTUUID=…`, then `ro` or `rw`): after
/// the user's kernel parameters, so it wins as on Firecracker, but before the user's init
/// arguments (the text after ` -- `), which the kernel hands to init rather than reading.
pub fn build_cmdline(
    user: Option<&str>,
    virtio_entries: &[String],
    root: Option<&DriveConfig>,
) -> String {
    let mut cmdline = String::from(DEFAULT_CMDLINE);
    for entry in virtio_entries {
        cmdline.push(' ');
        cmdline.push_str(entry);
    }
    let user = user.map(str::trim).unwrap_or_default();
    let (kernel_args, init_args) = split_init_args(user);
    if !kernel_args.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(kernel_args);
    }
    if let Some(root) = root {
        match &root.partuuid {
            Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid}")),
            None => cmdline.push_str(" root=/dev/vda"),
        }
        cmdline.push_str(if root.is_read_only { " ro" } else { " rw" });
    }
    if let Some(init_args) = init_args {
        cmdline.push_str(" --");
        if !init_args.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(init_args);
        }
    }
    cmdline
}

/// Splits a command line at its first standalone `--` into the kernel's parameters and init's.
fn split_init_args(text: &str) -> (&str, Option<&str>) {
    if text == "--" {
        return ("", Some(""));
    }
    if let Some(rest) = text.strip_prefix("-- ") {
        return ("", Some(rest.trim()));
    }
    match text.find(" -- ") {
        Some(at) => (text[..at].trim(), Some(text[at + 4..].trim())),
        None => match text.strip_suffix(" --") {
            Some(kernel) => (kernel.trim(), Some("")),
            None => (text, None),
        },
    }
}

fn open_serial_output(output: &SerialOutputConfig) -> Result<SerialOutput, VmmError> {
    Ok(match output {
        SerialOutputConfig::Stdio => SerialOutput::stdout(),
        SerialOutputConfig::None => SerialOutput::Sink,
        SerialOutputConfig::File(path) => SerialOutput::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(VmmError::io(format!("opening serial output file {path}")))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_drive(read_only: bool, partuuid: Option<&str>) -> DriveConfig {
        DriveConfig {
            drive_id: "rootfs".into(),
            path_on_host: "/img".into(),
            is_root_device: true,
            is_read_only: read_only,
            partuuid: partuuid.map(String::from),
            direct: None,
            chap_secret_file: None,
            rate_limiter: None,
        }
    }

    #[test]
    fn root_drive_adds_firecrackers_root_parameters_after_the_users() {
        let dev = ["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        let rw = root_drive(false, None);
        assert_eq!(
            build_cmdline(Some("console=ttyS0 reboot=k"), &dev, Some(&rw)),
            format!(
                "{DEFAULT_CMDLINE} {} console=ttyS0 reboot=k root=/dev/vda rw",
                dev[0]
            )
        );
        let ro = root_drive(true, Some("d3adb33f-01"));
        assert_eq!(
            build_cmdline(None, &[], Some(&ro)),
            format!("{DEFAULT_CMDLINE} root=PARTUUID=d3adb33f-01 ro")
        );
        // Init's arguments stay last: the root parameters go before ` -- `.
        assert_eq!(
            build_cmdline(Some("quiet -- single x=1"), &[], Some(&rw)),
            format!("{DEFAULT_CMDLINE} quiet root=/dev/vda rw -- single x=1")
        );
        assert_eq!(
            build_cmdline(Some("-- single"), &[], Some(&rw)),
            format!("{DEFAULT_CMDLINE} root=/dev/vda rw -- single")
        );
        assert_eq!(
            build_cmdline(Some("quiet --"), &[], Some(&rw)),
            format!("{DEFAULT_CMDLINE} quiet root=/dev/vda rw --")
        );
        // A parameter that merely contains dashes is no separator.
        assert_eq!(
            build_cmdline(Some("a=--b"), &[], Some(&rw)),
            format!("{DEFAULT_CMDLINE} a=--b root=/dev/vda rw")
        );
    }

    #[test]
    fn cmdline_puts_user_text_last() {
        assert_eq!(build_cmdline(None, &[], None), DEFAULT_CMDLINE);
        let c = build_cmdline(
            Some("  probe.test=boot "),
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            None,
        );
        assert_eq!(
            c,
            format!("{DEFAULT_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 probe.test=boot")
        );
    }
}
