//! Request bodies: strict JSON (duplicate keys refused), form-urlencoded, or unknown.
//!
//! A body is parsed at most once per request and only when a candidate rule reads it. What
//! cannot be read with certainty (absent, truncated by Envoy, another content type,
//! unparseable, or readable by an upstream as another document: a foreign charset, a
//! content-encoding, a form that is JSON) is [`Parsed::Unknown`]: allow rules that read it do
//! not match, deny rules do.

use std::cell::OnceCell;
use std::collections::HashSet;
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
    /// The content type names a charset other than UTF-8: an upstream may decode UTF-7 or
    /// UTF-16 into another document.
    Charset,
    /// A `content-encoding` other than `identity`: the upstream inflates what hallpass sees
    /// compressed.
    Encoded,
    /// Upstreams read it as another document: a form body that is JSON, a form with more
    /// than [`MAX_FORM_FIELDS`] fields, or bracketed field names (`a[]`, `user[name]`).
    Ambiguous,
}

/// The most form fields read (the `qs` parser's `parameterLimit` drops the rest).
pub const MAX_FORM_FIELDS: usize = 1000;

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
    /// The content type names a `charset` other than `utf-8` / `utf8`.
    pub foreign_charset: bool,
    /// A `content-encoding` other than `identity` was sent.
    pub encoded: bool,
    /// Envoy said the body was truncated.
    pub truncated: bool,
    parsed: OnceCell<Parsed>,
}

/// Whether a content type's parameters name a charset other than UTF-8 (any case, quoted
/// or not; `utf8` too). A parameter list that cannot be read is foreign as well.
pub fn foreign_charset(content_type: &str) -> bool {
    content_type.split(';').skip(1).any(|param| {
        let Some((name, value)) = param.split_once('=') else {
            // `charset` without a value is not UTF-8 for sure.
            return param.trim().eq_ignore_ascii_case("charset");
        };
        if !name.trim().eq_ignore_ascii_case("charset") {
            return false;
        }
        let v = value.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).trim();
        !(v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8"))
    })
}

impl Body {
    /// A body from its parts: the bytes, the `content-type` and `content-encoding` header
    /// values (as Envoy joined them), and Envoy's truncation flag.
    pub fn new(bytes: Vec<u8>, content_type: Option<&str>, content_encoding: Option<&str>, truncated: bool) -> Body {
        // A content type with a comma was sent twice (Envoy joins repeats): which one the
        // upstream believes is anyone's guess, so it is no type at all.
        let media_type = content_type.map(|ct| {
            if ct.contains(',') {
                String::new()
            } else {
                ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
            }
        });
        let foreign_charset = content_type.is_some_and(foreign_charset);
        let encoded = content_encoding.is_some_and(|e| {
            let e = e.trim();
            !(e.is_empty() || e.eq_ignore_ascii_case("identity"))
        });
        Body { bytes, media_type, foreign_charset, encoded, truncated, parsed: OnceCell::new() }
    }

    /// The parse result if the body was parsed (by a rule that read it), without parsing.
    pub fn parsed_if_read(&self) -> Option<&Parsed> {
        self.parsed.get()
    }

