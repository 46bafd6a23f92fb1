#!/usr/bin/env bash
# Host CPU per Gbit of traffic through macvtap versus tap + Linux bridge (issue 4, "Measure").
#
# A guest is replaced by net_cpu_gen, which opens the macvtap char device or the tap the way a
# VMM does (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, 12-byte vnet header) and writes/reads 1514-byte
# Ethernet frames carrying UDP/IPv4. Everything runs in two network namespaces made per run:
#   A macvtap: G: veth vA + macvtap mvt0 (mode bridge) on vA     P: veth vB 10.99.0.2/24
#   B bridge : G: bridge br0 with ports vA and tap0              P: veth vB 10.99.0.2/24
#     (bridge = kernel defaults, br_netfilter hooks on; bridge-nonf = bridge-nf-call-* set to 0)
#   raw (tx only): G: veth vA, frames sent on an AF_PACKET socket bound to vA. The floor shared by
#     all cases (syscall, copy, veth, peer's IP/UDP input); case minus raw = cost of the switch layer.
# Directions: tx = guest -> peer (gen writes the fd, counted at vB's rx counter);
#             rx = peer -> guest (UDP socket in P sends, gen reads the fd, counted as bytes read).
#   Flat out, rx on macvtap drops frames in macvtap's queue (offered > delivered); per-Gbit numbers
#   use delivered bytes, so that case carries the cost of its drops. RATE=1 avoids drops.
#
# CPU is measured two ways for each run:
#   path CPU  = utime+stime of our own processes (getrusage; precise, includes the softirq work
#               the kernel did in their context) + ksoftirqd/* time delta. Immune to other load
#               on the shared machine; the ratio is computed from this.
#   total CPU = busy time of all CPUs from /proc/stat (user+nice+system+irq+softirq; steal left
#               out), for context only: other sessions' builds land in it.
# "kernel" = path CPU minus the generators' user time (what the host kernel spends).
#
# RATE=G (Gbit/s) paces the sending side to a fixed offered load (default: flat out). At a fixed
# rate below both paths' capacity the cases carry identical traffic with no drops.
# Usage: sudo [SECS=5] [REPS=3] [PIN=1] [RATE=] [DIRS="tx rx"] [CASES="macvtap bridge bridge-nonf raw"] \
#             resources/bench/net_cpu.sh
# Output: one TSV row per run (columns: the header written to runs.tsv below), then a markdown
# table of medians from net_cpu_summary.py. Namespaces and temp files go away on exit (trap).
set -euo pipefail

SECS=${SECS:-5}
REPS=${REPS:-3}
DIRS=${DIRS:-"tx rx"}
CASES=${CASES:-"macvtap bridge bridge-nonf raw"}
FRAME=1514
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/net_cpu.XXXXXX)
NG=ferry_ncpu_g$$
NP=ferry_ncpu_p$$
GUEST_IP=10.99.0.1
PEER_IP=10.99.0.2
BR_GUEST_MAC=52:54:00:12:34:56

cleanup() {
    ip netns del "$NG" 2>/dev/null || true
    ip netns del "$NP" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "net_cpu.sh: needs root (network namespaces)" >&2; exit 1; }
gcc -O2 -Wall -o "$TMP/gen" "$HERE/net_cpu_gen.c"

ing() { ip netns exec "$NG" "$@"; }
inp() { ip netns exec "$NP" "$@"; }

# Creates the namespaces and the peer; $1 = macvtap|bridge|bridge-nonf. Sets DEV, TAPNAME, GMAC, PMAC.
setup() {
    ip netns add "$NG"
    ip netns add "$NP"
    for ns in "$NG" "$NP"; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
    done
    ip link add vA netns "$NG" type veth peer name vB netns "$NP"
    ip -n "$NP" addr add "$PEER_IP/24" dev vB
    ip -n "$NP" link set vB up
    ip -n "$NG" link set vA up
    if [ "$1" = macvtap ]; then
        ip -n "$NG" link add link vA name mvt0 type macvtap mode bridge
        ip -n "$NG" link set mvt0 up
        local idx majmin
        idx=$(ing cat /sys/class/net/mvt0/ifindex)
        majmin=$(ing cat "/sys/class/net/mvt0/macvtap/tap$idx/dev")
        # Our own node: /dev/tapN in the shared /dev may belong to another namespace's ifindex N.
        rm -f "$TMP/tap$idx"
        mknod "$TMP/tap$idx" c "${majmin%%:*}" "${majmin##*:}"
        DEV=$TMP/tap$idx
        TAPNAME=-
        GMAC=$(ing cat /sys/class/net/mvt0/address)
    elif [ "$1" = raw ]; then
        DEV=-
        TAPNAME=-
        GMAC=$(ing cat /sys/class/net/vA/address)
    else
        ip -n "$NG" link add br0 type bridge
        ip -n "$NG" tuntap add tap0 mode tap vnet_hdr
        ip -n "$NG" link set vA master br0
        ip -n "$NG" link set tap0 master br0
        ip -n "$NG" link set tap0 up
        ip -n "$NG" link set br0 up
        if [ "$1" = bridge-nonf ]; then
            # br_netfilter is built into this kernel and on by default in every namespace: bridged
            # IPv4 then walks the (empty) iptables hooks. "bridge-nonf" turns that off, as a host
            # that never loads br_netfilter would have it.
            ing sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
                net.bridge.bridge-nf-call-arptables=0
        fi
        DEV=/dev/net/tun
        TAPNAME=tap0
        GMAC=$BR_GUEST_MAC
    fi
    PMAC=$(inp cat /sys/class/net/vB/address)
    ip -n "$NP" neigh replace "$GUEST_IP" lladdr "$GMAC" dev vB nud permanent
}

