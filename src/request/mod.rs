//! CheckRequest → normalized [`Request`]: what the policy sees of one HTTP request.
//!
//! Strings are moved out of the CheckRequest, not copied. The path is normalized here (or
//! refused: [`path::PathError`]); identity is resolved later, against the policy's identity
//! sources, because which sources count is the policy's choice.

pub mod body;
pub mod build;
pub mod envoy;
pub mod path;

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::{value::Kind, Struct};

pub use body::{Body, Parsed, UnknownBody};
pub use path::PathError;

/// The metadata namespace Envoy's jwt_authn filter writes verified payloads to.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The header Envoy adds to the CheckRequest when it buffered a body.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// A normalized HTTP request.
#[derive(Debug)]
pub struct Request {
    /// The method as sent.
    pub method: String,
    /// `:authority` lowercased, port and a trailing dot removed.
    pub host: String,
    /// Whether `host` is a well-formed host name or IP literal. A malformed one makes every
    /// `hosts` test unknown (deny rules match it, allow rules do not).
    pub host_valid: bool,
    /// The normalized path without query, or why it was refused.
    pub path: Result<String, PathError>,
    /// Decoded query parameters in order; names may repeat.
    pub query: Vec<(String, String)>,
    /// The query read with `;` as a separator too (Rails, Rack 2), when it has a `;`; its
    /// values are more readings of their parameters. Empty otherwise.
    pub query_alt: Vec<(String, String)>,
    /// The query string had more than [`path::MAX_QUERY_PARAMS`] parameters: every query
    /// test is unknown (the `qs` parser drops the rest).
    pub query_overflow: bool,
    /// Some header name has a `_`: CGI/WSGI upstreams read `x_agent_id` as `x-agent-id`.
    pub underscore_headers: bool,
    /// The request may carry a method override (an override header, a `_method` query
    /// parameter, or a body that may hold a `_method` field).
    pub method_override: bool,
    /// The method has one reading: uppercase as sent, not `HEAD`, no override possible.
    pub method_plain: bool,
    /// Headers with lowercase names; repeated headers joined with `,` (as Envoy does).
    pub headers: HashMap<String, String>,
    /// `attributes.source.principal`, if non-empty.
    pub principal: Option<String>,
    /// The jwt_authn metadata: provider → verified payload.
    pub jwt: Option<Struct>,
    /// The body, parsed on first use.
    pub body: Body,
    /// The `upstream` of the route Envoy selected (route metadata, namespace `hallpass`).
    pub route_upstream: Option<String>,
    /// Set only by `hallpass check --agent`: the agent id, bypassing identity sources.
    pub agent_override: Option<String>,
    /// Set only by `hallpass check --on-behalf-of`.
    pub on_behalf_of_override: Option<String>,
}

/// A request as the policy sees it, before normalization: what [`Request::from_parts`]
/// needs, and what the Envoy adapter ([`envoy`]) takes out of a CheckRequest.
#[derive(Debug, Default)]
pub struct RequestParts {
    /// The method as sent.
    pub method: String,
    /// The path with its query string (`:path`).
    pub path: String,
    /// `:authority` as sent.
    pub host: String,
    /// Headers with lowercase names, repeated ones joined with `,`.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The mTLS principal, if any.
    pub principal: Option<String>,
    /// Verified JWT payloads (provider → payload), as Envoy's jwt_authn puts them.
    pub jwt: Option<Struct>,
    /// The `upstream` of the `hallpass` namespace of the route Envoy selected (its
    /// `route_metadata_context`): what a credential bound to a route is checked against.
    pub route_upstream: Option<String>,
}

/// The CheckRequest had no HTTP request attributes to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingHttpAttributes;

impl std::fmt::Display for MissingHttpAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the CheckRequest carries no HTTP request attributes")
    }
}

