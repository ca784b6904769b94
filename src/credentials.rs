//! Credential custody (agent-controls.md §6): the agent never holds the upstream token. A
//! policy names credentials; an allow rule with `credential:` has hallpass tell Envoy to set
//! the credential's header (default `authorization: Bearer {token}`) on the upstream request,
//! overwriting whatever the agent sent, and to remove the rule's `strip_headers`.
//!
//! A token comes from a file (a mounted Kubernetes Secret) or from an OAuth2 token endpoint
//! ([`crate::oauth`]). Files are re-read every [`REFRESH`] by one background task, so a
//! rewritten file (a ConfigMap/Secret `..data` swap included) is in force within a second; a
//! Check reads the token from memory. A file that is missing, unreadable or empty, or an
//! OAuth2 credential whose token expired and could not be renewed, leaves the credential
//! without a token: its requests are denied with `credential_unavailable` (HTTP 503).
//!
//! A token lives in a [`Secret`], which prints as `Secret(…)` and has no `Display` or
//! `Serialize`: it can reach Envoy's answer and nothing else (records, logs, metrics,
//! metadata, deny bodies, `/policy`, `hallpass check`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::oauth::{Lookup, OAuth2, Observer, Slot, Waiter};
use crate::policy::model::CredentialDef;

/// How often token files are re-read.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Largest token file read.
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Longest a token file read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Headers a credential rule removes besides its own `strip_headers`: other places an agent's
/// own credential travels (the credential's header itself is overwritten; `authorization` is
/// removed when the credential sets another header).
pub const DEFAULT_STRIP: [&str; 10] = [
    "authorization",
    "cookie",
    "cookie2",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-apikey",
    "x-auth-token",
    "x-access-token",
    "x-forwarded-authorization",
];

/// Query parameters that carry credentials: a request to a credential rule carrying one is
/// denied (Envoy cannot remove a query parameter, and the upstream may prefer it).
pub const CREDENTIAL_PARAMS: [&str; 5] = ["access_token", "api_key", "apikey", "auth_token", "key"];

/// Files whose read has not returned yet (a stuck mount): not read again until it does.
pub(crate) type InFlight = Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>;

/// [`read_token`] on a thread of its own, abandoned after [`READ_TIMEOUT`]. A file whose
/// earlier read is still stuck is not read again (one stuck thread per file at most): no
/// token meanwhile.
pub(crate) fn read_with_timeout(file: &Path, in_flight: &InFlight) -> Option<Secret> {
    {
        let mut busy = in_flight.lock().ok()?;
        if !busy.insert(file.to_path_buf()) {
            return None;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (f, busy) = (file.to_path_buf(), Arc::clone(in_flight));
    let spawned = std::thread::Builder::new().name("hallpass-token-read".into()).spawn(move || {
        let token = read_token(&f);
        // Done before the answer is sent: a read right after this one is never refused.
        if let Ok(mut b) = busy.lock() {
            b.remove(&f);
        }
        let _ = tx.send(token);
    });
    if spawned.is_err() {
        if let Ok(mut b) = in_flight.lock() {
            b.remove(file);
        }
        return None;
    }
    rx.recv_timeout(READ_TIMEOUT).ok().flatten()
}

/// A secret value: never printed, logged or serialized by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a value.
    pub fn new(v: &str) -> Secret {
        Secret(Arc::from(v))
    }

    /// The value, for the one place it goes: Envoy's answer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Where a credential's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A token file (absolute).
    File(PathBuf),
    /// An OAuth2 token endpoint.
    OAuth2(Arc<crate::oauth::OAuth2>),
}

/// A compiled credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its name in the policy.
    pub name: Arc<str>,
    /// Where the token comes from.
    pub source: Source,
    /// The header set on allow (lowercase).
    pub header: Box<str>,
    /// The header's value with `{token}` in it.
    pub format: Box<str>,
    /// The `upstream` the route Envoy selected must name (route metadata `hallpass`), if set.
    pub route: Option<Box<str>>,
}

