//! Shared test helpers: servers on port 0 (in-process and `hallpass serve`), external tools,
//! the real OAuth server, a test CA. (The corpus format is the library's: src/policy_test.rs.)
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

/// An external tool on PATH. Missing: a skip message, unless HALLPASS_REQUIRE_TOOLS=1 (set
/// by scripts/test.sh, which installs the tools), where it is a failure.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var("HALLPASS_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "`{name}` is required (HALLPASS_REQUIRE_TOOLS=1) but not on PATH"
        );
        eprintln!("SKIPPED: `{name}` not on PATH (scripts/test.sh installs it)");
    }
    found
}

/// A `hallpass serve` child listening on port 0: both addresses are read from its
/// `hallpass serving` log line (JSON logs on stderr), so no test races another for a port.
/// Its stderr is kept for assertions.
pub struct Served {
    pub child: std::process::Child,
    pub grpc: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    /// The control API, when `--control-listen` was given.
    pub control: Option<std::net::SocketAddr>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Start `hallpass serve` with `args` (not the listen flags) on port 0, and wait (15 s at
    /// most) for it to log the addresses it bound.
    pub fn start(args: &[&str]) -> Served {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hallpass"))
            .arg("serve")
            .args(args)
            .args(["--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = std::sync::Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "hallpass serving" {
                        let addr = |k: &str| v[k].as_str().and_then(|a| a.parse::<std::net::SocketAddr>().ok());
                        let _ = tx.send((addr("grpc_listen"), addr("admin_listen"), addr("control_listen")));
                    }
                }
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (grpc, admin, control) = match rx.recv_timeout(std::time::Duration::from_secs(15)) {
            Ok((Some(g), Some(a), c)) => (g, a, c),
            other => {
                let _ = child.kill();
                panic!("hallpass serve did not log its addresses ({other:?}): {}", log.lock().unwrap());
            }
        };
        Served { child, grpc, admin, control, log, reader: Some(reader) }
    }

    /// Everything it logged so far (all of it, once it has exited).
    pub fn log(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_some() {
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
        self.log.lock().unwrap().clone()
    }

    /// Send a signal (`TERM`, `HUP`, …) with `kill`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a Check on the in-memory state store (it never waits).
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}

/// A fresh test directory `hallpass-<name>-<pid>` with an approvers file naming `ops` with
/// `token`.
pub fn approvers_dir(name: &str, token: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hallpass-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("approvers.yaml"), format!("- name: ops\n  token_sha256: {}\n", sha256_hex(token)))
        .unwrap();
    dir
}

/// SHA-256 in hex (approvers files list token digests).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole server in process on port 0 (gRPC, admin, control), the policy `dir/policy.yaml`,
/// the memory store persisted in `dir/state`, decision records to `decision_log` (or off).
pub struct InProcess {
    pub grpc: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub control: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), hallpass::app::ServeError>>,
}

impl InProcess {
    pub async fn start(dir: &std::path::Path, decision_log: Option<&std::path::Path>) -> InProcess {
        use hallpass::settings::{Overrides, ServerSettings};
        let settings = ServerSettings::resolve(Overrides {
            policy: Some(dir.join("policy.yaml")),
            grpc_listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            control_listen: Some("127.0.0.1:0".into()),
            drain_delay: Some("0s".into()),
            decision_log: Some(decision_log.map_or_else(|| "off".to_string(), |p| p.display().to_string())),
            state_dir: Some(dir.join("state")),
            ..Overrides::default()
        })
        .unwrap();
        let metrics = hallpass::telemetry::Metrics::new().unwrap();
        let store =
            std::sync::Arc::new(hallpass::reload::PolicyStore::open(&settings.policy, Some(metrics.clone())).unwrap());
        let bound = hallpass::app::bind(&settings).await.unwrap();
        let (grpc, admin, control) =
            (bound.grpc_addr().unwrap(), bound.admin_addr().unwrap(), bound.control_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hallpass::app::run(settings, bound, store, metrics, async move {
            let _ = stopped.await;
        }));
        InProcess { grpc, admin, control, stop, task }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    /// A control API call with bearer `token`: the status and the JSON answer.
    pub async fn api(
        &self,
        token: &str,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (addr, token, path, body) = (self.control, token.to_string(), path.to_string(), body.map(str::to_string));
        let (status, text) = tokio::task::spawn_blocking(move || {
            hallpass::control::client::call(&format!("http://{addr}"), &token, method, &path, body.as_deref())
        })
        .await
        .unwrap()
        .unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }
}

/// The real OAuth 2.0 server of the credential tests: `tests/oauth/server.mjs` (npm
/// `oidc-provider`) on loopback, its clients' secrets and token lifetime from `env`. `None`
/// (skipped) without `node` or its `npm ci`, unless HALLPASS_REQUIRE_TOOLS=1.
#[allow(dead_code, reason = "not every test crate uses every helper")]
pub struct OAuthServer {
    child: std::process::Child,
    script: &'static str,
    env: Vec<(String, String)>,
    /// Its port (kept across a restart).
    pub port: u16,
    /// `http(s)://127.0.0.1:port`.
    pub issuer: String,
}

#[allow(dead_code, reason = "not every test crate uses every helper")]
impl OAuthServer {
    pub fn start(env: &[(&str, &str)]) -> Option<OAuthServer> {
        Self::start_script("server.mjs", env)
    }

