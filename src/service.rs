//! The ext_authz v3 `Authorization/Check` service and the gRPC server around it.
//!
//! [`Authz::decide`] is the whole request path, synchronous: normalize → (cache) →
//! evaluate → respond. The async `check` only wraps it. A CheckRequest without HTTP
//! attributes, or a failure inside hallpass, is answered with a deny, never with a gRPC error
//! Envoy might be configured to fail open on.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tonic_health::ServingStatus;

use crate::cache::DecisionCache;
use crate::decision_log::{DecisionLog, DecisionRecord, McpSummary, SCHEMA};
use crate::policy::eval::{
    candidates_read_body, checked_path, evaluate_identified, path_bypasses_index, resolve_identity, valid_until,
    AmbiguousIdentity, Identity,
};
use crate::policy::{Decision, Effect, Policy};
use crate::reload::{handle_for, LivePolicy, PolicyHandle};
use crate::request::{Parsed, PathError, Request};
use crate::response::{check_response, deny_message, DecisionIds};
use crate::telemetry::Metrics;

/// Default largest body hallpass parses; a longer one is treated as truncated (unknown).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The authorization service.
#[derive(Clone)]
pub struct Authz {
    policy: PolicyHandle,
    ids: Arc<DecisionIds>,
    metrics: Option<Metrics>,
    cache: Option<Arc<DecisionCache>>,
    max_body_bytes: usize,
    check_delay: Option<Duration>,
    log: Option<DecisionLog>,
    include_query: bool,
}

/// What a decision record says about the request (moved out of the normalized request, not
/// copied). Never the body, never header values but `x-request-id`.
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    /// Method.
    pub method: String,
    /// Normalized host.
    pub host: String,
    /// Normalized path, if valid.
    pub path: Option<String>,
    /// Why the path was refused.
    pub path_error: Option<PathError>,
    /// Decoded query parameters (only kept when the log asks for them).
    pub query: Option<Vec<(String, String)>>,
    /// Envoy's `x-request-id`.
    pub request_id: Option<String>,
    /// The MCP call, if the body was read and is JSON-RPC.
    pub mcp: Option<McpSummary>,
    /// How the body was read.
    pub body: &'static str,
    /// The agent, when known (kept only when there is a decision log).
    pub agent: Option<String>,
    /// The user the agent acts for, when known (kept only when there is a decision log).
    pub on_behalf_of: Option<String>,
}

fn mcp_summary(req: &Request) -> Option<McpSummary> {
    let Some(Parsed::Json(v)) = req.body.parsed_if_read() else { return None };
    let one = |o: &serde_json::Value| -> Option<McpSummary> {
        if o.get("jsonrpc").is_none_or(|j| j != "2.0") {
            return None;
        }
        let method = o.get("method").and_then(|m| m.as_str()).map(String::from);
        let tool = o.get("params").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(String::from);
        Some(McpSummary { method, tool, batch: None })
    };
    match v {
        serde_json::Value::Array(items) => {
            let mut first = one(items.first()?)?;
            first.batch = Some(items.len());
            Some(first)
        }
        o => one(o),
    }
}

