//! Address-routed buses for port I/O and MMIO exits.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. vCPU threads look up the device for
//! each exit; lookups take a read lock on the map only when devices are added (never during a
//! run), and each device sits behind its own mutex so two vCPUs touching different devices never
//! contend. Hot paths (virtio queue notifications) bypass the bus entirely through ioeventfd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    /// Handles a guest read; fill `data` (it arrives zeroed).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps the device already at {other_base:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

/// A shared, lockable bus device.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct BusRange {
    len: u64,
    device: SharedBusDevice,
}

/// A set of devices keyed by the start of their address range.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, BusRange>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`. Overlapping an existing range is an error.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        // The only candidates for overlap are the range starting at or before `base` and the
        // first range starting after it.
        let before = self.ranges.range(..=base).next_back();
        let after = self.ranges.range(base..).next();
        for (&other_base, other) in before.into_iter().chain(after) {
            if base < other_base + other.len && other_base < base + len {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(base, BusRange { len, device });
        Ok(())
    }

    /// Finds the device covering `addr` and the offset of `addr` within its range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedBusDevice, u64)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < range.len).then_some((&range.device, offset))
    }

    /// Routes a read to its device. Returns false when nothing is mapped at `addr`; `data` is then
    /// left as the caller prepared it (all ones, like an empty ISA bus, is the usual choice).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                data.fill(0);
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write to its device. Returns false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: a device whose handler panicked on another
/// thread still holds consistent register state for our simple devices, and the VMM must not die
/// on a second vCPU because of it.
fn lock(device: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder { last_write: None }))
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0xffu8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
        assert!(bus.write(0x3ff, &[7, 8]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![7, 8])));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(recorder(), 0x10f, 1),
            Err(BusError::Overlap {
                other_base: 0x100,
                ..
            })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0xf8, 0x9),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(recorder(), 0x110, 1).unwrap();
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
        assert_eq!(
            bus.insert(recorder(), 0x10, 0),
            Err(BusError::InvalidRange { base: 0x10, len: 0 })
        );
        assert!(bus.insert(recorder(), u64::MAX, 2).is_err());
    }
}
