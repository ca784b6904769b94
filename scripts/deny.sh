#!/usr/bin/env bash
# Dependency gate: licenses (permissive only), duplicate versions (warned), sources
# (crates.io only), per deny.toml. Not part of scripts/test.sh: installing cargo-deny compiles
# it from source (7 min here on 2 cores), and its advisory check needs the RustSec database
# from github.com, which this build environment cannot reach (run `cargo deny check
# advisories` where it can).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
cargo deny --offline check licenses bans sources
