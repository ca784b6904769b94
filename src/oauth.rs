//! OAuth2 token custody (agent-controls.md §6): hallpass gets the upstream token from an
//! OAuth 2.0 token endpoint (`client_credentials`, or `refresh_token` from a mounted refresh
//! token) and keeps it fresh; the agent never sees it.
//!
//! One [`Slot`] per credential holds the token in force (read by a Check from memory, no I/O
//! while it is valid) and runs **at most one token request at a time**: the background task
//! starts one ahead of expiry (`refresh_before`, or at half the token's lifetime when that is
//! later); a Check that finds no valid token waits for the request in flight (or starts the
//! one request every other Check then waits for) — never its own. A failed request is retried
//! with backoff (0.5 s doubling to 5 s) while the current token stays in use until it
//! expires; after that, and during the backoff, a Check gets no token: `credential_unavailable`
//! (503). A rotated refresh token returned by the server replaces the one in use (the mounted
//! file is read again, and wins when an operator replaces it).
//!
//! Secrets (client secret, refresh and access tokens) are [`Secret`]s; error messages carry
//! the endpoint's status and its `error` code, never a body or a secret.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::credentials::{InFlight, Secret};
use crate::policy::model::OAuth2Def;

/// Longest a token request may take (connect included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a Check waits for the token request in flight.
/// Below the shipped Envoy's ext_authz timeout (250 ms), so a Check that waited in vain is
/// still answered by hallpass (503 `credential_unavailable`), not by Envoy's timeout.
pub const WAIT: Duration = Duration::from_millis(150);
/// Largest token response read.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// First retry delay after a failed token request; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A token's lifetime when the endpoint does not say (`expires_in` absent).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Default `refresh_before`.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// `application/x-www-form-urlencoded` (RFC 6749 appendix B): all but unreserved characters.
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The grant hallpass uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `client_credentials`: the client's own token.
    ClientCredentials,
    /// `refresh_token`, starting from the refresh token in `file`.
    RefreshToken {
        /// The mounted refresh token (absolute).
        file: PathBuf,
    },
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1, what every server supports).
    Basic,
    /// `client_secret_post`: id and secret in the form.
    Post,
}

/// A compiled `oauth2:` block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuth2 {
    /// The token endpoint.
    pub token_url: reqwest::Url,
    /// The grant.
    pub grant: Grant,
    /// The client id.
    pub client_id: Box<str>,
    /// The client secret's file (absolute); none for a public client (refresh_token only).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked for (none: the server's default).
    pub scopes: Vec<Box<str>>,
    /// How long before expiry the token is refreshed.
    pub refresh_before: Duration,
    /// Client authentication.
    pub client_auth: ClientAuth,
    /// Extra CA certificates (PEM) for the endpoint, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl OAuth2 {
    /// Whether a token obtained under `other` is one this configuration would obtain: same
    /// endpoint, grant (refresh token file), client, secret file and scopes (how early it is
    /// renewed, how the client authenticates, which CAs are trusted do not change it).
    pub fn same_token(&self, other: &OAuth2) -> bool {
        self.token_url == other.token_url
            && self.grant == other.grant
            && self.client_id == other.client_id
            && self.client_secret_file == other.client_secret_file
            && self.scopes == other.scopes
    }
}

fn absolute(at: &str, what: &str, f: &str) -> Result<PathBuf, String> {
    if std::path::Path::new(f).is_absolute() {
        Ok(PathBuf::from(f))
    } else {
        Err(format!("{at}: `{what}` `{f}` must be an absolute path (a mounted Secret)"))
    }
}

