//! Attaching virtio-mmio devices (block, net, entropy, vsock, balloon) to a VM: a window on the MMIO bus, an ioeventfd per
//! queue (guest kicks never exit to userspace), an irqfd per device, and a `virtio_mmio.device=`
//! command-line entry. Also the per-device operations the controller needs: save/restore,
//! quiesce, resize, announce, metrics.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};

use ferry_api::{DriveConfig, NetBackendConfig, NetConfig, VmConfig};
use ferry_arch::layout::{virtio_mmio_addr, VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST, VIRTIO_MMIO_SIZE};
use ferry_arch::GuestMemory;
use ferry_devices::bus::Bus;
use ferry_devices::net::{open_net_backend, NetBackendSpec, NetSpec};
use ferry_devices::persist::Persist;
use ferry_devices::rate_limiter::RateLimiterConfig;
use ferry_devices::storage::open::{open_disk_with, DiskOptions};
use ferry_devices::virtio::balloon::{Balloon, BalloonSettings};
use ferry_devices::virtio::block::Block;
use ferry_devices::virtio::mmio::{MmioTransport, MmioTransportState};
use ferry_devices::virtio::net::Net;
use ferry_devices::virtio::rng::Rng;
use ferry_devices::virtio::vsock::Vsock;
use ferry_devices::virtio::VirtioDevice;

use crate::error::VmmError;
use crate::event_loop::Subscriber;

/// Offset of the QueueNotify register in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device model behind a transport.
enum Model {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>),
    Rng(Arc<Mutex<Rng>>),
    Vsock(Arc<Mutex<Vsock>>),
    Balloon(Arc<Mutex<Balloon>>),
}

/// The id the vsock device is saved under (at most one, as on Firecracker).
pub const VSOCK_ID: &str = "vsock";

/// The id the entropy device is saved under (Firecracker's device has none; there is at most one).
pub const ENTROPY_ID: &str = "entropy";
/// The id the balloon is saved under (at most one, as on Firecracker).
pub const BALLOON_ID: &str = "balloon";

/// A device's counters, by id.
pub enum DeviceMetrics {
    Block(String, Arc<ferry_devices::virtio::block::BlockMetrics>),
    Net(String, Arc<ferry_devices::virtio::net::NetMetrics>),
    Rng(Arc<ferry_devices::virtio::rng::RngMetrics>),
    Vsock(Arc<ferry_devices::virtio::vsock::VsockMetrics>),
    Balloon(Arc<ferry_devices::virtio::balloon::BalloonMetrics>),
}

/// One attached device.
struct Attached {
    id: String,
    model: Model,
    transport: Arc<Mutex<MmioTransport>>,
}

/// Saved state of one virtio device: its model's and its transport's.
#[derive(Debug, Serialize, Deserialize)]
pub struct VirtioDeviceSnapshot {
    pub id: String,
    pub model: serde_json::Value,
    pub transport: MmioTransportState,
}

/// Saved state of every virtio device, in attachment order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VirtioSnapshot {
    pub devices: Vec<VirtioDeviceSnapshot>,
}

/// The virtio devices of a VM.
#[derive(Default)]
pub struct VirtioDevices {
    entries: Vec<String>,
    devices: Vec<Attached>,
}

