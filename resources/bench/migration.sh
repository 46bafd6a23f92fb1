#!/usr/bin/env bash
# Live-migration benchmark (not a test): ferry vs QEMU 7.2 (microvm) migrating the same probe
# guest (`probe.test=dirty`, booted through its PVH note) over loopback, same host, same run.
#
# For each scenario and each of N repetitions (interleaved: ferry, then QEMU) migration_run.py
# boots the source, starts the destination, lets the ring-3 dirtier write its whole region once,
# migrates and reads the VMM's own figures (total time, downtime, bytes, rounds). Both VMMs get
# the same downtime budget (ferry --downtime-ms, QEMU downtime-limit; default 300 ms, ferry's
# and QEMU's default) and QEMU runs "bandwidth unlimited" (max-bandwidth 1 TiB/s). ferry keeps
# its defaults otherwise (auto-converge on, 30 iterations); so does QEMU (auto-converge off).
# Then it measures raw loopback socket throughput (iperf3 if installed, and a Python blast) and
# prints markdown tables of medians and ferry/QEMU ratios.
#
# Usage: resources/bench/migration.sh [-n RUNS] [--transport tcp|unix] [--downtime-ms MS]
#            [--only NAME[,NAME...]] [--timeout S] [--ferry PATH] [--probe PATH]
#            [--qemu PATH|none] [--keep DIR] [--security plain|tls|psk]
# Scenarios (NAME: guest, hot region at rate): idle-256M, dirty-256M (128 MiB at 64 MiB/s),
# idle-1G, dirty-1G (256 MiB at 64 MiB/s), dirty-4G (768 MiB at 256 MiB/s), stream-1G (896 MiB
# at 256 MiB/s: a mostly-dirty guest whose migration measures stream throughput).
# Defaults: 5 runs, tcp, 300 ms, every scenario, 120 s per migration, target/release/{ferry,probe}.
# --security protects ferry's stream (tcp): TLS 1.3 with throwaway certificates, or the PSK channel.
# --keep DIR keeps every sample (samples.jsonl) and each run's logs (DIR/SCENARIO-VMM-I/).
# Build first: cargo build --release -p ferry-vmm -p ferry-probe
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs=5
transport=tcp
downtime=300
only=""
timeout=120
ferry="$root/target/release/ferry"
probe="$root/target/release/probe"
qemu="qemu-system-x86_64"
keep=""
security=plain

die() { echo "migration.sh: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="${2:?-n needs a value}"; shift 2 ;;
        --transport) transport="${2:?}"; shift 2 ;;
        --downtime-ms) downtime="${2:?}"; shift 2 ;;
        --only) only="${2:?}"; shift 2 ;;
        --timeout) timeout="${2:?}"; shift 2 ;;
        --ferry) ferry="${2:?}"; shift 2 ;;
        --probe) probe="${2:?}"; shift 2 ;;
        --qemu) qemu="${2:?}"; shift 2 ;;
        --keep) keep="${2:?}"; shift 2 ;;
        --security) security="${2:?}"; shift 2 ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive number, got $runs"
[[ "$downtime" =~ ^[1-9][0-9]*$ ]] || die "--downtime-ms wants milliseconds, got $downtime"
[[ "$timeout" =~ ^[1-9][0-9]*$ ]] || die "--timeout wants seconds, got $timeout"
case "$transport" in tcp | unix) ;; *) die "--transport is tcp or unix" ;; esac
[ -x "$ferry" ] || die "$ferry not found (cargo build --release -p ferry-vmm)"
[ -f "$probe" ] || die "$probe not found (cargo build --release -p ferry-probe)"
[ -w /dev/kvm ] || die "/dev/kvm is missing or not writable"
if [ "$qemu" != none ] && ! command -v "$qemu" >/dev/null; then
    die "$qemu not found (apt-get install -y qemu-system-x86, or --qemu none)"
fi

# name|guest MiB|hot MiB|rate MiB/s|description. The probe's region starts at 64 MiB
# (ferry_probe::DIRTY_REGION_GPA) and must end inside RAM: hot MiB ≤ guest MiB - 64.
scenarios=(
    "idle-256M|256|1|1|idle 256 MiB"
    "dirty-256M|256|128|64|256 MiB, 128 MiB hot at 64 MiB/s"
    "idle-1G|1024|1|1|idle 1 GiB"
    "dirty-1G|1024|256|64|1 GiB, 256 MiB hot at 64 MiB/s"
    "dirty-4G|4096|768|256|4 GiB, 768 MiB hot at 256 MiB/s"
    "stream-1G|1024|896|256|1 GiB, 896 MiB hot at 256 MiB/s (stream)"
)

