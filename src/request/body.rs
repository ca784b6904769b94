//! Request bodies: strict JSON (duplicate keys refused), form-urlencoded, or unknown.
//!
//! A body is parsed at most once per request and only when a candidate rule reads it. What
//! cannot be read with certainty (absent, truncated by Envoy, another content type,
//! unparseable) is [`Parsed::Unknown`]: allow rules that read it do not match, deny rules do.

use std::cell::OnceCell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

/// Why a body is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownBody {
    /// No body was sent (or Envoy was not configured to send it).
    Absent,
    /// Envoy truncated it (`x-envoy-auth-partial-body: true`).
    Truncated,
    /// Neither JSON nor form-urlencoded (or no content type).
    OtherType,
    /// Declared JSON or form but did not parse strictly.
    Unparseable,
}

/// The parsed body.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// Nothing can be said about it.
    Unknown(UnknownBody),
    /// A strict JSON document.
    Json(Json),
    /// A form, as an object of strings.
    Form(Json),
}

/// The body as Envoy sent it, parsed on first use.
#[derive(Debug, Default)]
pub struct Body {
    /// Raw bytes (`raw_body`, or `body` as bytes).
    pub bytes: Vec<u8>,
    /// The media type (lowercase, parameters removed), if a content-type header was sent.
    pub media_type: Option<String>,
    /// Envoy said the body was truncated.
    pub truncated: bool,
    parsed: OnceCell<Parsed>,
}

impl Body {
    /// A body from its parts.
    pub fn new(bytes: Vec<u8>, content_type: Option<&str>, truncated: bool) -> Body {
        // A content type with a comma was sent twice (Envoy joins repeats): which one the
        // upstream believes is anyone's guess, so it is no type at all.
        let media_type = content_type.map(|ct| {
            if ct.contains(',') {
                String::new()
            } else {
                ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
            }
        });
        Body { bytes, media_type, truncated, parsed: OnceCell::new() }
    }

    /// The parse result if the body was parsed (by a rule that read it), without parsing.
    pub fn parsed_if_read(&self) -> Option<&Parsed> {
        self.parsed.get()
    }

    /// How the body was read, for logs and metrics: `json`, `form`, `absent`, `not_read`
    /// (present but no rule needed it), `truncated`, `other_type`, `unparseable`.
    pub fn outcome(&self) -> &'static str {
        match self.parsed.get() {
            None if self.bytes.is_empty() => "absent",
            None => "not_read",
            Some(Parsed::Json(_)) => "json",
            Some(Parsed::Form(_)) => "form",
            Some(Parsed::Unknown(UnknownBody::Absent)) => "absent",
            Some(Parsed::Unknown(UnknownBody::Truncated)) => "truncated",
            Some(Parsed::Unknown(UnknownBody::OtherType)) => "other_type",
            Some(Parsed::Unknown(UnknownBody::Unparseable)) => "unparseable",
        }
    }

    /// Parse (once) and return the body.
    pub fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(|| parse(&self.bytes, self.media_type.as_deref(), self.truncated))
    }
}

/// Whether a media type is JSON: `application/json` or any `type/subtype+json`.
pub fn is_json_media_type(mt: &str) -> bool {
    if mt == "application/json" {
        return true;
    }
    match mt.split_once('/') {
        Some((t, sub)) => !t.is_empty() && sub.len() > 5 && sub.ends_with("+json") && !mt.contains([',', ' ']),
        None => false,
    }
}

fn parse(bytes: &[u8], media_type: Option<&str>, truncated: bool) -> Parsed {
    if truncated {
        return Parsed::Unknown(UnknownBody::Truncated);
    }
    if bytes.is_empty() {
        return Parsed::Unknown(UnknownBody::Absent);
    }
    match media_type {
        Some(mt) if is_json_media_type(mt) => match parse_json(bytes) {
            Some(v) => Parsed::Json(v),
            None => Parsed::Unknown(UnknownBody::Unparseable),
        },
        Some("application/x-www-form-urlencoded") => match parse_form(bytes) {
            Some(v) => Parsed::Form(v),
            None => Parsed::Unknown(UnknownBody::Unparseable),
        },
        _ => Parsed::Unknown(UnknownBody::OtherType),
    }
}

/// Strict RFC 8259 JSON: no BOM, no NaN/Infinity, no numbers out of range, no lone
/// surrogates, no trailing data, and no duplicate key in any object.
pub fn parse_json(bytes: &[u8]) -> Option<Json> {
    serde_json::from_slice::<Strict>(bytes).ok().map(|s| s.0)
}

struct Strict(Json);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Number::from_f64(v).map(Json::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Map::new();
        // Lowercased forms of the keys that have ASCII capitals: `name` and `NAME` collide
        // too, because case-insensitive binders (Go's encoding/json, ASP.NET, Jackson's
        // case-insensitive mode) let the later one win.
        let mut folded: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            let folds = if k.bytes().any(|b| b.is_ascii_uppercase()) {
                let lower = k.to_ascii_lowercase();
                out.contains_key(&lower) || !folded.insert(lower)
            } else {
                folded.contains(&k)
            };
            if folds {
                return Err(de::Error::custom("duplicate key"));
            }
            // One search for the exact duplicate and the insert.
            match out.entry(k) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(v);
                }
                serde_json::map::Entry::Occupied(_) => return Err(de::Error::custom("duplicate key")),
            }
        }
        Ok(Json::Object(out))
    }
}

fn form_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(super::path::hex)?;
                let lo = s.get(i + 2).copied().and_then(super::path::hex)?;
                out.push(hi * 16 + lo);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Strict form-urlencoded: an object of strings; a repeated field, a bad escape or bad
/// UTF-8 makes it unparseable (`None`).
pub fn parse_form(bytes: &[u8]) -> Option<Json> {
    let mut out = Map::new();
    for pair in bytes.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (n, v) = match pair.iter().position(|b| *b == b'=') {
            Some(p) => (pair.get(..p)?, pair.get(p + 1..)?),
            None => (pair, &[][..]),
        };
        let name = form_decode(n)?;
        let value = form_decode(v)?;
        if out.contains_key(&name) {
            return None;
        }
        out.insert(name, Json::String(value));
    }
    Some(Json::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json() {
        assert!(parse_json(br#"{"a":1,"b":{"c":[1,2]}}"#).is_some());
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"x":{"a":1,"a":2}}"#,
            br#"[{"a":1,"a":1}]"#,
            br#"{"name":"search","NAME":"delete_all"}"#,
            br#"{"Method":"x","method":"y"}"#,
            br#"{"AB":1,"ab":2}"#,
            b"\xef\xbb\xbf{}",
            b"NaN",
            b"1e400",
            br#""\ud800""#,
            b"{} x",
            b"{'a':1}",
        ] {
            assert!(parse_json(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/vnd.api+json"));
        assert!(!is_json_media_type("application/json,text/plain"));
        assert!(!is_json_media_type("text/plain"));
        let b = Body::new(b"{}".to_vec(), Some("Application/JSON; charset=utf-8"), false);
        assert!(matches!(b.parsed(), Parsed::Json(_)));
        let b = Body::new(b"{}".to_vec(), Some("application/json"), true);
        assert!(matches!(b.parsed(), Parsed::Unknown(UnknownBody::Truncated)));
    }

    #[test]
    fn strict_form() {
        let v = parse_form(b"to=a%40example.com&subject=hi+there").unwrap_or_default();
        assert_eq!(v["to"], "a@example.com");
        assert_eq!(v["subject"], "hi there");
        assert!(parse_form(b"a=1&a=2").is_none());
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(b"a=%FF").is_none());
    }
}