    /// How the body was read, for logs and metrics: `json`, `form`, `absent`, `not_read`
    /// (present but no rule needed it), `truncated`, `other_type`, `unparseable`, `charset`,
    /// `encoded`, `ambiguous`.
    pub fn outcome(&self) -> &'static str {
        match self.parsed.get() {
            None if self.bytes.is_empty() => "absent",
            None => "not_read",
            Some(Parsed::Json(_)) => "json",
            Some(Parsed::Form(_)) => "form",
            Some(Parsed::Unknown(u)) => u.label(),
        }
    }

    /// Parse (once) and return the body.
    pub fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(|| self.parse())
    }

    /// Whether the media type is form-urlencoded.
    pub fn is_form(&self) -> bool {
        self.media_type.as_deref() == Some("application/x-www-form-urlencoded")
    }

    /// Whether a body sent as a form may be JSON to an upstream that parses JSON whatever
    /// the content type: its first non-blank byte is `{` or `[`, or it starts with a byte-order
    /// mark or holds a NUL (UTF-16/32 JSON, which Python's `json.loads` and .NET accept).
    pub fn form_looks_like_json(&self) -> bool {
        let b = &self.bytes[..];
        b.starts_with(&[0xEF, 0xBB, 0xBF])
            || b.starts_with(&[0xFE, 0xFF])
            || b.starts_with(&[0xFF, 0xFE])
            || memchr::memchr(0, b).is_some()
            || matches!(b.iter().find(|c| !c.is_ascii_whitespace()), Some(b'{' | b'['))
    }

    fn parse(&self) -> Parsed {
        if self.truncated {
            return Parsed::Unknown(UnknownBody::Truncated);
        }
        if self.bytes.is_empty() {
            return Parsed::Unknown(UnknownBody::Absent);
        }
        let json = self.media_type.as_deref().is_some_and(is_json_media_type);
        let form = self.is_form();
        if !json && !form {
            return Parsed::Unknown(UnknownBody::OtherType);
        }
        if self.encoded {
            return Parsed::Unknown(UnknownBody::Encoded);
        }
        if self.foreign_charset {
            return Parsed::Unknown(UnknownBody::Charset);
        }
        if json {
            return match parse_json(&self.bytes) {
                Some(v) => Parsed::Json(v),
                None => Parsed::Unknown(UnknownBody::Unparseable),
            };
        }
        // Many upstreams parse JSON whatever the content type says.
        if self.form_looks_like_json() {
            return Parsed::Unknown(UnknownBody::Ambiguous);
        }
        match parse_form(&self.bytes) {
            Ok(v) => Parsed::Form(v),
            Err(FormError::Ambiguous) => Parsed::Unknown(UnknownBody::Ambiguous),
            Err(FormError::Invalid) => Parsed::Unknown(UnknownBody::Unparseable),
        }
    }
}

impl UnknownBody {
    /// A short, bounded label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            UnknownBody::Absent => "absent",
            UnknownBody::Truncated => "truncated",
            UnknownBody::OtherType => "other_type",
            UnknownBody::Unparseable => "unparseable",
            UnknownBody::Charset => "charset",
            UnknownBody::Encoded => "encoded",
            UnknownBody::Ambiguous => "ambiguous",
        }
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

/// One character under the simple case folding case-insensitive binders apply (Go's
/// `encoding/json`, .NET, Jackson): the lowercase of its uppercase, where each is a single
/// character (`ſ` and `S` fold to `s`, the Kelvin sign and `K` to `k`, `ς` and `Σ` to `σ`).
/// It equates at least what Go's `unicode.SimpleFold` orbits do (and a few more, such as the
/// dotless `ı` with `i`, as .NET's upper-casing does): fail closed.
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut up = c.to_uppercase();
    let u = match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    };
    let mut low = u.to_lowercase();
    match (low.next(), low.next()) {
        (Some(l), None) => l,
        _ => u,
    }
}

/// Whether a key folds to itself without work: ASCII without capitals (almost every key).
fn fold_stable(k: &str) -> bool {
    k.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase())
}

/// The folded form of a key (see [`fold_char`]).
pub fn fold_key(k: &str) -> String {
    k.chars().map(fold_char).collect()
}