work="$(mktemp -d)"
pids=()
cleanup() {
    # migration_run.py kills its own VMMs on SIGTERM; kill whatever is still ours.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bg OUT CMD...: runs CMD in the background with stdout to OUT and waits for it, so a signal to
# this script reaches the trap (which kills CMD) at once.
bg() {
    local out="$1"
    shift
    "$@" >"$out" &
    pids+=($!)
    wait $! || return $?
}

selected() {
    [ -z "$only" ] && return 0
    case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

samples="$work/samples.jsonl"
: >"$samples"
total_runs=0
for sc in "${scenarios[@]}"; do
    IFS='|' read -r name mem hot rate label <<<"$sc"
    selected "$name" || continue
    [ "$hot" -le $((mem - 64)) ] || die "$name: $hot MiB region does not fit a $mem MiB guest"
    vmms=(ferry)
    [ "$qemu" = none ] || vmms+=(qemu)
    for i in $(seq "$runs"); do
        for vmm in "${vmms[@]}"; do
            logs=()
            [ -z "$keep" ] || logs=(--workdir "$keep/$name-$vmm-$i")
            # The whole sample is bounded: boot + warm-up + migration + teardown.
            bg "$work/line" timeout --kill-after=10 $((timeout + 120)) \
                python3 "$here/migration_run.py" \
                --vmm "$vmm" --memory "$mem" --dirty-mib "$hot" --rate "$rate" \
                --transport "$transport" --downtime-ms "$downtime" --timeout "$timeout" \
                --ferry "$ferry" --qemu "$qemu" --probe "$probe" --security "$security" \
                "${logs[@]}" || true
            line="$(cat "$work/line")"
            [ -n "$line" ] || line='{"error":"migration_run.py was killed by the timeout"}'
            echo "$line" | python3 -c '
import json, sys
sample = json.loads(sys.stdin.read())
sample.update(scenario=sys.argv[1], label=sys.argv[2], vmm=sys.argv[3], run=int(sys.argv[4]))
print(json.dumps(sample))' "$name" "$label" "$vmm" "$i" >>"$samples"
            echo "migration.sh: $name $vmm $i/$runs: $line" >&2
            total_runs=$((total_runs + 1))
        done
    done
done
[ "$total_runs" -gt 0 ] || die "no scenario matches --only $only"

# Raw socket throughput on the same host and transport.
raw="$work/raw.json"
if [ "$transport" = tcp ] && command -v iperf3 >/dev/null; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    timeout 30 iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    server=$!
    pids+=("$server")
    sleep 0.5
    bg "$work/iperf3.json" timeout 30 iperf3 -c 127.0.0.1 -p "$port" -t 5 -J || true
    wait "$server" 2>/dev/null || true
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
bps = d["end"]["sum_received"]["bits_per_second"]
print(json.dumps({"tool": "iperf3 -c 127.0.0.1 -t 5 (one TCP stream)",
                  "mib_s": round(bps / 8 / (1 << 20), 1)}))' "$work/iperf3.json" >"$raw" \
        2>/dev/null || rm -f "$raw"
fi
bg "$work/blast" timeout 30 python3 "$here/migration_blast.py" --transport "$transport" \
    --seconds 5 || true
blast="$(cat "$work/blast")"
[ -s "$raw" ] || echo "$blast" >"$raw"

kvm="hardware KVM"
[ -e /sys/module/kvm_pvm ] && kvm="PVM (guest ring 0 instruction-emulated)"
echo "## Live migration over loopback $transport: ferry vs QEMU microvm, $runs runs per scenario (medians)"
echo
echo "- host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), KVM: $kvm"
echo "- guest: \`$probe\` (PVH), \`probe.test=dirty probe.dirty_mib=HOT probe.dirty_rate_mib=RATE\`; migration starts after one full pass over the hot region (HOT/RATE + 1 s)"
echo "- ferry: \`ferry run --kernel probe --cmdline … --memory M --exit-device --api-socket A\`, \`ferry receive --listen URL --api-socket B --serial none\`, \`ferry ctl --api-socket A --json migrate --to URL --downtime-ms $downtime --max-iterations 30\`; figures from the source's migration-completed line"
[ "$qemu" = none ] || echo "- QEMU $("$qemu" --version | head -n1 | awk '{print $4}'): \`-M microvm -accel kvm -m M -nodefaults -no-user-config -nographic -serial file:… -qmp unix:…,server=on,wait=off -kernel probe -append …\` (+ \`-incoming URL\`), QMP \`migrate-set-parameters max-bandwidth=1TiB/s downtime-limit=$downtime\`, \`migrate\`; figures from \`query-migrate\` (rounds = ram.dirty-sync-count)"
echo "- downtime: ferry = vCPUs paused → destination committed (restored and resumed); QEMU = source stopped → migration completed on the source"
echo "- raw socket: $(cat "$raw")"
echo "- python blast: $blast"
echo
python3 "$here/migration_summary.py" "$samples" "$raw"
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    cp "$samples" "$raw" "$keep"/
fi
