//! The data both ends exchange: a seeded xorshift stream, written by one thread while another
//! reads the echo and compares it, so a transfer of any size never deadlocks on full buffers.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::thread;

/// What one exchange found.
pub struct Outcome {
    pub ok: bool,
    pub sent: u64,
    pub received: u64,
    pub crc: u32,
}

/// A deterministic byte stream: the receiver regenerates it to check the echo.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// The next `buf.len()` bytes of the stream, wherever the previous call stopped.
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// CRC-32 (IEEE), bitwise: the tool moves at most a few hundred MiB.
fn crc32(mut crc: u32, data: &[u8]) -> u32 {
    crc = !crc;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A stream socket both ends can use: Unix or vsock (an owned fd).
pub trait Socket: Read + Write + AsFd + Send + 'static {
    fn try_clone_socket(&self) -> std::io::Result<Self>
    where
        Self: Sized;
}

impl Socket for std::os::unix::net::UnixStream {
    fn try_clone_socket(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

fn shutdown_write(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown(2) on a live socket fd; errors are harmless here.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

/// Sends `bytes` of the pattern for `seed`, half-closes, and checks the echo.
pub fn exchange<S: Socket>(socket: S, bytes: u64, seed: u64) -> Outcome {
    let mut writer = match socket.try_clone_socket() {
        Ok(w) => w,
        Err(_) => {
            return Outcome {
                ok: false,
                sent: 0,
                received: 0,
                crc: 0,
            };
        }
    };
    let sender = thread::spawn(move || {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            if writer.write_all(&buf[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        shutdown_write(writer.as_fd());
        bytes - left
    });
    let mut reader = socket;
    let mut expected = Pattern::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let (mut received, mut crc, mut same) = (0u64, 0u32, true);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if same {
            expected.fill(&mut want[..n]);
            same = buf[..n] == want[..n];
        }
        crc = crc32(crc, &buf[..n]);
        received += n as u64;
    }
    let sent = sender.join().unwrap_or(0);
    Outcome {
        ok: same && sent == bytes && received == bytes,
        sent,
        received,
        crc,
    }
}

/// Echoes everything back until the peer half-closes, then closes.
pub fn echo<S: Socket>(mut socket: S) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if socket.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    shutdown_write(socket.as_fd());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_echo_matches_and_a_corrupted_one_does_not() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || echo(b));
        let outcome = exchange(a, 3_000_001, 7);
        server.join().unwrap();
        assert!(outcome.ok);
        assert_eq!((outcome.sent, outcome.received), (3_000_001, 3_000_001));

        // A peer that flips one byte is caught.
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let mut buf = vec![0u8; 100];
            b.read_exact(&mut buf).unwrap();
            buf[50] ^= 1;
            b.write_all(&buf).unwrap();
        });
        let outcome = exchange(a, 100, 7);
        server.join().unwrap();
        assert!(!outcome.ok);
        assert_eq!(outcome.received, 100);
    }

    #[test]
    fn the_pattern_does_not_depend_on_read_sizes() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(3).fill(&mut whole);
        let mut parts = vec![0u8; 1000];
        let mut p = Pattern::new(3);
        for chunk in parts.chunks_mut(7) {
            p.fill(chunk);
        }
        assert_eq!(whole, parts);
        assert_eq!(crc32(0, b"123456789"), 0xcbf4_3926);
    }
}
