#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts containerd when it
# is not running, then runs lints, unit tests and the end-to-end tests
# against the real containerd and runc (SHOAL_E2E=1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_root
ensure_packages
ensure_rust
ensure_containerd
trap stop_started_containerd EXIT

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
SHOAL_SCHEMATHESIS=$(ensure_schemathesis)
export SHOAL_SCHEMATHESIS
say "cargo test (SHOAL_E2E=1: end-to-end against containerd; schemathesis against the API)"
SHOAL_E2E=1 cargo test --workspace --locked
