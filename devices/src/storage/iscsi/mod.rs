//! ferry's own iSCSI initiator (RFC 7143), as a disk backend.
//!
//! [`open_iscsi`] parses an `iscsi://` URL (see [`url`]), logs in (CHAP or no authentication,
//! operational negotiation), checks that the LUN exists and is a disk, reads its capacity and
//! provisioning limits, then hands the connection to a session thread. The returned backend
//! talks to that thread through fixed-capacity queues and an eventfd, so the device thread never
//! blocks on the network.
//!
//! If the connection drops, the session thread logs in again with backoff and re-issues every
//! command that had not completed; requests fail with [`DiskError::Io`](crate::storage::DiskError)
//! only when the session stays down longer than the URL's `timeout` (30 s by default).
//!
//! Module map: [`url`] (URL and secret file), [`pdu`] (codec), [`text`] (key negotiation),
//! [`login`], [`chap`], [`digest`] (CRC32C), [`scsi`] (CDBs, sense), `session` (full-feature
//! phase), `conn` (socket, reconnect, logout), `shared` (queues), [`backend`] (the front end).

pub mod backend;
pub mod chap;
mod conn;
pub mod digest;
pub mod login;
pub mod pdu;
pub mod scsi;
mod session;
mod shared;
pub mod text;
pub mod url;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod login_tests;
#[cfg(test)]
mod pdu_tests;

use std::path::Path;
use std::sync::Arc;

pub use backend::IscsiDisk;
use login::LoginConfig;
use session::Session;
use shared::Shared;
use text::Offer;
use url::IscsiUrl;

use crate::storage::{DiskBackend, DiskInfo};

/// Why an iSCSI disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed iSCSI URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot use CHAP secret file {path}: {reason}")]
    SecretFile { path: String, reason: String },
    #[error("iSCSI portal {portal} is unreachable: {source}")]
    Unreachable {
        portal: String,
        #[source]
        source: std::io::Error,
    },
    #[error("iSCSI login to {target} failed: authentication failed: {reason}")]
    AuthFailed { target: String, reason: String },
    #[error("iSCSI target {0} not found on the portal")]
    TargetNotFound(String),
    #[error("LUN {lun} does not exist on iSCSI target {target}")]
    LunNotFound { target: String, lun: u16 },
    #[error("LUN {lun} on iSCSI target {target} is not a block device (peripheral device type {device_type:#04x})")]
    NotADisk {
        target: String,
        lun: u16,
        device_type: u8,
    },
    #[error("iSCSI login to {target} failed: {reason}")]
    LoginFailed { target: String, reason: String },
    #[error("iSCSI I/O error: {0}")]
    Io(String),
}

/// Opens the LUN named by `url` as a disk backend. Secrets may come from `chap_secret_file`
/// (see [`url`] for both formats).
pub fn open_iscsi(
    url: &str,
    chap_secret_file: Option<&Path>,
    read_only: bool,
) -> Result<Box<dyn DiskBackend>, Error> {
    Ok(Box::new(open(url, chap_secret_file, read_only)?))
}

/// [`open_iscsi`] returning the concrete type.
pub fn open(
    url: &str,
    chap_secret_file: Option<&Path>,
    read_only: bool,
) -> Result<IscsiDisk, Error> {
    let mut u = IscsiUrl::parse(url)?;
    if let Some(p) = chap_secret_file {
        u.credentials.merge_file(p)?;
    }
    let io = |e: std::io::Error| Error::Io(e.to_string());
    let shared = Arc::new(Shared::new(session::QUEUE_DEPTH).map_err(io)?);
    let cfg = LoginConfig {
        initiator: u.initiator.clone(),
        target: u.target.clone(),
        isid: login::random_isid().map_err(io)?,
        credentials: u.credentials.clone(),
        offer: Offer {
            header_digest: u.header_digest.offer(),
            data_digest: u.data_digest.offer(),
            ..Offer::default()
        },
    };
    let mut s = Session::new(
        Arc::clone(&shared),
        u.portal(),
        cfg,
        pdu::encode_lun(u.lun),
        u.timeout,
    );
    s.connect()?;
    let info = match probe(&mut s, &u, read_only) {
        Ok(info) => info,
        Err(e) => {
            s.logout();
            return Err(e);
        }
    };
    let thread = std::thread::Builder::new()
        .name(format!("ferry_iscsi{}", u.lun))
        .spawn(move || {
            crate::thread_hook::started();
            s.run()
        })
        .map_err(io)?;
    Ok(IscsiDisk::new(shared, thread, info, u.timeout))
}

