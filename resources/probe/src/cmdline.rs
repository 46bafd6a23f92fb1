//! Kernel command-line parsing: `key=value` tokens separated by spaces, the probe's `probe.*`
//! keys and Linux's `virtio_mmio.device=` device descriptions.

/// Most tests one `probe.test=` list may name.
pub const MAX_TESTS: usize = 16;
/// Longest test name kept (longer names are truncated and then fail as unknown).
pub const MAX_TEST_NAME: usize = 15;
/// Most `virtio_mmio.device=` entries kept.
pub const MAX_VIRTIO: usize = 8;

/// A borrowed command line (ends at the first NUL byte, if any).
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    bytes: &'a [u8],
}

impl<'a> Cmdline<'a> {
    /// Wraps `bytes`, stopping at the first NUL.
    pub fn new(bytes: &'a [u8]) -> Self {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Cmdline {
            bytes: &bytes[..end],
        }
    }

    /// The whitespace-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &'a [u8]> {
        self.bytes
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
    }

    /// `(key, value)` of every token; a token without `=` has an empty value.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.tokens()
            .map(|t| match t.iter().position(|&b| b == b'=') {
                Some(i) => (&t[..i], &t[i + 1..]),
                None => (t, &t[t.len()..]),
            })
    }

    /// The value of the last `key=value` token for `key`.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.pairs()
            .filter(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
            .last()
    }
}

/// Parses an unsigned number: decimal, or hexadecimal with a `0x` prefix.
fn parse_u32(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Parses a number with an optional `K`/`M`/`G` suffix (binary multiples), like Linux memparse.
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let (num, shift) = match s.last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(num)?.checked_mul(1u64 << shift)
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for slot in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *slot = u8::try_from(parse_u64(part)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Parses `A.B.C.D/NN` (the prefix defaults to 24 when absent).
pub fn parse_ipv4_cidr(s: &[u8]) -> Option<([u8; 4], u8)> {
    match s.iter().position(|&b| b == b'/') {
        Some(i) => {
            let prefix = u8::try_from(parse_u64(&s[i + 1..])?).ok()?;
            if prefix > 32 {
                return None;
            }
            Some((parse_ipv4(&s[..i])?, prefix))
        }
        None => Some((parse_ipv4(s)?, 24)),
    }
}

/// One `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioMmioDev {
    /// Size of the register window.
    pub size: u64,
    /// Guest-physical base address.
    pub addr: u64,
    /// Interrupt line (unused: the probe polls).
    pub irq: u32,
}

/// Parses the value of a `virtio_mmio.device=` token.
pub fn parse_virtio_mmio(s: &[u8]) -> Option<VirtioMmioDev> {
    let at = s.iter().position(|&b| b == b'@')?;
    let size = parse_size(&s[..at])?;
    let rest = &s[at + 1..];
    let mut fields = rest.split(|&b| b == b':');
    let addr = parse_size(fields.next()?)?;
    let irq = u32::try_from(parse_u64(fields.next()?)?).ok()?;
    if let Some(id) = fields.next() {
        parse_u64(id)?;
    }
    if fields.next().is_some() || size == 0 {
        return None;
    }
    Some(VirtioMmioDev { size, addr, irq })
}

/// A test name from `probe.test=` (a fixed-size copy, so the config owns no borrow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestName {
    bytes: [u8; MAX_TEST_NAME],
    len: u8,
}

impl TestName {
    /// The empty name.
    pub const EMPTY: TestName = TestName {
        bytes: [0; MAX_TEST_NAME],
        len: 0,
    };

