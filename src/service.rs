//! The ext_authz v3 `Authorization/Check` service and the gRPC server around it.
//!
//! [`Authz::decide`] is the whole request path, synchronous: the pipeline of
//! [`crate::check`]. The async `check` wraps it and adds metrics and the decision record. A
//! CheckRequest without HTTP attributes, or a failure inside hallpass, is answered with a
//! deny, never with a gRPC error Envoy might be configured to fail open on.

use std::future::Future;
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
use crate::check::Checker;
pub use crate::check::{CacheLookup, Checked, DEFAULT_MAX_BODY_BYTES};
use crate::decision_log::{DecisionLog, DecisionRecord};
use crate::policy::Policy;
use crate::reload::{handle_for, PolicyHandle};
use crate::telemetry::Metrics;

/// The authorization service: the [`Checker`] pipeline, plus what the gRPC side adds
/// (metrics, decision records).
#[derive(Clone)]
pub struct Authz {
    checker: Checker,
    metrics: Option<Metrics>,
    check_delay: Option<Duration>,
    log: Option<DecisionLog>,
    /// Input capture for replay (`decision_log.inputs: full`).
    inputs: Option<(DecisionLog<crate::replay::InputRecord>, Arc<crate::replay::Masks>)>,
}

impl Authz {
    /// A service deciding against the live `policy`, recording into `metrics` if given.
    pub fn new(policy: PolicyHandle, metrics: Option<Metrics>) -> Authz {
        let checker = Checker::new(policy);
        if let Some(m) = &metrics {
            let m = m.clone();
            checker
                .tokens
                .observe(Arc::new(move |credential: &str, result: &'static str| m.token_request(credential, result)));
        }
        Authz { checker, metrics, check_delay: None, log: None, inputs: None }
    }

    /// Write a decision record for every Check to `log`; `include_query` adds the decoded
    /// query parameters (off by default: queries may carry tokens).
    pub fn with_decision_log(mut self, log: DecisionLog, include_query: bool) -> Authz {
        self.log = Some(log);
        self.checker.keep_identities = true;
        self.checker.include_query = include_query;
        self
    }

    /// Write every Check's input (`hallpass.input/v1`, masked) to `log`, for replay.
    pub fn with_inputs(mut self, log: DecisionLog<crate::replay::InputRecord>, masks: crate::replay::Masks) -> Authz {
        self.inputs = Some((log, Arc::new(masks)));
        self
    }

    /// A service over a fixed policy (tests, benchmarks).
    pub fn from_policy(policy: Policy) -> Authz {
        Authz::new(handle_for(policy, ""), None)
    }

    /// Use a decision cache.
    pub fn with_cache(mut self, cache: Arc<DecisionCache>) -> Authz {
        self.checker.cache = Some(cache);
        self
    }

    /// Treat bodies longer than this as truncated.
    pub fn with_max_body_bytes(mut self, n: usize) -> Authz {
        self.checker.max_body_bytes = n;
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
        &self.checker.policy
    }

    /// Use this state store and quarantine list (the default: in memory, nothing kept).
    pub fn with_state(mut self, state: Arc<crate::quarantine::StateRuntime>) -> Authz {
        self.checker.state = state;
        self
    }

    /// The credentials' tokens in use.
    pub fn tokens(&self) -> &Arc<crate::credentials::Tokens> {
        &self.checker.tokens
    }

    /// The state store runtime the pipeline uses.
    pub fn state(&self) -> &Arc<crate::quarantine::StateRuntime> {
        &self.checker.state
    }

    /// Decide one CheckRequest at `now`: the pipeline of [`crate::check`].
    pub async fn decide(&self, req: CheckRequest, now: Timestamp) -> Checked {
        self.checker.check(req, now).await
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(&self, request: GrpcRequest<CheckRequest>) -> Result<GrpcResponse<CheckResponse>, Status> {
        if let Some(d) = self.check_delay {
            tokio::time::sleep(d).await;
        }
        let start = Instant::now();
        let request = request.into_inner();
        // A copy of what deciding needs, before the Check consumes the request (capture on).
        let input =
            self.inputs.as_ref().and_then(|(_, masks)| masks.capture(&request, &self.checker.policy.load_full()));
        let c = self.decide(request, Timestamp::now()).await;
        let elapsed = start.elapsed();
        if let Some(m) = &self.metrics {
            m.record(&c.decision, elapsed.as_secs_f64());
            m.body(c.summary.body);
            if let Some(e) = c.summary.path_error {
                m.invalid_path(e.label());
            }
            if c.cache != CacheLookup::Skipped {
                m.cache_lookup(c.cache == CacheLookup::Hit);
            }
            if let Some(hit) = &c.decision.limit {
                m.limit(hit);
            }
        }
        if let (Some((log, _)), Some(input)) = (&self.inputs, input) {
            log.send(crate::replay::InputRecord::new(input, &c));
        }
        let mut c = c;
        let response = std::mem::take(&mut c.response);
        if let Some(log) = &self.log {
            log.send(DecisionRecord::new(c, elapsed));
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
