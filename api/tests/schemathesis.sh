#!/usr/bin/env bash
# Checks the API against docs/api/ferry.yaml with schemathesis (property-based: valid and
# invalid requests generated from the schema; every response must be a documented status, a
# documented content type and match its schema; schema-invalid requests must be rejected; no 5xx).
#
# Three runs, each on a fresh server:
#  1. the in-memory mock VMM (api/examples/mock_server.rs), valid and invalid requests: the
#     request parsing and every state of the instance machine without a host;
#  2. the real `ferry firecracker --api-sock`, valid requests only, with positive_data_acceptance:
#     a schema-valid request must be accepted. The schema run is a narrowed copy
#     (api/tests/schemathesis_real.py says what and why: host paths point at files this script
#     creates in a scratch directory, ids in the path equal the body's), and
#     api/tests/schemathesis-ferry.toml lists, operation by operation, the refusals a
#     not-yet-started VM owes (PATCH before boot, InstanceStart of a kernel that is not one, ...);
#  3. the real ferry again, invalid requests only, against the unmodified schema, with
#     negative_data_rejection.
# schemathesis speaks only TCP: the mock forwards a loopback port itself, the real ferry gets
# api/examples/tcp_forward.rs in front of its socket.
#
# NUL bytes in strings are left out (api/tests/parse.rs covers them): with them, most generated
# paths are refused and the accepted paths get little coverage.
#
# Usage: bash api/tests/schemathesis.sh [extra schemathesis args, given to every run]
# Env:   SCHEMATHESIS_EXAMPLES (test cases per operation, default 100 for the mock and 50 for
#        each real run), SCHEMATHESIS_SEED, CARGO_TARGET_DIR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
version=4.32.5
# Use an installed schemathesis of this version, else one in a venv under target/ (created once;
# Debian's python3 needs the python3-venv package for it).
st=schemathesis
if ! schemathesis --version 2>/dev/null | grep -q "$version"; then
    venv="$target/schemathesis-venv"
    if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
    fi
    st="$venv/bin/schemathesis"
fi
# The Python that runs schemathesis has PyYAML (a dependency) for schemathesis_real.py.
st_python=$(head -1 "$(command -v "$st")" | sed 's/^#!//')

cargo build --quiet -p ferry-api --example mock_server --example tcp_forward
cargo build --quiet -p ferry-vmm --bin ferry
work=$(mktemp -d)
pids=()
tap=
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -n "$tap" ] && ip link del "$tap" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_ready FILE PID: until FILE says "ready" (or the process died).
wait_ready() {
    for _ in $(seq 100); do
        grep -q ready "$1" && return 0
        kill -0 "$2" 2>/dev/null || { cat "$1"; return 1; }
        sleep 0.1
    done
    cat "$1"
    return 1
}

# run_st NAME PORT CONFIG SCHEMA EXAMPLES CHECKS [args]: one schemathesis run from its own
# scratch directory (schemathesis and hypothesis leave caches in the current one).
run_st() {
    local name=$1 port=$2 config=$3 schema=$4 examples=$5 checks=$6
    shift 6
    echo "== schemathesis: $name"
    mkdir -p "$work/st-$name"
    (cd "$work/st-$name" && "$st" --config-file "$config" run "$schema" \
        --url "http://127.0.0.1:$port" \
        --checks "$checks" \
        --phases examples,coverage,fuzzing \
        --max-examples "$examples" \
        --seed "${SCHEMATHESIS_SEED:-1}" \
        --generation-database none \
        --generation-allow-x00 false \
        --request-timeout 10 \
        --workers 1 \
        --no-color \
        "$@")
}

# 1. The mock. positive_data_acceptance is left out here: the mock keeps a VM's state, so valid
# bodies are refused when the state forbids them (e.g. PATCH /drives before boot), as the VMM
# does; run 2 checks it on the real VMM with the state-dependent refusals listed.
port=$(free_port)
"$target/debug/examples/mock_server" "$work/mock.sock" --tcp "127.0.0.1:$port" >"$work/mock.out" 2>&1 &
pids+=($!)
wait_ready "$work/mock.out" "${pids[-1]}"
run_st mock "$port" "$repo/api/tests/schemathesis.toml" "$repo/docs/api/ferry.yaml" \
    "${SCHEMATHESIS_EXAMPLES:-100}" \
    not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,unsupported_method \
    "$@"

# start_ferry NAME: a fresh `ferry firecracker --api-sock` behind a TCP forwarder; sets $port.
# Its working directory is a scratch one: requests whose only fault is their Content-Type carry a
# valid body, which ferry accepts (it reads every body as JSON whatever the header says), and the
# coverage phase's first valid path is "0", so run 3's PUT /logger and /metrics create that
# file where ferry runs.
start_ferry() {
    local sock="$work/$1.sock"
    mkdir -p "$work/cwd-$1"
    (cd "$work/cwd-$1" && exec "$target/debug/ferry" firecracker --api-sock "$sock" --id "st-$1") \
        >"$work/$1.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$work/$1.out"; return 1; }
    port=$(free_port)
    "$target/debug/examples/tcp_forward" "127.0.0.1:$port" "$sock" >"$work/$1.fwd" 2>&1 &
    pids+=($!)
    wait_ready "$work/$1.fwd" "${pids[-1]}"
}

# 2. The real ferry, valid requests. The scratch objects the narrowed schema names: a kernel
# that is not one (InstanceStart fails instead of booting a guest that would end the process),
# an initrd, a disk image, and a tap (root; without one the interface operation is skipped).
scratch="$work/scratch"
mkdir -p "$scratch"
head -c 4096 /dev/zero >"$scratch/vmlinux"
head -c 4096 /dev/zero >"$scratch/initrd"
truncate -s 1M "$scratch/disk.img"
real_config="$repo/api/tests/schemathesis-ferry.toml"
if ip tuntap add dev fstap$$ mode tap 2>/dev/null; then
    tap=fstap$$
else
    echo "schemathesis: no tap device (not root?): network interfaces left out of run 2"
    set -- "$@" --exclude-operation-id putGuestNetworkInterfaceByID
fi
"$st_python" "$repo/api/tests/schemathesis_real.py" "$repo/docs/api/ferry.yaml" \
    "$work/ferry-real.yaml" "$scratch" "${tap:-fstap0}"
start_ferry positive
run_st ferry-valid "$port" "$real_config" "$work/ferry-real.yaml" \
    "${SCHEMATHESIS_EXAMPLES:-50}" \
    not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance \
    --mode positive "$@"

# 3. The real ferry, invalid requests, the schema as published.
start_ferry negative
run_st ferry-invalid "$port" "$real_config" "$repo/docs/api/ferry.yaml" \
    "${SCHEMATHESIS_EXAMPLES:-50}" \
    not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --mode negative "$@"