    /// Copies `name`, truncating it to [`MAX_TEST_NAME`] bytes.
    pub fn new(name: &[u8]) -> Self {
        let mut t = TestName::default();
        let n = name.len().min(MAX_TEST_NAME);
        t.bytes[..n].copy_from_slice(&name[..n]);
        t.len = n as u8;
        t
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Everything the probe takes from its command line.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Tests to run, in order (`probe.test=a,b,c`; `boot` when absent).
    pub tests: [TestName; MAX_TESTS],
    /// Number of valid entries in `tests`.
    pub test_count: usize,
    /// `probe.dirty_mib=N`: size of the dirtied region in MiB.
    pub dirty_mib: Option<u64>,
    /// `probe.dirty_rate_mib=R`: pacing in MiB of dirtied pages per second.
    pub dirty_rate_mib: Option<u64>,
    /// `probe.blk_kib=K` (default 256): how much of each disk the blk test reads.
    pub blk_kib: u64,
    /// `probe.blk_write=SEED`: write the [`crate::pattern`] first.
    pub blk_write: Option<u64>,
    /// `probe.blk_rounds=N` (default 1; 0 = until the VM ends): write/flush/read-back rounds of
    /// the write mode, round `r` (from 1) with seed `SEED + r - 1`. See [`crate::BLK_STATUS_GPA`].
    pub blk_rounds: u64,
    /// `probe.blk_changes=N` (default 1, at least 1): config changes the `blkchange` test waits
    /// for (a VMM swapping or resizing the disk under it).
    pub blk_changes: u64,
    /// `probe.blk_change_s=S` (default 120, at least 1): longest wait for one config change.
    pub blk_change_s: u64,
    /// `probe.rng_kib=K` (default 64, 16..=256): bytes the rng test reads per round, KiB.
    pub rng_kib: u64,
    /// `probe.rng_rounds=N` (default 1; 0 = until the VM ends): rounds of the rng test, each
    /// after the first reported as `probe: rng: round R ok`.
    pub rng_rounds: u64,
    /// `probe.vsock_port=P` (default 52): the port the vsock test listens on and echoes.
    pub vsock_port: u32,
    /// `probe.vsock_accept=N` (default 1): host connections the vsock test serves to their end
    /// before it goes on.
    pub vsock_accept: u64,
    /// `probe.vsock_connect=Q`: then connect to host port Q, send `vsock_bytes` bytes and
    /// check that they come back.
    pub vsock_connect: Option<u32>,
    /// `probe.vsock_bytes=N` (default 65536, at most 192 KiB): bytes sent on that connection.
    pub vsock_bytes: u64,
    /// `probe.vsock_refused=R`: also connect to host port R, which must be refused (RST).
    pub vsock_refused: Option<u32>,
    /// `probe.vsock_resets=K` (default 0): transport-reset events to wait for at the end.
    pub vsock_resets: u64,
    /// `probe.balloon_mib=M` (default 64, 1..=1024): the `balloon` test's pool, touched at
    /// start and given to the balloon as the device asks.
    pub balloon_mib: u64,
    /// `probe.net_ip=A.B.C.D/NN`.
    pub net_ip: Option<([u8; 4], u8)>,
    /// `probe.net_peer=E.F.G.H`.
    pub net_peer: Option<[u8; 4]>,
    /// `probe.net_count=N` (default 5): echo requests to send.
    pub net_count: u32,
    /// `probe.net_linger_ms=MS` (default 3000): how long to keep answering after the pings.
    pub net_linger_ms: u64,
    /// `probe.net_answer=N`: linger until N echo requests were answered (the linger time bounds
    /// the wait; fewer answers is a FAIL).
    pub net_answer: Option<u32>,
    /// `probe.tsc_khz=KHZ`: TSC frequency override.
    pub tsc_khz: Option<u64>,
    /// `virtio_mmio.device=` entries, in command-line order.
    pub virtio: [VirtioMmioDev; MAX_VIRTIO],
    /// Number of valid entries in `virtio`.
    pub virtio_count: usize,
    /// Number of `probe.*` or `virtio_mmio.device` tokens that were unknown or malformed.
    pub errors: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        let mut tests = [TestName::default(); MAX_TESTS];
        tests[0] = TestName::new(b"boot");
        ProbeConfig {
            tests,
            test_count: 1,
            dirty_mib: None,
            dirty_rate_mib: None,
            blk_kib: 256,
            blk_write: None,
            blk_rounds: 1,
            blk_changes: 1,
            blk_change_s: 120,
            rng_kib: 64,
            rng_rounds: 1,
            vsock_port: 52,
            vsock_accept: 1,
            vsock_connect: None,
            vsock_bytes: 65536,
            vsock_refused: None,
            vsock_resets: 0,
            balloon_mib: 64,
            net_ip: None,
            net_peer: None,
            net_count: 5,
            net_linger_ms: 3000,
            net_answer: None,
            tsc_khz: None,
            virtio: [VirtioMmioDev::default(); MAX_VIRTIO],
            virtio_count: 0,
            errors: 0,
        }
    }
}

