//! Ethernet, ARP (RFC 826), IPv4 (RFC 791) and ICMP echo (RFC 792) building and parsing for the
//! `net` test. Frames from the network are hostile input: every parser bounds-checks and
//! verifies checksums.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP request opcode.
pub const ARP_REQUEST: u16 = 1;
/// ARP reply opcode.
pub const ARP_REPLY: u16 = 2;
/// ICMP echo request type.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply type.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// Length of an ARP frame (without padding).
pub const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn put_eth(buf: &mut [u8], dst: &[u8; 6], src: &[u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(dst);
    buf[6..12].copy_from_slice(src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Builds an ARP frame into `buf` (at least [`ARP_FRAME_LEN`] bytes); returns its length, or 0
/// when `buf` is too small. Requests go to the broadcast address with a zero target MAC.
pub fn build_arp(
    buf: &mut [u8],
    op: u16,
    src_mac: &[u8; 6],
    src_ip: &[u8; 4],
    dst_mac: &[u8; 6],
    dst_ip: &[u8; 4],
) -> usize {
    if buf.len() < ARP_FRAME_LEN {
        return 0;
    }
    let eth_dst = if op == ARP_REQUEST {
        &BROADCAST
    } else {
        dst_mac
    };
    put_eth(buf, eth_dst, src_mac, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HLEN..ARP_FRAME_LEN];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(src_mac);
    a[14..18].copy_from_slice(src_ip);
    let tha = if op == ARP_REQUEST {
        &[0u8; 6]
    } else {
        dst_mac
    };
    a[18..24].copy_from_slice(tha);
    a[24..28].copy_from_slice(dst_ip);
    ARP_FRAME_LEN
}

/// Addresses of an IPv4 packet being built.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Addrs {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: [u8; 4],
    /// IPv4 destination.
    pub dst_ip: [u8; 4],
}

/// Builds an ICMP echo request or reply (`kind`) frame into `buf`; returns its length, or 0
/// when `buf` is too small.
pub fn build_icmp_echo(
    buf: &mut [u8],
    a: &Ipv4Addrs,
    kind: u8,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> usize {
    let ip_len = 20 + 8 + payload.len();
    let total = ETH_HLEN + ip_len;
    if buf.len() < total || ip_len > 0xffff {
        return 0;
    }
    put_eth(buf, &a.dst_mac, &a.src_mac, ETHERTYPE_IPV4);
    let ip = &mut buf[ETH_HLEN..ETH_HLEN + 20];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes()); // identification
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64;
    ip[9] = 1; // ICMP
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&a.src_ip);
    ip[16..20].copy_from_slice(&a.dst_ip);
    let c = inet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut buf[ETH_HLEN + 20..total];
    icmp[0] = kind;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = inet_checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    total
}

/// A received frame, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// An Ethernet/IPv4 ARP packet.
    Arp {
        /// Opcode.
        op: u16,
        /// Sender MAC.
        sha: [u8; 6],
        /// Sender IP.
        spa: [u8; 4],
        /// Target IP.
        tpa: [u8; 4],
    },
    /// An ICMP echo request or reply with valid checksums.
    IcmpEcho {
        /// [`ICMP_ECHO_REQUEST`] or [`ICMP_ECHO_REPLY`].
        kind: u8,
        /// Ethernet source.
        src_mac: [u8; 6],
        /// IPv4 source.
        src_ip: [u8; 4],
        /// IPv4 destination.
        dst_ip: [u8; 4],
        /// Echo identifier.
        id: u16,
        /// Echo sequence number.
        seq: u16,
        /// Echo data.
        payload: &'a [u8],
    },
    /// Anything else (or malformed).
    Other,
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

/// Classifies an Ethernet frame.
pub fn parse(frame: &[u8]) -> Packet<'_> {
    if frame.len() < ETH_HLEN {
        return Packet::Other;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[ETH_HLEN..];
    match ethertype {
        ETHERTYPE_ARP if body.len() >= 28 => {
            if body[0..2] != [0, 1] || body[2..4] != [8, 0] || body[4] != 6 || body[5] != 4 {
                return Packet::Other;
            }
            Packet::Arp {
                op: u16::from_be_bytes([body[6], body[7]]),
                sha: arr(&body[8..14]),
                spa: arr(&body[14..18]),
                tpa: arr(&body[24..28]),
            }
        }
        ETHERTYPE_IPV4 => parse_ipv4(arr(&frame[6..12]), body),
        _ => Packet::Other,
    }
}

fn parse_ipv4(src_mac: [u8; 6], ip: &[u8]) -> Packet<'_> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Packet::Other;
    }
    let ihl = usize::from(ip[0] & 15) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if ihl < 20 || total < ihl + 8 || total > ip.len() || frag & 0x3fff != 0 || ip[9] != 1 {
        return Packet::Other;
    }
    if inet_checksum(&ip[..ihl]) != 0 {
        return Packet::Other;
    }
    let icmp = &ip[ihl..total];
    if inet_checksum(icmp) != 0 || icmp[1] != 0 {
        return Packet::Other;
    }
    let kind = icmp[0];
    if kind != ICMP_ECHO_REQUEST && kind != ICMP_ECHO_REPLY {
        return Packet::Other;
    }
    Packet::IcmpEcho {
        kind,
        src_mac,
        src_ip: arr(&ip[12..16]),
        dst_ip: arr(&ip[16..20]),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: &icmp[8..],
    }
}

