//! The Envoy adapter: a `CheckRequest` (ext_authz v3, as Envoy 1.40 fills it: envoy-facts.md)
//! becomes [`RequestParts`], then a normalized [`Request`]. The only part of the request path
//! that knows Envoy's types; strings are moved out of the CheckRequest, not copied.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;

use super::{add_header, MissingHttpAttributes, Request, RequestParts, JWT_AUTHN_NAMESPACE};

/// The route metadata namespace hallpass reads (`upstream`: what a credential's `route` names).
pub const ROUTE_NAMESPACE: &str = "hallpass";

impl Request {
    /// Normalize a CheckRequest, consuming it.
    pub fn from_check_request(req: CheckRequest) -> Result<Request, MissingHttpAttributes> {
        Ok(Request::from_parts(parts(req)?))
    }
}

/// Take the parts of a CheckRequest: `attributes.request.http` (headers from both `headers`
/// and `header_map`; path, method and host from their fields or the pseudo-headers), the
/// peer's principal and the jwt_authn metadata.
pub fn parts(req: CheckRequest) -> Result<RequestParts, MissingHttpAttributes> {
    let attrs = req.attributes.ok_or(MissingHttpAttributes)?;
    let http = attrs.request.and_then(|r| r.http).ok_or(MissingHttpAttributes)?;

    // Envoy sends lowercase names: then its map is ours as it is (no re-hashing).
    let mut headers: HashMap<String, String> =
        if http.headers.keys().all(|k| !k.bytes().any(|b| b.is_ascii_uppercase())) {
            http.headers
        } else {
            let mut h = HashMap::with_capacity(http.headers.len());
            for (k, v) in http.headers {
                add_header(&mut h, k, v);
            }
            h
        };
    if let Some(map) = http.header_map {
        for hv in map.headers {
            let value =
                if hv.raw_value.is_empty() { hv.value } else { String::from_utf8_lossy(&hv.raw_value).into_owned() };
            add_header(&mut headers, hv.key, value);
        }
    }
    let path = if http.path.is_empty() { headers.get(":path").cloned().unwrap_or_default() } else { http.path };
    let host = if !http.host.is_empty() {
        http.host
    } else if let Some(h) = headers.get(":authority").or_else(|| headers.get("host")) {
        h.clone()
    } else {
        String::new()
    };
    let method = if http.method.is_empty() { headers.get(":method").cloned().unwrap_or_default() } else { http.method };
    let principal = attrs.source.map(|s| s.principal);
    let jwt = attrs.metadata_context.and_then(|mut m| m.filter_metadata.remove(JWT_AUTHN_NAMESPACE));
    // The route Envoy selected, as its `hallpass` metadata names it (the filter's
    // `route_metadata_context_namespaces: [hallpass]`).
    let route_upstream = attrs
        .route_metadata_context
        .and_then(|mut m| m.filter_metadata.remove(ROUTE_NAMESPACE))
        .and_then(|mut s| s.fields.remove("upstream"))
        .and_then(|v| match v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s),
            _ => None,
        });
    let body = if !http.raw_body.is_empty() { http.raw_body } else { http.body.into_bytes() };
    Ok(RequestParts { method, path, host, headers, body, principal, jwt, route_upstream })
}
