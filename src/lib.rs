//! hallpass: per-action authorization for AI agents, as an Envoy ext_authz v3 sidecar.
//!
//! One request's way through the crate:
//! - [`request`]: a `CheckRequest` becomes a normalized [`request::Request`]
//!   (path, host, headers, query, identity inputs, body kept raw and parsed lazily).
//! - [`policy`]: the YAML policy is parsed ([`policy::parse`]), validated and compiled
//!   ([`policy::compile`]) once per load; [`policy::evaluate`] is the pure, synchronous
//!   decision function over a normalized request, returning a [`policy::Decision`].
//! - [`check`]: the Check as a pipeline of typed stages (request → identity → quarantine →
//!   cache → evaluate → holds/grants → limits → credentials → response).
//! - [`response`]: a Decision becomes the `CheckResponse` Envoy acts on.
//! - [`service`]: the tonic `Authorization/Check` server and gRPC health, `run(listener, shutdown)`.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` over plain HTTP.
//! - [`app`]: the server as library code: listeners, watcher, writer, one cancellation
//!   signal, one drain (what `hallpass serve` runs; tests start it in-process on port 0).
//! - [`state`]: the state store (memory or Redis) behind one trait; [`quarantine`]: the
//!   quarantine list in force and deny counting around it; [`limits`]: rate limits and
//!   budgets of allow rules; [`control`]: the authenticated control API (and its client);
//!   [`approvals`]: approval ids (the canonical reading of an action).
//! - [`settings`]: server configuration (file + flags); [`explain`]: the `check` command's report.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::string_slice,
        reason = "tests may panic"
    )
)]

pub mod admin;
pub mod app;
pub mod approvals;
pub mod cache;
pub mod check;
pub mod control;
pub mod credentials;
pub mod decision_log;
pub mod explain;
pub mod limits;
pub mod oauth;
pub mod policy;
pub mod policy_test;
pub mod quarantine;
pub mod reload;
pub mod replay;
pub mod request;
pub mod response;
pub mod service;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod webhook;