impl Credential {
    /// The header value for `token`.
    pub fn value(&self, token: &Secret) -> String {
        self.format.replace("{token}", token.expose())
    }
}

/// Read `credentials:`: the valid ones, and messages naming what is wrong with the others
/// (so a rule naming a valid credential is not also reported as naming an undefined one).
pub fn compile(defs: &BTreeMap<String, CredentialDef>) -> (Vec<Credential>, Vec<String>) {
    let mut out = Vec::with_capacity(defs.len());
    let mut msgs = Vec::new();
    for (name, d) in defs {
        let at = format!("`credentials.{name}`");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            msgs.push(format!("{at}: a credential name may only use letters, digits, `.`, `_` and `-`"));
            continue;
        }
        let source = match (&d.file, &d.oauth2) {
            (Some(_), Some(_)) => {
                msgs.push(format!("{at}: give `file:` or `oauth2:`, not both"));
                continue;
            }
            (None, None) => {
                msgs.push(format!("{at}: give `file:` (a mounted token file) or `oauth2:` (a token endpoint)"));
                continue;
            }
            (Some(file), None) if !Path::new(file).is_absolute() => {
                msgs.push(format!("{at}: `file` `{file}` must be an absolute path (a mounted Secret)"));
                continue;
            }
            (Some(file), None) => Source::File(PathBuf::from(file)),
            (None, Some(o)) => match crate::oauth::compile(&at, o) {
                Ok(o) => Source::OAuth2(Arc::new(o)),
                Err(m) => {
                    msgs.push(m);
                    continue;
                }
            },
        };
        let header = d.header.as_deref().unwrap_or("authorization");
        if !crate::policy::compile::valid_header_name(header) || header.starts_with(':') {
            msgs.push(format!("{at}: `header` `{header}` is not a lowercase HTTP header name"));
            continue;
        }
        if matches!(header, "host" | "content-length" | "transfer-encoding" | "connection" | "te" | "upgrade")
            || header.starts_with("x-envoy-")
            || header.starts_with("x-hallpass-")
        {
            msgs.push(format!("{at}: `header` may not be `{header}`"));
            continue;
        }
        let format = d.format.as_deref().unwrap_or("Bearer {token}");
        if format.matches("{token}").count() != 1
            || format.chars().any(|c| c.is_control() || !c.is_ascii())
            || format.trim() != format
        {
            msgs.push(format!("{at}: `format` must contain `{{token}}` once and no control characters"));
            continue;
        }
        if let Some(r) = &d.route {
            if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                msgs.push(format!("{at}: `route` may only use letters, digits, `.`, `_` and `-`"));
                continue;
            }
        }
        out.push(Credential {
            name: Arc::from(name.as_str()),
            source,
            header: Box::from(header),
            format: Box::from(format),
            route: d.route.as_deref().map(Box::from),
        });
    }
    // One consumer per refresh token: two credentials rotating the same one would spend it
    // twice (the server then refuses both, and may revoke the grant).
    let mut seen = std::collections::HashSet::new();
    for c in &out {
        if let Source::OAuth2(o) = &c.source {
            if let crate::oauth::Grant::RefreshToken { file } = &o.grant {
                if !seen.insert(file.clone()) {
                    msgs.push(format!(
                        "`credentials.{}`: `refresh_token_file` `{}` is used by another credential too (one credential per refresh token)",
                        c.name,
                        file.display()
                    ));
                }
            }
        }
    }
    (out, msgs)
}

/// The token in a file: its first line, trimmed; `None` when missing, unreadable, too large,
/// not UTF-8, empty, or holding characters a header value cannot carry.
pub fn read_token(file: &Path) -> Option<Secret> {
    use std::io::Read;
    // A regular file only (a FIFO or device would block the reader).
    if !std::fs::metadata(file).ok()?.is_file() {
        return None;
    }
    let f = std::fs::File::open(file).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return None;
    }
    let text = std::str::from_utf8(&bytes).ok()?;
    let line = text.lines().next()?.trim();
    if line.is_empty() || line.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return None;
    }
    Some(Secret::new(line))
}

