/*
 * net_cpu_gen: traffic source/sink for resources/bench/net_cpu.sh.
 *
 * Stands in for a guest's virtio-net queue: it opens a macvtap char device
 * (/dev/tapN) or a tap (/dev/net/tun) the way a VMM does (IFF_TAP|IFF_NO_PI|
 * IFF_VNET_HDR, TUNSETVNETHDRSZ 12) and writes or reads whole Ethernet frames,
 * so the host kernel work measured by the script is the same per-frame path a
 * guest's traffic takes. A third mode sends UDP from the peer namespace.
 *
 * Modes (all print one line "frames=N bytes=N utime=S stime=S secs=S"):
 *   tx  DEV TAPNAME SRCMAC DSTMAC SRCIP DSTIP SECS FRAMELEN
 *   rx  DEV TAPNAME SRCMAC SECS
 *   udp DSTIP SECS PAYLOADLEN
 *   raw IFNAME SRCMAC DSTMAC SRCIP DSTIP SECS FRAMELEN
 * "raw" writes the same frames on an AF_PACKET socket (with PACKET_VNET_HDR)
 * bound to IFNAME: the cost floor of syscall + copy + veth + peer stack with
 * no tap, macvtap or bridge in between.
 * If NET_CPU_RATE_GBPS is set (> 0), tx, raw and udp pace themselves to that
 * offered rate (counting Ethernet frame bytes) instead of sending flat out.
 * DEV is /dev/net/tun (then TAPNAME is the tap to attach to) or a macvtap
 * char device (TAPNAME ignored, pass "-"). FRAMELEN counts the Ethernet
 * header (14 bytes) but not the 12-byte vnet header.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <net/if.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define VNET_HDR_LEN 12
#define MAX_FRAME 9014

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Offered-rate pacing: sleeps until `bytes` are due at NET_CPU_RATE_GBPS. */
static void pace(double t0, unsigned long long bytes)
{
	static double rate = -1;
	if (rate < 0) {
		const char *r = getenv("NET_CPU_RATE_GBPS");
		rate = r ? atof(r) * 1e9 / 8 : 0;
	}
	if (rate <= 0)
		return;
	double wait = t0 + bytes / rate - now();
	if (wait > 0) {
		struct timespec ts = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};
		nanosleep(&ts, NULL);
	}
}

static void report(unsigned long long frames, unsigned long long bytes, double secs)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("frames=%llu bytes=%llu utime=%.4f stime=%.4f secs=%.4f\n", frames, bytes,
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, secs);
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

/* Opens DEV as a VMM would and sets a 12-byte vnet header (virtio 1.x size). */
static int open_dev(const char *dev, const char *tapname)
{
	int fd = open(dev, O_RDWR);
	if (fd < 0) {
		perror(dev);
		exit(2);
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (strcmp(tapname, "-") != 0)
		strncpy(ifr.ifr_name, tapname, IFNAMSIZ - 1);
	/* macvtap accepts TUNSETIFF to set flags; tun uses it to attach. */
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		perror("TUNSETIFF");
		exit(2);
	}
	int sz = VNET_HDR_LEN;
	if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
		perror("TUNSETVNETHDRSZ");
		exit(2);
	}
	return fd;
}

static uint16_t ip_csum(const uint8_t *p, int len)
{
	uint32_t s = 0;
	for (int i = 0; i < len; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/* Builds vnet header (zeroed: no offload) + Ethernet + IPv4 + UDP (csum 0). */
static int build_frame(uint8_t *buf, const uint8_t src[6], const uint8_t dst[6],
		       const char *sip, const char *dip, int framelen)
{
	memset(buf, 0, VNET_HDR_LEN + framelen);
	uint8_t *e = buf + VNET_HDR_LEN;
	memcpy(e, dst, 6);
	memcpy(e + 6, src, 6);
	e[12] = 0x08;
	e[13] = 0x00;
	uint8_t *ip = e + 14;
	int iplen = framelen - 14;
	ip[0] = 0x45;
	ip[2] = (uint8_t)(iplen >> 8);
	ip[3] = (uint8_t)iplen;
	ip[6] = 0x40; /* DF */
	ip[8] = 64;
	ip[9] = 17;
	if (inet_pton(AF_INET, sip, ip + 12) != 1 || inet_pton(AF_INET, dip, ip + 16) != 1)
		return -1;
	uint16_t c = ip_csum(ip, 20);
	ip[10] = (uint8_t)(c >> 8);
	ip[11] = (uint8_t)c;
	uint8_t *udp = ip + 20;
	int ulen = iplen - 20;
	udp[0] = 0x9c; udp[1] = 0x40; /* 40000 */
	udp[2] = 0x00; udp[3] = 0x09; /* discard port: nobody listens */
	udp[4] = (uint8_t)(ulen >> 8);
	udp[5] = (uint8_t)ulen;
	return VNET_HDR_LEN + framelen;
}

static int do_tx(char **a)
{
	uint8_t src[6], dst[6];
	static uint8_t buf[VNET_HDR_LEN + MAX_FRAME];
	int framelen = atoi(a[7]);
	double secs = atof(a[6]);
	if (framelen < 14 + 28 || framelen > MAX_FRAME || parse_mac(a[2], src) || parse_mac(a[3], dst))
		return 2;
	int fd = open_dev(a[0], a[1]);
	int len = build_frame(buf, src, dst, a[4], a[5], framelen);
	if (len < 0)
		return 2;
	unsigned long long frames = 0, bytes = 0;
	double t0 = now(), t = t0;
	while (t - t0 < secs) {
		for (int i = 0; i < 32; i++) {
			ssize_t n = write(fd, buf, (size_t)len);
			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)
					continue;
				perror("write");
				return 1;
			}
			frames++;
			bytes += (unsigned long long)(n - VNET_HDR_LEN);
		}
		pace(t0, bytes);
		t = now();
	}
	report(frames, bytes, t - t0);
	return 0;
}

