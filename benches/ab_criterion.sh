#!/bin/bash
# Usage: build the `evaluate` bench binary of two commits (cargo bench --bench evaluate --no-run,
# copy target/release/deps/evaluate-<hash> to $BIN_DIR/evaluate-before and evaluate-after), then run this.
# Interleaved A/B: the evaluate bench of the code before issue 10 and after, same machine, same session.
F='^(evaluate/bodyless|evaluate/json_body_1k \(parse included\)|extract/bodyless|check/bodyless \(extract\+evaluate\+respond\)|check/json_body_1k)$'
cd "$(dirname "$0")/.."
for round in 1 2 3; do
  for v in before after; do
    echo "=== round $round $v"
    taskset -c 1 "${BIN_DIR:-/tmp}/evaluate-$v" --bench "$F" --warm-up-time 2 --measurement-time 5 --noplot 2>&1 | grep -E "^(evaluate|extract|check)/|time:" 
  done
done
