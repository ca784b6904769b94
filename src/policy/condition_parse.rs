//! Condition and operator parsing: the `body`, `mcp.arguments`, `captures`, `query` and
//! `headers` parts of a rule, from YAML to [`Condition`] and [`Test`], with located messages.

use std::collections::HashSet;

use regex::RegexBuilder;
use serde_json::Value as Json;
use serde_yaml::Value;

use super::compile::valid_header_name;
use super::condition::{Condition, Operand, RefName, Test};

/// What a rule's conditions may refer to.
pub(super) struct Scope<'a> {
    pub(super) captures: &'a HashSet<String>,
}

const OPERATORS: [&str; 15] = [
    "equals", "in", "not_in", "prefix", "suffix", "contains", "matches", "lt", "lte", "gt", "gte", "max_len", "exists",
    "each", "some",
];

pub(super) fn condition(v: &Value, scope: &Scope<'_>, at: &str) -> Result<Condition, String> {
    let Some(map) = v.as_mapping() else {
        return Err(format!("`{at}`: a condition is a map (`all`, `any`, `not`, or `field` with one operator)"));
    };
    let keys: Vec<&str> = map.keys().map(|k| k.as_str().unwrap_or("<non-string key>")).collect();
    for combinator in ["all", "any", "not"] {
        if let Some(inner) = map.get(combinator) {
            if map.len() != 1 {
                return Err(format!(
                    "`{at}`: `{combinator}` must stand alone in its map (found also {})",
                    keys.iter().filter(|k| **k != combinator).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            if combinator == "not" {
                return Ok(Condition::Not(Box::new(condition(inner, scope, &format!("{at}.not"))?)));
            }
            let Some(items) = inner.as_sequence() else {
                return Err(format!("`{at}.{combinator}` takes a list of conditions"));
            };
            if items.is_empty() {
                return Err(format!("`{at}.{combinator}` is an empty list"));
            }
            let parts = items
                .iter()
                .enumerate()
                .map(|(i, c)| condition(c, scope, &format!("{at}.{combinator}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if combinator == "all" { Condition::All(parts) } else { Condition::Any(parts) });
        }
    }
    let Some(field) = map.get("field") else {
        return Err(format!(
            "`{at}`: a condition needs `all`, `any`, `not`, or `field` with one operator (found {})",
            keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    };
    let Some(field) = field.as_str() else {
        return Err(format!("`{at}.field` must be a JSON Pointer string such as `/to`"));
    };
    let pointer = parse_pointer(field).map_err(|m| format!("`{at}.field`: {m}"))?;
    let mut ops = map.iter().filter(|(k, _)| k.as_str() != Some("field"));
    let (Some((k, val)), None) = (ops.next(), ops.next()) else {
        let n = map.len() - 1;
        return Err(if n == 0 {
            format!("`{at}`: field `{field}` has no operator; add one of {}", OPERATORS.join(", "))
        } else {
            format!("`{at}`: field `{field}` has {n} operators; write exactly one per field test (combine with `all`)")
        });
    };
    let key = k.as_str().unwrap_or("<non-string key>");
    let test = operator(key, val, scope, at, true)?;
    Ok(Condition::Field { pointer, test })
}

pub(crate) fn parse_pointer(p: &str) -> Result<Vec<Box<str>>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("`{p}` is not a JSON Pointer; it must start with `/` (e.g. `/{p}`)"));
    };
    rest.split('/')
        .map(|tok| {
            let mut out = String::with_capacity(tok.len());
            let mut chars = tok.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("`{p}`: `~` must be followed by 0 or 1 (RFC 6901)")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(Box::from(out.as_str()))
        })
        .collect()
}

/// An operator map without `field` (captures, query, headers, each/some): exactly one key.
pub(super) fn op_map(v: &Value, scope: &Scope<'_>, at: &str, json: bool) -> Result<Test, String> {
    let Some(map) = v.as_mapping() else {
        return Err(format!("`{at}` takes one operator, e.g. `{{ equals: x }}`"));
    };
    let mut it = map.iter();
    match (it.next(), it.next()) {
        (Some((k, val)), None) => {
            let key = k.as_str().unwrap_or("<non-string key>");
            operator(key, val, scope, at, json)
        }
        (None, _) => Err(format!("`{at}` has no operator; add one of {}", OPERATORS.join(", "))),
        _ => Err(format!("`{at}` has {} operators; write exactly one", map.len())),
    }
}

fn operator(key: &str, val: &Value, scope: &Scope<'_>, at: &str, json: bool) -> Result<Test, String> {
    let at = format!("{at}.{key}");
    let num = |v: &Value| -> Result<Operand, String> {
        match operand(v, scope, &at)? {
            Operand::Lit(Json::Number(n)) => Ok(Operand::Lit(Json::Number(n))),
            Operand::Ref(r) => Ok(Operand::Ref(r)),
            _ => Err(format!("`{at}` takes a number or a reference")),
        }
    };
    let string = |v: &Value| -> Result<Operand, String> {
        match operand(v, scope, &at)? {
            Operand::Lit(Json::String(s)) => Ok(Operand::Lit(Json::String(s))),
            Operand::Ref(r) => Ok(Operand::Ref(r)),
            _ => Err(format!("`{at}` takes a string or a reference")),
        }
    };
    let list = |v: &Value| -> Result<Vec<Operand>, String> {
        let Some(items) = v.as_sequence() else {
            return Err(format!("`{at}` takes a list of values"));
        };
        if items.is_empty() {
            return Err(format!("`{at}` is an empty list"));
        }
        items.iter().map(|i| operand(i, scope, &at)).collect()
    };
    // Captures, query and header values are strings: a literal that is not a string or a
    // number could never equal one, so a test with it can only be a mistake.
    let text_literal = |o: Operand| -> Result<Operand, String> {
        match &o {
            Operand::Lit(Json::String(_) | Json::Number(_)) | Operand::Ref(_) => Ok(o),
            Operand::Lit(_) if !json => Err(format!(
                "`{at}`: captures, query values and header values are strings; compare them with a string or a number"
            )),
            Operand::Lit(_) => Ok(o),
        }
    };
    Ok(match key {
        "equals" => Test::Equals(text_literal(operand(val, scope, &at)?)?),
        "in" => Test::In(list(val)?.into_iter().map(text_literal).collect::<Result<_, _>>()?),
        "not_in" => Test::NotIn(list(val)?.into_iter().map(text_literal).collect::<Result<_, _>>()?),
        "prefix" => Test::Prefix(string(val)?),
        "suffix" => Test::Suffix(string(val)?),
        "contains" => Test::Contains(string(val)?),
        "matches" => {
            let Some(re) = val.as_str() else {
                return Err(format!("`{at}` takes a regular expression string"));
            };
            // Compile it alone first: `a)|(b` is invalid on its own but would parse once
            // wrapped, as `^(?:a)|(b)$`, losing the whole-string anchoring.
            RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("`{at}`: invalid regular expression `{re}`: {e}"))?;
            let compiled = RegexBuilder::new(&format!("^(?:{re})$"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("`{at}`: invalid regular expression `{re}`: {e}"))?;
            Test::Matches(compiled)
        }
        "lt" => Test::Lt(num(val)?),
        "lte" => Test::Lte(num(val)?),
        "gt" => Test::Gt(num(val)?),
        "gte" => Test::Gte(num(val)?),
        "max_len" => match val.as_u64() {
            Some(n) => Test::MaxLen(n),
            None => return Err(format!("`{at}` takes a non-negative integer")),
        },
        "exists" => match val.as_bool() {
            Some(b) => Test::Exists(b),
            None => return Err(format!("`{at}` takes true or false")),
        },
        "each" | "some" => {
            if !json {
                return Err(format!(
                    "`{at}`: `{key}` tests arrays, and captures, query values and header values are strings"
                ));
            }
            let inner = op_map(val, scope, &at, true)?;
            if matches!(inner, Test::Exists(_)) {
                return Err(format!("`{at}`: `exists` inside `{key}` means nothing (elements always exist)"));
            }
            if key == "each" {
                Test::Each(Box::new(inner))
            } else {
                Test::Some(Box::new(inner))
            }
        }
        other => {
            return Err(format!("`{at}`: unknown operator `{other}`; operators are {}", OPERATORS.join(", ")));
        }
    })
}

fn operand(v: &Value, scope: &Scope<'_>, at: &str) -> Result<Operand, String> {
    if let Some(map) = v.as_mapping() {
        if let Some(r) = map.get("ref") {
            if map.len() != 1 {
                return Err(format!("`{at}`: a reference is `{{ ref: NAME }}` with nothing else"));
            }
            let Some(name) = r.as_str() else {
                return Err(format!("`{at}`: `ref` takes a name such as `on_behalf_of`"));
            };
            let parsed = RefName::parse(name).map_err(|m| format!("`{at}`: {m}"))?;
            if let RefName::Header(h) = &parsed {
                if !valid_header_name(h) {
                    return Err(format!("`{at}`: `{h}` is not an HTTP header name"));
                }
                if &**h == "host" {
                    return Err(format!(
                        "`{at}`: Envoy sends the host as `:authority`, never as `host`; use `header.:authority` or `hosts`"
                    ));
                }
            }
            if let RefName::Query(q) = &parsed {
                if q.contains(['[', ']']) {
                    return Err(format!("`{at}`: write the query parameter's name without brackets"));
                }
            }
            if let RefName::Capture(c) = &parsed {
                if !scope.captures.contains(&**c) {
                    return Err(format!(
                        "`{at}`: `{{ ref: {name} }}` names a capture no path pattern of this rule has"
                    ));
                }
            }
            return Ok(Operand::Ref(parsed));
        }
    }
    yaml_to_json(v).map(Operand::Lit).map_err(|m| format!("`{at}`: {m}"))
}

fn yaml_to_json(v: &Value) -> Result<Json, String> {
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(f) => Json::Number(f),
                    None => return Err("numbers must be finite".into()),
                }
            }
        }
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Value::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let Some(k) = k.as_str() else {
                    return Err("object keys must be strings".into());
                };
                out.insert(k.to_string(), yaml_to_json(v)?);
            }
            Json::Object(out)
        }
        Value::Tagged(_) => return Err("YAML tags are not supported in values".into()),
    })
}
