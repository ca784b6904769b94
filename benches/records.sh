#!/bin/bash
# Decision records on vs off (performance.md target 6), hallpass as users run it (cache on):
# the server on CPU 1, 16 Checks in flight from the load generator on CPU 0, interleaved
# rounds. Compares two hallpass binaries: /tmp/hallpass-rec-before and -after (build each
# commit with `cargo build --release` and copy target/release/hallpass there), after
# benches/run.sh has built the load generator (benches/harness). ROUNDS, DUR, SCENS, VERSIONS
# (default "before after"; VERSIONS=after measures one binary).
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
cd "$(dirname "$0")/.."
for cpu in 0 1; do chrt -i 0 taskset -c "$cpu" sh -c 'while :; do :; done' & SP+=($!); done
run() { # $1 label, $2 binary, rest: serve args
  local label=$1 hp=$2; shift 2
  rm -f /tmp/dec.jsonl
  taskset -c 1 "$hp" serve --policy config/policy.yaml --grpc-listen 127.0.0.1:9591 --admin-listen 127.0.0.1:9592 --log-level warn "$@" >/dev/null 2>&1 & local P=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/9591) 2>/dev/null && break; sleep 0.1; done
  for scen in ${SCENS:-get json}; do
    taskset -c 0 "$BIN/loadgen" --addr 127.0.0.1:9591 --scenario $scen --concurrency 16 --duration ${DUR:-6} --warmup 1 --label "$label"
  done
  kill $P; wait $P 2>/dev/null
  [ -f /tmp/dec.jsonl ] && echo "{\"records\": $(wc -l < /tmp/dec.jsonl), \"label\": \"$label\"}"
}
for round in $(seq ${ROUNDS:-2}); do
  for v in ${VERSIONS:-before after}; do
    run "$v-off#$round" /tmp/hallpass-rec-$v --decision-log off
    run "$v-file#$round" /tmp/hallpass-rec-$v --decision-log /tmp/dec.jsonl
  done
done
kill "${SP[@]}" 2>/dev/null