impl ProbeConfig {
    /// Parses the command line. Malformed or unknown `probe.*` values are counted in `errors`
    /// and otherwise ignored (defaults stay).
    pub fn parse(cmdline: &Cmdline<'_>) -> Self {
        let mut cfg = ProbeConfig::default();
        for (key, value) in cmdline.pairs() {
            if key == b"virtio_mmio.device" {
                match parse_virtio_mmio(value) {
                    Some(dev) if cfg.virtio_count < MAX_VIRTIO => {
                        cfg.virtio[cfg.virtio_count] = dev;
                        cfg.virtio_count += 1;
                    }
                    _ => cfg.errors += 1,
                }
                continue;
            }
            let Some(name) = key.strip_prefix(b"probe.") else {
                continue;
            };
            let ok = match name {
                b"test" => cfg.set_tests(value),
                b"dirty_mib" => set(&mut cfg.dirty_mib, parse_u64(value)),
                b"dirty_rate_mib" => set(&mut cfg.dirty_rate_mib, parse_u64(value)),
                b"blk_kib" => parse_u64(value)
                    .filter(|&k| k > 0)
                    .map(|k| cfg.blk_kib = k)
                    .is_some(),
                b"blk_write" => set(&mut cfg.blk_write, parse_u64(value)),
                b"blk_rounds" => parse_u64(value).map(|v| cfg.blk_rounds = v).is_some(),
                b"blk_changes" => parse_u64(value)
                    .filter(|&v| v > 0)
                    .map(|v| cfg.blk_changes = v)
                    .is_some(),
                b"blk_change_s" => parse_u64(value)
                    .filter(|&v| v > 0)
                    .map(|v| cfg.blk_change_s = v)
                    .is_some(),
                b"rng_kib" => parse_u64(value)
                    .filter(|k| (16..=256).contains(k))
                    .map(|k| cfg.rng_kib = k)
                    .is_some(),
                b"rng_rounds" => parse_u64(value).map(|v| cfg.rng_rounds = v).is_some(),
                b"vsock_port" => parse_u32(value).map(|v| cfg.vsock_port = v).is_some(),
                b"vsock_accept" => parse_u64(value).map(|v| cfg.vsock_accept = v).is_some(),
                b"vsock_connect" => set(&mut cfg.vsock_connect, parse_u32(value)),
                b"vsock_bytes" => parse_u64(value)
                    .filter(|v| (1..=192 << 10).contains(v))
                    .map(|v| cfg.vsock_bytes = v)
                    .is_some(),
                b"vsock_refused" => set(&mut cfg.vsock_refused, parse_u32(value)),
                b"vsock_resets" => parse_u64(value).map(|v| cfg.vsock_resets = v).is_some(),
                b"balloon_mib" => parse_u64(value)
                    .filter(|m| (1..=1024).contains(m))
                    .map(|m| cfg.balloon_mib = m)
                    .is_some(),
                b"net_ip" => set(&mut cfg.net_ip, parse_ipv4_cidr(value)),
                b"net_peer" => set(&mut cfg.net_peer, parse_ipv4(value)),
                b"net_count" => parse_u64(value)
                    .and_then(|v| u32::try_from(v).ok())
                    .map(|v| cfg.net_count = v)
                    .is_some(),
                b"net_linger_ms" => parse_u64(value).map(|v| cfg.net_linger_ms = v).is_some(),
                b"net_answer" => set(
                    &mut cfg.net_answer,
                    parse_u64(value).and_then(|v| u32::try_from(v).ok()),
                ),
                b"tsc_khz" => set(&mut cfg.tsc_khz, parse_u64(value).filter(|&v| v > 0)),
                _ => false,
            };
            if !ok {
                cfg.errors += 1;
            }
        }
        cfg
    }

    /// Replaces the test list; an empty list is an error and leaves the default (`boot`).
    fn set_tests(&mut self, list: &[u8]) -> bool {
        let mut names = list
            .split(|&b| b == b',')
            .filter(|n| !n.is_empty())
            .peekable();
        if names.peek().is_none() {
            return false;
        }
        self.test_count = 0;
        for name in names {
            if self.test_count == MAX_TESTS {
                return false;
            }
            self.tests[self.test_count] = TestName::new(name);
            self.test_count += 1;
        }
        true
    }

