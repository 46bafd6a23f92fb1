#!/usr/bin/env bash
# Boot-time benchmark (not a test): ferry vs QEMU microvm booting the same probe guest.
#
# For each of N runs (interleaved, ferry then QEMU, after one discarded warm-up run of each) it
# measures, with first_line.py: wall time and CPU time (user+sys, all threads, guest included)
# from exec to the probe's first serial line (`probe: hello`, the probe's very first action), and
# the VMM's RSS at that moment excluding guest RAM. It prints a markdown table of medians, p90s
# and the ferry/QEMU ratio of the medians.
#
# Usage: resources/bench/boot.sh [-n RUNS] [--memory MIB] [--ferry PATH] [--probe PATH]
#                                [--qemu PATH|none] [--keep DIR]
# Defaults: 20 runs, 128 MiB guests, target/release/{ferry,probe}, qemu-system-x86_64.
# --keep DIR saves the raw samples (one JSON object per run) and the VMMs' stderr in DIR.
# Build first: cargo build --release --workspace
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs=20
mib=128
ferry="$root/target/release/ferry"
probe="$root/target/release/probe"
qemu="qemu-system-x86_64"
keep=""

die() { echo "boot.sh: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="${2:?-n needs a value}"; shift 2 ;;
        --memory) mib="${2:?--memory needs MiB}"; shift 2 ;;
        --ferry) ferry="${2:?}"; shift 2 ;;
        --probe) probe="${2:?}"; shift 2 ;;
        --qemu) qemu="${2:?}"; shift 2 ;;
        --keep) keep="${2:?}"; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive number, got $runs"
[[ "$mib" =~ ^[1-9][0-9]*$ ]] || die "--memory wants MiB, got $mib"
[ -x "$ferry" ] || die "$ferry not found (cargo build --release --workspace)"
[ -f "$probe" ] || die "$probe not found (cargo build --release --workspace)"
[ -w /dev/kvm ] || die "/dev/kvm is missing or not writable"
if [ "$qemu" != none ] && ! command -v "$qemu" >/dev/null; then
    die "$qemu not found (apt-get install qemu-system-x86, or --qemu none)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ferry_cmd=("$ferry" run --kernel "$probe" --cmdline probe.test=boot --memory "${mib}M" --exit-device)
# The microvm machine with every optional device off: the closest QEMU gets to ferry's device set.
qemu_cmd=("$qemu" -M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=off
    -accel kvm -nodefaults -no-user-config -nographic -serial stdio
    -m "${mib}M" -kernel "$probe" -append "probe.test=boot")

# sample NAME CMD...: appends one JSON sample to $work/NAME.jsonl; VMM stderr to $work/NAME.err.
sample() {
    local name="$1"; shift
    FIRST_LINE_STDERR="$work/$name.err" \
        python3 "$here/first_line.py" --guest-mib "$mib" -- "$@" >>"$work/$name.jsonl" || true
}

# Warm-up: page cache, and a failed configuration is reported before N runs are wasted on it.
check() {
    local name="$1"; shift
    FIRST_LINE_STDERR="$work/$name.err" python3 "$here/first_line.py" --guest-mib "$mib" -- "$@" \
        >"$work/$name.warmup" \
        || die "$name did not boot the probe: $(cat "$work/$name.warmup"); its stderr: $(tail -n 5 "$work/$name.err")"
}
check ferry "${ferry_cmd[@]}"
[ "$qemu" = none ] || check qemu "${qemu_cmd[@]}"

for _ in $(seq "$runs"); do
    sample ferry "${ferry_cmd[@]}"
    [ "$qemu" = none ] || sample qemu "${qemu_cmd[@]}"
done

kvm="hardware KVM"
[ -e /sys/module/kvm_pvm ] && kvm="PVM (guest ring 0 instruction-emulated)"
echo "## Boot: exec → probe's first serial line, ${mib} MiB guest, $runs runs"
echo
echo "- host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), KVM: $kvm"
echo "- ferry: \`${ferry_cmd[*]}\`"
[ "$qemu" = none ] || echo "- QEMU $("$qemu" --version | head -n1 | awk '{print $4}'): \`${qemu_cmd[*]}\`"
echo
args=(ferry="$work/ferry.jsonl")
[ "$qemu" = none ] || args+=(qemu="$work/qemu.jsonl")
python3 "$here/summarize.py" "${args[@]}"
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    cp "$work"/*.jsonl "$work"/*.err "$keep"/ 2>/dev/null || true
fi