/// Whether `url` names a loopback address literally (`127.0.0.0/8`, `[::1]`).
fn loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Read an `oauth2:` block (`at` names it in messages).
pub fn compile(at: &str, d: &OAuth2Def) -> Result<OAuth2, String> {
    let token_url = reqwest::Url::parse(&d.token_url).map_err(|e| format!("{at}: `token_url` is not a URL ({e})"))?;
    match token_url.scheme() {
        "https" => {}
        "http" if loopback(&token_url) => {}
        "http" => {
            return Err(format!(
                "{at}: `token_url` must be https (plain http only to a loopback address such as 127.0.0.1)"
            ))
        }
        s => return Err(format!("{at}: `token_url` scheme `{s}` is not https")),
    }
    if !token_url.username().is_empty() || token_url.password().is_some() || token_url.fragment().is_some() {
        return Err(format!("{at}: `token_url` may not carry credentials or a fragment"));
    }
    let grant = match d.grant.as_str() {
        "client_credentials" => {
            if d.refresh_token_file.is_some() {
                return Err(format!("{at}: `refresh_token_file` is for `grant: refresh_token`"));
            }
            Grant::ClientCredentials
        }
        "refresh_token" => match &d.refresh_token_file {
            Some(f) => Grant::RefreshToken { file: absolute(at, "refresh_token_file", f)? },
            None => return Err(format!("{at}: `grant: refresh_token` needs `refresh_token_file`")),
        },
        g => return Err(format!("{at}: `grant` `{g}` is not client_credentials or refresh_token")),
    };
    if d.client_id.is_empty() || d.client_id.chars().any(|c| c.is_control()) {
        return Err(format!("{at}: `client_id` must be a non-empty string without control characters"));
    }
    let client_secret_file =
        d.client_secret_file.as_deref().map(|f| absolute(at, "client_secret_file", f)).transpose()?;
    if client_secret_file.is_none() && grant == Grant::ClientCredentials {
        return Err(format!("{at}: `grant: client_credentials` needs `client_secret_file`"));
    }
    let mut scopes = Vec::with_capacity(d.scopes.len());
    for s in &d.scopes {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if s.is_empty() || !s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)) {
            return Err(format!("{at}: scope `{s}` is not an OAuth scope token"));
        }
        scopes.push(Box::from(s.as_str()));
    }
    let refresh_before = match &d.refresh_before {
        Some(r) => crate::settings::parse_duration(&format!("{at}: `refresh_before`"), r)?,
        None => DEFAULT_REFRESH_BEFORE,
    };
    let client_auth = match d.client_auth.as_deref() {
        None | Some("basic") => ClientAuth::Basic,
        Some("post") => ClientAuth::Post,
        Some(o) => return Err(format!("{at}: `client_auth` `{o}` is not basic or post")),
    };
    let ca_file = d.ca_file.as_deref().map(|f| absolute(at, "ca_file", f)).transpose()?;
    Ok(OAuth2 {
        token_url,
        grant,
        client_id: Box::from(d.client_id.as_str()),
        client_secret_file,
        scopes,
        refresh_before,
        client_auth,
        ca_file,
    })
}

/// A token in force.
struct Issued {
    token: Secret,
    expires_at: Instant,
    refresh_at: Instant,
}

/// The token requests of one slot.
#[derive(Default)]
struct Attempts {
    /// A token request is in flight (at most one).
    refreshing: bool,
    /// No request before this (backoff after a failure).
    retry_at: Option<Instant>,
    /// Failures in a row.
    failures: u32,
    /// The refresh token the server rotated to, and the file's token when it did.
    rotated: Option<(Secret, Option<Secret>)>,
}

/// What a Check gets from a credential.
pub enum Lookup {
    /// A valid token.
    Ready(Secret),
    /// None now; a token request is in flight: wait for it, then look again.
    Wait(Waiter),
    /// None, and none coming soon.
    Missing,
}

/// Waits for a slot's token request in flight to end.
pub struct Waiter(tokio::sync::watch::Receiver<u64>);

impl Waiter {
    /// Until the request ends (or [`WAIT`]: a Check).
    pub async fn wait(self) {
        self.wait_at_most(WAIT).await;
    }