/// Checks the LUN and learns its size and capabilities (SPC-5 INQUIRY and VPD pages, SBC-4
/// READ CAPACITY(16), MODE SENSE write protection).
fn probe(s: &mut Session, u: &IscsiUrl, read_only: bool) -> Result<DiskInfo, Error> {
    let no_lun = || Error::LunNotFound {
        target: u.target.clone(),
        lun: u.lun,
    };
    let lun_missing =
        |e: &(u8, Option<scsi::Sense>)| e.1.is_some_and(|s| s.asc == scsi::ASC_LUN_NOT_SUPPORTED);
    let inq = s.run_admin(scsi::inquiry(None, 96), 96)?;
    match inq {
        Ok(n) => match scsi::inquiry_device(&s.admin_buf[..n]) {
            Some((0, 0)) => {}
            Some((0, t)) => {
                return Err(Error::NotADisk {
                    target: u.target.clone(),
                    lun: u.lun,
                    device_type: t,
                })
            }
            _ => return Err(no_lun()),
        },
        Err(e) if lun_missing(&e) => return Err(no_lun()),
        Err(e) => {
            return Err(Error::Io(format!(
                "INQUIRY failed (status {:#04x}, sense {:?})",
                e.0, e.1
            )))
        }
    }
    if let Err(e) = s.run_admin(scsi::test_unit_ready(), 0)? {
        if lun_missing(&e) {
            return Err(no_lun());
        }
        return Err(Error::Io(format!(
            "LUN not ready (status {:#04x}, sense {:?})",
            e.0, e.1
        )));
    }
    let mut pages = [false; 256];
    if let Ok(n) = s.run_admin(scsi::inquiry(Some(0), 255), 255)? {
        for &p in scsi::vpd_pages(&s.admin_buf[..n]) {
            pages[p as usize] = true;
        }
    }
    let mut limits = scsi::BlockLimits::default();
    if pages[0xb0] {
        if let Ok(n) = s.run_admin(scsi::inquiry(Some(0xb0), 64), 64)? {
            limits = scsi::block_limits(&s.admin_buf[..n]).unwrap_or_default();
        }
    }
    let mut lbpu = false;
    if pages[0xb2] {
        if let Ok(n) = s.run_admin(scsi::inquiry(Some(0xb2), 8), 8)? {
            lbpu = scsi::lbp(&s.admin_buf[..n]).is_some_and(|(u, _)| u);
        }
    }
    let cap = match s.run_admin(scsi::read_capacity16(32), 32)? {
        Ok(n) => scsi::capacity(&s.admin_buf[..n])
            .ok_or_else(|| Error::Io("bad READ CAPACITY(16) data".into()))?,
        Err(e) => {
            return Err(Error::Io(format!(
                "READ CAPACITY(16) failed (status {:#04x})",
                e.0
            )))
        }
    };
    // MODE SENSE(6), all pages, no block descriptors: byte 2 bit 7 is the WP bit.
    let mut wp = false;
    if let Ok(n) = s.run_admin(
        [0x1a, 0x08, 0x3f, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        255,
    )? {
        wp = n >= 3 && s.admin_buf[2] & 0x80 != 0;
    }
    s.block_size = cap.block_size;
    s.blocks = cap.blocks;
    s.limits = session::Limits {
        max_transfer_blocks: limits.max_transfer_blocks,
        discard: cap.lbpme && lbpu && limits.max_unmap_blocks > 0,
        max_unmap_blocks: limits.max_unmap_blocks,
        write_zeroes: pages[0xb0],
        max_write_same_blocks: limits.max_write_same_blocks,
        read_only: read_only || wp,
    };
    Ok(DiskInfo {
        size_bytes: cap.blocks * cap.block_size as u64,
        logical_block_size: cap.block_size,
        read_only: s.limits.read_only,
        discard: s.limits.discard,
        write_zeroes: s.limits.write_zeroes && !s.limits.read_only,
    })
}

/// Entry points for `devices/fuzz` and the deterministic mutation test: everything that parses
/// bytes a target controls.
#[doc(hidden)]
pub mod fuzzing {
    use super::pdu::{self, Framing};
    use super::{chap, login, scsi, text};

    /// Runs every decoder over `data`; must never panic.
    pub fn decode_all(data: &[u8]) {
        for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
            let framing = Framing {
                header_digest: h,
                data_digest: d,
            };
            let mut rest = data;
            while let Ok(Some(f)) = pdu::parse_frame(rest, framing, 1 << 18) {
                rest = &rest[f.len..];
            }
        }
        let _ = login::parse_response(data);
        let _ = text::parse(data);
        let _ = scsi::response_sense(data);
        let _ = scsi::capacity(data);
        let _ = scsi::block_limits(data);
        let _ = scsi::lbp(data);
        let _ = scsi::vpd_pages(data);
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = chap::from_binary(s);
            let _ = super::url::IscsiUrl::parse(s);
        }
    }

    /// Feeds `data` as PDUs from a target into a session with a few commands in flight.
    pub fn session_feed(data: &[u8]) {
        super::session::fuzz_feed(data);
    }
}