/// Whether two keys are equal under [`fold_char`] folding.
pub fn fold_eq(a: &str, b: &str) -> bool {
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

/// A key looked up in a JSON object the way upstreams bind it.
#[derive(Debug, Clone, Copy)]
pub enum KeyLookup<'a> {
    /// The exact key.
    Found(&'a Json),
    /// No exact key, but one equal under case folding: a case-insensitive binder (Go's
    /// `encoding/json`) reads it, an exact one does not: unknown.
    Folded,
    /// No such key in any reading.
    Missing,
}

/// Look `key` up in `map`: exactly, else under case folding (see [`KeyLookup`]).
pub fn lookup_key<'a>(map: &'a Map<String, Json>, key: &str) -> KeyLookup<'a> {
    if let Some(v) = map.get(key) {
        return KeyLookup::Found(v);
    }
    if map.keys().any(|k| fold_eq(k, key)) {
        KeyLookup::Folded
    } else {
        KeyLookup::Missing
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
        // Folded forms of the keys that do not fold to themselves: `name` and `NAME`, or
        // `params` and `paramſ`, collide too, because case-insensitive binders (Go's
        // encoding/json folds Unicode; ASP.NET, Jackson's case-insensitive mode) bind both to
        // one field. Keys that are ASCII without capitals fold to themselves (no work).
        let mut folded: HashSet<String> = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            let collides = if fold_stable(&k) {
                !folded.is_empty() && folded.contains(&k)
            } else {
                let f = fold_key(&k);
                out.contains_key(&f) || !folded.insert(f)
            };
            if collides {
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

/// Why a form body could not be read as one object of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A repeated field, a bad escape or bad UTF-8.
    Invalid,
    /// Upstreams read it otherwise: more than [`MAX_FORM_FIELDS`] fields (`qs` drops the
    /// rest), a bracketed name (`a[]`, `user[name]`: `qs`, PHP and Rails build arrays and
    /// objects from them), or a name PHP mangles (a space, a dot or a NUL in it).
    Ambiguous,
}

/// Strict form-urlencoded: an object of strings.
pub fn parse_form(bytes: &[u8]) -> Result<Json, FormError> {
    if bytes.split(|b| *b == b'&').count() > MAX_FORM_FIELDS {
        return Err(FormError::Ambiguous);
    }
    let mut out = Map::new();
    let mut seen: HashSet<String> = HashSet::new();
    for pair in bytes.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (n, v) = match pair.iter().position(|b| *b == b'=') {
            Some(p) => (pair.get(..p).ok_or(FormError::Invalid)?, pair.get(p + 1..).ok_or(FormError::Invalid)?),
            None => (pair, &[][..]),
        };
        let name = form_decode(n).ok_or(FormError::Invalid)?;
        let value = form_decode(v).ok_or(FormError::Invalid)?;
        // Bracketed names build arrays and objects (`qs`, PHP, Rails); PHP also drops leading
        // spaces, ends a name at a NUL and reads spaces and dots as `_`.
        if name.contains(['[', ']', '.', '\0']) || name.starts_with(' ') || name.contains(' ') {
            return Err(FormError::Ambiguous);
        }
        // Names equal under case folding are one field to ASP.NET (first value wins there).
        let folded = fold_key(&name);
        if out.contains_key(&name) || !seen.insert(folded) {
            return Err(FormError::Invalid);
        }
        out.insert(name, Json::String(value));
    }
    Ok(Json::Object(out))
}

/// The values of a form field that is a reading of `name` (see `request::param_is`: `name[...]`,
/// `[name]`, a case-folded or PHP-mangled spelling) in a form body, decoded leniently,
/// without parsing the rest strictly: the `_method` override reading.
pub fn form_field_values<'a>(bytes: &'a [u8], name: &'a str) -> impl Iterator<Item = String> + 'a {
    bytes.split(|b| *b == b'&').filter_map(move |pair| {
        let (n, v) = match pair.iter().position(|b| *b == b'=') {
            Some(p) => (pair.get(..p)?, pair.get(p + 1..)?),
            None => (pair, &[][..]),
        };
        let n = lenient_form_decode(n);
        super::param_is(&n, name).then(|| lenient_form_decode(v))
    })
}

