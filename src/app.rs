//! The server, as library code: bind the listeners, start the admin endpoints, the policy
//! watcher, the decision-log writer and the gRPC service, run until one cancellation signal,
//! then drain with a grace period. `hallpass serve` is `bind` + `run` with the process's
//! signals; tests start the whole server in-process on port 0 the same way.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin;
use crate::cache::DecisionCache;
use crate::control;
use crate::decision_log::{DecisionLog, Sink};
use crate::quarantine::StateRuntime;
use crate::reload::{self, PolicyStore};
use crate::service::{self, Authz, Lifecycle};
use crate::settings::{LogSink, ServerSettings, StateOptions};
use crate::state::memory::MemoryStore;
use crate::state::redis::RedisStore;
use crate::state::Store;
use crate::telemetry::Metrics;

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    /// A listener could not be bound.
    Listen {
        /// Which one (`--grpc-listen`, `--admin-listen`).
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The decision-log file could not be opened.
    DecisionLog {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    Server(tonic::transport::Error),
    /// The gRPC server stopped without being asked to.
    StoppedUnexpectedly,
    /// A server task panicked or was cancelled.
    Task(tokio::task::JoinError),
    /// The state store could not be set up (`state.dir` unusable, a bad Redis URL).
    State(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Listen { flag, addr, source } => write!(f, "cannot listen on {addr} ({flag}): {source}"),
            ServeError::DecisionLog { path, source } => {
                write!(f, "cannot open the decision log {}: {source}", path.display())
            }
            ServeError::Server(e) => write!(f, "the gRPC server failed: {e}"),
            ServeError::StoppedUnexpectedly => f.write_str("the gRPC server stopped unexpectedly"),
            ServeError::Task(e) => write!(f, "a server task failed: {e}"),
            ServeError::State(m) => write!(f, "state store: {m}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// The listeners, bound (port 0 resolved) before anything else starts.
#[derive(Debug)]
pub struct Bound {
    grpc: TcpListener,
    admin: TcpListener,
    control: Option<TcpListener>,
}

impl Bound {
    /// The gRPC (ext_authz) address.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// The admin (`/metrics`, `/healthz`, `/readyz`, `/policy`) address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The control API's address, if it is on.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// An address as logged (tests read the bound port from the `hallpass serving` line).
fn shown(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// Bind both listeners of `settings`.
pub async fn bind(settings: &ServerSettings) -> Result<Bound, ServeError> {
    let grpc = TcpListener::bind(settings.grpc_listen).await.map_err(|source| ServeError::Listen {
        flag: "--grpc-listen",
        addr: settings.grpc_listen,
        source,
    })?;
    let admin = TcpListener::bind(settings.admin_listen).await.map_err(|source| ServeError::Listen {
        flag: "--admin-listen",
        addr: settings.admin_listen,
        source,
    })?;
    let control = match settings.control_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| ServeError::Listen {
            flag: "--control-listen",
            addr,
            source,
        })?),
    };
    Ok(Bound { grpc, admin, control })
}

/// Run the server on `bound` until `shutdown` resolves (the one cancellation signal: it
/// stops the gRPC service after its drain delay, the admin endpoints and the watcher), then
/// wait for in-flight Checks at most `drain_delay + grace`, and flush the decision log.
pub async fn run(
    settings: ServerSettings,
    bound: Bound,
    store: Arc<PolicyStore>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let s = settings;
    // The one cancellation signal, watched by every task.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // SIGHUP is ours from here, before anything is logged or answered: an early one reloads
    // instead of ending the process.
    let reload = reload::watch(store.clone(), s.reload, stop_rx.clone());
    let cache = s.cache.map(|c| Arc::new(DecisionCache::new(c)));
    let backend = match &s.state {
        StateOptions::Memory { dir, max_keys, max_keys_per_agent } => Store::Memory(Arc::new(
            MemoryStore::new(*max_keys, *max_keys_per_agent, dir.clone()).map_err(ServeError::State)?,
        )),
        StateOptions::Redis { url, prefix, timeout, max_keys_per_agent } => {
            Store::Redis(RedisStore::new(url, prefix, *timeout, *max_keys_per_agent).map_err(ServeError::State)?)
        }
    };
    let state = Arc::new(StateRuntime::new(backend, Some(metrics.state.clone())));
    state.set_events(crate::webhook::start(store.handle(), Some(metrics.state.clone())));
    // The quarantine list in force before the first Check (a store that cannot be read now
    // is retried every REFRESH; limits follow on_store_error meanwhile).
    if let Err(e) = state.refresh(jiff::Timestamp::now()).await {
        tracing::warn!(error = %e, "state store not reachable at start");
    }
    {
        let live = store.handle().load();
        tracing::info!(
            policy = %s.policy.display(),
            revision = %live.revision,
            rules = live.policy.rules.len(),
            grpc_listen = %shown(bound.grpc_addr()),
            admin_listen = %shown(bound.admin_addr()),
            control_listen = %shown(bound.control_addr()),
            cache = cache.is_some(),
            state = state.store.backend(),
            "hallpass serving"
        );
    }
    let sink = match &s.decision_log {
        LogSink::Off => None,
        LogSink::Stdout => Some(Sink::Stdout),
        LogSink::Stderr => Some(Sink::Stderr),
        LogSink::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| ServeError::DecisionLog { path: p.clone(), source })?;
            Some(Sink::Writer(Box::new(f)))
        }
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = admin::AdminState {
        ready: ready.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        cache: cache.clone(),
        state: Some(state.clone()),
    };
    let admin_task = tokio::spawn(admin::run(bound.admin, admin_state, stopped(stop_rx.clone())));
    let reload_task = tokio::spawn(reload);
    let state_task = tokio::spawn(state.clone().run(stopped(stop_rx.clone())));
    let control_task = bound.control.map(|l| {
        let cs = control::ControlState { state: state.clone(), policy: store.clone() };
        tokio::spawn(control::run(l, cs, stopped(stop_rx.clone())))
    });
    let mut authz = Authz::new(store.handle(), Some(metrics.clone()))
        .with_max_body_bytes(s.max_body_bytes)
        .with_state(state.clone());
    if let Some(c) = &cache {
        authz = authz.with_cache(c.clone());
    }
    // Token files read and OAuth2 tokens requested before the first Check (then kept fresh).
    authz.tokens().prime(store.handle().load_full().policy.credentials.clone()).await;
    let tokens_task = tokio::spawn(authz.tokens().clone().run(store.handle(), stopped(stop_rx.clone())));
    let log_writer = sink.map(|sink| {
        let m = metrics.clone();
        let (log, writer) =
            DecisionLog::start(sink, s.decision_log_buffer, Some(Arc::new(move || m.decision_log_dropped())));
        authz = authz.clone().with_decision_log(log, s.decision_log_query);
        writer
    });
    // Input capture for replay: its own file, its own bounded queue (drops counted).
    let input_writer = match &s.inputs {
        Some(cap) => {
            // Readable by hallpass alone: inputs hold request bodies.
            let file =
                std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).append(true), 0o600)
                    .open(&cap.path)
                    .map_err(|source| ServeError::DecisionLog { path: cap.path.clone(), source })?;
            // An existing file too: hallpass's alone.
            let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
            let m = metrics.clone();
            let (log, writer) =
                DecisionLog::start(Sink::Writer(Box::new(file)), cap.buffer, Some(Arc::new(move || m.input_dropped())));
            authz = authz.clone().with_inputs(log, crate::replay::Masks::new(cap.mask.clone(), s.max_body_bytes));
            Some(writer)
        }
        None => None,
    };
    let lifecycle = Lifecycle { drain_delay: s.drain_delay };
    let mut grpc_task = tokio::spawn(service::run(bound.grpc, authz, lifecycle, stopped(stop_rx.clone())));
    ready.store(true, Ordering::Release);
    tokio::select! {
        _ = shutdown => {}
        res = &mut grpc_task => {
            // The server stopped on its own: an error.
            ready.store(false, Ordering::Release);
            let _ = stop_tx.send(true);
            return match res {
                Ok(Ok(())) => Err(ServeError::StoppedUnexpectedly),
                Ok(Err(e)) => Err(ServeError::Server(e)),
                Err(e) => Err(ServeError::Task(e)),
            };
        }
    }
    tracing::info!("shutting down: NOT_SERVING, then draining in-flight checks");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(s.drain_delay + s.grace, grpc_task).await;
    admin_task.abort();
    reload_task.abort();
    state_task.abort();
    tokens_task.abort();
    if let Some(t) = control_task {
        t.abort();
    }
    for w in log_writer.into_iter().chain(input_writer) {
        // The server (and with it every sender) is gone: let the writer flush what is queued.
        let _ = tokio::time::timeout(Duration::from_secs(2), tokio::task::spawn_blocking(move || w.join())).await;
    }
    match drained {
        Ok(Ok(Ok(()))) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(ServeError::Server(e)),
        Ok(Err(e)) => Err(ServeError::Task(e)),
        Err(_) => {
            tracing::warn!(
                grace_ms = s.grace.as_millis() as u64,
                "in-flight checks did not finish within the grace period; exiting"
            );
            Ok(())
        }
    }
}
