//! `ApiError`: every failure a client can see, as
//! `{"error": {"code": "...", "message": "..."}}` with its HTTP status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use ringstore_shared::StoreError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}
#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn too_large(what: &'static str, len: usize, max: usize) -> Self {
        StoreError::TooLarge { what, len, max }.into()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StoreError::*;
        let (status, code) = match &e {
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Fenced { .. } => (StatusCode::CONFLICT, "fenced"),
            Compacted { .. } => (StatusCode::GONE, "compacted"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            NotLeader { .. }
            | Dropped { .. }
            | Unreachable { .. }
            | Unavailable { .. }
            | OutcomeUnknown { .. }
            | WrongShard { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Engine(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.insert_header((header::RETRY_AFTER, "1"));
        }
        r.json(Body { error: Inner { code: self.code, message: &self.message } })
    }
}