fn lenient_form_decode(s: &[u8]) -> String {
    let plus: Vec<u8> = s.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    percent_encoding::percent_decode(&plus).decode_utf8_lossy().into_owned()
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
            "{\"params\":{},\"param\u{17f}\":{}}".as_bytes(),
            br#"{"param\u017f":{},"params":{}}"#,
            "{\"k\":1,\"\u{212a}\":2}".as_bytes(),
            "{\"\u{3c3}\":1,\"\u{3a3}\":2}".as_bytes(),
            "{\"\u{3c2}\":1,\"\u{3c3}\":2}".as_bytes(),
            br#"{"Email":1,"email":2}"#,
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
    fn folding() {
        for (a, b) in [
            ("params", "param\u{17f}"),
            ("k", "\u{212a}"),
            ("Email", "email"),
            ("\u{3a3}", "\u{3c2}"),
            ("\u{c5}", "\u{212b}"),
            ("\u{3b8}", "\u{3d1}"),
            ("\u{1c4}", "\u{1c5}"),
            ("\u{b5}", "\u{3bc}"),
        ] {
            assert!(fold_eq(a, b), "{a} {b}");
        }
        for (a, b) in [("params", "param"), ("ss", "\u{df}"), ("a", "b")] {
            assert!(!fold_eq(a, b), "{a} {b}");
        }
        // Folding is idempotent on every character, so equal folds is an equivalence.
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(fold_char(fold_char(c)), fold_char(c), "U+{:04X}", c as u32);
        }
        let o = parse_json(br#"{"Email":"x"}"#).unwrap_or_default();
        let map = o.as_object().cloned().unwrap_or_default();
        assert!(matches!(lookup_key(&map, "Email"), KeyLookup::Found(_)));
        assert!(matches!(lookup_key(&map, "email"), KeyLookup::Folded));
        assert!(matches!(lookup_key(&map, "name"), KeyLookup::Missing));
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/vnd.api+json"));
        assert!(!is_json_media_type("application/json,text/plain"));
        assert!(!is_json_media_type("text/plain"));
        let b = Body::new(b"{}".to_vec(), Some("Application/JSON; charset=utf-8"), None, false);
        assert!(matches!(b.parsed(), Parsed::Json(_)));
        let b = Body::new(b"{}".to_vec(), Some("application/json"), None, true);
        assert!(matches!(b.parsed(), Parsed::Unknown(UnknownBody::Truncated)));
        for ct in [
            "application/json; charset=UTF8",
            "application/json;charset=\"utf-8\"",
            "application/json; Charset = Utf-8",
        ] {
            assert!(matches!(Body::new(b"{}".to_vec(), Some(ct), None, false).parsed(), Parsed::Json(_)), "{ct}");
        }
        for ct in [
            "application/json; charset=utf-7",
            "application/json; charset=UTF-16",
            "application/json;charset",
            "application/json; charset=utf-8; charset=latin1",
            "application/x-www-form-urlencoded; charset=utf-7",
        ] {
            let b = Body::new(b"{}".to_vec(), Some(ct), None, false);
            assert!(matches!(b.parsed(), Parsed::Unknown(UnknownBody::Charset)), "{ct}");
        }
        for enc in ["gzip", "identity, gzip", "x"] {
            let b = Body::new(b"{}".to_vec(), Some("application/json"), Some(enc), false);
            assert!(matches!(b.parsed(), Parsed::Unknown(UnknownBody::Encoded)), "{enc}");
        }
        for enc in ["identity", " Identity ", ""] {
            let b = Body::new(b"{}".to_vec(), Some("application/json"), Some(enc), false);
            assert!(matches!(b.parsed(), Parsed::Json(_)), "{enc}");
        }
        for body in [&b" {\"a\":1}"[..], b"[1]", b"\n{", b"\xef\xbb\xbf{}", b"\x00{\x00}", b"\xff\xfe{\x00"] {
            let b = Body::new(body.to_vec(), Some("application/x-www-form-urlencoded"), None, false);
            assert!(matches!(b.parsed(), Parsed::Unknown(UnknownBody::Ambiguous)), "{body:?}");
        }
    }

    #[test]
    fn strict_form() {
        let v = parse_form(b"to=a%40example.com&subject=hi+there").unwrap_or_default();
        assert_eq!(v["subject"], "hi there");
        assert_eq!(v["to"], "a@example.com");
        assert_eq!(v["subject"], "hi there");
        assert_eq!(parse_form(b"a=1&a=2"), Err(FormError::Invalid));
        assert_eq!(parse_form(b"a=%zz"), Err(FormError::Invalid));
        assert_eq!(parse_form(b"a=%FF"), Err(FormError::Invalid));
        assert_eq!(parse_form(b"a[]=1"), Err(FormError::Ambiguous));
        assert_eq!(parse_form(b"Role=admin&role=user"), Err(FormError::Invalid));
        assert_eq!(parse_form(b"user%5Bname%5D=x"), Err(FormError::Ambiguous));
        let many: Vec<String> = (0..1001).map(|i| format!("f{i}=1")).collect();
        assert_eq!(parse_form(many.join("&").as_bytes()), Err(FormError::Ambiguous));
        assert!(parse_form(many.get(..1000).unwrap_or_default().join("&").as_bytes()).is_ok());
        let m: Vec<String> =
            form_field_values(b"a=1&_method=delete&%5Fmethod%5B%5D=PUT&x=_method", "_method").collect();
        assert_eq!(m, vec!["delete".to_string(), "PUT".to_string()]);
    }
}