    /// Until the request ends, or `d` (startup waits for the whole request).
    pub async fn wait_at_most(mut self, d: Duration) {
        let _ = tokio::time::timeout(d, self.0.changed()).await;
    }
}

/// Called with (credential, result) after each token request: `ok` or `error`.
pub type Observer = Arc<dyn Fn(&str, &'static str) + Send + Sync>;

/// One OAuth2 credential's token and its single token request.
pub struct Slot {
    /// The credential's name.
    pub name: Arc<str>,
    /// Its configuration.
    pub def: Arc<OAuth2>,
    issued: ArcSwapOption<Issued>,
    attempts: Mutex<Attempts>,
    done: tokio::sync::watch::Sender<u64>,
    files: InFlight,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Ends a token request however its task ends (a panic included): the slot may start another,
/// and its waiters wake.
struct EndRequest {
    slot: Arc<Slot>,
    /// The request ran to its end (its outcome applied); if not (a panic), it counts as a
    /// failure, with backoff.
    completed: bool,
}

impl Drop for EndRequest {
    fn drop(&mut self) {
        {
            let mut a = self.slot.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            a.refreshing = false;
            if !self.completed {
                a.failures = a.failures.saturating_add(1);
                a.retry_at = Some(Instant::now() + backoff(a.failures));
            }
        }
        self.slot.done.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// What a successful token response gave.
struct Fetched {
    token: Secret,
    lifetime: Duration,
}

impl Slot {
    /// A slot without a token.
    pub fn new(name: Arc<str>, def: Arc<OAuth2>, observer: Option<Observer>) -> Slot {
        Slot {
            name,
            def,
            issued: ArcSwapOption::empty(),
            attempts: Mutex::new(Attempts::default()),
            done: tokio::sync::watch::channel(0).0,
            files: InFlight::default(),
            observer,
        }
    }

    /// Hold `token` for a long while (`hallpass test`'s placeholder).
    pub fn assume(&self, token: Secret) {
        let far = Instant::now() + Duration::from_secs(366 * 86_400);
        self.issued.store(Some(Arc::new(Issued { token, expires_at: far, refresh_at: far })));
    }

    /// The token, if it is still valid (from memory).
    pub fn token(&self) -> Option<Secret> {
        let issued = self.issued.load();
        let i = issued.as_ref()?;
        (Instant::now() < i.expires_at).then(|| i.token.clone())
    }

    /// The token, or a wait for the token request in flight (started now if none is and the
    /// backoff allows), or nothing.
    pub fn lookup(self: &Arc<Self>) -> Lookup {
        if let Some(t) = self.token() {
            return Lookup::Ready(t);
        }
        let a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        // Again under the lock: a request that just ended stored its token before it let go.
        if let Some(t) = self.token() {
            return Lookup::Ready(t);
        }
        match self.start_locked(a) {
            Some(w) => Lookup::Wait(w),
            None => Lookup::Missing,
        }
    }

    /// Whether the token should be refreshed now (none, or past its refresh time).
    pub fn due(&self) -> bool {
        self.issued.load().as_ref().is_none_or(|i| Instant::now() >= i.refresh_at)
    }

    /// Start the token request if it is due (see [`Slot::due`]), unless one is in flight
    /// (then join it) or the backoff forbids one (then `None`). Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>) -> Option<Waiter> {
        let a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.due() && !a.refreshing {
            return None;
        }
        self.start_locked(a)
    }

    /// Whether a token request is in flight.
    pub fn refreshing(&self) -> bool {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner).refreshing
    }

    /// The rotated refresh token, for a slot replacing this one with the same refresh chain.
    fn rotated(&self) -> Option<(Secret, Option<Secret>)> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner).rotated.clone()
    }

    /// A slot for `def` that continues this one's refresh chain (the rotated refresh token)
    /// when both use the same refresh token at the same endpoint for the same client, and
    /// keeps its token when `def` would obtain the same one.
    pub fn successor(&self, name: Arc<str>, def: Arc<OAuth2>, observer: Option<Observer>) -> Slot {
        let next = Slot::new(name, Arc::clone(&def), observer);
        if def.same_token(&self.def) {
            next.issued.store(self.issued.load_full());
        }
        let same_chain = matches!(def.grant, Grant::RefreshToken { .. })
            && def.grant == self.def.grant
            && def.token_url == self.def.token_url
            && def.client_id == self.def.client_id;
        if same_chain {
            next.attempts.lock().unwrap_or_else(PoisonError::into_inner).rotated = self.rotated();
        }
        next
    }

    fn start_locked(self: &Arc<Self>, mut a: std::sync::MutexGuard<'_, Attempts>) -> Option<Waiter> {
        if a.refreshing {
            return Some(Waiter(self.done.subscribe()));
        }
        if a.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        a.refreshing = true;
        let waiter = Waiter(self.done.subscribe());
        drop(a);
        let mut end = EndRequest { slot: Arc::clone(self), completed: false };
        runtime.spawn(async move {
            let slot = Arc::clone(&end.slot);
            slot.request().await;
            end.completed = true;
            drop(end);
        });
        Some(waiter)
    }

    /// One token request, its outcome applied.
    async fn request(&self) {
        let sent = Instant::now();
        // A safety net: file reads (1 s each) and the HTTP exchange (REQUEST_TIMEOUT) are
        // bounded themselves; this never cuts off an answer the server already gave.
        let result = match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err("the token request timed out".to_string()),
        };
        match result {
            Ok(f) => {
                let expires_at = sent + f.lifetime;
                let refresh_at =
                    (sent + f.lifetime / 2).max(expires_at.checked_sub(self.def.refresh_before).unwrap_or(sent));
                self.issued.store(Some(Arc::new(Issued { token: f.token, expires_at, refresh_at })));
                let recovered = {
                    let mut a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
                    let r = a.failures > 0;
                    a.failures = 0;
                    a.retry_at = None;
                    r
                };
                if recovered {
                    tracing::info!(credential = %self.name, expires_in_s = f.lifetime.as_secs(), "OAuth2 token obtained again");
                } else {
                    tracing::debug!(credential = %self.name, expires_in_s = f.lifetime.as_secs(), "OAuth2 token obtained");
                }
                self.observe("ok");
            }
            Err(msg) => {
                let delay = {
                    let mut a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
                    a.failures = a.failures.saturating_add(1);
                    let d = backoff(a.failures);
                    a.retry_at = Some(Instant::now() + d);
                    d
                };
                let valid = self.token().is_some();
                tracing::warn!(
                    credential = %self.name,
                    error = %msg,
                    retry_in_ms = delay.as_millis() as u64,
                    token_still_valid = valid,
                    "OAuth2 token request failed"
                );
                self.observe("error");
            }
        }
    }

    fn observe(&self, result: &'static str) {
        if let Some(o) = &self.observer {
            o(&self.name, result);
        }
    }

    /// The refresh token to use: the rotated one, unless the file changed since (an operator
    /// put a new one there) or there is none yet.
    fn refresh_token(&self, in_file: Option<Secret>) -> Option<(Secret, Option<Secret>)> {
        let a = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        // The file gone or emptied: no more tokens (as for a token file), rotated or not.
        let f = in_file?;
        match &a.rotated {
            Some((rt, Some(seen))) if *seen == f => Some((rt.clone(), Some(f))),
            _ => Some((f.clone(), Some(f))),
        }
    }

    /// Ask the token endpoint.
    async fn fetch(&self) -> Result<Fetched, String> {
        let def = Arc::clone(&self.def);
        let files = self.files.clone();
        let (secret, in_file, ca) = tokio::task::spawn_blocking(move || {
            let secret = def.client_secret_file.as_deref().map(|f| crate::credentials::read_with_timeout(f, &files));
            let in_file = match &def.grant {
                Grant::RefreshToken { file } => crate::credentials::read_with_timeout(file, &files),
                Grant::ClientCredentials => None,
            };
            let ca = def.ca_file.as_deref().map(|f| std::fs::read(f).map_err(|e| format!("`ca_file` unreadable: {e}")));
            (secret, in_file, ca)
        })
        .await
        .map_err(|_| "reading the credential's files failed".to_string())?;
        let secret = match secret {
            Some(Some(s)) => Some(s),
            Some(None) => return Err("the client secret file is missing, unreadable or empty".into()),
            None => None,
        };
        let mut form = String::new();
        let mut field = |k: &str, v: &str| {
            if !form.is_empty() {
                form.push('&');
            }
            form.push_str(k);
            form.push('=');
            form.extend(utf8_percent_encode(v, FORM));
        };
        let mut used_refresh = None;
        match &self.def.grant {
            Grant::ClientCredentials => field("grant_type", "client_credentials"),
            Grant::RefreshToken { .. } => {
                let Some((rt, seen)) = self.refresh_token(in_file) else {
                    return Err("the refresh token file is missing, unreadable or empty".into());
                };
                field("grant_type", "refresh_token");
                field("refresh_token", rt.expose());
                used_refresh = Some(seen);
            }
        }
        if !self.def.scopes.is_empty() {
            field("scope", &self.def.scopes.join(" "));
        }
        let basic = match (self.def.client_auth, &secret) {
            (ClientAuth::Basic, Some(s)) => Some((
                utf8_percent_encode(&self.def.client_id, FORM).to_string(),
                utf8_percent_encode(s.expose(), FORM).to_string(),
            )),
            (ClientAuth::Post, Some(s)) => {
                field("client_id", &self.def.client_id);
                field("client_secret", s.expose());
                None
            }
            (_, None) => {
                field("client_id", &self.def.client_id);
                None
            }
        };
        let client = http_client(REQUEST_TIMEOUT, ca.transpose()?.as_deref())?;
        let mut req = client
            .post(self.def.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form);
        if let Some((id, s)) = basic {
            req = req.basic_auth(id, Some(s));
        }
        let mut resp =
            req.send().await.map_err(|e| format!("the token endpoint could not be reached: {}", error_chain(e)))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) =
            resp.chunk().await.map_err(|e| format!("the token response broke off: {}", error_chain(e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err("the token response is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let code =
                json.as_ref().and_then(|j| j.get("error")).and_then(|e| e.as_str()).map(safe).unwrap_or_default();
            return Err(format!(
                "the token endpoint answered {}{}{code}",
                status.as_u16(),
                if code.is_empty() { "" } else { ": " }
            ));
        }
        let Some(serde_json::Value::Object(j)) = json else {
            return Err("the token response is not a JSON object".into());
        };
        // A rotated refresh token is kept first, whatever else is wrong with the answer: the
        // server has spent the one sent.
        if let (Some(seen), Some(rt)) = (used_refresh, j.get("refresh_token").and_then(|t| t.as_str())) {
            let Some(rt) = visible(rt) else {
                return Err("the token response's refresh_token is unusable".into());
            };
            self.attempts.lock().unwrap_or_else(PoisonError::into_inner).rotated = Some((rt, seen));
        }
        let token = j.get("access_token").and_then(|t| t.as_str()).and_then(b64token);
        let Some(token) = token else {
            return Err("the token response has no usable access_token".into());
        };
        match j.get("token_type").and_then(|t| t.as_str()) {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(t) => return Err(format!("the token_type `{}` is not Bearer", safe(t))),
            None => return Err("the token response has no token_type".into()),
        }
        let lifetime = match j.get("expires_in") {
            None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME,
            Some(v) => {
                let secs = v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
                match secs {
                    Some(s) if s > 0 => Duration::from_secs(s.min(366 * 86_400)),
                    _ => return Err("the token response's expires_in is not a positive number of seconds".into()),
                }
            }
        };
        Ok(Fetched { token, lifetime })
    }
}

/// hallpass's HTTP client (token endpoints, webhooks): TLS by rustls on ring with the
/// system's roots and `ca_pem`'s certificates, no redirects (a secret is never re-sent
/// elsewhere), each request bounded by `timeout`.
pub fn http_client(timeout: Duration, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    install_crypto();
    // No proxy from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY): a secret goes to
    // the configured endpoint and nowhere else.
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("hallpass/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|_| "`ca_file` holds no PEM certificates".to_string())?;
        if certs.is_empty() {
            return Err("`ca_file` holds no PEM certificates".into());
        }
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| format!("no HTTP client: {e}"))
}

/// Make rustls on ring the process's TLS provider (once; what every HTTP client of hallpass
/// uses). Needed before building a `reqwest::Client`.
pub fn install_crypto() {
    #[allow(
        deprecated,
        reason = "ring is the provider chosen (aws-lc-rs is a slow C build here); its post-quantum key exchange is what it lacks"
    )]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its causes, `: `-joined (a TLS failure says why); the URL left out.
