//! Load shedding: a token bucket per client (its token's name, or its
//! address when authentication is off), so one client's flood gets 429
//! with `Retry-After` instead of stretching every other client's latency.
//!
//! The bucket is pure ([`Bucket`]); the middleware ([`shed`]) keeps one
//! per client in a map bounded by [`CLIENTS_MAX`] (the least recently
//! seen leave first). A 429 is held until the client's next token is due
//! (at most [`TARPIT_MAX`]): a client that retries at once without
//! reading `Retry-After` then costs a timer, not a busy worker. Health,
//! readiness and metrics are never limited.
//! Off unless `--rate-limit-rps` is set.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};
use prometheus::{register_int_counter_vec, IntCounterVec};

use crate::auth::Principal;
use crate::error::ApiError;

/// Clients whose buckets a node keeps at once.
pub const CLIENTS_MAX: usize = 10_000;
/// The longest a 429 is held before it is sent.
pub const TARPIT_MAX: Duration = Duration::from_millis(250);

static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_requests_rate_limited_total",
        "Requests answered 429 by the per-client rate limit, by how the client was told apart: token (its name) or address",
        &["by"]
    )
    .expect("registers once")
});

/// Requests per second and the burst a client may send at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A token bucket: holds up to `burst` requests, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket { tokens: limit.burst, last: now }
    }

    /// Takes one request's token, or says how long until one is there.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second))
    }
}

/// A node's limiter: one bucket per client.
#[derive(Debug)]
pub struct Limiter {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn off() -> Limiter {
        Limiter { limit: None, buckets: Mutex::default() }
    }

    /// `per_second` requests per client, bursts of `burst` (at least 1).
    pub fn new(per_second: f64, burst: f64) -> Limiter {
        let limit = RateLimit { per_second: per_second.max(0.001), burst: burst.max(1.0) };
        Limiter { limit: Some(limit), buckets: Mutex::default() }
    }

    /// Whether `client` may send a request now; else when to try again.
    pub fn admit(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(client) && buckets.len() >= CLIENTS_MAX {
            // The least recently seen client leaves; it starts full again
            // if it comes back, which only ever lets a quiet client in.
            if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| k.clone()) {
                buckets.remove(&oldest);
            }
        }
        buckets.entry(client.to_string()).or_insert_with(|| Bucket::full(limit, now)).take(limit, now)
    }
}

/// The middleware (inside `auth::authenticate`, so it sees the token).
pub async fn shed(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let limiter = req.app_data::<actix_web::web::Data<crate::ApiState>>().map(|s| s.limiter.clone());
    let exempt = crate::ops::is_probe(req.path()) || req.path() == "/metrics";
    let Some(limiter) = limiter.filter(|l| l.limit.is_some() && !exempt) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let principal = req.extensions().get::<Arc<Principal>>().map(|p| p.name.clone());
    let (by, client) = match principal {
        Some(name) => ("token", format!("token:{name}")),
        None => ("address", format!("addr:{}", req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default())),
    };
    if let Err(wait) = limiter.admit(&client, Instant::now()) {
        SHED.with_label_values(&[by]).inc();
        // Held until a token would be there (at most TARPIT_MAX): a client
        // that ignores Retry-After and asks again at once would otherwise
        // keep the workers busy answering 429s, and others would wait.
        actix_web::rt::time::sleep(wait.min(TARPIT_MAX)).await;
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = HttpResponse::from(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this client is over its rate limit; retry in {} ms", wait.as_millis().max(1)),
        ));
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return Ok(req.into_response(r));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit { per_second: 10.0, burst: 3.0 };
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        for _ in 0..3 {
            assert!(b.take(limit, t0).is_ok());
        }
        let wait = b.take(limit, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take(limit, t0 + Duration::from_millis(100)).is_ok(), "one refilled");
        assert!(b.take(limit, t0 + Duration::from_millis(100)).is_err());
        // Idle for long: back to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| b.take(limit, later).is_ok()).count(), 3);
    }

    #[test]
    fn clients_have_their_own_buckets_and_the_map_stays_bounded() {
        let l = Limiter::new(1.0, 2.0);
        let now = Instant::now();
        assert!(l.admit("a", now).is_ok() && l.admit("a", now).is_ok());
        assert!(l.admit("a", now).is_err());
        assert!(l.admit("b", now).is_ok(), "another client is not held back by a");
        for i in 0..CLIENTS_MAX + 10 {
            let _ = l.admit(&format!("c{i}"), now + Duration::from_millis(i as u64));
        }
        assert!(l.buckets.lock().unwrap().len() <= CLIENTS_MAX);
        assert!(Limiter::off().admit("x", now).is_ok());
    }
}
