//! One rule for every route's query string, path segments and durations.
//! A parameter a route does not take, a repeated one, broken
//! percent-encoding or a value out of range is a 400 that names the
//! parameter and says what it takes, in the same words on every route.
//! Pure: unit-tested without a server.

use std::time::Duration;

use crate::error::ApiError;

/// Percent-decodes `s` strictly: every `%` starts two hex digits and the
/// result is UTF-8 (`what` names the part in the error). `plus_is_space`
/// for query strings (form encoding), not for paths.
pub fn decode(s: &str, plus_is_space: bool, what: &str) -> Result<String, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err(ApiError::bad_request(format!(
                        "{what} has a '%' not followed by two hex digits (write a literal % as %25)"
                    )));
                };
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("{what} must be valid UTF-8 after percent-decoding")))
}

/// A duration as people write it: `250ms`, `2s`, `1m`, `1h`, or a plain
/// number of milliseconds. `None` when it is none of those.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let ms_per = match &s[digits..] {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(ms_per).map(Duration::from_millis)
}

/// How a duration's bounds read in messages: `60s` rather than `60000`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// A duration within `[min, max]`, or a 400 naming `what`.
pub fn duration_in(what: &str, v: &str, min: Duration, max: Duration) -> Result<Duration, ApiError> {
    parse_duration(v).filter(|d| *d >= min && *d <= max).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} must be a duration from {} to {}, like 500ms, 2s or 1500 (milliseconds); got {:?}",
            show_duration(min),
            show_duration(max),
            clip(v)
        ))
    })
}

/// What a message or log line quotes of a client's value: enough to
/// recognise it (64 characters).
pub fn clip(v: &str) -> &str {
    match v.char_indices().nth(64) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

/// A JSON object body as `T`. Errors say what is wrong in serde's words
/// when they name a field (`missing field `owner``), and otherwise what
/// the body `shape` must be, never the Rust types behind it.
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("body is not valid JSON ({}); it {shape}", e.to_string().replace('`', "'")))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("body {shape}")));
    }
    serde_json::from_value(v).map_err(|e| {
        let text = e.to_string();
        let names_a_field = text.contains("field") || text.contains("variant");
        let rust = ["struct ", "enum ", "tuple", "map"].iter().any(|t| text.contains(t));
        match (names_a_field, rust) {
            (true, false) => ApiError::bad_request(format!("body: {}; it {shape}", text.replace('`', "'"))),
            _ => ApiError::bad_request(format!("body {shape}")),
        }
    })
}