    /// Another script of tests/oauth (`receiver.mjs`: an https webhook receiver).
    pub fn start_script(script: &'static str, env: &[(&str, &str)]) -> Option<OAuthServer> {
        tool("node")?;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth");
        if !std::path::Path::new(dir).join("node_modules/oidc-provider").is_dir() {
            assert!(std::env::var("HALLPASS_REQUIRE_TOOLS").as_deref() != Ok("1"), "npm ci in tests/oauth first");
            eprintln!("SKIPPED: tests/oauth has no node_modules (scripts/test.sh installs them)");
            return None;
        }
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (child, port, issuer) = Self::spawn(script, &env, 0);
        Some(OAuthServer { child, script, env, port, issuer })
    }

    fn spawn(script: &str, env: &[(String, String)], port: u16) -> (std::process::Child, u16, String) {
        use std::io::BufRead;
        let mut child = std::process::Command::new("node")
            .arg(script)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(Ok(line)) = out.next() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let (Some(p), Some(i)) = (v["port"].as_u64(), v["issuer"].as_str()) {
                    // The rest of its output is drained (a closed pipe would end the server).
                    std::thread::spawn(move || out.for_each(|l| eprintln!("oauth server: {}", l.unwrap_or_default())));
                    return (child, p as u16, i.to_string());
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the OAuth server did not start");
    }

    /// Stop it (the endpoint is down: connections refused).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port (a fresh server: clients as configured, no tokens).
    pub fn restart(&mut self) {
        self.stop();
        let t = std::time::Instant::now();
        loop {
            // The port may still be held for a moment.
            let (env, port, script) = (self.env.clone(), self.port, self.script);
            match std::panic::catch_unwind(move || Self::spawn(script, &env, port)) {
                Ok((child, _, _)) => {
                    self.child = child;
                    return;
                }
                Err(_) if t.elapsed() < std::time::Duration::from_secs(5) => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    fn client() -> reqwest::Client {
        hallpass::oauth::install_crypto();
        reqwest::Client::builder().build().unwrap()
    }

    /// Token requests counted at the server: `{token_requests, by_grant, by_status}`.
    pub async fn stats(&self) -> serde_json::Value {
        let r = Self::client().get(format!("{}/_test/stats", self.issuer)).send().await.unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    /// Delay every token response by `ms`.
    pub async fn delay(&self, ms: u64) {
        let r = Self::client().post(format!("{}/_test/delay?ms={ms}", self.issuer)).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// What the server says of `token` (RFC 7662 introspection), asked as `client`.
    pub async fn introspect(&self, client: &str, secret: &str, token: &str) -> serde_json::Value {
        let r = Self::client()
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    /// A raw token request (form `body`) as `client`: status and JSON.
    pub async fn token(&self, client: &str, secret: &str, body: &str) -> (u16, serde_json::Value) {
        let r = Self::client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{status} {e}: {}", String::from_utf8_lossy(&body))),
        )
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.1 GET (admin endpoints): the whole response, status line included.
#[allow(dead_code, reason = "not every test crate uses every helper")]
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with `openssl` in
/// `dir`: (ca.pem, server.pem, server-key.pem). `None` (skipped) without `openssl`.
#[allow(dead_code, reason = "not every test crate uses every helper")]
pub fn test_ca(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    tool("openssl")?;
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = ["-days", "2", "-subj", "/CN=hallpass test CA", "-keyout", "ca-key.pem", "-out", "ca.pem"];
    openssl(&[&["req", "-x509"][..], &ec, &ca].concat());
    openssl(
        &[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem", "-out", "server.csr"]].concat(),
    );
    // A CA certificate is never accepted as a server's own: a leaf with CA:FALSE.
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    Some((dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem")))
}
