//! The pre-shared-key channel for small setups without a CA (`--psk-file`).
//!
//! rustls has no TLS-PSK on the server side, so this is the Noise protocol framework's
//! `NNpsk0` handshake (`Noise_NNpsk0_25519_AESGCM_SHA256`, implemented by the `snow` crate with
//! ring's AES-GCM and SHA-256): both sides send fresh X25519 ephemeral keys, the PSK is mixed in
//! before the first message, so only a holder of the key can produce a message the other side
//! decrypts, and the session keys depend on both ephemerals (forward secrecy; a recorded session
//! replayed to a destination meets a new ephemeral and fails to decrypt). The source then sends
//! one confirmation message; the destination treats the peer as authenticated only once that
//! decrypted, so a replayed first message gets no further than the handshake.
//!
//! On the wire: `"FERRYPSK"`, then frames of a big-endian u16 length and a Noise message (at most
//! 65535 bytes). After the handshake every frame is one Noise transport message (AES-256-GCM,
//! counter nonces: a dropped, reordered or repeated frame fails authentication).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use snow::{Builder, HandshakeState, TransportState};

use super::transport::Channel;

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound into the handshake hash: a different protocol or version cannot be confused with this.
const PROLOGUE: &[u8] = b"ferry migration PSK channel v1";
const MAGIC: &[u8; 8] = b"FERRYPSK";
const CONFIRM: &[u8] = b"ferry source confirms";
const MAX_FRAME: usize = 65535;
const TAG: usize = 16;
const MAX_PLAIN: usize = MAX_FRAME - TAG;
/// Fewer bytes than this cannot hold a 256-bit key.
const MIN_KEY_FILE: usize = 32;

/// The key both sides hold: SHA-256 of the key file (at least 32 bytes of random data).
#[derive(Clone)]
pub struct PreSharedKey([u8; 32]);

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

impl PreSharedKey {
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--psk-file {}: {e}", path.display()))?;
        if bytes.len() < MIN_KEY_FILE {
            return Err(format!(
                "--psk-file {}: {} bytes; it needs at least {MIN_KEY_FILE} bytes of random data \
                 (e.g. head -c 32 /dev/urandom > FILE)",
                path.display(),
                bytes.len()
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        Ok(Self(key))
    }

    fn builder(&self) -> Result<Builder<'_>, io::Error> {
        let params = PATTERN.parse().map_err(noise_error)?;
        Ok(Builder::new(params).prologue(PROLOGUE).psk(0, &self.0))
    }

    /// The source's side.
    pub fn connect(&self, mut sock: TcpStream) -> io::Result<PskChannel> {
        let mut hs = self.builder()?.build_initiator().map_err(noise_error)?;
        let mut buf = vec![0u8; MAX_FRAME];
        sock.write_all(MAGIC)?;
        let n = hs.write_message(&[], &mut buf).map_err(noise_error)?;
        write_frame(&mut sock, &buf[..n])?;
        let frame = read_frame(&mut sock)?;
        let mut payload = vec![0u8; MAX_FRAME];
        hs.read_message(&frame, &mut payload)
            .map_err(|_| refused("the destination does not hold this pre-shared key"))?;
        let mut channel = PskChannel::new(into_transport(hs)?, sock);
        channel.write_all(CONFIRM)?;
        Ok(channel)
    }

    /// The destination's side; returns once the source proved it holds the key in this session.
    pub fn accept(&self, mut sock: TcpStream) -> io::Result<PskChannel> {
        let mut hs: HandshakeState = self.builder()?.build_responder().map_err(noise_error)?;
        let mut magic = [0u8; 8];
        sock.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(refused("the peer does not speak ferry's PSK channel"));
        }
        let frame = read_frame(&mut sock)?;
        let mut payload = vec![0u8; MAX_FRAME];
        hs.read_message(&frame, &mut payload)
            .map_err(|_| refused("the source does not hold this pre-shared key"))?;
        let mut buf = vec![0u8; MAX_FRAME];
        let n = hs.write_message(&[], &mut buf).map_err(noise_error)?;
        write_frame(&mut sock, &buf[..n])?;
        let mut channel = PskChannel::new(into_transport(hs)?, sock);
        let mut confirm = [0u8; CONFIRM.len()];
        channel
            .read_exact(&mut confirm)
            .map_err(|e| refused(&format!("no key confirmation from the source ({e})")))?;
        if confirm != CONFIRM {
            return Err(refused("bad key confirmation from the source"));
        }
        Ok(channel)
    }
}