/// OAuth2 slots by credential name, with the configuration each serves.
type Slots = HashMap<Arc<str>, (Arc<OAuth2>, Arc<Slot>)>;

/// The tokens in force: by file, and by OAuth2 credential; read off the Check path.
#[derive(Default)]
pub struct Tokens {
    by_file: ArcSwap<HashMap<PathBuf, Option<Secret>>>,
    in_flight: InFlight,
    /// OAuth2 credentials by name: the configuration of the live policy (the `Arc` it holds,
    /// so a Check compares pointers) and its slot. Replaced only by [`Tokens::refresh_oauth`]
    /// (the background task), never by a Check.
    oauth: ArcSwap<Slots>,
    /// Serializes adding slots (rare: a credential's first use).
    adding: std::sync::Mutex<()>,
    observer: std::sync::OnceLock<Observer>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// An empty set.
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// Be told of each OAuth2 token request's result (metrics); once, before use.
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Give every credential in `credentials` a placeholder token (`hallpass test`: a policy's
    /// decisions, not its upstream's tokens, are under test).
    pub fn assume_all(&self, credentials: &[Credential]) {
        let placeholder = Secret::new("hallpass-test-token");
        let mut files = (**self.by_file.load()).clone();
        for c in credentials {
            match &c.source {
                Source::File(f) => {
                    files.insert(f.clone(), Some(placeholder.clone()));
                }
                Source::OAuth2(def) => {
                    if let Some(s) = self.slot(&c.name, def) {
                        s.assume(placeholder.clone());
                    }
                }
            }
        }
        self.by_file.store(Arc::new(files));
    }

    /// The token of `file`, from memory (no I/O on a Check). A file not read yet (a
    /// credential a reload just added, until the next refresh) has none: denied.
    pub fn token(&self, file: &Path) -> Option<Secret> {
        self.by_file.load().get(file).cloned().flatten()
    }

    /// The token of credential `c` from memory, or (OAuth2, no valid token) a wait for the one
    /// token request in flight.
    pub fn lookup(&self, c: &Credential) -> Lookup {
        match &c.source {
            Source::File(f) => self.token(f).map_or(Lookup::Missing, Lookup::Ready),
            Source::OAuth2(def) => self.slot(&c.name, def).map_or(Lookup::Missing, |s| s.lookup()),
        }
    }

    /// The token of credential `c` from memory, if there is a valid one (never waits).
    pub fn current(&self, c: &Credential) -> Option<Secret> {
        match &c.source {
            Source::File(f) => self.token(f),
            Source::OAuth2(def) => self.slot(&c.name, def)?.token(),
        }
    }

    /// The slot of OAuth2 credential `name` for configuration `def` (a Check's view). Added if
    /// there is none by that name (a credential's first use); while the slot holds another
    /// configuration (a reload changed it: the background task replaces it within
    /// [`REFRESH`], carrying over what may be carried), it serves only if its tokens are the
    /// ones `def` would get, else `None` — a Check never replaces a slot.
    fn slot(&self, name: &Arc<str>, def: &Arc<OAuth2>) -> Option<Arc<Slot>> {
        let map = self.oauth.load();
        if let Some((d, s)) = map.get(name) {
            return (Arc::ptr_eq(d, def) || d.same_token(def)).then(|| Arc::clone(s));
        }
        drop(map);
        let _one = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cur = self.oauth.load_full();
        if let Some((d, s)) = cur.get(name) {
            return d.same_token(def).then(|| Arc::clone(s));
        }
        let slot = Arc::new(Slot::new(Arc::clone(name), Arc::clone(def), self.observer.get().cloned()));
        let mut next = (*cur).clone();
        next.insert(Arc::clone(name), (Arc::clone(def), Arc::clone(&slot)));
        self.oauth.store(Arc::new(next));
        Some(slot)
    }

    /// Bring the slots in line with `credentials` (the live policy's): add new ones, replace
    /// those whose configuration changed (once no request of theirs is in flight; the
    /// rotated refresh token carried over when the refresh chain is the same), forget the
    /// others; then start the token requests due. The waiters of the requests started.
    pub fn refresh_oauth(&self, credentials: &[Credential]) -> Vec<Waiter> {
        let cur = self.oauth.load_full();
        let mut next = HashMap::with_capacity(cur.len());
        for c in credentials {
            let Source::OAuth2(def) = &c.source else { continue };
            let entry = match cur.get(&c.name) {
                Some((d, s)) if Arc::ptr_eq(d, def) => (Arc::clone(d), Arc::clone(s)),
                // The same configuration in a reloaded policy: its Arc, so Checks compare pointers.
                Some((d, s)) if **d == **def => (Arc::clone(def), Arc::clone(s)),
                // Changed while a request of the old one is in flight: after it ends.
                Some((d, s)) if s.refreshing() => (Arc::clone(d), Arc::clone(s)),
                Some((_, s)) => {
                    let observer = self.observer.get().cloned();
                    (Arc::clone(def), Arc::new(s.successor(Arc::clone(&c.name), Arc::clone(def), observer)))
                }
                None => {
                    let slot = Slot::new(Arc::clone(&c.name), Arc::clone(def), self.observer.get().cloned());
                    (Arc::clone(def), Arc::new(slot))
                }
            };
            next.insert(Arc::clone(&c.name), entry);
        }
        let changed = next.len() != cur.len()
            || next
                .iter()
                .any(|(k, (d, s))| cur.get(k).is_none_or(|(d0, s0)| !Arc::ptr_eq(d, d0) || !Arc::ptr_eq(s, s0)));
        if changed {
            let _one = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.oauth.store(Arc::new(next.clone()));
        }
        next.values().filter_map(|(_, s)| s.start()).collect()
    }

    /// Re-read every file in `files` (and forget the others), each within [`READ_TIMEOUT`]:
    /// a file that does not answer in time has no token (a stuck mount never keeps a revoked
    /// token in force).
    pub fn refresh<'a>(&self, files: impl Iterator<Item = &'a Path>) {
        let mut next = HashMap::new();
        for f in files {
            next.insert(f.to_path_buf(), read_with_timeout(f, &self.in_flight));
        }
        let changed = {
            let cur = self.by_file.load();
            cur.len() != next.len() || next.iter().any(|(k, v)| cur.get(k) != Some(v))
        };
        if changed {
            for (f, t) in &next {
                if t.is_none() {
                    tracing::warn!(file = %f.display(), "credential file missing, unreadable or empty: its requests are denied (credential_unavailable)");
                }
            }
            self.by_file.store(Arc::new(next));
        }
    }