impl Request {
    /// Normalize a request from its parts (no Envoy types: `hallpass test`, replay). Header
    /// names must be lowercase, repeated headers joined with `,` (as Envoy does).
    pub fn from_parts(p: RequestParts) -> Request {
        let RequestParts {
            method,
            path: raw_path,
            host: host_raw,
            headers,
            body: bytes,
            principal,
            jwt,
            route_upstream,
        } = p;
        let (path_part, query_part) = path::split(&raw_path);
        let path = path::normalize(path_part);
        let query = path::parse_query(query_part);
        // Rails and Rack 2 (and older Python and Go) also split the query on `;`.
        let query_alt =
            if query_part.contains(';') { path::parse_query_with(query_part, &['&', ';']) } else { Vec::new() };
        let query_overflow = path::query_overflows(query_part);

        // One pass over the header names: underscore spellings, method-override headers.
        let mut underscore_headers = false;
        let mut override_header = false;
        for k in headers.keys() {
            underscore_headers |= k.contains('_');
            override_header |= METHOD_OVERRIDE_HEADERS.iter().any(|h| same_header(k, h));
        }
        let host = normalize_host(&host_raw);
        let host_valid = valid_host(&host);
        let principal = principal.filter(|p| !p.is_empty());

        // Complete only if every part says `false` (or Envoy added no header: no body).
        let truncated = headers
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| !v.split(',').all(|p| p.trim().eq_ignore_ascii_case("false")));
        // Only a body has an encoding to look up (a body-less request skips the hash lookup).
        let encoding = if bytes.is_empty() { None } else { headers.get("content-encoding").map(String::as_str) };
        let body = Body::new(bytes, headers.get("content-type").map(String::as_str), encoding, truncated);
        let method_override = override_header
            || query.iter().chain(&query_alt).any(|(n, _)| param_is(n, METHOD_OVERRIDE_PARAM))
            || body_may_override(&body);

