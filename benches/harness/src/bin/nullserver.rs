//! The physical baseline: an ext_authz v3 server that does nothing but answer OK (with
//! `--parse-body`, it first parses the request body with serde_json, the floor for body
//! requests). Same tonic stack and TCP_NODELAY as hallpass. With `--http-listen ADDR` it is
//! instead a plain HTTP/1.1 upstream answering `200 ok` (for the end-to-end runs). With
//! `--mimic` it answers like a hallpass allow (metadata and an upstream header).
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

struct Null {
    parse_body: bool,
    // `--mimic`: answer with what hallpass answers an allow with (dynamic metadata with six
    // fields, an upstream header), to tell Envoy's cost of applying them from hallpass's own.
    mimic: bool,
}

fn mimic_metadata() -> Struct {
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.to_string())) };
    let fields = [
        ("decision", "allow"),
        ("rule", "mail-send"),
        ("decision_id", "0195f3c2a1b2c3d4e5f60718293a4b5c"),
        ("policy_revision", "3f2a9c0d1e4b"),
        ("agent", "triage-bot"),
        ("on_behalf_of", "alice"),
    ];
    Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), s(v))).collect() }
}

#[tonic::async_trait]
impl Authorization for Null {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if self.parse_body {
            let body = req
                .get_ref()
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .map(|h| h.raw_body.as_slice())
                .unwrap_or(&[]);
            let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            std::hint::black_box(v);
        }
        if self.mimic {
            return Ok(Response::new(CheckResponse {
                status: Some(rpc::Status { code: 0, message: String::new(), details: vec![] }),
                dynamic_metadata: Some(mimic_metadata()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-hallpass-decision-id".into(),
                            value: "0195f3c2a1b2c3d4e5f60718293a4b5c".into(),
                            raw_value: Vec::new(),
                        }),
                        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            }));
        }
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status { code: 0, message: String::new(), details: vec![] }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        }))
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9291".into());
    let parse_body = args.iter().any(|a| a == "--parse-body");
    let mimic = args.iter().any(|a| a == "--mimic");
    if let Some(http) = args.iter().position(|a| a == "--http-listen").and_then(|i| args.get(i + 1)) {
        eprintln!("nullserver: HTTP/1.1 upstream on {http}");
        hallpass_bench_harness::http1::serve_ok(http).await.expect("serve");
        return;
    }
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("nullserver on {addr} (parse_body={parse_body}, mimic={mimic})");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|c| {
        c.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Null { parse_body, mimic }))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}
