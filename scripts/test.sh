#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), then every test.
# Run from anywhere; CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings

echo "== benchmarks compile and run once in test mode"
cargo test --locked --benches --quiet

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  echo "(cargo-nextest not installed; using cargo test)"
  cargo test --locked --lib --bins --tests --no-fail-fast
fi