teardown() {
    ip netns del "$NG" 2>/dev/null || true
    ip netns del "$NP" 2>/dev/null || true
}

# Busy and total jiffies over all CPUs (guest time is already inside user).
stat_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# ksoftirqd utime+stime in clock ticks, summed over CPUs.
ksoft() {
    local t=0 p f
    for p in $(pgrep -x 'ksoftirqd/[0-9]+' || true); do
        f=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + f))
    done
    echo "$t"
}
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" "$2"; }

HZ=$(getconf CLK_TCK)
export NET_CPU_RATE_GBPS=${RATE:-0}
# Pin the guest-side program and the peer's sender to different CPUs (as a vCPU/vhost thread and
# a NIC would be), so the rx runs do not flip between "same CPU" and "other CPU" from run to run.
# PIN=0 turns it off.
PIN_G=""; PIN_P=""
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then PIN_G="taskset -c 1"; PIN_P="taskset -c 0"; fi
# One measured run: $1 case, $2 dir, $3 rep. Prints a TSV row.
run_one() {
    local case=$1 dir=$2 rep=$3 b0 b1 k0 k1 rx0 rx1 bytes cpu user
    [ "$case" = raw ] && [ "$dir" != tx ] && return 0
    setup "$case"
    sleep 0.5
    read -r b0 t0 < <(stat_busy); k0=$(ksoft)
    rx0=$(inp cat /sys/class/net/vB/statistics/rx_bytes)
    if [ "$case" = raw ]; then
        ing $PIN_G timeout $((SECS + 10)) "$TMP/gen" raw vA "$GMAC" "$PMAC" \
            "$GUEST_IP" "$PEER_IP" "$SECS" "$FRAME" >"$TMP/g.out"
        : >"$TMP/p.out"
    elif [ "$dir" = tx ]; then
        ing $PIN_G timeout $((SECS + 10)) "$TMP/gen" tx "$DEV" "$TAPNAME" "$GMAC" "$PMAC" \
            "$GUEST_IP" "$PEER_IP" "$SECS" "$FRAME" >"$TMP/g.out"
        : >"$TMP/p.out"
    else
        ing $PIN_G timeout $((SECS + 10)) "$TMP/gen" rx "$DEV" "$TAPNAME" "$GMAC" "$(echo "$SECS + 0.6" | bc)" \
            >"$TMP/g.out" &
        local gpid=$!
        sleep 0.3
        inp $PIN_P timeout $((SECS + 10)) "$TMP/gen" udp "$GUEST_IP" "$SECS" $((FRAME - 42)) >"$TMP/p.out"
        wait "$gpid"
    fi
    rx1=$(inp cat /sys/class/net/vB/statistics/rx_bytes)
    read -r b1 t1 < <(stat_busy); k1=$(ksoft)
    teardown
    if [ "$dir" = tx ]; then bytes=$((rx1 - rx0)); else bytes=$(field bytes "$TMP/g.out"); fi
    local gu gs pu ps sent
    gu=$(field utime "$TMP/g.out"); gs=$(field stime "$TMP/g.out")
    pu=$(field utime "$TMP/p.out"); ps=$(field stime "$TMP/p.out")
    sent=$(field bytes "$TMP/g.out")
    [ "$dir" = rx ] && sent=$(field bytes "$TMP/p.out")
    # case dir rep secs bytes_delivered bytes_offered gen_u gen_s peer_u peer_s ksoft_s busy_s wall_cpu_s
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$dir" "$rep" "$SECS" \
        "$bytes" "$sent" "$gu" "$gs" "${pu:-0}" "${ps:-0}" \
        "$(echo "scale=4; ($k1 - $k0) / $HZ" | bc)" \
        "$(echo "scale=4; ($b1 - $b0) / $HZ" | bc)" "$(echo "scale=4; ($t1 - $t0) / $HZ" | bc)"
}

echo -e "case\tdir\trep\tsecs\tbytes\toffered\tgen_u\tgen_s\tpeer_u\tpeer_s\tksoft_s\tbusy_s\tall_s" >"$TMP/runs.tsv"
for rep in $(seq 1 "$REPS"); do
    for dir in $DIRS; do
        # Alternate the order so slow drifts in background load hit both cases alike.
        order=$CASES; [ $((rep % 2)) = 0 ] && order=$(echo "$CASES" | tr ' ' '\n' | tac | tr '\n' ' ')
        for case in $order; do
            run_one "$case" "$dir" "$rep" | tee -a "$TMP/runs.tsv"
        done
    done
done
echo
python3 "$HERE/net_cpu_summary.py" "$TMP/runs.tsv"
