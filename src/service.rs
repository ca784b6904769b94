//! The ext_authz v3 `Authorization/Check` service and the gRPC server around it.
//!
//! [`Authz::decide`] is the whole request path, synchronous: normalize → evaluate → respond.
//! The async `check` only wraps it. A CheckRequest without HTTP attributes, or a failure
//! inside hallpass, is answered with a deny, never with a gRPC error Envoy might be
//! configured to fail open on.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::policy::{evaluate, Decision, Policy};
use crate::request::Request;
use crate::response::{check_response, DecisionIds};
use crate::telemetry::Metrics;

/// The live policy: swapped atomically, read without locks.
pub type PolicyHandle = Arc<ArcSwap<Policy>>;

/// The authorization service.
#[derive(Clone)]
pub struct Authz {
    policy: PolicyHandle,
    ids: Arc<DecisionIds>,
    metrics: Option<Metrics>,
}

impl Authz {
    /// A service deciding against `policy`, recording into `metrics` if given.
    pub fn new(policy: PolicyHandle, metrics: Option<Metrics>) -> Authz {
        Authz { policy, ids: Arc::new(DecisionIds::new()), metrics }
    }

    /// The live policy handle.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Decide one CheckRequest at `now`: the decision (for logs) and the response for Envoy.
    pub fn decide(&self, req: CheckRequest, now: Timestamp) -> (Decision, String, CheckResponse) {
        let policy = self.policy.load();
        let decision_id = self.ids.next_id();
        let decision = catch_unwind(AssertUnwindSafe(|| match Request::from_check_request(req) {
            Ok(r) => evaluate(&policy, &r, now),
            Err(_) => Decision::invalid_request(),
        }))
        .unwrap_or_else(|_| Decision::internal_error());
        let resp = check_response(&decision, &decision_id, policy.settings.deny_status);
        (decision, decision_id, resp)
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(&self, request: GrpcRequest<CheckRequest>) -> Result<GrpcResponse<CheckResponse>, Status> {
        let start = Instant::now();
        let (decision, decision_id, resp) = self.decide(request.into_inner(), Timestamp::now());
        let elapsed = start.elapsed().as_secs_f64();
        if let Some(m) = &self.metrics {
            m.record(&decision, elapsed);
        }
        tracing::debug!(
            target: "hallpass::decision",
            decision_id = %decision_id,
            decision = if decision.allowed { "allow" } else { "deny" },
            rule = decision.rule.as_str(),
            dry_run = decision.dry_run,
            agent = decision.agent.as_deref().unwrap_or(""),
            on_behalf_of = decision.on_behalf_of.as_deref().unwrap_or(""),
            "decision"
        );
        Ok(GrpcResponse::new(resp))
    }
}

/// Serve ext_authz v3 and gRPC health on `listener` until `shutdown` resolves; in-flight
/// calls are finished before this returns.
pub async fn run(
    listener: TcpListener,
    authz: Authz,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AuthorizationServer<Authz>>().await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AuthorizationServer::new(authz))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
