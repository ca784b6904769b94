//! The live policy: loaded once at start, then reloaded when the file changes, on SIGHUP,
//! and by a periodic re-hash; swapped atomically so every Check sees one whole policy.
//!
//! Kubernetes updates a ConfigMap volume by swapping a `..data` symlink in the mounted
//! directory, so the *directory* is watched (a watch on the file itself goes stale after the
//! first update). Every trigger re-reads the file and hashes it; only a changed, valid policy
//! replaces the live one. A policy that fails to load keeps the last good one in force and is
//! reported (log with locations, counters, `/policy`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use notify::Watcher;
use sha2::{Digest, Sha256};

use crate::policy::parse::PolicyErrorKind;
use crate::policy::{Policy, PolicyErrors};
use crate::telemetry::Metrics;

/// A compiled policy with where it came from.
#[derive(Debug)]
pub struct LivePolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// First 12 hex digits of the sha256 of the file's bytes: stable across replicas.
    pub revision: String,
    /// The whole sha256 of the file (a changed file is told apart by all of it, not by the
    /// 12 digits of the revision).
    pub sha256: [u8; 32],
    /// Bumped on every swap within this process (cache keys include it).
    pub generation: u64,
    /// When it was loaded.
    pub loaded_at: Timestamp,
}

impl LivePolicy {
    /// Wrap a policy compiled from `text` (the revision is the hash of `text`).
    pub fn new(policy: Policy, text: &[u8], generation: u64) -> LivePolicy {
        LivePolicy::hashed(policy, Sha256::digest(text).into(), generation)
    }

    fn hashed(policy: Policy, sha256: [u8; 32], generation: u64) -> LivePolicy {
        LivePolicy { policy, revision: revision_from(&sha256), sha256, generation, loaded_at: Timestamp::now() }
    }
}

/// The handle every Check loads the policy from: an atomic pointer, no lock.
pub type PolicyHandle = Arc<ArcSwap<LivePolicy>>;

/// Wrap a policy in a fresh handle (generation 1), e.g. for tests and `check`; `text` is
/// the source it was compiled from (its hash is the revision).
pub fn handle_for(policy: Policy, text: &str) -> PolicyHandle {
    Arc::new(ArcSwap::from_pointee(LivePolicy::new(policy, text.as_bytes(), 1)))
}

/// The policy revision: the first 12 hex digits of the sha256 of the file.
pub fn revision_of(bytes: &[u8]) -> String {
    revision_from(&Sha256::digest(bytes).into())
}

fn revision_from(sha256: &[u8; 32]) -> String {
    sha256.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new revision is in force.
    Reloaded {
        /// The new revision.
        revision: String,
    },
    /// The file has the revision already in force.
    Unchanged,
    /// The file could not be read or compiled; the previous policy stays in force.
    Failed {
        /// What went wrong, with locations.
        error: String,
    },
}

/// What `/policy` reports.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Successful reloads (new revisions) since start.
    pub reloads: u64,
    /// Failed reload attempts since start.
    pub failures: u64,
    /// The last failure, if the latest attempt failed.
    pub last_error: Option<String>,
    /// When a policy was last loaded successfully.
    pub last_success: Option<Timestamp>,
}