fn summarize(req: Request, include_query: bool) -> RequestSummary {
    let mcp = mcp_summary(&req);
    let body = req.body.outcome();
    let request_id = req.headers.get("x-request-id").cloned();
    let (path, path_error) = match req.path {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    RequestSummary {
        method: req.method,
        host: req.host,
        path,
        path_error,
        query: include_query.then_some(req.query),
        request_id,
        mcp,
        body,
        agent: None,
        on_behalf_of: None,
    }
}

/// The outcome of one Check.
#[derive(Debug)]
pub struct Checked {
    /// The decision (what the decision log records).
    pub decision: Decision,
    /// Its id, fresh for every Check (also on a cache hit).
    pub decision_id: String,
    /// What Envoy gets.
    pub response: CheckResponse,
    /// Whether the decision came from the cache.
    pub cache_hit: bool,
    /// Whether the cache was consulted at all (only body-reading decisions go through it).
    pub cache_used: bool,
    /// The policy revision that decided.
    pub revision: String,
    /// What the decision record says about the request.
    pub summary: RequestSummary,
}

impl Authz {
    /// A service deciding against the live `policy`, recording into `metrics` if given.
    pub fn new(policy: PolicyHandle, metrics: Option<Metrics>) -> Authz {
        Authz {
            policy,
            ids: Arc::new(DecisionIds::new()),
            metrics,
            cache: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            check_delay: None,
            log: None,
            include_query: false,
        }
    }

    /// Write a decision record for every Check to `log`; `include_query` adds the decoded
    /// query parameters (off by default: queries may carry tokens).
    pub fn with_decision_log(mut self, log: DecisionLog, include_query: bool) -> Authz {
        self.log = Some(log);
        self.include_query = include_query;
        self
    }

    /// A service over a fixed policy (tests, benchmarks).
    pub fn from_policy(policy: Policy) -> Authz {
        Authz::new(handle_for(policy, ""), None)
    }

    /// Use a decision cache.
    pub fn with_cache(mut self, cache: Arc<DecisionCache>) -> Authz {
        self.cache = Some(cache);
        self
    }

    /// Treat bodies longer than this as truncated.
    pub fn with_max_body_bytes(mut self, n: usize) -> Authz {
        self.max_body_bytes = n;
        self
    }

    /// Testing hook: every Check waits this long before deciding (to have Checks in flight).
    #[doc(hidden)]
    pub fn with_check_delay(mut self, d: Duration) -> Authz {
        self.check_delay = Some(d);
        self
    }

    /// The live policy handle.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Decide, through the cache where it applies: (decision, cache consulted, hit).
    fn decide_request(
        &self,
        live: &LivePolicy,
        req: &Request,
        ident: Result<Identity<'_>, AmbiguousIdentity>,
        now: Timestamp,
    ) -> (Decision, bool, bool) {
        let evaluate = || evaluate_identified(&live.policy, req, ident, now);
        let Some(cache) = &self.cache else {
            return (evaluate(), false, false);
        };
        // invalid_path and invalid_identity are decided before any cache. Only decisions
        // that parse a body are cached: without one, evaluating (~0.4 µs) costs less than a
        // cache lookup plus, on a miss, an insert (docs/benchmarks.md).
        let Ok(path) = checked_path(&live.policy, req) else {
            return (evaluate(), false, false);
        };
        // A path with a second reading that starts elsewhere (`;` parameters allowed by the
        // policy, `/admin.json`) is decided against every deny rule, which the cache entry's
        // lifetime (`valid_until`, by candidates) does not cover: not cached.
        if req.body.bytes.is_empty()
            || path_bypasses_index(&live.policy, path)
            || !candidates_read_body(&live.policy, path)
        {
            return (evaluate(), false, false);
        }
        let Ok(id) = ident else {
            return (evaluate(), false, false);
        };
        let key = cache.key(live, req, path, &id);
        if let Some(d) = cache.get(&key, now) {
            return (d, true, true);
        }
        let d = evaluate();
        cache.insert(key, &d, now, valid_until(&live.policy, req, now));
        (d, true, false)
    }

    /// Decide one CheckRequest at `now`.
    pub fn decide(&self, req: CheckRequest, now: Timestamp) -> Checked {
        let live = self.policy.load();
        let decision_id = self.ids.next_id();
        let include_query = self.include_query;
        let empty = || RequestSummary { body: "absent", ..Default::default() };
        let deny_status = live.policy.settings.deny_status;
        let logged = self.log.is_some();
        let (decision, cache_used, cache_hit, summary, response) =
            catch_unwind(AssertUnwindSafe(|| match Request::from_check_request(req) {
                Ok(mut r) => {
                    if r.body.bytes.len() > self.max_body_bytes {
                        r.body.truncated = true;
                    }
                    // Resolved once, borrowed from the request: the cache key, the decision
                    // and Envoy's metadata all use it.
                    let ident = resolve_identity(&live.policy, &r);
                    let (d, used, hit) = self.decide_request(&live, &r, ident, now);
                    // Identities are reported only where deciding got to them (not for an
                    // invalid path or an ambiguous identity).
                    let shown = match (checked_path(&live.policy, &r), ident) {
                        (Ok(_), Ok(i)) => i,
                        _ => Identity::default(),
                    };
                    let response = check_response(&d, shown, &decision_id, deny_status, &live.revision);
                    let owned = |v: Option<&str>| if logged { v.map(str::to_owned) } else { None };
                    let (agent, on_behalf_of) = (owned(shown.agent), owned(shown.on_behalf_of));
                    let mut summary = summarize(r, include_query);
                    // A path refused by the policy's reading (`;` parameters) is reported
                    // like one refused by normalization.
                    if summary.path_error.is_none() {
                        summary.path_error = d.path_error;
                    }
                    summary.agent = agent;
                    summary.on_behalf_of = on_behalf_of;
                    (d, used, hit, summary, Some(response))
                }
                Err(_) => (Decision::invalid_request(), false, false, empty(), None),
            }))
            .unwrap_or_else(|_| (Decision::internal_error(), false, false, empty(), None));
        let response = response.unwrap_or_else(|| {
            check_response(&decision, Identity::default(), &decision_id, deny_status, &live.revision)
        });
        Checked { decision, decision_id, response, cache_hit, cache_used, revision: live.revision.clone(), summary }
    }

    fn record(&self, c: Checked, latency: Duration) -> (CheckResponse, Option<DecisionRecord>) {
        let Some(_) = &self.log else { return (c.response, None) };
        let d = c.decision;
        let message = if d.policy_effect == Effect::Deny { Some(deny_message(&d)) } else { None };
        let rec = DecisionRecord {
            schema: SCHEMA,
            time: Timestamp::now().to_string(),
            decision_id: c.decision_id,
            request_id: c.summary.request_id,
            agent: c.summary.agent,
            on_behalf_of: c.summary.on_behalf_of,
            method: c.summary.method,
            host: c.summary.host,
            path: c.summary.path,
            path_error: c.summary.path_error.map(|e| e.label().to_string()),
            query: c.summary.query,
            mcp: c.summary.mcp,
            decision: if d.allowed { "allow" } else { "deny" },
            policy_effect: d.policy_effect.as_str(),
            rule: d.rule.as_str().to_string(),
            message,
            unknown: d.unknown.map(|p| p.as_str()),
            dry_run: d.dry_run,
            dry_run_rules: d.dry_run_rules.iter().map(|r| r.to_string()).collect(),
            policy_revision: c.revision,
            cache_hit: c.cache_hit,
            body: c.summary.body,
            latency_us: latency.as_secs_f64() * 1e6,
        };
        (c.response, Some(rec))
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(&self, request: GrpcRequest<CheckRequest>) -> Result<GrpcResponse<CheckResponse>, Status> {
        if let Some(d) = self.check_delay {
            tokio::time::sleep(d).await;
        }
        let start = Instant::now();
        let c = self.decide(request.into_inner(), Timestamp::now());
        let elapsed = start.elapsed();
        if let Some(m) = &self.metrics {
            m.record(&c.decision, elapsed.as_secs_f64());
            m.body(c.summary.body);
            if let Some(e) = c.summary.path_error {
                m.invalid_path(e.label());
            }
            if c.cache_used {
                m.cache_lookup(c.cache_hit);
            }
        }
        let (response, rec) = self.record(c, elapsed);
        if let (Some(log), Some(rec)) = (&self.log, rec) {
            log.send(rec);
        }
        Ok(GrpcResponse::new(response))
    }
}

/// How the server winds down.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifecycle {
    /// After shutdown is requested, health reports NOT_SERVING for this long while Checks
    /// are still answered (so Envoy and Kubernetes stop sending), then no new connections
    /// are accepted and in-flight Checks are finished.
    pub drain_delay: Duration,
}

/// The gRPC service name reported by health.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Serve ext_authz v3 and gRPC health on `listener` until `shutdown` resolves; then report
/// NOT_SERVING, wait `drain_delay`, stop accepting and finish the Checks in flight.
pub async fn run(
    listener: TcpListener,
    authz: Authz,
    lifecycle: Lifecycle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // hallpass never serves without a policy: the Authz holds one, so SERVING from the start.
    reporter.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    reporter.set_service_status("", ServingStatus::Serving).await;
    let drain = async move {
        shutdown.await;
        reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
        reporter.set_service_status("", ServingStatus::NotServing).await;
        tracing::info!(drain_delay_ms = lifecycle.drain_delay.as_millis() as u64, "health NOT_SERVING; draining");
        tokio::time::sleep(lifecycle.drain_delay).await;
    };
    // TCP_NODELAY on every accepted connection: tonic only sets it on listeners it binds
    // itself, and without it small HTTP/2 writes wait on delayed ACKs (tens of ms per Check).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AuthorizationServer::new(authz))
        .serve_with_incoming_shutdown(incoming, drain)
        .await
}