/// Creates every configured virtio device: drives first (the root device, if any, before the
/// others, so the guest names it `vda` as on Firecracker), then network interfaces, then the
/// entropy device, then the vsock device, then the balloon (the later kinds last, so adding one
/// never moves the others' windows and interrupts).
pub fn attach_virtio_devices(
    config: &VmConfig,
    vm: &VmFd,
    memory: &GuestMemory,
    mmio: &mut Bus,
) -> Result<VirtioDevices, VmmError> {
    let count = config.drives.len()
        + config.nets.len()
        + usize::from(config.entropy.is_some())
        + usize::from(config.vsock.is_some())
        + usize::from(config.balloon.is_some());
    let slots = (VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST + 1) as usize;
    if count > slots {
        return Err(VmmError::Config(format!(
            "{count} virtio devices configured; at most {slots} fit"
        )));
    }
    let mut devices = VirtioDevices::default();
    let roots = config.drives.iter().filter(|d| d.is_root_device).count();
    if roots > 1 {
        return Err(VmmError::Config(format!(
            "{roots} drives are marked as the root device; only one can be"
        )));
    }
    let root_first = config.drives.iter().filter(|d| d.is_root_device);
    let others = config.drives.iter().filter(|d| !d.is_root_device);
    for drive in root_first.chain(others) {
        let block = open_block(drive)?;
        devices.attach(vm, memory, mmio, &drive.drive_id, Model::Block(block))?;
    }
    for net in &config.nets {
        let device = open_net(net)?;
        devices.attach(vm, memory, mmio, &net.iface_id, Model::Net(device))?;
    }
    if let Some(entropy) = &config.entropy {
        let device = Rng::new_shared().map_err(VmmError::io("entropy device".to_string()))?;
        lock(&device).set_rate_limiter(&crate::rate_limit::device_config(
            entropy.rate_limiter.as_ref(),
        ));
        devices.attach(vm, memory, mmio, ENTROPY_ID, Model::Rng(device))?;
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new_shared(vsock.guest_cid, std::path::Path::new(&vsock.uds_path))
            .map_err(|e| VmmError::Device(format!("vsock device on {}: {e}", vsock.uds_path)))?;
        devices.attach(vm, memory, mmio, VSOCK_ID, Model::Vsock(device))?;
    }
    if let Some(balloon) = &config.balloon {
        check_balloon_target(balloon.amount_mib, config.machine.mem_size_mib)?;
        let device = Balloon::new_shared(BalloonSettings {
            target_pages: ferry_devices::virtio::balloon::config::mib_to_pages(balloon.amount_mib),
            deflate_on_oom: balloon.deflate_on_oom,
            stats_interval_s: balloon.stats_polling_interval_s,
            free_page_reporting: balloon.free_page_reporting,
        })
        .map_err(VmmError::io("balloon device".to_string()))?;
        devices.attach(vm, memory, mmio, BALLOON_ID, Model::Balloon(device))?;
    }
    Ok(devices)
}

/// How a drive's backing is opened, at boot and when it is swapped.
fn disk_options(drive: &DriveConfig) -> DiskOptions {
    DiskOptions {
        read_only: drive.is_read_only,
        direct: drive.direct,
        chap_secret_file: drive.chap_secret_file.as_ref().map(PathBuf::from),
        ..DiskOptions::default()
    }
}

/// A balloon target larger than the guest's memory is refused, as Firecracker does.
pub fn check_balloon_target(amount_mib: u32, mem_size_mib: u64) -> Result<(), VmmError> {
    if u64::from(amount_mib) > mem_size_mib {
        return Err(VmmError::Config(format!(
            "balloon target of {amount_mib} MiB is larger than the guest's {mem_size_mib} MiB"
        )));
    }
    Ok(())
}

fn open_block(drive: &DriveConfig) -> Result<Arc<Mutex<Block>>, VmmError> {
    let backend = open_disk_with(&drive.path_on_host, &disk_options(drive))
        .map_err(|e| VmmError::Device(format!("disk '{}': {e}", drive.drive_id)))?;
    let block = Block::new_shared(&drive.drive_id, backend)
        .map_err(VmmError::io(format!("disk '{}'", drive.drive_id)))?;
    lock(&block).set_rate_limiter(&crate::rate_limit::device_config(
        drive.rate_limiter.as_ref(),
    ));
    Ok(block)
}

fn open_net(net: &NetConfig) -> Result<Arc<Mutex<Net>>, VmmError> {
    let spec = NetSpec {
        backend: match &net.backend {
            NetBackendConfig::Tap(name) => NetBackendSpec::Tap(name.clone()),
            NetBackendConfig::Macvtap(name) => NetBackendSpec::Macvtap(name.clone()),
            NetBackendConfig::Fd(fd) => NetBackendSpec::Fd(*fd),
        },
        mac: net.guest_mac.clone(),
        queues: net.queues,
    };
    let failed = |e: ferry_devices::net::NetError| {
        VmmError::Device(format!("network interface '{}': {e}", net.iface_id))
    };
    let backend = open_net_backend(&spec).map_err(failed)?;
    if let Some(mtu) = net.mtu {
        backend.set_host_mtu(mtu).map_err(failed)?;
    }
    let device = Net::new_shared(backend).map_err(VmmError::io(format!(
        "network interface '{}'",
        net.iface_id
    )))?;
    if let Some(mtu) = net.mtu {
        lock(&device).set_mtu(mtu);
    }
    lock(&device).set_rate_limiters(
        Some(&crate::rate_limit::device_config(
            net.rx_rate_limiter.as_ref(),
        )),
        Some(&crate::rate_limit::device_config(
            net.tx_rate_limiter.as_ref(),
        )),
    );
    Ok(device)
}

