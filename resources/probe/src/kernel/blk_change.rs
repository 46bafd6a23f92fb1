//! `blkchange`: watches the first virtio-blk device while the VMM changes it under the running
//! guest (a new backing, as Firecracker's `PATCH /drives` does, or a resize). It reads the
//! capacity and the CRC-32 of the first `probe.blk_kib` KiB, prints
//! `probe: blkchange: before sectors=N crc32=X gen=G`, then, `probe.blk_changes` times, waits for
//! the configuration-change interrupt (InterruptStatus bit 1; polled, the probe takes no
//! interrupts), acknowledges it, checks that the config generation moved, reads capacity and CRC
//! again through the same live queue and prints `probe: blkchange: change K sectors=N crc32=X
//! gen=G`. The PASS line repeats the last reading. A harness compares the CRCs with the host
//! files it swapped in.

use super::blk::{one_round, F_BLK_SIZE, F_FLUSH, F_RO, QMEM};
use super::virtio::{Device, Queue, CONFIG, CONFIG_GENERATION, INTERRUPT_ACK, INTERRUPT_STATUS};
use super::{tsc, State};
use ferry_probe::cmdline::ProbeConfig;
use ferry_probe::fmt::LineBuf;

/// InterruptStatus bit of a configuration change.
const INT_CONFIG: u32 = 2;

pub fn run(st: &State) {
    let Some(d) = st
        .cfg
        .virtio()
        .iter()
        .find_map(|dev| Device::probe(dev).filter(|&(_, id)| id == 2))
        .map(|(d, _)| d)
    else {
        super::fail_str("no virtio-blk device");
        return;
    };
    let mut l = LineBuf::new();
    match watch(&d, &st.cfg, &mut l) {
        Ok(()) => super::pass(&l),
        Err(reason) => {
            if !l.as_bytes().is_empty() {
                l.byte(b' ');
            }
            l.str(reason);
            super::fail(&l);
        }
    }
    d.reset();
}

/// The capacity in sectors and the generation it belongs to (re-read until both agree, as
/// virtio 1.2 §4.2.2.2 asks of a driver reading multi-word config fields).
fn capacity(d: &Device) -> (u64, u32) {
    loop {
        let gen = d.read(CONFIG_GENERATION);
        let sectors = u64::from(d.read(CONFIG)) | u64::from(d.read(CONFIG + 4)) << 32;
        if d.read(CONFIG_GENERATION) == gen {
            return (sectors, gen);
        }
    }
}

/// Reads capacity and CRC and prints them after `label` (`before`, `change K`); leaves them in
/// `l` for the PASS line.
fn reading(
    d: &Device,
    q: &mut Queue,
    feats: u64,
    cfg: &ProbeConfig,
    l: &mut LineBuf,
) -> Result<u32, &'static str> {
    let (sectors, gen) = capacity(d);
    let total = cfg
        .blk_kib
        .saturating_mul(1024)
        .min(sectors.saturating_mul(512));
    let crc = one_round(q, feats, feats & F_RO != 0, total, None, l)?.crc;
    l.str("sectors=")
        .dec(sectors)
        .str(" crc32=")
        .hex_fixed(u64::from(crc), 8)
        .str(" gen=")
        .dec(u64::from(gen));
    Ok(gen)
}

fn watch(d: &Device, cfg: &ProbeConfig, l: &mut LineBuf) -> Result<(), &'static str> {
    let feats = d.negotiate(F_RO | F_BLK_SIZE | F_FLUSH)?;
    // SAFETY: QMEM is used by one device at a time; the blk test reset its device.
    let mut q = d.queue(0, unsafe { &mut *QMEM.ptr() })?;
    d.driver_ok();
    let mut line = super::line_for(b"blkchange");
    line.str("before ");
    let mut gen = reading(d, &mut q, feats, cfg, &mut line)?;
    super::say(&line);
    for k in 1..=cfg.blk_changes {
        let deadline = tsc::deadline_ms(cfg.blk_change_s.saturating_mul(1000));
        while d.read(INTERRUPT_STATUS) & INT_CONFIG == 0 {
            if tsc::expired(deadline) {
                l.str("changes=").dec(k - 1);
                return Err("no configuration change");
            }
            let pause = tsc::deadline_ms(1);
            while !tsc::expired(pause) {}
        }
        d.write(INTERRUPT_ACK, INT_CONFIG);
        let mut line = super::line_for(b"blkchange");
        line.str("change ").dec(k).byte(b' ');
        let mut now = LineBuf::new();
        let next = reading(d, &mut q, feats, cfg, &mut now)?;
        if next == gen {
            return Err("configuration interrupt without a new generation");
        }
        gen = next;
        line.bytes(now.as_bytes());
        super::say(&line);
        if k == cfg.blk_changes {
            l.str("changes=").dec(k).byte(b' ').bytes(now.as_bytes());
        }
    }
    Ok(())
}