    /// The tests to run, in order.
    pub fn tests(&self) -> &[TestName] {
        &self.tests[..self.test_count]
    }

    /// The `virtio_mmio.device=` entries.
    pub fn virtio(&self) -> &[VirtioMmioDev] {
        &self.virtio[..self.virtio_count]
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(v) => {
            *slot = Some(v);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_returns_last_value_and_stops_at_nul() {
        let c = Cmdline::new(b"a=1  probe.test=boot,smp\tb a=2\0probe.x=9");
        assert_eq!(c.get("a"), Some(&b"2"[..]));
        assert_eq!(c.get("probe.test"), Some(&b"boot,smp"[..]));
        assert_eq!(c.get("b"), Some(&b""[..]));
        assert_eq!(c.get("probe.x"), None);
    }

    #[test]
    fn numbers_sizes_and_addresses() {
        assert_eq!(parse_u64(b"42"), Some(42));
        assert_eq!(parse_u64(b"0x1F"), Some(31));
        assert_eq!(parse_u64(b"0x"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        assert_eq!(parse_size(b"4K"), Some(4096));
        assert_eq!(parse_size(b"0x1000"), Some(4096));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_ipv4(b"10.0.2.15"), Some([10, 0, 2, 15]));
        assert_eq!(parse_ipv4(b"10.0.2.256"), None);
        assert_eq!(parse_ipv4(b"10.0.2"), None);
        assert_eq!(parse_ipv4(b"10.0.2.1.5"), None);
        assert_eq!(
            parse_ipv4_cidr(b"192.168.1.2/16"),
            Some(([192, 168, 1, 2], 16))
        );
        assert_eq!(parse_ipv4_cidr(b"192.168.1.2/33"), None);
    }

    #[test]
    fn virtio_mmio_entries() {
        let d = parse_virtio_mmio(b"4K@0xd0000000:5").unwrap();
        assert_eq!(
            d,
            VirtioMmioDev {
                size: 4096,
                addr: 0xd000_0000,
                irq: 5
            }
        );
        let d = parse_virtio_mmio(b"512@0xfeb00e00:12:3").unwrap();
        assert_eq!((d.size, d.addr, d.irq), (512, 0xfeb0_0e00, 12));
        assert_eq!(parse_virtio_mmio(b"0x1000@0xd0000000"), None);
        assert_eq!(parse_virtio_mmio(b"0@0xd0000000:5"), None);
        assert_eq!(parse_virtio_mmio(b"4K0xd0000000:5"), None);
    }

    #[test]
    fn config_defaults_and_keys() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b"console=ttyS0"));
        assert_eq!(cfg.tests().len(), 1);
        assert_eq!(cfg.tests()[0].as_bytes(), b"boot");
        assert_eq!(
            (
                cfg.blk_kib,
                cfg.blk_rounds,
                cfg.net_count,
                cfg.net_linger_ms,
                cfg.errors
            ),
            (256, 1, 5, 3000, 0)
        );

        let line = b"probe.test=boot,serial,,blk probe.dirty_mib=128 probe.dirty_rate_mib=64 \
            probe.blk_kib=512 probe.blk_write=0x1234 probe.blk_rounds=0 probe.net_ip=10.0.2.15/24 \
            probe.net_peer=10.0.2.2 probe.net_count=3 probe.net_linger_ms=100 probe.net_answer=4 probe.tsc_khz=2500000 \
            virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6";
        let cfg = ProbeConfig::parse(&Cmdline::new(line));
        let names: [&[u8]; 3] = [b"boot", b"serial", b"blk"];
        assert_eq!(cfg.tests().len(), 3);
        for (t, n) in cfg.tests().iter().zip(names) {
            assert_eq!(t.as_bytes(), n);
        }
        assert_eq!(cfg.dirty_mib, Some(128));
        assert_eq!(cfg.dirty_rate_mib, Some(64));
        assert_eq!(cfg.blk_kib, 512);
        assert_eq!(cfg.blk_write, Some(0x1234));
        assert_eq!(cfg.blk_rounds, 0);
        assert_eq!(cfg.net_ip, Some(([10, 0, 2, 15], 24)));
        assert_eq!(cfg.net_peer, Some([10, 0, 2, 2]));
        assert_eq!(
            (
                cfg.net_count,
                cfg.net_linger_ms,
                cfg.net_answer,
                cfg.tsc_khz
            ),
            (3, 100, Some(4), Some(2_500_000))
        );
        assert_eq!(cfg.virtio().len(), 2);
        assert_eq!(cfg.virtio()[1].addr, 0xd000_1000);
        assert_eq!(cfg.errors, 0);
    }