        // One reading of the method (the common case): `methods` tests compare it alone.
        let method_plain =
            !method_override && !method.eq_ignore_ascii_case("HEAD") && !method.bytes().any(|b| b.is_ascii_lowercase());
        Request {
            method_plain,
            method,
            host,
            host_valid,
            path,
            query,
            query_alt,
            query_overflow,
            underscore_headers,
            method_override,
            headers,
            principal,
            jwt,
            body,
            route_upstream,
            agent_override: None,
            on_behalf_of_override: None,
        }
    }

    /// The value of a header (lowercase name), as Envoy joined it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Every value a header has in some upstream's reading: the header itself, and any
    /// header whose name differs only by `_` for `-` (CGI/WSGI map both onto one variable).
    /// Each value as Envoy joined it (comma-separated parts not split).
    pub fn header_values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + Clone + 'n
    where
        'a: 'n,
    {
        let exact = self.header(name);
        let variants = self
            .underscore_headers
            .then(|| {
                self.headers
                    .iter()
                    .filter(move |(k, _)| k.as_str() != name && same_header(k, name))
                    .map(|(_, v)| v.as_str())
            })
            .into_iter()
            .flatten();
        exact.into_iter().chain(variants)
    }

    /// Whether a header arrives under another spelling too (`x_on_behalf_of` beside or
    /// instead of `x-on-behalf-of`).
    pub fn header_has_variant(&self, name: &str) -> bool {
        self.underscore_headers && self.headers.keys().any(|k| k.as_str() != name && same_header(k, name))
    }

    /// The raw values of query parameter `name` in every reading: `name` itself, its
    /// bracket forms (`name[]`, `name[0]`, `name[x]`, `[name]`: PHP, Rails, `qs`), and names
    /// equal to it under case folding (ASP.NET binds query names case-insensitively). Comma
    /// lists are not split here (see `policy::eval`).
    pub fn query_values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + Clone + 'n
    where
        'a: 'n,
    {
        self.query.iter().chain(&self.query_alt).filter(move |(n, _)| param_is(n, name)).map(|(_, v)| v.as_str())
    }

    /// The method overrides a body holds (see [`Self::method_overrides`]); false when they
    /// cannot be known.
    fn body_method_overrides(&self, mut each: impl FnMut(&str)) -> bool {
        let b = &self.body;
        let kind = OverrideBody::of(b);
        if b.bytes.is_empty() || kind == OverrideBody::None {
            return true;
        }
        if b.truncated || b.encoded || b.foreign_charset {
            return false;
        }
        let raw_mention = mentions_method(&b.bytes);
        if kind == OverrideBody::Json {
            // method-override's body getter and Laravel read `_method` of a JSON body.
            return match b.parsed() {
                Parsed::Json(serde_json::Value::Object(o)) => match body::lookup_key(o, METHOD_OVERRIDE_PARAM) {
                    body::KeyLookup::Found(serde_json::Value::String(v)) => {
                        each(v);
                        true
                    }
                    body::KeyLookup::Missing => true,
                    body::KeyLookup::Found(_) | body::KeyLookup::Folded => false,
                },
                Parsed::Json(_) => true,
                // Unparseable: unknown only where it may mention the field.
                _ => !(raw_mention || memchr::memmem::find(&b.bytes, b"\\u").is_some()),
            };
        }
        // A form (or a body without a content type, which Rack reads as a form): its fields,
        // names decoded leniently. Another type (multipart, text): unknown where it names
        // `_method` (or may, through a percent escape), which multipart handlers (Rack, PHP)
        // read.
        if kind == OverrideBody::Multipart {
            return !raw_mention;
        }
        for v in body::form_field_values(&b.bytes, METHOD_OVERRIDE_PARAM) {
            each(&v);
        }
        // A form body that is JSON (or JSON behind a BOM) is JSON to some upstreams.
        !(raw_mention && b.form_looks_like_json())
    }

    /// Visit every method-override reading (policy-language.md "Method"): the values of the
    /// override headers, of `_method` query parameters and form fields, each whole and as
    /// its comma-separated parts (trimmed; empty ones skipped). Returns false when some
    /// reading cannot be known (a form body that is truncated, encoded or in a foreign
    /// charset).
    pub fn method_overrides(&self, mut f: impl FnMut(&str)) -> bool {
        if !self.method_override {
            return true;
        }
        let mut each = |v: &str| {
            let v = v.trim();
            if !v.is_empty() {
                f(v);
            }
            if v.contains(',') {
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    f(part);
                }
            }
        };
        for h in METHOD_OVERRIDE_HEADERS {
            for v in self.header_values(h) {
                each(v);
            }
        }
        for (n, v) in self.query.iter().chain(&self.query_alt) {
            if param_is(n, METHOD_OVERRIDE_PARAM) {
                each(v);
            }
        }
        self.body_method_overrides(each)
    }

    /// A claim of a verified JWT payload: `provider`, then the claim: first as one literal
    /// key (namespaced claims such as `https://example.com/agent` contain dots), else as a
    /// dotted path. Only a non-empty string counts.
    pub fn jwt_claim(&self, provider: &str, claim: &[String]) -> Option<&str> {
        let payload = self.jwt.as_ref()?.fields.get(provider)?;
        if claim.len() > 1 {
            if let Some(Kind::StructValue(s)) = &payload.kind {
                if let Some(v) = s.fields.get(&claim.join(".")) {
                    return match &v.kind {
                        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s),
                        _ => None,
                    };
                }
            }
        }
        let mut cur = payload;
        for part in claim {
            match &cur.kind {
                Some(Kind::StructValue(s)) => cur = s.fields.get(part)?,
                _ => return None,
            }
        }
        match &cur.kind {
            Some(Kind::StringValue(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

/// Headers that override the method (Express method-override, Rails, Google APIs).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];
/// The query parameter and form field that override the method (Rails/Rack, Express).
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Whether two lowercase header names are one variable to a CGI/WSGI upstream (`_` = `-`).
pub fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| x == y || (matches!(x, b'-' | b'_') && matches!(y, b'-' | b'_')))
}

/// The parameter a query (or form) name is a reading of: the name before its first bracket
/// (`a[]`, `a[0]`, `a[x]` are readings of `a`, as PHP, Rails and `qs` read them), after
/// leading brackets are dropped (`qs` reads `[a]` as `a`, Rack reads `]a` as `a`).
pub fn query_base(name: &str) -> &str {
    let n = name.trim_start_matches(['[', ']']);
    match n.find(['[', ']']) {
        Some(i) => n.get(..i).unwrap_or(n),
        None => n,
    }
}

/// Whether a query (or form) parameter named `n` is a reading of parameter `name`: its
/// bracket base (`qs`, Rails, PHP: `a[]`, `[a]`), that base under case folding (ASP.NET binds
/// names case-insensitively), or PHP's mangled name (leading spaces dropped, the name ends at
/// a NUL, spaces and dots become `_`: ` a.b` is `a_b` to PHP).
pub fn param_is(n: &str, name: &str) -> bool {
    let base = query_base(n);
    if base == name || body::fold_eq(base, name) {
        return true;
    }
    n.bytes().any(|b| matches!(b, b' ' | b'.' | 0)) && php_name(n) == name
}

/// A parameter name as PHP registers it.
fn php_name(n: &str) -> String {
    let n = n.trim_start_matches(' ');
    let n = n.split('\0').next().unwrap_or("");
    let n = match n.find('[') {
        Some(i) => n.get(..i).unwrap_or(n),
        None => n,
    };
    n.replace([' ', '.'], "_")
}

/// Whether bytes mention `_method` in any ASCII case (a key equal under folding is a
/// reading too).
fn mentions_method(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'_', bytes).any(|i| bytes.get(i + 1..i + 7).is_some_and(|w| w.eq_ignore_ascii_case(b"method")))
}

