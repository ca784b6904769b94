#!/usr/bin/env bash
# Two hallpass binaries through Envoy, A/B, as users run them (cache and records on): Envoy
# (--concurrency 1) -> hallpass -> a Rust HTTP/1.1 upstream, everything server-side on CPU 1,
# the load generator on CPU 0, SCHED_IDLE spinners keeping both cores awake
# (docs/benchmarks.md). BIN_A and BIN_B (hallpass binaries, e.g. an older commit built with
# `cargo build --release` into another target dir) run side by side, each behind its own
# Envoy, with POLICY (default config/policy.yaml; older binaries may need a policy without
# newer keys) and the serve flags ARGS_A / ARGS_B (default: records to a file each); a third
# Envoy without ext_authz is the baseline, and a fourth points at a do-nothing ext_authz
# server (nullserver, answering allow at once) for performance.md target 6 (added latency
# ≤ 1.2× a do-nothing server's, records on). Rounds interleave the four.
# benches/records_envoy.sh runs this with one binary, records off (A) and on (B).
#   closed loop: 16 requests in flight, throughput (B / A)
#   fixed rate:  RATE (default 1000/s), latency added over Envoy alone
# Needs: target/release/hallpass, and loadgen + nullserver (benches/harness); .venv/bin/envoy.
#   ROUNDS (3), DUR (6 s), RATE (1000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-$ROOT/target/bench-results/ab-envoy}
BIN_A=${BIN_A:?set BIN_A and BIN_B to two hallpass binaries}; BIN_B=${BIN_B:?}
mkdir -p "$OUT"
DUR=${DUR:-6}; RATE=${RATE:-1000}
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; exit 1; }
for cpu in 0 1; do chrt -i 0 taskset -c "$cpu" sh -c 'while :; do :; done' & PIDS+=($!); done

taskset -c 1 "$BIN/nullserver" --http-listen 127.0.0.1:8481 2>/dev/null & PIDS+=($!)
rm -f "$OUT/decisions-a.jsonl" "$OUT/decisions-b.jsonl"
# shellcheck disable=SC2086 # ARGS_A/ARGS_B are flag lists
taskset -c 1 "$BIN_A" serve --policy "${POLICY:-config/policy.yaml}" --grpc-listen 127.0.0.1:9491 --admin-listen 127.0.0.1:9492 \
  ${ARGS_A:---decision-log $OUT/decisions-a.jsonl} --log-level warn & PIDS+=($!)
# shellcheck disable=SC2086
taskset -c 1 "$BIN_B" serve --policy "${POLICY:-config/policy.yaml}" --grpc-listen 127.0.0.1:9493 --admin-listen 127.0.0.1:9494 \
  ${ARGS_B:---decision-log $OUT/decisions-b.jsonl} --log-level warn & PIDS+=($!)
taskset -c 1 "$BIN/nullserver" --listen 127.0.0.1:9495 2>/dev/null & PIDS+=($!)
wait_port 8481; wait_port 9491; wait_port 9493; wait_port 9495

python3 -c 'import base64,json; print(json.dumps({"keys":[{"kty":"oct","alg":"HS256","kid":"x","k":base64.urlsafe_b64encode(b"bench-secret-bench-secret-bench!").rstrip(b"=").decode()}]}))' > "$OUT/jwks.json"
make_cfg() { # $1 name, $2 ext_authz port or none, $3 listener port
  sed -e "s#/etc/hallpass/jwks.json#$OUT/jwks.json#" -e "s/port_value: 9191/port_value: $2/" -e "s/port_value: 8081/port_value: 8481/" \
      -e "s/port_value: 8080/port_value: $3/" -e "s/port_value: 9901/port_value: $(( $3 + 1000 ))/" envoy/envoy.yaml > "$OUT/$1.yaml"
  if [ "$2" = none ]; then
    python3 - "$OUT/$1.yaml" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
start = s.index("                  - name: envoy.filters.http.ext_authz")
end = s.index("                  - name: envoy.filters.http.router")
s = (s[:start] + s[end:]).replace("port_value: none", "port_value: 9191")
open(p, "w").write(s)
PY
  fi
}
make_cfg none none 18480; make_cfg off 9491 18490; make_cfg on 9493 18500; make_cfg null 9495 18510
for n in none off on null; do
  port=$(grep -o "port_value: 18[0-9]*" "$OUT/$n.yaml" | head -1 | cut -d' ' -f2)
  taskset -c 1 .venv/bin/envoy -c "$OUT/$n.yaml" --concurrency 1 --disable-hot-restart --base-id $((RANDOM % 1000 + 1100)) -l error >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