/// Owns the live policy and reloads it from its file.
pub struct PolicyStore {
    path: PathBuf,
    live: PolicyHandle,
    generation: AtomicU64,
    status: Mutex<ReloadStatus>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<(Vec<u8>, Policy), PolicyErrors> {
    let bytes = read_bytes(path)?;
    let policy = compile(path, &bytes)?;
    Ok((bytes, policy))
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, PolicyErrors> {
    std::fs::read(path).map_err(|e| {
        PolicyErrors::single(
            PolicyErrorKind::Read,
            &path.display().to_string(),
            format!("cannot read the policy file: {e}"),
        )
    })
}

fn compile(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyErrors> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(bytes)
        .map_err(|_| PolicyErrors::single(PolicyErrorKind::Syntax, &name, "the policy file is not UTF-8"))?;
    Policy::from_yaml(text, &name)
}

impl PolicyStore {
    /// Load the policy for the first time; an error here means: do not start.
    pub fn open(path: &Path, metrics: Option<Metrics>) -> Result<PolicyStore, PolicyErrors> {
        // Compiled on a thread of its own, like every reload: a compile needs several times
        // what it keeps (5.4 MiB at its peak for 1.1 MiB kept, 1000 rules), and glibc keeps
        // a thread's heap; the main thread's would hold that for the process's life.
        // If no thread can be started, it is compiled here (a memory matter, not correctness).
        let (bytes, policy) = std::thread::scope(|s| {
            match std::thread::Builder::new().name("hallpass-load".into()).spawn_scoped(s, || read(path)) {
                Ok(t) => t.join().unwrap_or_else(|_| {
                    Err(PolicyErrors::single(
                        PolicyErrorKind::Invalid,
                        &path.display().to_string(),
                        "compiling the policy failed",
                    ))
                }),
                Err(_) => read(path),
            }
        })?;
        let live = LivePolicy::new(policy, &bytes, 1);
        let store = PolicyStore {
            path: path.to_path_buf(),
            generation: AtomicU64::new(1),
            status: Mutex::new(ReloadStatus { last_success: Some(live.loaded_at), ..Default::default() }),
            live: Arc::new(ArcSwap::from_pointee(live)),
            metrics,
        };
        store.publish();
        Ok(store)
    }

    /// The handle Checks read from.
    pub fn handle(&self) -> PolicyHandle {
        self.live.clone()
    }

    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the reload status.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn publish(&self) {
        if let Some(m) = &self.metrics {
            let live = self.live.load();
            m.policy_loaded(&live.revision, live.policy.rules.len(), live.loaded_at);
        }
    }

    /// Re-read the file; swap in a changed, valid policy. Never panics, never leaves the
    /// store without a policy.
    pub fn reload(&self, trigger: &str) -> ReloadOutcome {
        let current = self.live.load();
        // The bytes are hashed before anything is compiled: the periodic check of an
        // unchanged file is a read and a SHA-256, not a parse of every rule.
        let outcome = match read_bytes(&self.path) {
            Err(e) => ReloadOutcome::Failed { error: e.to_string() },
            Ok(bytes) => {
                let sha256: [u8; 32] = Sha256::digest(&bytes).into();
                if sha256 == current.sha256 {
                    ReloadOutcome::Unchanged
                } else {
                    match compile(&self.path, &bytes) {
                        Err(e) => ReloadOutcome::Failed { error: e.to_string() },
                        Ok(policy) => {
                            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                            let live = LivePolicy::hashed(policy, sha256, generation);
                            let revision = live.revision.clone();
                            self.live.store(Arc::new(live));
                            ReloadOutcome::Reloaded { revision }
                        }
                    }
                }
            }
        };
        let result = match &outcome {
            ReloadOutcome::Reloaded { revision } => {
                tracing::info!(
                    trigger,
                    revision = %revision,
                    previous = %current.revision,
                    rules = self.live.load().policy.rules.len(),
                    "policy reloaded"
                );
                if let Ok(mut s) = self.status.lock() {
                    s.reloads += 1;
                    s.last_error = None;
                    s.last_success = Some(Timestamp::now());
                }
                self.publish();
                "success"
            }
            ReloadOutcome::Unchanged => {
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = None;
                }
                "unchanged"
            }
            ReloadOutcome::Failed { error } => {
                tracing::error!(
                    trigger,
                    revision_in_force = %current.revision,
                    error = %error,
                    "policy reload failed; keeping the policy in force"
                );
                if let Ok(mut s) = self.status.lock() {
                    s.failures += 1;
                    s.last_error = Some(error.clone());
                }
                "failure"
            }
        };
        if let Some(m) = &self.metrics {
            m.reload(result);
        }
        outcome
    }
}

/// How the watcher behaves.
#[derive(Debug, Clone, Copy)]
pub struct ReloadOptions {
    /// Wait this long after a file event for more events before re-reading.
    pub debounce: Duration,
    /// Re-hash the file this often regardless of events (missed-event fallback).
    pub interval: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions { debounce: Duration::from_millis(100), interval: Duration::from_secs(10) }
    }
}

/// Keep the store current until `shutdown` fires: directory events (debounced), SIGHUP, and
/// a periodic re-hash. SIGHUP is taken over when this is called (before the future runs), so
/// a SIGHUP right after startup reloads instead of ending the process (its default action);
/// call it from within the runtime.
pub fn watch(
    store: Arc<PolicyStore>,
    opts: ReloadOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    let hup = sighup();
    watch_with(store, opts, shutdown, hup)
}

async fn watch_with(
    store: Arc<PolicyStore>,
    opts: ReloadOptions,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut hup: Hup,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let dir = store.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    // The watcher lives as long as this task; events only nudge the loop below (a full
    // channel means a nudge is already pending).
    let _watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.try_send(());
        }
    }) {
        Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; relying on the periodic re-hash");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; relying on the periodic re-hash");
            None
        }
    };
    let reloader = Reloader::start(store.clone());
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => {
                tokio::time::sleep(opts.debounce).await;
                while rx.try_recv().is_ok() {}
                reloader.run("file-event").await;
            }
            Some(()) = next_hup(&mut hup) => {
                reloader.run("sighup").await;
            }
            _ = tick.tick() => {
                reloader.run("periodic").await;
            }
        }
    }
}

/// Reading and compiling is blocking work, kept off the async workers on one long-lived
/// thread: glibc gives each thread its own heap, and the short-lived threads of tokio's
/// blocking pool took a different one from reload to reload, each keeping what a compile
/// had freed (RSS 23 -> 43 MiB over 11 reloads of a 1000-rule policy; docs/benchmarks.md).
struct Reloader {
    store: Arc<PolicyStore>,
    jobs: Option<std::sync::mpsc::Sender<(&'static str, tokio::sync::oneshot::Sender<()>)>>,
}

impl Reloader {
    fn start(store: Arc<PolicyStore>) -> Reloader {
        let (tx, rx) = std::sync::mpsc::channel::<(&'static str, tokio::sync::oneshot::Sender<()>)>();
        let s = store.clone();
        let spawned = std::thread::Builder::new().name("hallpass-reload".into()).spawn(move || {
            // Ends when the watcher (the sender) is dropped.
            while let Ok((trigger, done)) = rx.recv() {
                s.reload(trigger);
                let _ = done.send(());
            }
        });
        match spawned {
            Ok(_) => Reloader { store, jobs: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "no reload thread; reloading on tokio's blocking pool");
                Reloader { store, jobs: None }
            }
        }
    }

    async fn run(&self, trigger: &'static str) {
        if let Some(jobs) = &self.jobs {
            let (done, finished) = tokio::sync::oneshot::channel();
            if jobs.send((trigger, done)).is_ok() {
                let _ = finished.await;
                return;
            }
        }
        let s = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload(trigger)).await;
    }
}

#[cfg(unix)]
type Hup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hup = Option<()>;

#[cfg(unix)]
fn sighup() -> Hup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn sighup() -> Hup {
    None
}

#[cfg(unix)]
async fn next_hup(h: &mut Hup) -> Option<()> {
    match h {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hup(_: &mut Hup) -> Option<()> {
    std::future::pending().await
}