/// Whether a request body may hold a method override: always for a form (or a body without a
/// content type, which Rack reads as one) and for a body whose bytes cannot be read as sent
/// (truncated, encoded, a foreign charset); for JSON where it mentions `_method` or has a
/// `\u` escape that could spell it; for other types (multipart) where it mentions `_method`
/// or a percent-encoded underscore. A fast byte search: most bodies cost one `memchr` pass.
fn body_may_override(body: &Body) -> bool {
    let b = &body.bytes[..];
    if b.is_empty() {
        return false;
    }
    match OverrideBody::of(body) {
        OverrideBody::None => false,
        OverrideBody::Form => true,
        _ if body.truncated || body.encoded || body.foreign_charset => true,
        OverrideBody::Json => mentions_method(b) || memchr::memmem::find(b, b"\\u").is_some(),
        OverrideBody::Multipart => mentions_method(b),
    }
}

/// Which bodies upstreams read a `_method` override from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverrideBody {
    /// A form, or a body without a content type (Rack reads it as a form).
    Form,
    /// JSON (method-override's documented body getter, Laravel).
    Json,
    /// `multipart/form-data` (Rack, PHP, Symfony read its fields).
    Multipart,
    /// Anything else (text, octet-stream, images): no upstream reads `_method` from it.
    None,
}

impl OverrideBody {
    fn of(body: &Body) -> OverrideBody {
        match body.media_type.as_deref() {
            None => OverrideBody::Form,
            Some(_) if body.is_form() => OverrideBody::Form,
            Some(mt) if body::is_json_media_type(mt) => OverrideBody::Json,
            Some("multipart/form-data") => OverrideBody::Multipart,
            // A content type sent twice (no media type): what the upstream believes is
            // anyone's guess.
            Some("") => OverrideBody::Multipart,
            Some(_) => OverrideBody::None,
        }
    }
}

/// Add a header to a map of lowercase names, joining a repeat with `,` (as Envoy does).
pub(crate) fn add_header(headers: &mut HashMap<String, String>, key: String, value: String) {
    let key = if key.bytes().any(|b| b.is_ascii_uppercase()) { key.to_ascii_lowercase() } else { key };
    match headers.get_mut(&key) {
        Some(existing) => {
            existing.push(',');
            existing.push_str(&value);
        }
        None => {
            headers.insert(key, value);
        }
    }
}

/// A normalized host is a DNS name (letters, digits, `-`, `_`, `.`) or a bracketed IPv6
/// literal.
pub fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !h.is_empty()
        && !h.starts_with('.')
        && !h.contains("..")
        && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Lowercase, drop the port (and IPv6 brackets stay), drop one trailing dot.
pub fn normalize_host(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    let no_port = if lower.starts_with('[') {
        match lower.find(']') {
            Some(end) => lower.get(..=end).unwrap_or(&lower).to_string(),
            None => lower,
        }
    } else {
        match lower.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
            _ => lower,
        }
    };
    match no_port.strip_suffix('.') {
        Some(h) => h.to_string(),
        None => no_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(normalize_host("Mail.Example.COM:8443"), "mail.example.com");
        assert_eq!(normalize_host("mail.example.com."), "mail.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert!(valid_host("mail.example.com") && valid_host("[::1]") && valid_host("10.0.0.1"));
        for bad in ["", "mail.example.com:x", "a b", "evil.com@mail.example.com", "[::1", ".x", "a..b"] {
            assert!(!valid_host(&normalize_host(bad)), "{bad}");
        }
    }
}
