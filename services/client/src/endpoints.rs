//! [`Endpoints`]: the nodes a client talks to and the one retry loop both
//! clients use. A call draws one `Idempotency-Key` and keeps it across
//! tries; a try whose outcome is unknown (lost answer, dead node, 503) is
//! sent again to the next endpoint, and the shard applies it once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tries of one call (each to the next endpoint), within its deadline.
const TRIES_MAX: usize = 6;
/// Pause between tries, so a cluster electing a leader is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(crate) struct Endpoints {
    pub http: awc::Client,
    pub urls: Arc<Vec<String>>,
    http_timeout: Duration,
    next: Arc<AtomicUsize>,
    /// `Authorization: Bearer` on every request, if set.
    token: Option<Arc<str>>,
}

/// One call: what to send and how much of the answer to take.
pub(crate) struct Call<'a> {
    pub method: awc::http::Method,
    pub path: &'a str,
    pub body: Option<(&'static str, Vec<u8>)>,
    pub headers: &'a [(&'a str, String)],
    /// Tell the server the time left as `X-Request-Timeout` (not for long
    /// polls, whose server deadline follows their wait).
    pub deadline_header: bool,
    /// Largest answer body taken.
    pub answer_max: usize,
}

impl Endpoints {
    /// `urls`: node base URLs; `http_timeout` bounds any one try.
    pub fn new(urls: Vec<String>, http_timeout: Duration) -> Self {
        assert!(!urls.is_empty(), "at least one endpoint");
        let http = crate::tls::http_client(http_timeout, None);
        Endpoints { http, urls: Arc::new(urls), http_timeout, next: Arc::default(), token: None }
    }

    /// Speaks HTTPS trusting `tls`'s roots (the cluster CA).
    pub fn set_tls(&mut self, tls: &Arc<rustls::ClientConfig>) {
        self.http = crate::tls::http_client(self.http_timeout, Some(tls));
    }

    pub fn set_token(&mut self, token: &str) {
        self.token = Some(Arc::from(token));
    }

    /// A GET of `url` with the token, for calls outside the retry loop.
    pub fn get(&self, url: String) -> awc::ClientRequest {
        self.authorize(self.http.get(url))
    }

    fn authorize(&self, req: awc::ClientRequest) -> awc::ClientRequest {
        crate::with_bearer(req, self.token.as_deref())
    }

    /// The endpoint calls go to now.
    pub fn current(&self) -> &str {
        &self.urls[self.next.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Moves calls on to the next endpoint.
    pub fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends `call` until an answer other than 503 arrives, rotating
    /// endpoints, until `until` or [`TRIES_MAX`] tries; the error says
    /// why the last try failed.
    pub async fn send(&self, call: Call<'_>, until: Instant) -> Result<(u16, Vec<u8>), String> {
        let key = format!("{:032x}", rand::random::<u128>().max(1));
        let mut last = String::from("no try was made");
        for tried in 0..TRIES_MAX {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if tried > 0 {
                self.rotate();
            }
            let mut req = self
                .authorize(self.http.request(call.method.clone(), format!("{}{}", self.current(), call.path)))
                .timeout(left)
                .insert_header(("idempotency-key", key.as_str()));
            if call.deadline_header {
                req = req.insert_header(("x-request-timeout", left.as_millis().clamp(100, 60_000).to_string()));
            }
            for (k, v) in call.headers {
                req = req.insert_header((*k, v.as_str()));
            }
            let res = match &call.body {
                Some((content_type, b)) => {
                    req.insert_header(("content-type", *content_type)).send_body(b.clone()).await
                }
                None => req.send().await,
            };
            match res {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    match r.body().limit(call.answer_max).await {
                        // Unavailable (no leader, outcome unknown): the
                        // same key elsewhere is safe.
                        Ok(b) if status == 503 => last = format!("503: {}", String::from_utf8_lossy(&b)),
                        Ok(b) => return Ok((status, b.to_vec())),
                        Err(e) => last = format!("answer lost: {e}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(RETRY_PAUSE.min(until.saturating_duration_since(Instant::now()))).await;
        }
        Err(format!("outcome unknown after retries with one idempotency key: {last}"))
    }
}