    #[test]
    fn vsock_keys() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b""));
        assert_eq!(
            (cfg.vsock_port, cfg.vsock_accept, cfg.vsock_connect),
            (52, 1, None)
        );
        let cfg = ProbeConfig::parse(&Cmdline::new(
            b"probe.vsock_port=7 probe.vsock_accept=32 probe.vsock_connect=9 \
              probe.vsock_bytes=4096 probe.vsock_refused=10 probe.vsock_resets=1",
        ));
        assert_eq!(cfg.errors, 0);
        assert_eq!(
            (
                cfg.vsock_port,
                cfg.vsock_accept,
                cfg.vsock_connect,
                cfg.vsock_bytes
            ),
            (7, 32, Some(9), 4096)
        );
        assert_eq!((cfg.vsock_refused, cfg.vsock_resets), (Some(10), 1));
        let cfg = ProbeConfig::parse(&Cmdline::new(
            b"probe.vsock_port=4294967296 probe.vsock_bytes=0 probe.vsock_bytes=1000000",
        ));
        assert_eq!(
            (cfg.errors, cfg.vsock_port, cfg.vsock_bytes),
            (3, 52, 65536)
        );
    }

    #[test]
    fn config_counts_errors() {
        let cfg = ProbeConfig::parse(&Cmdline::new(
            b"probe.dirty_mib=x probe.bogus=1 probe.blk_kib=0 virtio_mmio.device=junk root=/dev/vda \
              probe.blk_rounds=-1",
        ));
        assert_eq!(cfg.errors, 5);
        assert_eq!(cfg.blk_rounds, 1);
        assert_eq!(cfg.dirty_mib, None);
        assert_eq!(cfg.blk_kib, 256);
    }

    #[test]
    fn blk_change_keys() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.test=blkchange"));
        assert_eq!((cfg.blk_changes, cfg.blk_change_s), (1, 120));
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.blk_changes=2 probe.blk_change_s=30"));
        assert_eq!((cfg.blk_changes, cfg.blk_change_s, cfg.errors), (2, 30, 0));
        // Zero would make the test pass without watching anything: refused, defaults kept.
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.blk_changes=0 probe.blk_change_s=0"));
        assert_eq!((cfg.blk_changes, cfg.blk_change_s, cfg.errors), (1, 120, 2));
    }

    #[test]
    fn rng_keys() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.test=rng"));
        assert_eq!((cfg.rng_kib, cfg.rng_rounds), (64, 1));
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.rng_kib=256 probe.rng_rounds=0"));
        assert_eq!((cfg.rng_kib, cfg.rng_rounds, cfg.errors), (256, 0, 0));
        // Too little to judge the bytes, or more than the buffer: refused, default kept.
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.rng_kib=8 probe.rng_kib=512"));
        assert_eq!((cfg.rng_kib, cfg.errors), (64, 2));
        assert_eq!(ProbeConfig::default().balloon_mib, 64);
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.balloon_mib=128"));
        assert_eq!((cfg.balloon_mib, cfg.errors), (128, 0));
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.balloon_mib=0 probe.balloon_mib=2048"));
        assert_eq!((cfg.balloon_mib, cfg.errors), (64, 2));
    }

    #[test]
    fn empty_test_list_keeps_boot() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.test= probe.test=,"));
        assert_eq!(cfg.tests().len(), 1);
        assert_eq!(cfg.tests()[0].as_bytes(), b"boot");
        assert_eq!(cfg.errors, 2);
    }

    #[test]
    fn long_test_names_are_truncated_and_lists_bounded() {
        let cfg = ProbeConfig::parse(&Cmdline::new(b"probe.test=averyveryverylongtestname"));
        assert_eq!(cfg.tests()[0].as_bytes(), b"averyveryverylo");
        let many = b"probe.test=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q";
        let cfg = ProbeConfig::parse(&Cmdline::new(many));
        assert_eq!(cfg.tests().len(), MAX_TESTS);
        assert_eq!(cfg.errors, 1);
    }
}