done
# The request: a signed agent token, a ~1 KB JSON mail the body rule reads.
python3 - "$OUT/post.http" <<'PY'
import base64, hmac, hashlib, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "x"}).encode())
p = b(json.dumps({"iss": "https://idp.example.com", "aud": "hallpass-demo", "sub": "triage-bot", "act": {"sub": "alice"}, "exp": 4102444800}).encode())
jwt = f"{h}.{p}." + b(hmac.new(b"bench-secret-bench-secret-bench!", f"{h}.{p}".encode(), hashlib.sha256).digest())
body = ('{"to":["bob@example.com","carol@example.com"],"subject":"weekly report","body":"' + "lorem ipsum " * 70 + '"}').encode()
head = ("POST /v1/users/alice/messages/send HTTP/1.1\r\nhost: mail.example.com\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {jwt}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
open(sys.argv[1], "wb").write(head + body)
PY
: > "$OUT/runs.jsonl"
for round in $(seq "${ROUNDS:-3}"); do
  for n in none off on null; do
    port=$(grep -o "port_value: 18[0-9]*" "$OUT/$n.yaml" | head -1 | cut -d' ' -f2)
    taskset -c 0 "$BIN/loadgen" --http "127.0.0.1:$port" --request-file "$OUT/post.http" --concurrency 16 \
      --duration "$DUR" --warmup 1 --label "closed-$n#$round" | tee -a "$OUT/runs.jsonl"
    taskset -c 0 "$BIN/loadgen" --http "127.0.0.1:$port" --request-file "$OUT/post.http" --rate "$RATE" --concurrency 16 \
      --duration "$DUR" --warmup 1 --label "rate-$n#$round" | tee -a "$OUT/runs.jsonl"
  done
done
for x in a b; do [ -f "$OUT/decisions-$x.jsonl" ] && echo "records written by ${x^^}: $(wc -l < "$OUT/decisions-$x.jsonl")"; done
python3 - "$OUT/runs.jsonl" <<'PY'
import json, statistics, sys
med = statistics.median
by = {}
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l); label, rnd = r["label"].split("#"); by.setdefault(label, {})[rnd] = r
rounds = sorted(by["closed-on"])
f = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
rps = {n: [by[f"closed-{n}"][k]["rps"] for k in rounds] for n in ("none", "off", "on")}
ratio = [a / b for a, b in zip(rps["on"], rps["off"])]
print(f"closed loop, 16 in flight (requests/s per round): Envoy alone {rps['none']}, A {rps['off']}, B {rps['on']}")
print(f"  B / A: median {med(ratio):.2f}x ({f(ratio)})")
for q in ("p50_us", "p90_us", "p99_us"):
    alone = [by["rate-none"][k][q] for k in rounds]
    # "off" is A, "on" is B
    add = {n: [by[f"rate-{n}"][k][q] - a for k, a in zip(rounds, alone)] for n in ("off", "on", "null")}
    print(f"fixed rate {q[:-3]}: Envoy alone {med(alone):.0f} us; adds: "
          + "; ".join(f"{n} {med(v):+.0f} us ({', '.join(f'{x:+.0f}' for x in v)})" for n, v in add.items())
          + f"; A / null: {med(add['off']) / med(add['null']):.2f}x; B / null: {med(add['on']) / med(add['null']):.2f}x")
errs = sum(r["errors"] + r["denied"] for v in by.values() for r in v.values())
print(f"{errs} errors or non-2xx over all runs")
PY
