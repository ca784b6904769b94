//! The `hallpass` command: `serve`, `validate`, `check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hallpass::cache::DecisionCache;
use hallpass::decision_log::{DecisionLog, Sink};
use hallpass::policy::{explain, Policy};
use hallpass::reload::{self, PolicyStore};
use hallpass::request::build::CheckRequestBuilder;
use hallpass::request::Request;
use hallpass::settings::{LogFormat, LogSink, Overrides, ServerSettings};
use hallpass::telemetry::Metrics;
use hallpass::{admin, explain as report, service};

#[derive(Parser)]
#[command(name = "hallpass", version, about = "Per-action authorization for AI agents: an Envoy ext_authz v3 sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz v3 gRPC and the admin endpoints (/metrics, /healthz, /readyz).
    Serve(Overrides),
    /// Check a policy file; exit 0 if valid, 1 with located errors otherwise.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Decide one request against a policy and explain why.
    Check {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// HTTP method.
        #[arg(long)]
        method: String,
        /// Request path, query included, as Envoy's :path.
        #[arg(long)]
        path: String,
        /// Host (:authority).
        #[arg(long, default_value = "localhost")]
        host: String,
        /// A header `name: value`; repeatable.
        #[arg(long = "header", value_name = "'NAME: VALUE'")]
        headers: Vec<String>,
        /// Request body (content-type defaults to application/json).
        #[arg(long)]
        body: Option<String>,
        /// The agent id (bypasses the policy's identity sources).
        #[arg(long)]
        agent: Option<String>,
        /// The on-behalf-of id (bypasses the policy's identity sources).
        #[arg(long = "on-behalf-of")]
        on_behalf_of: Option<String>,
        /// The mTLS principal (source.principal), to exercise identity sources.
        #[arg(long)]
        principal: Option<String>,
        /// Decide at this RFC 3339 instant instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status for a configuration error (an invalid policy or settings file, a bad flag):
/// 64, as sysexits' EX_USAGE, so a supervisor tells it from a crash (1) and does not restart
/// into the same error.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Check { policy, method, path, host, headers, body, agent, on_behalf_of, principal, now, json } => {
            check(CheckArgs { policy, method, path, host, headers, body, agent, on_behalf_of, principal, now, json })
        }
        Command::Serve(o) => serve(o),
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match Policy::from_file(file) {
        Ok(p) => {
            println!("{}: valid ({} rules)", file.display(), p.rules.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: invalid ({} error{})", file.display(), e.0.len(), if e.0.len() == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

struct CheckArgs {
    policy: PathBuf,
    method: String,
    path: String,
    host: String,
    headers: Vec<String>,
    body: Option<String>,
    agent: Option<String>,
    on_behalf_of: Option<String>,
    principal: Option<String>,
    now: Option<String>,
    json: bool,
}

fn check(a: CheckArgs) -> ExitCode {
    let policy = match Policy::from_file(&a.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let now = match a.now.as_deref().map(str::parse::<jiff::Timestamp>) {
        None => jiff::Timestamp::now(),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("--now: not an RFC 3339 instant: {e}");
            return ExitCode::from(2);
        }
    };
    let mut b = CheckRequestBuilder::new(&a.method, &a.path).host(&a.host);
    let mut has_ct = false;
    for h in &a.headers {
        let Some((k, v)) = h.split_once(':') else {
            eprintln!("--header `{h}`: expected `name: value`");
            return ExitCode::from(2);
        };
        has_ct |= k.trim().eq_ignore_ascii_case("content-type");
        b = b.header(k.trim(), v.trim());
    }
    if let Some(body) = &a.body {
        if !has_ct {
            b = b.header("content-type", "application/json");
        }
        b = b.body(body.as_bytes().to_vec());
    }
    if let Some(p) = &a.principal {
        b = b.principal(p);
    }
    let mut req = match Request::from_check_request(b.build()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    req.agent_override = a.agent;
    req.on_behalf_of_override = a.on_behalf_of;
    let (decision, traces) = explain(&policy, &req, now);
    // Shown as `-` where the decision did not get to identities (invalid path, ambiguous).
    let ident = match hallpass::policy::eval::checked_path(&policy, &req) {
        Ok(_) => hallpass::policy::eval::resolve_identity(&policy, &req).unwrap_or_default(),
        Err(_) => Default::default(),
    };
    if a.json {
        println!("{}", report::render_json(&decision, ident, &traces));
    } else {
        print!("{}", report::render_text(&policy, &decision, ident, &traces));
    }
    ExitCode::SUCCESS
}

fn init_logging(s: &ServerSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(o: Overrides) -> ExitCode {
    let settings = match ServerSettings::resolve(o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hallpass serve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("hallpass serve: cannot register metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Parse and validate the policy before binding anything.
    let store = match PolicyStore::open(&settings.policy, Some(metrics.clone())) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("hallpass serve: refusing to start with an invalid policy");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hallpass serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_async(settings, store, metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hallpass serve failed");
            eprintln!("hallpass serve: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve_async(
    s: ServerSettings,
    store: Arc<PolicyStore>,
    metrics: Metrics,
) -> Result<(), Box<dyn std::error::Error>> {
    let grpc = tokio::net::TcpListener::bind(s.grpc_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--grpc-listen): {e}", s.grpc_listen))?;
    let admin_listener = tokio::net::TcpListener::bind(s.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--admin-listen): {e}", s.admin_listen))?;
    let cache = s.cache.map(|c| Arc::new(DecisionCache::new(c)));
    {
        let live = store.handle().load();
        tracing::info!(
            policy = %s.policy.display(),
            revision = %live.revision,
            rules = live.policy.rules.len(),
            grpc_listen = %grpc.local_addr()?,
            admin_listen = %admin_listener.local_addr()?,
            cache = cache.is_some(),
            "hallpass serving"
        );
    }
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_state = admin::AdminState {
        ready: ready.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        cache: cache.clone(),
    };
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(admin::run(admin_listener, admin_state, async move {
        let _ = admin_stop.changed().await;
    }));
    let reload_task = tokio::spawn(reload::watch(store.clone(), s.reload, stop_rx.clone()));
    let mut authz = service::Authz::new(store.handle(), Some(metrics.clone())).with_max_body_bytes(s.max_body_bytes);
    if let Some(c) = &cache {
        authz = authz.with_cache(c.clone());
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
                .map_err(|e| format!("cannot open the decision log {}: {e}", p.display()))?;
            Some(Sink::Writer(Box::new(f)))
        }
    };
    let log_writer = sink.map(|sink| {
        let m = metrics.clone();
        let (log, writer) =
            DecisionLog::start(sink, s.decision_log_buffer, Some(Arc::new(move || m.decision_log_dropped())));
        authz = authz.clone().with_decision_log(log, s.decision_log_query);
        writer
    });
    let (grpc_stop_tx, grpc_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let lifecycle = service::Lifecycle { drain_delay: s.drain_delay };
    let mut grpc_task = tokio::spawn(service::run(grpc, authz, lifecycle, async move {
        let _ = grpc_stop_rx.await;
    }));
    ready.store(true, Ordering::Release);
    tokio::select! {
        _ = shutdown_signal() => {}
        res = &mut grpc_task => {
            // The server stopped on its own: an error.
            ready.store(false, Ordering::Release);
            let _ = stop_tx.send(true);
            return match res {
                Ok(Ok(())) => Err("the gRPC server stopped unexpectedly".into()),
                Ok(Err(e)) => Err(Box::new(e)),
                Err(e) => Err(Box::new(e)),
            };
        }
    }
    tracing::info!("shutting down: NOT_SERVING, then draining in-flight checks");
    ready.store(false, Ordering::Release);
    let _ = grpc_stop_tx.send(());
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(s.drain_delay + s.grace, grpc_task).await;
    admin_task.abort();
    reload_task.abort();
    if let Some(w) = log_writer {
        // The server (and with it every sender) is gone: let the writer flush what is queued.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tokio::task::spawn_blocking(move || w.join()))
            .await;
    }
    match drained {
        Ok(Ok(Ok(()))) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(Box::new(e)),
        Ok(Err(e)) => Err(Box::new(e)),
        Err(_) => {
            tracing::warn!(
                grace_ms = s.grace.as_millis() as u64,
                "in-flight checks did not finish within the grace period; exiting"
            );
            Ok(())
        }
    }
}
