#!/usr/bin/env bash
# The project's test command (README): builds everything, including the probe guest, and runs the
# whole suite — unit tests, integration tests against the real ferry binary, probe, tgtd and
# network namespaces. Needs root for /dev/kvm, loop devices, tgtd and namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace
cargo test --workspace -- --test-threads="${FERRY_TEST_THREADS:-2}"