fn into_transport(hs: HandshakeState) -> io::Result<TransportState> {
    hs.into_transport_mode().map_err(noise_error)
}

fn noise_error(e: snow::Error) -> io::Error {
    io::Error::other(format!("PSK channel: {e}"))
}

fn refused(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("PSK channel: {why}"),
    )
}

fn write_frame(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("frame too long"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed)
}

fn read_frame(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg)?;
    Ok(msg)
}

/// An established PSK channel.
pub struct PskChannel {
    noise: TransportState,
    sock: TcpStream,
    /// Decrypted bytes not yet read, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext frames being assembled for one socket write.
    out: Vec<u8>,
    frame: Vec<u8>,
}

impl PskChannel {
    fn new(noise: TransportState, sock: TcpStream) -> Self {
        Self {
            noise,
            sock,
            plain: Vec::with_capacity(MAX_FRAME),
            plain_pos: 0,
            out: Vec::new(),
            frame: vec![0u8; MAX_FRAME],
        }
    }
}

impl Read for PskChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.plain_pos >= self.plain.len() {
            let mut len = [0u8; 2];
            match self.sock.read(&mut len[..1])? {
                0 => return Ok(0),
                _ => self.sock.read_exact(&mut len[1..])?,
            }
            let len = usize::from(u16::from_be_bytes(len));
            self.sock.read_exact(&mut self.frame[..len])?;
            self.plain.resize(MAX_FRAME, 0);
            let n = self
                .noise
                .read_message(&self.frame[..len], &mut self.plain)
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "PSK channel: a message failed authentication",
                    )
                })?;
            self.plain.truncate(n);
            self.plain_pos = 0;
        }
        let n = buf.len().min(self.plain.len() - self.plain_pos);
        buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        Ok(n)
    }
}

impl Write for PskChannel {
    /// Seals all of `buf` (in messages of up to 64 KiB) and sends it in one socket write.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.clear();
        for chunk in buf.chunks(MAX_PLAIN) {
            let at = self.out.len();
            self.out.resize(at + 2 + chunk.len() + TAG, 0);
            let n = self
                .noise
                .write_message(chunk, &mut self.out[at + 2..])
                .map_err(noise_error)?;
            let len = u16::try_from(n).map_err(|_| io::Error::other("frame too long"))?;
            self.out[at..at + 2].copy_from_slice(&len.to_be_bytes());
            self.out.truncate(at + 2 + n);
        }
        self.sock.write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Channel for PskChannel {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn key(byte: u8) -> PreSharedKey {
        PreSharedKey([byte; 32])
    }

    fn pair(
        client_key: PreSharedKey,
        server_key: PreSharedKey,
    ) -> (io::Result<PskChannel>, io::Result<PskChannel>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            server_key.accept(s)
        });
        let client = client_key.connect(TcpStream::connect(addr).unwrap());
        (client, server.join().unwrap())
    }

    #[test]
    fn same_key_talks_both_ways_in_large_and_small_writes() {
        let (client, server) = pair(key(7), key(7));
        let (mut c, mut s) = (client.unwrap(), server.unwrap());
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = std::thread::spawn(move || {
            c.write_all(&sent).unwrap();
            c.write_all(b"end").unwrap();
            let mut reply = [0u8; 2];
            c.read_exact(&mut reply).unwrap();
            reply
        });
        let mut got = vec![0u8; big.len() + 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"end");
        s.write_all(b"ok").unwrap();
        assert_eq!(&writer.join().unwrap(), b"ok");
    }

    #[test]
    fn a_wrong_key_is_refused_on_both_sides() {
        let (client, server) = pair(key(1), key(2));
        let err = server.err().expect("the destination refuses");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(client.is_err());
    }

    #[test]
    fn short_key_files_are_refused() {
        let path = std::env::temp_dir().join(format!("ferry-psk-short-{}", std::process::id()));
        std::fs::write(&path, b"password").unwrap();
        let err = PreSharedKey::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("at least 32 bytes"), "{err}");
    }
}