/// Whether `a` and `b` are in the same `prefix`-bit subnet.
pub fn same_subnet(a: &[u8; 4], b: &[u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    (u32::from_be_bytes(*a) ^ u32::from_be_bytes(*b)) & mask == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const MAC_B: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum !0xddf2.
        assert_eq!(
            inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(inet_checksum(&[0xff]), !0xff00);
        // A well-known IPv4 header (checksum field 0xb861 included) sums to zero.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(inet_checksum(&hdr), 0);
    }

    #[test]
    fn arp_roundtrip() {
        let mut buf = [0u8; 64];
        let n = build_arp(
            &mut buf,
            ARP_REQUEST,
            &MAC_A,
            &[10, 0, 2, 15],
            &[0; 6],
            &[10, 0, 2, 2],
        );
        assert_eq!(n, 42);
        assert_eq!(&buf[..6], &BROADCAST);
        assert_eq!(
            parse(&buf[..n]),
            Packet::Arp {
                op: ARP_REQUEST,
                sha: MAC_A,
                spa: [10, 0, 2, 15],
                tpa: [10, 0, 2, 2]
            }
        );
        let n = build_arp(
            &mut buf,
            ARP_REPLY,
            &MAC_B,
            &[10, 0, 2, 2],
            &MAC_A,
            &[10, 0, 2, 15],
        );
        assert_eq!(&buf[..6], &MAC_A);
        assert_eq!(&buf[32..38], &MAC_A);
        assert!(matches!(
            parse(&buf[..n]),
            Packet::Arp { op: ARP_REPLY, .. }
        ));
        assert_eq!(
            build_arp(&mut buf[..20], ARP_REPLY, &MAC_B, &[0; 4], &MAC_A, &[0; 4]),
            0
        );
        assert_eq!(parse(&buf[..30]), Packet::Other);
    }

    #[test]
    fn icmp_roundtrip_and_corruption() {
        let a = Ipv4Addrs {
            src_mac: MAC_A,
            dst_mac: MAC_B,
            src_ip: [10, 0, 2, 15],
            dst_ip: [10, 0, 2, 2],
        };
        let mut buf = [0u8; 128];
        let payload = [0xabu8; 33];
        let n = build_icmp_echo(&mut buf, &a, ICMP_ECHO_REQUEST, 0x5052, 7, &payload);
        assert_eq!(n, 14 + 20 + 8 + 33);
        match parse(&buf[..n]) {
            Packet::IcmpEcho {
                kind,
                src_mac,
                src_ip,
                dst_ip,
                id,
                seq,
                payload: p,
            } => {
                assert_eq!((kind, id, seq), (ICMP_ECHO_REQUEST, 0x5052, 7));
                assert_eq!(
                    (src_mac, src_ip, dst_ip),
                    (MAC_A, [10, 0, 2, 15], [10, 0, 2, 2])
                );
                assert_eq!(p, &payload[..]);
            }
            other => panic!("{other:?}"),
        }
        // Ethernet padding after the IP packet is ignored.
        assert!(matches!(parse(&buf[..n + 10]), Packet::IcmpEcho { .. }));
        let mut bad = buf;
        bad[14 + 20 + 9] ^= 1; // payload bit flip breaks the ICMP checksum
        assert_eq!(parse(&bad[..n]), Packet::Other);
        let mut bad = buf;
        bad[14 + 8] = 63; // TTL change breaks the header checksum
        assert_eq!(parse(&bad[..n]), Packet::Other);
        assert_eq!(parse(&buf[..n - 1]), Packet::Other); // truncated
        assert_eq!(build_icmp_echo(&mut buf[..40], &a, 0, 0, 0, &payload), 0);
    }

    #[test]
    fn subnets() {
        assert!(same_subnet(&[10, 0, 2, 15], &[10, 0, 2, 2], 24));
        assert!(!same_subnet(&[10, 0, 3, 15], &[10, 0, 2, 2], 24));
        assert!(same_subnet(&[1, 2, 3, 4], &[9, 9, 9, 9], 0));
        assert!(!same_subnet(&[10, 0, 2, 15], &[10, 0, 2, 14], 32));
    }
}
