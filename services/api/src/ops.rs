//! Operational endpoints, fallbacks for unknown routes and methods, and
//! the request metrics middleware.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{register_histogram_vec, register_int_counter_vec, Encoder, HistogramVec, IntCounterVec, TextEncoder};
use ringstore_router::Route;
use ringstore_storage::{ShardOp, ShardReply};
use serde_json::json;

use crate::error::ApiError;
use crate::ApiState;

static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_http_requests_total",
        "HTTP requests by route pattern, method and status",
        &["route", "method", "status"]
    )
    .expect("registers once")
});

/// Fenced writes refused because their lock never issued the token:
/// forged tokens, or a client confusing locks. Worth an alert.
pub(crate) static UNKNOWN_TOKENS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "ringstore_fencing_unknown_tokens_total",
        "Fenced writes refused (409 unknown_token): the token is above its lock's last_token, or the lock never existed"
    )
    .expect("registers once")
});

static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ringstore_http_request_duration_seconds",
        "HTTP request latency by route pattern and method",
        &["route", "method"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("registers once")
});

/// Counts and times every request. The route label is the matched
/// pattern (never the key), so cardinality stays bounded.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let res = next.call(req).await?;
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status();
    HTTP_REQUESTS.with_label_values(&[&route, &method, status.as_str()]).inc();
    HTTP_SECONDS.with_label_values(&[&route, &method]).observe(start.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(%route, %method, status = status.as_u16(), "request failed");
    }
    Ok(res)
}

/// The probes: open without a token and never rate limited.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when every local replica knows a leader for its shard.
/// `POST /v1/node/handover`: this node stops taking new requests
/// (`/readyz` answers 503, so it leaves its Service's endpoints) and hands
/// every shard it leads to another replica, answering once they moved. A
/// pod's `preStop` calls it (`ringstore handover`) before SIGTERM.
pub async fn handover(state: web::Data<ApiState>) -> HttpResponse {
    state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(node = state.node, "handing over leadership before a stop");
    (state.handover)().await;
    HttpResponse::Ok().json(json!({ "node": state.node, "draining": true }))
}

pub async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "node is shutting down"));
    }
    let local = (state.local_shards)();
    let mut shards = Vec::with_capacity(local.len());
    for &shard in local.iter() {
        let route = Route { key: vec![], op: ShardOp::Status, timeout: Duration::from_secs(1), shard: Some(shard) };
        match state.router.send(route).await {
            Ok(Ok(ShardReply::Status(s))) if s.leader.is_some() => shards.push(s),
            Ok(Ok(ShardReply::Status(s))) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("shard {} has no known leader on node {}", s.shard, s.node),
                ))
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("local replica of shard {shard} did not answer"),
                ))
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "ready": true, "shards": shards })))
}

pub async fn metrics() -> HttpResponse {
    // Exported from the first scrape, so an alert sees 0, not absence.
    LazyLock::force(&UNKNOWN_TOKENS);
    let mut buf = Vec::new();
    let families = prometheus::gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into();
    }
    HttpResponse::Ok().insert_header(("content-type", "text/plain; version=0.0.4")).body(buf)
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::from(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// The fallback of a resource that serves `allow` (e.g. `"GET, OPTIONS"`):
/// `OPTIONS` is a 204 and any other method a 405, both with `Allow`.
pub fn other_methods(allow: &'static str) -> actix_web::Route {
    web::to(move |req: HttpRequest| async move { method_not_allowed(&req, allow) })
}

fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    if req.method() == actix_web::http::Method::OPTIONS {
        return HttpResponse::NoContent().insert_header((header::ALLOW, allow)).finish();
    }
    let mut r = HttpResponse::from(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}; it takes {allow}", req.method(), req.path()),
    ));
    r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// `/v1/locks/{name}` serves GET; a POST there names an action that does
/// not exist (`/v1/locks/x/aquire`): 404 naming the actions.
pub async fn lock_fallback(req: HttpRequest) -> HttpResponse {
    if req.method() != actix_web::http::Method::POST {
        return method_not_allowed(&req, "GET, OPTIONS");
    }
    let action = req.path().rsplit('/').next().unwrap_or_default();
    let action: String = action.chars().take(64).collect();
    HttpResponse::from(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "no lock action {action:?}; the actions are acquire, release and refresh (POST /v1/locks/{{name}}/acquire)"
        ),
    ))
}

/// The JSON error shape for the errors actix-web answers itself before a
/// handler runs (a body over a route's limit, a resource with no route
/// for the method): one format for every error a client sees.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let status = res.status();
    let json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return Ok(res.map_into_boxed_body());
    }
    let (req, old) = res.into_parts();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            match crate::body_limit(req.match_pattern().as_deref()) {
                Some(max) => format!("the request body is over this route's limit of {max} bytes"),
                None => "the request body is over this route's limit".to_string(),
            },
        ),
        StatusCode::NOT_FOUND => ("no_route", format!("no route for {} {}", req.method(), req.path())),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", format!("{} is not allowed on {}", req.method(), req.path()))
        }
        s if s.is_server_error() => ("internal", s.canonical_reason().unwrap_or("server error").to_lowercase()),
        s => ("bad_request", s.canonical_reason().unwrap_or("bad request").to_lowercase()),
    };
    let mut new = HttpResponse::from(ApiError::new(status, code, message));
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(req, new))
}

impl From<ApiError> for HttpResponse {
    fn from(e: ApiError) -> Self {
        actix_web::ResponseError::error_response(&e)
    }
}
