//! Client authentication: bearer tokens with scopes and an optional key
//! prefix, checked before any handler runs (`authenticate`) and, for
//! keys and lock names, by the handlers (`allow`).
//!
//! Tokens live in a TOML file (a Kubernetes Secret mounted as one), only
//! as SHA-256 hashes: `ringstore token new` draws a token and prints its
//! entry. The file is read at start and again on SIGHUP or when it
//! changes (the node polls it); a file that does not parse leaves the
//! tokens in force as they were. A presented token
//! is hashed and compared with every entry in constant time.
//!
//! Scopes: `read` (GET of keys, scans, watches, lock status and lists),
//! `write` (puts, deletes, batches and transactions that write, locks'
//! acquire, release and refresh) and `admin` (`/v1/cluster`, `/v1/rebalance`,
//! joins, drains, handover). A token with a `prefix` reaches only keys and
//! lock names under it. `/healthz`, `/readyz` and `OPTIONS` stay open, and
//! `/metrics` unless `--auth-metrics`.
//!
//! Off unless a tokens file is given (`ringstore dev` runs without);
//! every node of a production cluster should have one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use prometheus::{register_int_counter_vec, IntCounterVec};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

static AUTH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_auth_requests_total",
        "Requests by authentication result: ok, open (a route without auth), missing (no token), invalid (unknown token), forbidden (scope or prefix)",
        &["result"]
    )
    .expect("registers once")
});

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Who a request comes from: one entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    scopes: u8,
    /// Keys and lock names it reaches start with this (`None`: all).
    pub prefix: Option<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// Whether it may do `scope` on `key` (a key, lock name, or the
    /// prefix of a scan or watch).
    pub fn check(&self, scope: Scope, key: &[u8]) -> Result<(), String> {
        if !self.has(scope) {
            return Err(format!("token {:?} lacks the {} scope", self.name, scope.name()));
        }
        match &self.prefix {
            Some(p) if !key.starts_with(p.as_bytes()) => Err(format!(
                "token {:?} reaches only keys and lock names under {p:?}; {:?} is not",
                self.name,
                String::from_utf8_lossy(key)
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    /// Hex SHA-256 of the token.
    sha256: String,
    scopes: Vec<String>,
    prefix: Option<String>,
}

/// The tokens of one file, as hashes.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl Tokens {
    /// Parses a tokens file; every error names the entry.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: File = toml::from_str(text).map_err(|e| format!("tokens file: {e}"))?;
        let mut entries = Vec::with_capacity(file.token.len());
        for (i, e) in file.token.into_iter().enumerate() {
            let at = format!("token[{i}] ({:?})", e.name);
            let hash = unhex32(&e.sha256).ok_or_else(|| format!("{at}: sha256 must be 64 hex digits"))?;
            if entries.iter().any(|(h, _): &([u8; 32], Principal)| *h == hash) {
                return Err(format!("{at}: the same token is listed twice"));
            }
            let mut scopes = 0;
            for s in &e.scopes {
                scopes |=
                    Scope::parse(s).ok_or_else(|| format!("{at}: unknown scope {s:?} (read, write, admin)"))?.bit();
            }
            if scopes == 0 {
                return Err(format!("{at}: no scopes"));
            }
            let prefix = e.prefix.filter(|p| !p.is_empty());
            entries.push((hash, Principal { name: e.name, scopes, prefix }));
        }
        Ok(Tokens { entries })
    }

    /// The principal of `token`: its hash against every entry, without
    /// stopping at a match, so the time says nothing about which matched.
    pub fn find(&self, token: &str) -> Option<&Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (h, p) in &self.entries {
            let diff = h.iter().zip(&hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(diff) == 0 {
                found = Some(p);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    crate::scan::unhex(s.trim())?.try_into().ok()
}

/// The hex SHA-256 of a token, as the tokens file holds it.
pub fn hash_token(token: &str) -> String {
    crate::scan::hex(&Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits, URL-safe base64 behind `rs_`).
pub fn new_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!("rs_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A node's authentication: off, or the tokens of a file (reloadable).
#[derive(Debug, Default)]
pub struct Auth {
    /// `None`: authentication is off.
    file: Option<PathBuf>,
    tokens: RwLock<Arc<Tokens>>,
    /// `/metrics` needs a token with `read`.
    pub metrics_need_token: bool,
}

impl Auth {
    /// No authentication (`ringstore dev`, tests).
    pub fn off() -> Auth {
        Auth::default()
    }

    /// Tokens from `file`, read now.
    pub fn from_file(file: &Path, metrics_need_token: bool) -> Result<Auth, String> {
        let auth = Auth { file: Some(file.to_path_buf()), metrics_need_token, ..Auth::default() };
        auth.reload()?;
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the file again (SIGHUP); on an error the old tokens stay.
    /// Answers how many tokens are in force.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(file) = &self.file else { return Ok(0) };
        let text = std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        let tokens = Tokens::parse(&text)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(n)
    }

    fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a route needs before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// A known token; the handler checks scope and prefix per key.
    AnyToken,
    Token(Scope),
}

/// By path alone (handlers check the scopes and prefixes of keys).
fn route_needs(method: &actix_web::http::Method, path: &str, metrics_need_token: bool) -> Needs {
    if method == actix_web::http::Method::OPTIONS || crate::ops::is_probe(path) {
        return Needs::Nothing;
    }
    if path == "/metrics" {
        return if metrics_need_token { Needs::Token(Scope::Read) } else { Needs::Nothing };
    }
    let admin = ["/v1/cluster", "/v1/rebalance", "/v1/node/", "/v1/debug/"];
    if admin.iter().any(|a| path.starts_with(a)) {
        return Needs::Token(Scope::Admin);
    }
    Needs::AnyToken
}

fn unauthorized(message: &str, invalid: bool) -> HttpResponse {
    let mut r = HttpResponse::from(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message));
    let challenge =
        if invalid { "Bearer realm=\"ringstore\", error=\"invalid_token\"" } else { "Bearer realm=\"ringstore\"" };
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
    r
}

fn forbidden(message: String) -> ApiError {
    AUTH.with_label_values(&["forbidden"]).inc();
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The middleware: 401 for a route that needs a token and has none or an
/// unknown one, 403 for a token without the route's scope; otherwise the
/// principal rides in the request's extensions for [`allow`].
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let auth = req.app_data::<actix_web::web::Data<crate::ApiState>>().map(|s| s.auth.clone());
    let Some(auth) = auth.filter(|a| a.enabled()) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let scope = match route_needs(req.method(), req.path(), auth.metrics_need_token) {
        Needs::Nothing => {
            AUTH.with_label_values(&["open"]).inc();
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
        Needs::AnyToken => None,
        Needs::Token(scope) => Some(scope),
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let tokens = auth.tokens();
    let principal = match presented {
        None => {
            AUTH.with_label_values(&["missing"]).inc();
            let r = unauthorized("this route needs a token: Authorization: Bearer <token>", false);
            return Ok(req.into_response(r));
        }
        Some(t) => match tokens.find(t) {
            Some(p) => p.clone(),
            None => {
                AUTH.with_label_values(&["invalid"]).inc();
                return Ok(req.into_response(unauthorized("the token is not one this cluster knows", true)));
            }
        },
    };
    if let Some(scope) = scope.filter(|s| !principal.has(*s)) {
        let e = forbidden(format!("token {:?} lacks the {} scope this route needs", principal.name, scope.name()));
        return Ok(req.into_response(HttpResponse::from(e)));
    }
    AUTH.with_label_values(&["ok"]).inc();
    req.extensions_mut().insert(Arc::new(principal));
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Whether the request's token may do `scope` on `key` (a key, lock name,
/// or a scan's or watch's prefix); always with authentication off.
pub fn allow(req: &HttpRequest, scope: Scope, key: &[u8]) -> Result<(), ApiError> {
    let Some(p) = req.extensions().get::<Arc<Principal>>().cloned() else { return Ok(()) };
    p.check(scope, key).map_err(forbidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    fn file() -> String {
        format!(
            r#"
            [[token]]
            name = "app"
            sha256 = "{}"
            scopes = ["read", "write"]
            prefix = "app/"

            [[token]]
            name = "ops"
            sha256 = "{}"
            scopes = ["admin", "read"]
            "#,
            hash_token("app-secret"),
            hash_token("ops-secret")
        )
    }

    #[test]
    fn tokens_are_found_by_hash_with_their_scopes_and_prefix() {
        let t = Tokens::parse(&file()).unwrap();
        let app = t.find("app-secret").unwrap();
        assert_eq!((app.name.as_str(), app.prefix.as_deref()), ("app", Some("app/")));
        assert!(app.has(Scope::Read) && app.has(Scope::Write) && !app.has(Scope::Admin));
        assert!(app.check(Scope::Write, b"app/x").is_ok());
        let e = app.check(Scope::Write, b"other/x").unwrap_err();
        assert!(e.contains(r#"under "app/""#), "{e}");
        let ops = t.find("ops-secret").unwrap();
        assert!(ops.check(Scope::Read, b"anything").is_ok());
        assert!(ops.check(Scope::Write, b"anything").unwrap_err().contains("lacks the write scope"));
        assert!(t.find("app-secre").is_none() && t.find("").is_none());
        assert!(!file().contains("app-secret"), "the file holds hashes only");
    }

    #[test]
    fn a_bad_file_names_the_entry() {
        for (text, says) in [
            ("[[token]]\nname = \"a\"\nsha256 = \"zz\"\nscopes = [\"read\"]", "token[0] (\"a\"): sha256"),
            (&format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"root\"]", hash_token("x")), "unknown scope"),
            (&format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = []", hash_token("x")), "no scopes"),
            (&format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"read\"]\nrole = 1", hash_token("x")), "role"),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n[[token]]\nname = \"b\"\nsha256 = \"{h}\"\nscopes = [\"read\"]",
                    h = hash_token("x")
                ),
                "listed twice",
            ),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn routes_need_what_their_path_says() {
        let get = Method::GET;
        assert_eq!(route_needs(&get, "/healthz", true), Needs::Nothing);
        assert_eq!(route_needs(&get, "/readyz", true), Needs::Nothing);
        assert_eq!(route_needs(&Method::OPTIONS, "/v1/kv/a", true), Needs::Nothing);
        assert_eq!(route_needs(&get, "/metrics", false), Needs::Nothing);
        assert_eq!(route_needs(&get, "/metrics", true), Needs::Token(Scope::Read));
        assert_eq!(route_needs(&get, "/v1/kv/a", false), Needs::AnyToken);
        assert_eq!(route_needs(&Method::POST, "/v1/cluster/nodes/2/drain", false), Needs::Token(Scope::Admin));
        assert_eq!(route_needs(&get, "/v1/rebalance", false), Needs::Token(Scope::Admin));
        assert_eq!(route_needs(&Method::POST, "/v1/node/handover", false), Needs::Token(Scope::Admin));
        assert_eq!(route_needs(&get, "/nowhere", false), Needs::AnyToken);
    }

    #[test]
    fn new_tokens_are_long_random_and_hash_to_64_hex_digits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("rs_") && a.len() == 46, "{a}");
        assert_eq!(hash_token(&a).len(), 64);
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(unhex32(&hash_token("abc")).map(|h| h[0]), Some(0xba));
    }
}