    /// Read the token files of `credentials` and get their OAuth2 tokens (waiting for the
    /// token requests, each bounded in time): before serving.
    pub async fn prime(self: &Arc<Self>, credentials: Vec<Credential>) {
        let waiters = self.refresh_oauth(&credentials);
        let me = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || me.refresh(files(&credentials))).await;
        for w in waiters {
            w.wait_at_most(crate::oauth::REQUEST_TIMEOUT + std::time::Duration::from_secs(1)).await;
        }
    }

    /// Keep the tokens of the live policy fresh until `stop` resolves: token files re-read,
    /// OAuth2 tokens requested ahead of expiry (and retried after failures).
    pub async fn run(
        self: Arc<Self>,
        policy: crate::reload::PolicyHandle,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let live = policy.load_full();
                    let _ = self.refresh_oauth(&live.policy.credentials);
                    let me = Arc::clone(&self);
                    // File reads off the async runtime.
                    let _ = tokio::task::spawn_blocking(move || {
                        me.refresh(files(&live.policy.credentials));
                    })
                    .await;
                }
            }
        }
    }
}

/// The token files of `credentials`.
fn files(credentials: &[Credential]) -> impl Iterator<Item = &Path> {
    credentials.iter().filter_map(|c| match &c.source {
        Source::File(f) => Some(f.as_path()),
        Source::OAuth2(_) => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(…)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(…))");
        assert_eq!(s.expose(), "hunter2");
    }

    fn oauth_credential(scope: &str) -> Credential {
        let d = crate::policy::model::OAuth2Def {
            token_url: "https://idp.example.com/token".into(),
            grant: "client_credentials".into(),
            client_id: "c".into(),
            client_secret_file: Some("/s".into()),
            refresh_token_file: None,
            scopes: vec![scope.into()],
            refresh_before: None,
            client_auth: None,
            ca_file: None,
        };
        Credential {
            name: Arc::from("crm"),
            source: Source::OAuth2(Arc::new(crate::oauth::compile("x", &d).unwrap())),
            header: Box::from("authorization"),
            format: Box::from("Bearer {token}"),
            route: None,
        }
    }

    /// A reload that changes a credential's configuration: Checks of either policy never
    /// replace the slot (the old policy's get none once it is replaced; the new one's none
    /// until then); the background task does; an unchanged configuration keeps its slot.
    #[test]
    fn only_the_background_task_replaces_a_slot() {
        let tokens = Tokens::new();
        let (old, new) = (oauth_credential("crm.read"), oauth_credential("crm.write"));
        let (Source::OAuth2(d_old), Source::OAuth2(d_new)) = (&old.source, &new.source) else { unreachable!() };
        let first = tokens.slot(&old.name, d_old).unwrap();
        assert!(tokens.slot(&new.name, d_new).is_none(), "a Check of the new policy does not replace it");
        assert!(Arc::ptr_eq(&tokens.slot(&old.name, d_old).unwrap(), &first));
        let _ = tokens.refresh_oauth(std::slice::from_ref(&new));
        let second = tokens.slot(&new.name, d_new).unwrap();
        assert!(!Arc::ptr_eq(&second, &first), "replaced by the task");
        assert!(tokens.slot(&old.name, d_old).is_none(), "a Check of the old policy gets none");
        // The same configuration in a reloaded policy (another Arc): the same slot.
        let again = oauth_credential("crm.write");
        let _ = tokens.refresh_oauth(std::slice::from_ref(&again));
        let Source::OAuth2(d_again) = &again.source else { unreachable!() };
        assert!(Arc::ptr_eq(&tokens.slot(&again.name, d_again).unwrap(), &second));
        let _ = tokens.refresh_oauth(&[]);
        assert!(tokens.oauth.load().is_empty(), "a credential gone from the policy is forgotten");
    }

    #[test]
    fn token_files_are_read_strictly() {
        let dir = std::env::temp_dir().join(format!("hallpass-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        for (content, want) in [
            ("abc\n", Some("abc")),
            ("  abc  \nsecond line", Some("abc")),
            ("", None),
            ("\n", None),
            ("a\u{7}b", None),
            ("ümlaut", None),
        ] {
            std::fs::write(&f, content).unwrap();
            assert_eq!(read_token(&f).as_ref().map(Secret::expose), want, "{content:?}");
        }
        assert!(read_token(&dir.join("missing")).is_none());
        // A FIFO (or any file that is not regular) is never opened: it would block.
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read_token(&fifo).is_none());
        let in_flight = InFlight::default();
        assert!(read_with_timeout(&fifo, &in_flight).is_none());
        std::fs::write(&f, "ok\n").unwrap();
        assert_eq!(read_with_timeout(&f, &in_flight).as_ref().map(Secret::expose), Some("ok"));
        // A read still stuck (as on a hung mount) is not started again: no token meanwhile.
        in_flight.lock().unwrap().insert(f.clone());
        assert!(read_with_timeout(&f, &in_flight).is_none(), "one stuck reader per file at most");
        in_flight.lock().unwrap().remove(&f);
        assert!(read_with_timeout(&f, &in_flight).is_some());
        assert!(read_token(&dir).is_none(), "a directory");
        std::fs::write(&f, "x".repeat(70_000)).unwrap();
        assert!(read_token(&f).is_none(), "too large");
    }
}
