#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: what a guest (virtio queues), a client (API
# requests, config files, command lines), a migration peer (the stream) or an iSCSI target (PDUs,
# login) can send. The corpora under */fuzz/corpus/<target> are the seeds, kept in the
# repository; what a run adds goes to a scratch directory, so the tree stays clean. A crash, a
# leak, a timeout or an out-of-memory fails the run and leaves the input under the printed path.
#
# Usage: bash resources/fuzz/run.sh [TARGET…]        (default: every target)
# Env:   FUZZ_SECONDS per target (default 20), FUZZ_KEEP=1 keeps the scratch directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

# Targets and the fuzz package (directory holding fuzz/) each lives in.
declare -A package=(
    [virtio_blk]=devices [virtio_net]=devices [virtio_vsock]=devices [virtio_balloon]=devices
    [iscsi_pdu]=devices [iscsi_session]=devices
    [migration_stream]=vmm [api_request]=vmm
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(virtio_blk virtio_net virtio_vsock virtio_balloon iscsi_pdu iscsi_session
        migration_stream api_request)
fi
for t in "${targets[@]}"; do
    [ -n "${package[$t]:-}" ] || { echo "unknown fuzz target $t (known: ${!package[*]})" >&2; exit 2; }
done

# libFuzzer and the sanitizer need a nightly compiler; cargo-fuzz drives them.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2

# One target directory for both packages: the shared dependencies build once.
export CARGO_TARGET_DIR="$repo/target/fuzz"
seconds=${FUZZ_SECONDS:-20}
scratch=$(mktemp -d)
[ -n "${FUZZ_KEEP:-}" ] || trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
    dir="$repo/${package[$t]}"
    seeds="$dir/fuzz/corpus/$t"
    mkdir -p "$seeds" "$scratch/$t/corpus" "$scratch/$t/artifacts"
    echo "== fuzz $t (${seconds} s; seeds: $(find "$seeds" -type f | wc -l))"
    # New inputs go to the first corpus directory (scratch); the repository's seeds are read.
    if ! (cd "$dir" && cargo +nightly fuzz run "$t" "$scratch/$t/corpus" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$scratch/$t/artifacts/") >"$scratch/$t/log" 2>&1; then
        tail -n 60 "$scratch/$t/log"
        echo "FAIL $t: input kept in $scratch/$t/artifacts" >&2
        failed+=("$t")
        # Keep the evidence even without FUZZ_KEEP.
        trap - EXIT
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$scratch/$t/log" | tr '\n' ' '
    echo
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets clean"