pub fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// An access token as RFC 6750 §2.1 `b64token` (letters, digits, `-._~+/`, trailing `=`;
/// ≤ 16 KiB) as a [`Secret`]: nothing in it can change the header it is put into.
fn b64token(v: &str) -> Option<Secret> {
    let body = v.trim_end_matches('=');
    (!body.is_empty()
        && v.len() <= 16 * 1024
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')))
    .then(|| Secret::new(v))
}

/// A refresh token (visible ASCII, ≤ 16 KiB; it is only ever sent form-encoded) as a [`Secret`].
fn visible(v: &str) -> Option<Secret> {
    (!v.is_empty() && v.len() <= 16 * 1024 && v.bytes().all(|b| (0x21..0x7f).contains(&b))).then(|| Secret::new(v))
}

/// An endpoint's word, fit for a log line: letters, digits, `_.-` only, at most 64.
fn safe(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(64).collect()
}

/// The delay after `failures` failures in a row, ±20 % so replicas drift apart.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(failures);
    let jitter = 0.8 + (h.finish() % 401) as f64 / 1000.0;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    fn def(url: &str) -> OAuth2Def {
        OAuth2Def {
            token_url: url.into(),
            grant: "client_credentials".into(),
            client_id: "c".into(),
            client_secret_file: Some("/s".into()),
            refresh_token_file: None,
            scopes: vec!["crm.read".into()],
            refresh_before: None,
            client_auth: None,
            ca_file: None,
        }
    }

    /// A token endpoint on loopback answering each request after `delay` with a new token
    /// living `ttl` s (or `status` 503 when `fail` is set); counts requests.
    async fn endpoint(
        delay: Duration,
        ttl: u64,
    ) -> (reqwest::Url, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/token", l.local_addr().unwrap())).unwrap();
        let (count, fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (c, f) = (Arc::clone(&count), Arc::clone(&fail));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let failing = f.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let (status, body) = if failing {
                        ("503 Service Unavailable", r#"{"error":"temporarily_unavailable"}"#.to_string())
                    } else {
                        ("200 OK", format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{ttl}}}"#))
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (url, count, fail)
    }

    fn slot_for(url: reqwest::Url, secret: &std::path::Path) -> Arc<Slot> {
        let mut d = def(url.as_str());
        d.client_secret_file = Some(secret.to_str().unwrap().into());
        d.refresh_before = Some("0s".into());
        Arc::new(Slot::new(Arc::from("crm"), Arc::new(compile("x", &d).unwrap()), None))
    }

    fn secret_file(name: &str) -> std::path::PathBuf {
        let f = std::env::temp_dir().join(format!("hallpass-oauth-unit-{name}-{}", std::process::id()));
        std::fs::write(&f, "s3cret\n").unwrap();
        f
    }

    /// The single flight: 200 lookups with no token share one request (each waits for it and
    /// then finds its token); while the token is valid, no request at all; during a backoff,
    /// none either, and no wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_share_one_token_request() {
        use std::sync::atomic::Ordering;
        let (url, count, fail) = endpoint(Duration::from_millis(50), 60).await;
        let slot = slot_for(url, &secret_file("flight"));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let slot = Arc::clone(&slot);
            tasks.push(tokio::spawn(async move {
                match slot.lookup() {
                    Lookup::Ready(t) => Some(t),
                    Lookup::Wait(w) => {
                        w.wait().await;
                        slot.token()
                    }
                    Lookup::Missing => None,
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().as_ref().map(Secret::expose), Some("tok-1"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one token request for 200 lookups");
        for _ in 0..100 {
            assert!(matches!(slot.lookup(), Lookup::Ready(_)));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "none while the token is valid");

        // A failing endpoint: one request, then backoff — lookups neither wait nor ask.
        fail.store(true, Ordering::SeqCst);
        let slot = slot_for(endpoint_url(&slot), &secret_file("fail"));
        let before = count.load(Ordering::SeqCst);
        match slot.lookup() {
            Lookup::Wait(w) => w.wait().await,
            _ => panic!("the first lookup starts a request"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..50 {
            assert!(matches!(slot.lookup(), Lookup::Missing), "no token, backoff: no wait");
        }
        assert_eq!(count.load(Ordering::SeqCst), before + 1, "one request, then backoff");
    }

    fn endpoint_url(slot: &Slot) -> reqwest::Url {
        slot.def.token_url.clone()
    }

    #[test]
    fn token_urls_are_https_or_loopback() {
        for ok in
            ["https://idp.example.com/token", "http://127.0.0.1:8080/token", "http://[::1]/t", "http://127.9.9.9/t"]
        {
            assert!(compile("x", &def(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com/token",
            "http://localhost/token",
            "http://10.0.0.1/t",
            "ftp://127.0.0.1/t",
            "https://u:p@idp/t",
            "https://idp/t#f",
            "not a url",
        ] {
            assert!(compile("x", &def(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_need_their_files() {
        let mut d = def("https://i/t");
        d.client_secret_file = None;
        assert!(compile("x", &d).unwrap_err().contains("client_secret_file"));
        d.grant = "refresh_token".into();
        assert!(compile("x", &d).unwrap_err().contains("refresh_token_file"));
        d.refresh_token_file = Some("/rt".into());
        assert!(compile("x", &d).is_ok(), "a public client may refresh without a secret");
        d.refresh_token_file = Some("rt".into());
        assert!(compile("x", &d).unwrap_err().contains("absolute"));
        d.grant = "password".into();
        assert!(compile("x", &d).is_err());
        let mut d = def("https://i/t");
        d.scopes = vec!["a b".into()];
        assert!(compile("x", &d).is_err());
        d.scopes = vec![];
        d.client_auth = Some("jwt".into());
        assert!(compile("x", &d).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        for (n, lo, hi) in
            [(1, 400, 600), (2, 800, 1200), (3, 1600, 2400), (4, 3200, 4800), (9, 4000, 6000), (40, 4000, 6000)]
        {
            let d = backoff(n).as_millis();
            assert!((lo..=hi).contains(&d), "{n}: {d}");
        }
    }

    #[test]
    fn access_tokens_are_b64tokens() {
        for ok in ["abc.def-ghi", "eyJhbGciOi.eyJzdWIi.sig_-", "a+b/c==", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"] {
            assert!(b64token(ok).is_some(), "{ok}");
        }
        for bad in ["", "=", " a", "a b", "a;b", "a,b", "a\"b", "a\r\nb", "ü", "a\u{7f}", "a=b"] {
            assert!(b64token(bad).is_none(), "{bad:?}");
        }
        assert!(visible("r3fr3sh~!").is_some() && visible("a b").is_none() && visible("").is_none());
    }
}
