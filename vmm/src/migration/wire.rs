//! The migration wire format (version 1). All integers little-endian.
//!
//! ```text
//! source → destination
//!   hello     "FERRYMIG" u32 version
//!   CONFIG    0x01 u32 len, len bytes JSON VmConfig (after the destination's maps are applied
//!             by the destination itself)
//!   MEM_DATA  0x02 u64 gpa, u32 len, len bytes of guest memory   (len ≤ 4 MiB, page multiple)
//!   MEM_ZERO  0x03 u64 gpa, u64 len                              (page multiple; reads as zero)
//!   ROUND     0x04 u32 round number                              (end of a pre-copy round)
//!   STATE     0x05 u32 len, len bytes JSON VmSnapshot            (after the last memory)
//!   DIGEST    0x06 u64 memory digest                             (only with --verify)
//!   COMMIT    0x07                                               (destination may resume)
//!   ABORT     0x08 u32 len, len bytes UTF-8 reason
//! destination → source
//!   HELLO_OK  0x81 | ACCEPTED 0x82 (config applied) | READY 0x83 (state restored, digest ok)
//!   COMMITTED 0x84 (running)  | ERROR 0xff u32 len, UTF-8 reason
//! ```
//! Every length is checked before anything is allocated or written; a guest-physical range must
//! lie inside guest RAM.

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"FERRYMIG";
pub const VERSION: u32 = 1;
/// Largest MEM_DATA payload.
pub const MAX_DATA_LEN: u32 = 4 << 20;
/// Largest CONFIG/STATE/ABORT/ERROR payload.
pub const MAX_BLOB_LEN: u32 = 64 << 20;
pub const PAGE: u64 = 4096;

pub const CONFIG: u8 = 0x01;
pub const MEM_DATA: u8 = 0x02;
pub const MEM_ZERO: u8 = 0x03;
pub const ROUND: u8 = 0x04;
pub const STATE: u8 = 0x05;
pub const DIGEST: u8 = 0x06;
pub const COMMIT: u8 = 0x07;
pub const ABORT: u8 = 0x08;

pub const HELLO_OK: u8 = 0x81;
pub const ACCEPTED: u8 = 0x82;
pub const READY: u8 = 0x83;
pub const COMMITTED: u8 = 0x84;
pub const ERROR: u8 = 0xff;

