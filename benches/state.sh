#!/usr/bin/env bash
# What a limit costs per Check (agent-controls.md §4, performance.md): the body-less read of
# the example policy's mail-read rule, decided by three hallpass servers side by side (cache
# and records on, as users run it):
#   unlimited     the example policy (mail-read has no limit)
#   memory        mail-read with a limit per agent and user, the in-memory store
#   redis         the same limit on a Redis store (one script round trip per Check)
# and Redis's own latency for one round trip (`redis-benchmark`, the limit script and GET, 16
# clients) in the same run. Servers and Redis on CPU 1, load generator on CPU 0, SCHED_IDLE
# spinners keep both awake (docs/benchmarks.md). Needs target/release/hallpass, loadgen
# (benches/harness) and redis-server / redis-benchmark (Debian `redis-server`).
#   ROUNDS (3), DUR (6 s), RATE (2000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-$ROOT/target/bench-results/state}
mkdir -p "$OUT"
DUR=${DUR:-6}; RATE=${RATE:-2000}
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; exit 1; }
for cpu in 0 1; do chrt -i 0 taskset -c "$cpu" sh -c 'while :; do :; done' & PIDS+=($!); done

python3 - "$OUT/limited.yaml" <<'PY'
import sys
s = open("config/policy.yaml").read()
anchor = '    paths: ["/v1/users/{user}/messages/{id}"]\n'
assert s.count(anchor) == 1
limit = '    limits:\n      - { per: [agent, on_behalf_of], rate: "1000/s", burst: 1000000000000 }\n'
open(sys.argv[1], "w").write(s.replace(anchor, anchor + limit))
PY
taskset -c 1 redis-server --port 6391 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & PIDS+=($!)
wait_port 6391
serve() { # $1 port, rest: flags
  local port=$1; shift
  taskset -c 1 "$BIN/hallpass" serve --grpc-listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
    --decision-log "$OUT/decisions-$port.jsonl" --log-level warn "$@" & PIDS+=($!)
}
serve 9791 --policy config/policy.yaml
serve 9793 --policy "$OUT/limited.yaml"
serve 9795 --policy "$OUT/limited.yaml" --redis-url redis://127.0.0.1:6391
wait_port 9791; wait_port 9793; wait_port 9795

: > "$OUT/runs.jsonl"
for round in $(seq "${ROUNDS:-3}"); do
  for t in unlimited:9791 memory:9793 redis:9795; do
    taskset -c 0 "$BIN/loadgen" --addr "127.0.0.1:${t#*:}" --scenario get --concurrency 16 --duration "$DUR" --warmup 1 \
      --label "closed-${t%%:*}#$round" | tee -a "$OUT/runs.jsonl"
    taskset -c 0 "$BIN/loadgen" --addr "127.0.0.1:${t#*:}" --scenario get --rate "$RATE" --concurrency 16 --duration "$DUR" \
      --warmup 1 --label "rate-${t%%:*}#$round" | tee -a "$OUT/runs.jsonl"
  done
done
echo "redis keys after the run: $(redis-cli -p 6391 dbsize)"
echo "limited requests (must be 0): $(grep -c '"result":"limited"' "$OUT/decisions-9795.jsonl" || true)"
SCRIPT=$(sed -n '/^const TAKE: &str = r"$/,/^";$/p' src/state/redis.rs | sed '1d;$d')
echo "== redis-benchmark, 16 clients: the limit script (EVAL, one bucket) and GET"
taskset -c 0 redis-benchmark -p 6391 -c 16 -n 200000 --csv eval "$SCRIPT" 1 bench:limit 1000 1000000000000 1000 | tee "$OUT/redis-benchmark.csv"
taskset -c 0 redis-benchmark -p 6391 -c 16 -n 200000 --csv -t get | tee -a "$OUT/redis-benchmark.csv"
python3 - "$OUT/runs.jsonl" <<'PY'
import json, statistics, sys
med = statistics.median
by = {}
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l); label, rnd = r["label"].split("#"); by.setdefault(label, {})[rnd] = r
rounds = sorted(by["closed-unlimited"])
for kind in ("closed", "rate"):
    for q in (["rps"] if kind == "closed" else []) + ["p50_us", "p99_us"]:
        vals = {n: [by[f"{kind}-{n}"][k][q] for k in rounds] for n in ("unlimited", "memory", "redis")}
        print(f"{kind} {q}: " + "; ".join(f"{n} {med(v):.0f} ({', '.join(f'{x:.0f}' for x in v)})" for n, v in vals.items()))
errs = sum(r["errors"] + r["denied"] for v in by.values() for r in v.values())
print(f"{errs} errors or denies over all runs")
PY
