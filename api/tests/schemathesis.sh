#!/usr/bin/env bash
# Checks the API server against docs/api/ferry.yaml with schemathesis (property-based: valid and
# invalid requests generated from the schema; every response must be a documented status, a
# documented content type and match its schema; schema-invalid requests must be rejected; no 5xx).
#
# Runs the in-memory mock VMM (api/examples/mock_server.rs); schemathesis speaks only TCP, so the
# example forwards a loopback TCP port to the Unix socket byte for byte.
#
# NUL bytes in strings are left out (api/tests/parse.rs covers them): with them, most generated
# paths are refused and the accepted paths get little coverage.
#
# Usage: bash api/tests/schemathesis.sh [extra schemathesis args]
# Env:   SCHEMATHESIS_EXAMPLES (test cases per operation, default 100), SCHEMATHESIS_SEED.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
version=4.32.5
# Use an installed schemathesis of this version, else one in a venv under target/ (created once;
# Debian's python3 needs the python3-venv package for it).
st=schemathesis
if ! schemathesis --version 2>/dev/null | grep -q "$version"; then
    venv="$repo/target/schemathesis-venv"
    if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
    fi
    st="$venv/bin/schemathesis"
fi

cargo build --quiet -p ferry-api --example mock_server
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$repo/target/debug/examples/mock_server" "$work/api.sock" --tcp "127.0.0.1:$port" >"$work/out" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q ready "$work/out" && break
    kill -0 "$server" 2>/dev/null || { cat "$work/out"; exit 1; }
    sleep 0.1
done

# positive_data_acceptance is left out on purpose: the mock keeps a VM's state, so valid bodies
# are refused when the state forbids them (e.g. PATCH /drives before boot), as the VMM does.
# Run from the scratch directory: schemathesis and hypothesis leave caches in the current one.
cd "$work"
"$st" --config-file "$repo/api/tests/schemathesis.toml" run "$repo/docs/api/ferry.yaml" \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,unsupported_method \
    --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --generation-database none \
    --generation-allow-x00 false \
    --request-timeout 10 \
    --workers 1 \
    --no-color \
    "$@"