/// A malformed or unexpected stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("not a ferry migration stream (bad magic)")]
    BadMagic,
    #[error("migration stream version {0} is not supported (this ferry speaks version {VERSION})")]
    Version(u32),
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unexpected message type {got:#04x} (expected {expected})")]
    Unexpected { got: u8, expected: &'static str },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("memory range {gpa:#x}+{len:#x} is not page-aligned or not inside guest RAM")]
    BadRange { gpa: u64, len: u64 },
    #[error("the peer reported: {0}")]
    Peer(String),
    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A message from the source, as the destination reads it. Memory payloads stay in the stream;
/// the reader copies them straight into guest memory.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceMessage {
    Config(Vec<u8>),
    MemData { gpa: u64, len: u32 },
    MemZero { gpa: u64, len: u64 },
    Round(u32),
    State(Vec<u8>),
    Digest(u64),
    Commit,
    Abort(String),
}

pub fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

pub fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_blob(r: &mut impl Read, what: &'static str) -> Result<Vec<u8>, WireError> {
    let len = read_u32(r)?;
    if len > MAX_BLOB_LEN {
        return Err(WireError::TooLong {
            what,
            len: u64::from(len),
            max: u64::from(MAX_BLOB_LEN),
        });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_text(r: &mut impl Read, what: &'static str) -> Result<String, WireError> {
    Ok(String::from_utf8_lossy(&read_blob(r, what)?).into_owned())
}

/// Reads and checks the source's hello.
pub fn read_hello(r: &mut impl Read) -> Result<(), WireError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    match read_u32(r)? {
        VERSION => Ok(()),
        other => Err(WireError::Version(other)),
    }
}

pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    let mut hello = [0u8; 12];
    hello[..8].copy_from_slice(MAGIC);
    hello[8..].copy_from_slice(&VERSION.to_le_bytes());
    w.write_all(&hello)
}

/// Reads the next source message header (and small payloads). `mem_size_check` validates a
/// guest range before the caller touches memory.
pub fn read_source_message(
    r: &mut impl Read,
    mem_range_ok: impl Fn(u64, u64) -> bool,
) -> Result<SourceMessage, WireError> {
    let tag = read_u8(r)?;
    Ok(match tag {
        CONFIG => SourceMessage::Config(read_blob(r, "configuration")?),
        MEM_DATA => {
            let gpa = read_u64(r)?;
            let len = read_u32(r)?;
            if len > MAX_DATA_LEN {
                return Err(WireError::TooLong {
                    what: "memory run",
                    len: u64::from(len),
                    max: u64::from(MAX_DATA_LEN),
                });
            }
            check_range(gpa, u64::from(len), &mem_range_ok)?;
            SourceMessage::MemData { gpa, len }
        }
        MEM_ZERO => {
            let gpa = read_u64(r)?;
            let len = read_u64(r)?;
            check_range(gpa, len, &mem_range_ok)?;
            SourceMessage::MemZero { gpa, len }
        }
        ROUND => SourceMessage::Round(read_u32(r)?),
        STATE => SourceMessage::State(read_blob(r, "VM state")?),
        DIGEST => SourceMessage::Digest(read_u64(r)?),
        COMMIT => SourceMessage::Commit,
        ABORT => SourceMessage::Abort(read_text(r, "abort reason")?),
        other => return Err(WireError::UnknownMessage(other)),
    })
}

fn check_range(gpa: u64, len: u64, ok: &impl Fn(u64, u64) -> bool) -> Result<(), WireError> {
    let aligned = gpa.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0;
    if !aligned || gpa.checked_add(len).is_none() || !ok(gpa, len) {
        return Err(WireError::BadRange { gpa, len });
    }
    Ok(())
}

pub fn write_blob(w: &mut impl Write, tag: u8, blob: &[u8]) -> io::Result<()> {
    let len = u32::try_from(blob.len()).map_err(|_| io::Error::other("blob too large"))?;
    let mut header = [0u8; 5];
    header[0] = tag;
    header[1..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&header)?;
    w.write_all(blob)
}

/// Header of a MEM_DATA message (the payload follows separately).
pub fn mem_data_header(gpa: u64, len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0] = MEM_DATA;
    h[1..9].copy_from_slice(&gpa.to_le_bytes());
    h[9..].copy_from_slice(&len.to_le_bytes());
    h
}

pub fn mem_zero_message(gpa: u64, len: u64) -> [u8; 17] {
    let mut h = [0u8; 17];
    h[0] = MEM_ZERO;
    h[1..9].copy_from_slice(&gpa.to_le_bytes());
    h[9..].copy_from_slice(&len.to_le_bytes());
    h
}

pub fn round_message(round: u32) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[0] = ROUND;
    h[1..].copy_from_slice(&round.to_le_bytes());
    h
}

pub fn digest_message(digest: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = DIGEST;
    h[1..].copy_from_slice(&digest.to_le_bytes());
    h
}

/// A destination reply, as the source reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    HelloOk,
    Accepted,
    Ready,
    Committed,
    Error(String),
}

pub fn read_reply(r: &mut impl Read) -> Result<Reply, WireError> {
    Ok(match read_u8(r)? {
        HELLO_OK => Reply::HelloOk,
        ACCEPTED => Reply::Accepted,
        READY => Reply::Ready,
        COMMITTED => Reply::Committed,
        ERROR => Reply::Error(read_text(r, "error reply")?),
        other => return Err(WireError::UnknownMessage(other)),
    })
}

/// Reads a reply and requires `expected`; an ERROR reply becomes [`WireError::Peer`].
pub fn expect_reply(
    r: &mut impl Read,
    expected: Reply,
    name: &'static str,
) -> Result<(), WireError> {
    match read_reply(r)? {
        Reply::Error(reason) => Err(WireError::Peer(reason)),
        got if got == expected => Ok(()),
        got => Err(WireError::Unexpected {
            got: match got {
                Reply::HelloOk => HELLO_OK,
                Reply::Accepted => ACCEPTED,
                Reply::Ready => READY,
                Reply::Committed => COMMITTED,
                Reply::Error(_) => ERROR,
            },
            expected: name,
        }),
    }
}