/// A route's decoded query parameters.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `qs`, refusing names outside `allowed`, repeats and broken
    /// encoding. `allowed` is what the route takes, in the order its
    /// message lists them.
    pub fn parse(qs: &str, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in qs.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name, true, "a query parameter's name")?;
            if !allowed.contains(&name.as_str()) {
                let takes = match allowed {
                    [] => "this route takes no query parameters".to_string(),
                    _ => format!("this route takes {}", allowed.join(", ")),
                };
                return Err(ApiError::bad_request(format!("unknown query parameter {:?}; {takes}", clip(&name))));
            }
            let value = decode(value, true, &format!("query parameter {name}"))?;
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!("query parameter {name} is given more than once")));
            }
            pairs.push((name, value));
        }
        Ok(Params { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A whole number in `[min, max]`.
    pub fn u64_in(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        v.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be a whole number from {min} to {max}; got {:?}", clip(v)))
        })
    }

    /// A flag: present with no value, `true`/`1`/`yes`, or `false`/`0`/`no`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "" | "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ApiError::bad_request(format!("{name} must be true or false; got {:?}", clip(&v)))),
            },
        }
    }

    /// One of `choices`.
    pub fn one_of<'c>(&self, name: &str, choices: &[&'c str]) -> Result<Option<&'c str>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        choices.iter().find(|c| **c == v).map(|c| Some(*c)).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be one of {}; got {:?}", choices.join(", "), clip(v)))
        })
    }

    /// Refuses `names` on a method that does not use them (e.g. `ttl_ms`
    /// on a GET), naming the method they belong to.
    pub fn refuse(&self, names: &[&str], why: &str) -> Result<(), ApiError> {
        match names.iter().find(|n| self.has(n)) {
            Some(n) => Err(ApiError::bad_request(format!("{n} {why}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    fn msg(e: ApiError) -> String {
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("a%2Fb", false, "key").unwrap(), "a/b");
        assert_eq!(decode("a+b", false, "key").unwrap(), "a+b");
        assert_eq!(decode("a+b", true, "q").unwrap(), "a b");
        assert_eq!(decode("%D0%BA", false, "key").unwrap(), "к");
        for bad in ["a%ZZ", "a%", "a%2", "%FF", "%C3%28"] {
            assert!(decode(bad, false, "key").is_err(), "{bad}");
        }
        assert!(msg(decode("a%ZZ", false, "key").unwrap_err()).contains("%25"));
    }

    #[test]
    fn durations_as_people_write_them() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250"), Some(ms(250)));
        assert_eq!(parse_duration("250ms"), Some(ms(250)));
        assert_eq!(parse_duration(" 2s "), Some(ms(2_000)));
        assert_eq!(parse_duration("1m"), Some(ms(60_000)));
        assert_eq!(parse_duration("1h"), Some(ms(3_600_000)));
        for bad in ["", "s", "-5", "1.5s", "2 s", "2sec", "1d", "99999999999999999999", "18446744073709551615h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(show_duration(ms(60_000)), "1m");
        assert_eq!(show_duration(ms(1_500)), "1500ms");
        assert_eq!(show_duration(ms(5_000)), "5s");
        let e = msg(duration_in("X-Request-Timeout", "61s", ms(1), ms(60_000)).unwrap_err());
        assert!(e.contains("from 1ms to 1m") && e.contains("\"61s\""), "{e}");
    }

    #[test]
    fn parameters_are_named_in_every_error() {
        let p = Params::parse("ttl_ms=5&consistency=stale", &["ttl_ms", "consistency"]).unwrap();
        assert_eq!(p.u64_in("ttl_ms", 1, 10).unwrap(), Some(5));
        assert_eq!(p.one_of("consistency", &["linearizable", "stale"]).unwrap(), Some("stale"));
        let e = msg(Params::parse("ttl_ms=-1", &["ttl_ms"]).unwrap().u64_in("ttl_ms", 1, 10).unwrap_err());
        assert!(e.starts_with("ttl_ms must be a whole number from 1 to 10") && e.contains("\"-1\""), "{e}");
        let e = msg(Params::parse("tll_ms=5", &["ttl_ms", "consistency"]).unwrap_err());
        assert_eq!(e, "unknown query parameter \"tll_ms\"; this route takes ttl_ms, consistency");
        let e = msg(Params::parse("x=1", &[]).unwrap_err());
        assert!(e.ends_with("this route takes no query parameters"), "{e}");
        assert!(msg(Params::parse("a=1&a=2", &["a"]).unwrap_err()).contains("more than once"));
        assert!(msg(Params::parse("a=%FF", &["a"]).unwrap_err()).contains("UTF-8"));
        let e = msg(Params::parse("a=1", &["a"]).unwrap().refuse(&["a"], "applies to PUT only").unwrap_err());
        assert_eq!(e, "a applies to PUT only");
    }

    #[test]
    fn json_bodies_are_explained_without_rust_types() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            owner: String,
            ttl_ms: u64,
        }
        let shape = "must be like {\"owner\": \"w\", \"ttl_ms\": 1}";
        let ok: Body = json_object(br#"{"owner": "w", "ttl_ms": 1}"#, shape).unwrap();
        assert_eq!(ok.ttl_ms, 1);
        for (body, says) in [
            (&br#"[1, 2]"#[..], "body must be like"),
            (br#"{"owner": 1, "ttl_ms": 1}"#, "body must be like"),
            (br#"{"ttl_ms": 1}"#, "missing field 'owner'"),
            (br#"{"owner": "w", "ttl_ms": 1, "x": 0}"#, "unknown field 'x'"),
            (br#"{"owner""#, "not valid JSON"),
        ] {
            let e = msg(json_object::<Body>(body, shape).unwrap_err());
            assert!(e.contains(says) && e.contains(shape), "{e}");
            assert!(!e.contains("Body") && !e.contains("struct"), "{e}");
        }
    }

    #[test]
    fn flags_take_the_usual_spellings() {
        for (qs, want) in [("k", true), ("k=", true), ("k=1", true), ("k=TRUE", true), ("k=no", false), ("", false)] {
            assert_eq!(Params::parse(qs, &["k"]).unwrap().flag("k").unwrap(), want, "{qs}");
        }
        assert!(msg(Params::parse("k=maybe", &["k"]).unwrap().flag("k").unwrap_err()).contains("true or false"));
    }
}
