#!/usr/bin/env bash
# Decision records on vs off through Envoy (performance.md target 6), hallpass as users run it
# (cache on): benches/ab_envoy.sh with one binary, records off as A and records to a file as
# B, behind their own Envoys, beside Envoy alone and a do-nothing ext_authz server
# (docs/benchmarks.md). ROUNDS (3), DUR (6 s), RATE (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/target/bench-results/records-envoy}
mkdir -p "$OUT"
rm -f "$OUT/decisions-b.jsonl"
HP=${BIN:-$PWD/target/release}/hallpass
OUT=$OUT BIN_A=$HP BIN_B=$HP ARGS_A="--decision-log off" ARGS_B="--decision-log $OUT/decisions-b.jsonl" \
  exec benches/ab_envoy.sh
