#!/usr/bin/env bash
# RSS soak (performance.md target 4): hallpass with a 1000-rule policy and a full decision
# cache under a fixed load for SOAK_SECS (default 600), the policy rewritten every
# SOAK_RELOAD_EVERY seconds (default 30, a multiple of 10) so reloads run too. Samples RSS and cache entries every 10 s into $OUT/soak.csv and prints
# a summary: RSS must stay flat (no growth after the cache has filled).
#   benches/soak.sh                  (benches/run.sh builds the binaries; SOAK=1 runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench-results}
SECS=${SOAK_SECS:-600}
RATE=${SOAK_RATE:-5000}
EVERY=${SOAK_RELOAD_EVERY:-30}
BIN=${BIN:-$ROOT/target/release}
mkdir -p "$OUT/soak"
[ -x "$BIN/hallpass" ] && [ -x "$BIN/loadgen" ] || { echo "build first: benches/run.sh builds $BIN/hallpass and loadgen"; exit 1; }

policy() { # $1 = reload counter, written as a comment (a new revision each time)
  python3 - "$OUT/soak/policy.yaml.tmp" "$1" <<'PY'
import sys
rules = [f"# soak revision {sys.argv[2]}", "version: 1", "rules:"]
for i in range(1000):
    rules.append(f"  - {{ id: r{i}, effect: {'deny' if i % 10 == 0 else 'allow'}, methods: [POST], paths: [\"/svc{i}/{{id}}/**\"], body: {{ field: /amount, lte: {i * 10} }} }}")
open(sys.argv[1], "w").write("\n".join(rules) + "\n")
PY
  mv "$OUT/soak/policy.yaml.tmp" "$OUT/soak/policy.yaml"
}
policy 0
taskset -c 1 "$BIN/hallpass" serve --policy "$OUT/soak/policy.yaml" --grpc-listen 127.0.0.1:9491 --admin-listen 127.0.0.1:9492 \
  --cache-max-entries 10000 --cache-ttl 60s --decision-log /dev/null --log-level warn &  # records on (formatted and written; to /dev/null: 10 minutes would be GBs)
HP=$!
LG=""
trap 'kill $HP $LG 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9491) 2>/dev/null && break; sleep 0.1; done

taskset -c 0 "$BIN/loadgen" --addr 127.0.0.1:9491 --scenario svc --distinct 20000 --rate "$RATE" --duration "$SECS" --warmup 0 --label soak > "$OUT/soak/loadgen.json" &
LG=$!
echo "t_s,rss_kib,cache_entries,reloads_ok" > "$OUT/soak.csv"
t=0; n=0
while [ "$t" -lt "$SECS" ]; do
  sleep 10; t=$((t + 10))
  if [ $((t % EVERY)) = 0 ]; then n=$((n + 1)); policy "$n"; fi
  m=$(curl -s 127.0.0.1:9492/metrics)
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$HP/status)
  entries=$(echo "$m" | awk '/^hallpass_cache_entries / {print $2}')
  reloads=$(echo "$m" | awk '/^hallpass_policy_reloads_total\{result="success"\}/ {print $2}')
  echo "$t,$rss,$entries,${reloads:-0}" | tee -a "$OUT/soak.csv"
done
wait "$LG" || true
LG=""
cat "$OUT/soak/loadgen.json"
python3 - "$OUT/soak.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
rss = [int(r["rss_kib"]) / 1024 for r in rows]
after = [float(r["rss_kib"]) / 1024 for r in rows if int(r["t_s"]) >= 60] or rss
print(f"soak: {rows[-1]['t_s']} s, RSS min {min(rss):.1f} / max {max(rss):.1f} MiB; after the first minute "
      f"{after[0]:.1f} -> {after[-1]:.1f} MiB (max {max(after):.1f}); cache {rows[-1]['cache_entries']} entries; "
      f"{rows[-1]['reloads_ok']} reloads")
PY