pub fn write_reply(w: &mut impl Write, tag: u8) -> io::Result<()> {
    w.write_all(&[tag])?;
    w.flush()
}

pub fn write_error(w: &mut impl Write, reason: &str) -> io::Result<()> {
    write_blob(w, ERROR, reason.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn all_ram(gpa: u64, len: u64) -> bool {
        gpa + len <= 1 << 30
    }

    #[test]
    fn hello_round_trip_and_rejections() {
        let mut buf = Vec::new();
        write_hello(&mut buf).unwrap();
        read_hello(&mut Cursor::new(&buf)).unwrap();
        assert!(matches!(
            read_hello(&mut Cursor::new(b"GET / HTTP/1.1\r\n")),
            Err(WireError::BadMagic)
        ));
        let mut v2 = buf.clone();
        v2[8] = 2;
        assert!(matches!(
            read_hello(&mut Cursor::new(&v2)),
            Err(WireError::Version(2))
        ));
        assert!(matches!(
            read_hello(&mut Cursor::new(&buf[..5])),
            Err(WireError::Io(_))
        ));
    }

    #[test]
    fn memory_messages_are_range_checked() {
        let ok = mem_data_header(0x1000, 0x2000);
        assert_eq!(
            read_source_message(&mut Cursor::new(&ok), all_ram).unwrap(),
            SourceMessage::MemData {
                gpa: 0x1000,
                len: 0x2000
            }
        );
        for (gpa, len) in [
            (0x1001, 0x1000),
            (0x1000, 0x1001),
            (0x1000, 0),
            ((1 << 30) - 0x1000, 0x2000),
        ] {
            let h = mem_data_header(gpa, len);
            assert!(matches!(
                read_source_message(&mut Cursor::new(&h), all_ram),
                Err(WireError::BadRange { .. })
            ));
        }
        let huge = mem_data_header(0, MAX_DATA_LEN + 4096);
        assert!(matches!(
            read_source_message(&mut Cursor::new(&huge), all_ram),
            Err(WireError::TooLong { .. })
        ));
        let wrap = mem_zero_message(u64::MAX - 0xfff, 0x2000);
        assert!(matches!(
            read_source_message(&mut Cursor::new(&wrap), all_ram),
            Err(WireError::BadRange { .. })
        ));
    }

    #[test]
    fn blobs_and_unknown_tags() {
        let mut buf = Vec::new();
        write_blob(&mut buf, CONFIG, b"{}").unwrap();
        assert_eq!(
            read_source_message(&mut Cursor::new(&buf), all_ram).unwrap(),
            SourceMessage::Config(b"{}".to_vec())
        );
        let mut huge = vec![STATE];
        huge.extend_from_slice(&(MAX_BLOB_LEN + 1).to_le_bytes());
        assert!(matches!(
            read_source_message(&mut Cursor::new(&huge), all_ram),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            read_source_message(&mut Cursor::new([0x42u8]), all_ram),
            Err(WireError::UnknownMessage(0x42))
        ));
        // A truncated blob is an I/O error, not a panic or a huge allocation.
        let mut short = vec![CONFIG];
        short.extend_from_slice(&100u32.to_le_bytes());
        short.extend_from_slice(b"{");
        assert!(matches!(
            read_source_message(&mut Cursor::new(&short), all_ram),
            Err(WireError::Io(_))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..5000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = read_source_message(&mut Cursor::new(&bytes), all_ram);
            let _ = read_reply(&mut Cursor::new(&bytes));
            let _ = read_hello(&mut Cursor::new(&bytes));
        }
    }

    #[test]
    fn replies() {
        let mut buf = Vec::new();
        write_reply(&mut buf, READY).unwrap();
        write_error(&mut buf, "disk missing").unwrap();
        let mut r = Cursor::new(&buf);
        expect_reply(&mut r, Reply::Ready, "READY").unwrap();
        assert!(matches!(
            expect_reply(&mut r, Reply::Ready, "READY"),
            Err(WireError::Peer(m)) if m == "disk missing"
        ));
    }
}
