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
use crate::policy::eval::{candidates_read_body, resolve_identity, valid_until};
use crate::policy::{evaluate, Decision, Policy};
use crate::reload::{handle_for, LivePolicy, PolicyHandle};
use crate::request::Request;
use crate::response::{check_response, DecisionIds};
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
    /// The policy revision that decided.
    pub revision: String,
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
        }
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

    fn decide_request(&self, live: &LivePolicy, req: &Request, now: Timestamp) -> (Decision, bool) {
        let Some(cache) = &self.cache else {
            return (evaluate(&live.policy, req, now), false);
        };
        // invalid_path and invalid_identity are decided before any cache. Only decisions
        // that parse a body are cached: without one, evaluating (~0.4 µs) costs less than a
        // cache lookup plus, on a miss, an insert (docs/benchmarks.md).
        let Ok(path) = &req.path else {
            return (evaluate(&live.policy, req, now), false);
        };
        if req.body.bytes.is_empty() || !candidates_read_body(&live.policy, path) {
            return (evaluate(&live.policy, req, now), false);
        }
        let Ok(ident) = resolve_identity(&live.policy, req) else {
            return (evaluate(&live.policy, req, now), false);
        };
        let key = cache.key(live, req, path, &ident);
        if let Some(d) = cache.get(&key, now) {
            return (d, true);
        }
        let d = evaluate(&live.policy, req, now);
        cache.insert(key, &d, now, valid_until(&live.policy, req, now));
        (d, false)
    }

    /// Decide one CheckRequest at `now`.
    pub fn decide(&self, req: CheckRequest, now: Timestamp) -> Checked {
        let live = self.policy.load();
        let decision_id = self.ids.next_id();
        let (decision, cache_hit) = catch_unwind(AssertUnwindSafe(|| match Request::from_check_request(req) {
            Ok(mut r) => {
                if r.body.bytes.len() > self.max_body_bytes {
                    r.body.truncated = true;
                }
                self.decide_request(&live, &r, now)
            }
            Err(_) => (Decision::invalid_request(), false),
        }))
        .unwrap_or_else(|_| (Decision::internal_error(), false));
        let response = check_response(&decision, &decision_id, live.policy.settings.deny_status, &live.revision);
        Checked { decision, decision_id, response, cache_hit, revision: live.revision.clone() }
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
        let elapsed = start.elapsed().as_secs_f64();
        if let Some(m) = &self.metrics {
            m.record(&c.decision, elapsed);
            if self.cache.is_some() {
                m.cache_lookup(c.cache_hit);
            }
        }
        let d = &c.decision;
        tracing::debug!(
            target: "hallpass::decision",
            decision_id = %c.decision_id,
            decision = if d.allowed { "allow" } else { "deny" },
            rule = d.rule.as_str(),
            dry_run = d.dry_run,
            agent = d.agent.as_deref().unwrap_or(""),
            on_behalf_of = d.on_behalf_of.as_deref().unwrap_or(""),
            revision = %c.revision,
            cache_hit = c.cache_hit,
            "decision"
        );
        Ok(GrpcResponse::new(c.response))
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