static int do_rx(char **a)
{
	uint8_t src[6];
	static uint8_t buf[VNET_HDR_LEN + 65536];
	double secs = atof(a[3]);
	if (parse_mac(a[2], src))
		return 2;
	int fd = open_dev(a[0], a[1]);
	/* One broadcast frame from the guest MAC so a bridge learns its port. */
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	int len = build_frame(buf, src, bcast, "0.0.0.0", "255.255.255.255", 60);
	if (len < 0 || write(fd, buf, (size_t)len) < 0)
		perror("announce");
	unsigned long long frames = 0, bytes = 0;
	double t0 = now(), t = t0;
	/* Non-blocking like a VMM's event loop: drain until EAGAIN, then poll. */
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		perror("O_NONBLOCK");
		return 2;
	}
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	while (t - t0 < secs) {
		if (poll(&pfd, 1, 100) > 0) {
			for (int i = 0; i < 256; i++) {
				ssize_t n = read(fd, buf, sizeof(buf));
				if (n <= 0)
					break;
				frames++;
				bytes += (unsigned long long)(n - VNET_HDR_LEN);
			}
		}
		t = now();
	}
	report(frames, bytes, t - t0);
	return 0;
}

static int do_udp(char **a)
{
	static uint8_t buf[65536];
	double secs = atof(a[1]);
	int plen = atoi(a[2]);
	if (plen < 1 || plen > (int)sizeof(buf))
		return 2;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(9)};
	if (s < 0 || inet_pton(AF_INET, a[0], &sa.sin_addr) != 1 ||
	    connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("udp socket");
		return 2;
	}
	/*
	 * Frames stay charged to this socket until the far end frees them (veth keeps the
	 * owner, macvtap's queue does not orphan, tun's does). With the default send buffer
	 * the sender would then sleep on macvtap's reader and not on the bridge's, which a
	 * NIC-fed host never sees. A buffer larger than any queue on the path removes that.
	 */
	int sndbuf = 64 << 20;
	if (setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
		perror("SO_SNDBUFFORCE (sender may block on the reader)");
	unsigned long long frames = 0, bytes = 0;
	double t0 = now(), t = t0;
	while (t - t0 < secs) {
		for (int i = 0; i < 32; i++) {
			ssize_t n = send(s, buf, (size_t)plen, 0);
			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS ||
				    errno == ECONNREFUSED)
					continue;
				perror("send");
				return 1;
			}
			frames++;
			bytes += (unsigned long long)n + 42; /* UDP+IP+Ethernet headers */
		}
		pace(t0, bytes);
		t = now();
	}
	report(frames, bytes, t - t0);
	return 0;
}

static int do_raw(char **a)
{
	uint8_t src[6], dst[6];
	static uint8_t buf[VNET_HDR_LEN + MAX_FRAME];
	int framelen = atoi(a[6]);
	double secs = atof(a[5]);
	if (framelen < 14 + 28 || framelen > MAX_FRAME || parse_mac(a[1], src) || parse_mac(a[2], dst))
		return 2;
	int s = socket(AF_PACKET, SOCK_RAW, 0);
	int one = 1;
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(a[0])};
	if (s < 0 || sll.sll_ifindex == 0 ||
	    setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0 ||
	    bind(s, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		perror("packet socket");
		return 2;
	}
	int len = build_frame(buf, src, dst, a[3], a[4], framelen);
	if (len < 0)
		return 2;
	/* PACKET_VNET_HDR takes the 10-byte virtio_net_hdr: skip 2 of our 12 zero bytes. */
	const uint8_t *p = buf + 2;
	size_t plen = (size_t)len - 2;
	unsigned long long frames = 0, bytes = 0;
	double t0 = now(), t = t0;
	while (t - t0 < secs) {
		for (int i = 0; i < 32; i++) {
			ssize_t n = send(s, p, plen, 0);
			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)
					continue;
				perror("send");
				return 1;
			}
			frames++;
			bytes += (unsigned long long)framelen;
		}
		pace(t0, bytes);
		t = now();
	}
	report(frames, bytes, t - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 10 && strcmp(argv[1], "tx") == 0)
		return do_tx(argv + 2);
	if (argc == 6 && strcmp(argv[1], "rx") == 0)
		return do_rx(argv + 2);
	if (argc == 9 && strcmp(argv[1], "raw") == 0)
		return do_raw(argv + 2);
	if (argc == 5 && strcmp(argv[1], "udp") == 0)
		return do_udp(argv + 2);
	fprintf(stderr, "usage: see the comment at the top of net_cpu_gen.c\n");
	return 2;
}