impl VirtioDevices {
    fn attach(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemory,
        mmio: &mut Bus,
        id: &str,
        model: Model,
    ) -> Result<(), VmmError> {
        let index = self.devices.len() as u32;
        let addr = virtio_mmio_addr(index);
        let irq = VIRTIO_IRQ_FIRST + index;
        let device: Arc<Mutex<dyn VirtioDevice>> = match &model {
            Model::Block(b) => b.clone(),
            Model::Net(n) => n.clone(),
            Model::Rng(r) => r.clone(),
            Model::Vsock(v) => v.clone(),
            Model::Balloon(b) => b.clone(),
        };
        let transport = MmioTransport::new(memory.clone(), device)
            .map_err(VmmError::io(format!("virtio transport for '{id}'")))?;
        for (queue, evt) in transport.queue_notify_evts() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET),
                queue,
            )
            .map_err(|e| VmmError::Kvm("KVM_IOEVENTFD", e))?;
        }
        vm.register_irqfd(transport.interrupt_evt(), irq)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), addr, VIRTIO_MMIO_SIZE)?;
        self.entries
            .push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
        self.devices.push(Attached {
            id: id.to_string(),
            model,
            transport,
        });
        Ok(())
    }

    /// Each network interface's id and the MAC its guest uses (requested, dictated by a macvtap,
    /// or chosen at random), for the configuration that migrations and snapshots carry.
    pub fn net_macs(&self) -> Vec<(String, String)> {
        self.devices
            .iter()
            .filter_map(|d| match &d.model {
                Model::Net(n) => Some((d.id.clone(), lock(n).mac().to_string())),
                Model::Block(_) | Model::Rng(_) | Model::Vsock(_) | Model::Balloon(_) => None,
            })
            .collect()
    }

    /// `virtio_mmio.device=` entries for the kernel command line.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.entries.clone()
    }

    /// Event-loop subscribers of the devices.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.devices
            .iter()
            .map(|d| -> Subscriber {
                match &d.model {
                    Model::Block(b) => b.clone(),
                    Model::Net(n) => n.clone(),
                    Model::Rng(r) => r.clone(),
                    Model::Vsock(v) => v.clone(),
                    Model::Balloon(b) => b.clone(),
                }
            })
            .collect()
    }

    /// Completes in-flight block requests and flushes the disks (VM paused, before save):
    /// afterwards every request the guest made is either completed or still in its avail ring,
    /// and every completed write is durable where the destination will read it.
    pub fn quiesce(&self) -> Result<(), VmmError> {
        for d in &self.devices {
            if let Model::Block(b) = &d.model {
                lock(b)
                    .quiesce()
                    .map_err(VmmError::io(format!("flushing disk '{}'", d.id)))?;
            }
        }
        Ok(())
    }

    /// Saves every device (VM paused and quiesced).
    pub fn save(&self) -> VirtioSnapshot {
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let model = match &d.model {
                    Model::Block(b) => serde_json::to_value(lock(b).save_state()),
                    Model::Net(n) => serde_json::to_value(lock(n).save_state()),
                    Model::Rng(r) => serde_json::to_value(lock(r).save_state()),
                    Model::Vsock(v) => serde_json::to_value(lock(v).save_state()),
                    Model::Balloon(b) => serde_json::to_value(lock(b).save_state()),
                }
                .unwrap_or(serde_json::Value::Null);
                VirtioDeviceSnapshot {
                    id: d.id.clone(),
                    model,
                    transport: lock(&d.transport).save_state(),
                }
            })
            .collect();
        VirtioSnapshot { devices }
    }

    /// Restores every device (VM not yet running): the model first, then the transport, which
    /// re-activates a device the driver had started.
    pub fn restore(&self, snapshot: &VirtioSnapshot) -> Result<(), VmmError> {
        if snapshot.devices.len() != self.devices.len() {
            return Err(VmmError::Config(format!(
                "the saved state has {} virtio devices, this VM has {}",
                snapshot.devices.len(),
                self.devices.len()
            )));
        }
        for (d, saved) in self.devices.iter().zip(&snapshot.devices) {
            if d.id != saved.id {
                return Err(VmmError::Config(format!(
                    "saved virtio device '{}' does not match '{}' here",
                    saved.id, d.id
                )));
            }
            let bad = |e: String| VmmError::Config(format!("virtio device '{}': {e}", d.id));
            match &d.model {
                Model::Block(b) => {
                    let state = serde_json::from_value(saved.model.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    lock(b)
                        .restore_state(&state)
                        .map_err(|e| bad(e.to_string()))?;
                }
                Model::Net(n) => {
                    let state = serde_json::from_value(saved.model.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    lock(n)
                        .restore_state(&state)
                        .map_err(|e| bad(e.to_string()))?;
                }
                Model::Rng(r) => {
                    let state = serde_json::from_value(saved.model.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    lock(r)
                        .restore_state(&state)
                        .map_err(|e| bad(e.to_string()))?;
                }
                // Connections are not carried: the guest is told to reset them (see
                // ferry_devices::virtio::vsock persist).
                Model::Vsock(v) => {
                    let state = serde_json::from_value(saved.model.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    lock(v)
                        .restore_state(&state)
                        .map_err(|e| bad(e.to_string()))?;
                }
                Model::Balloon(b) => {
                    let state = serde_json::from_value(saved.model.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    lock(b)
                        .restore_state(&state)
                        .map_err(|e| bad(e.to_string()))?;
                }
            }
            lock(&d.transport)
                .restore_state(&saved.transport)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    fn block(&self, drive_id: &str) -> Result<&Arc<Mutex<Block>>, VmmError> {
        match self.devices.iter().find(|d| d.id == drive_id) {
            Some(Attached {
                model: Model::Block(b),
                ..
            }) => Ok(b),
            _ => Err(VmmError::Config(format!("no drive '{drive_id}'"))),
        }
    }

    /// Re-reads a drive's size and tells the guest (config-change interrupt): its backing was
    /// resized on the host.
    pub fn resize_drive(&self, drive_id: &str) -> Result<u64, VmmError> {
        lock(self.block(drive_id)?)
            .refresh_capacity()
            .map_err(VmmError::io(format!(
                "re-reading the size of drive '{drive_id}'"
            )))
    }

    /// Puts a running drive on a new backing (`drive` is its configuration with the new
    /// `path_on_host`; read-only, O_DIRECT and CHAP options as configured). The new backing is
    /// opened first, so a path that cannot be opened leaves the drive as it was; then the device
    /// finishes what is in flight on the old one, swaps and tells the guest (see
    /// `ferry_devices::virtio::block` `swap`). Returns the new capacity in bytes.
    pub fn swap_drive(&self, drive: &DriveConfig) -> Result<u64, VmmError> {
        let block = self.block(&drive.drive_id)?;
        let backend = open_disk_with(&drive.path_on_host, &disk_options(drive))
            .map_err(|e| VmmError::Device(format!("drive '{}': {e}", drive.drive_id)))?;
        lock(block).swap_backend(backend).map_err(|e| {
            VmmError::Device(format!(
                "drive '{}': cannot switch to {}: {e}",
                drive.drive_id, drive.path_on_host
            ))
        })
    }

    /// Sets a running drive's rate limiter (held-back requests are retried at once).
    pub fn set_drive_rate_limiter(
        &self,
        drive_id: &str,
        config: &RateLimiterConfig,
    ) -> Result<(), VmmError> {
        match self.devices.iter().find(|d| d.id == drive_id) {
            Some(Attached {
                model: Model::Block(b),
                ..
            }) => {
                lock(b).set_rate_limiter(config);
                Ok(())
            }
            _ => Err(VmmError::Config(format!("no drive '{drive_id}'"))),
        }
    }

    /// Sets a running interface's RX and/or TX rate limiters.
    pub fn set_net_rate_limiters(
        &self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), VmmError> {
        match self.devices.iter().find(|d| d.id == iface_id) {
            Some(Attached {
                model: Model::Net(n),
                ..
            }) => {
                lock(n).set_rate_limiters(rx, tx);
                Ok(())
            }
            _ => Err(VmmError::Config(format!(
                "no network interface '{iface_id}'"
            ))),
        }
    }

    /// The balloon, if the VM has one.
    pub fn balloon(&self) -> Option<&Arc<Mutex<Balloon>>> {
        self.devices.iter().find_map(|d| match &d.model {
            Model::Balloon(b) => Some(b),
            _ => None,
        })
    }

    /// Tells the network where the guest is now (after a migration).
    pub fn announce(&self) {
        for d in &self.devices {
            if let Model::Net(n) = &d.model {
                if let Err(e) = lock(n).announce() {
                    log::warn!("announcing interface '{}': {e}", d.id);
                }
            }
        }
    }

    /// Each device's counters, for metrics in other formats (Firecracker's JSON lines).
    pub fn device_metrics(&self) -> Vec<DeviceMetrics> {
        self.devices
            .iter()
            .map(|d| match &d.model {
                Model::Block(b) => DeviceMetrics::Block(d.id.clone(), lock(b).metrics()),
                Model::Net(n) => DeviceMetrics::Net(d.id.clone(), lock(n).metrics()),
                Model::Rng(r) => DeviceMetrics::Rng(lock(r).metrics()),
                Model::Vsock(v) => DeviceMetrics::Vsock(lock(v).metrics()),
                Model::Balloon(b) => DeviceMetrics::Balloon(lock(b).metrics()),
            })
            .collect()
    }

    /// Appends per-device counters in Prometheus text format.
    pub fn write_metrics(&self, out: &mut String) {
        for d in &self.devices {
            match &d.model {
                Model::Block(b) => {
                    let m = lock(b).metrics();
                    for (name, value) in [
                        ("requests", &m.requests),
                        ("read_bytes", &m.read_bytes),
                        ("write_bytes", &m.write_bytes),
                        ("flushes", &m.flushes),
                        ("errors", &m.errors),
                        ("throttled", &m.throttled),
                    ] {
                        let _ = writeln!(
                            out,
                            "ferry_block_{name}_total{{drive=\"{}\"}} {}",
                            d.id,
                            value.load(Ordering::Relaxed)
                        );
                    }
                }
                Model::Net(n) => {
                    let m = lock(n).metrics();
                    for (name, value) in [
                        ("rx_frames", &m.rx_frames),
                        ("rx_bytes", &m.rx_bytes),
                        ("tx_frames", &m.tx_frames),
                        ("tx_bytes", &m.tx_bytes),
                        ("rx_dropped", &m.rx_dropped),
                        ("tx_dropped", &m.tx_dropped),
                        ("bad_chains", &m.bad_chains),
                        ("rx_throttled", &m.rx_throttled),
                        ("tx_throttled", &m.tx_throttled),
                    ] {
                        let _ = writeln!(
                            out,
                            "ferry_net_{name}_total{{iface=\"{}\"}} {}",
                            d.id,
                            value.load(Ordering::Relaxed)
                        );
                    }
                }
                Model::Rng(r) => {
                    let m = lock(r).metrics();
                    for (name, value) in [
                        ("requests", &m.requests),
                        ("bytes", &m.bytes),
                        ("throttled", &m.throttled),
                        ("host_fails", &m.host_fails),
                        ("bad_buffers", &m.bad_buffers),
                    ] {
                        let _ = writeln!(
                            out,
                            "ferry_entropy_{name}_total {}",
                            value.load(Ordering::Relaxed)
                        );
                    }
                }
                Model::Vsock(v) => {
                    let (m, open) = {
                        let v = lock(v);
                        (v.metrics(), v.connection_count())
                    };
                    for (name, value) in [
                        ("rx_packets", &m.rx_packets),
                        ("rx_bytes", &m.rx_bytes),
                        ("tx_packets", &m.tx_packets),
                        ("tx_bytes", &m.tx_bytes),
                        ("conns_added", &m.conns_added),
                        ("conns_removed", &m.conns_removed),
                        ("conns_killed", &m.conns_killed),
                        ("conns_refused", &m.conns_refused),
                        ("bad_packets", &m.bad_packets),
                        ("tx_write_fails", &m.tx_write_fails),
                        ("rx_read_fails", &m.rx_read_fails),
                        ("reset_events", &m.reset_events),
                    ] {
                        let _ = writeln!(
                            out,
                            "ferry_vsock_{name}_total {}",
                            value.load(Ordering::Relaxed)
                        );
                    }
                    let _ = writeln!(out, "ferry_vsock_connections {open}");
                }
                Model::Balloon(b) => crate::balloon::write_metrics(&lock(b), out),
            }
        }
    }
}
