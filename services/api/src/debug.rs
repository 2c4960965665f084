//! `PUT|DELETE /v1/debug/failpoints/{name}`: arms and disarms a failpoint
//! at run time, for the fault suite (`ringstore-chaos`): clock skew
//! (`clock_offset_ms`) and Raft latency (`peer_raft_delay_ms`) of one node
//! without a restart. Compiled only with the `failpoints` feature, which
//! test builds have and release binaries do not: a production node has no
//! such route (404 `no_route`).

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

/// An action in the `fail` crate's syntax (`return(250)`, `off`) is short.
const ACTIONS_BYTES_MAX: usize = 256;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/debug/failpoints/{name}")
            .app_data(web::PayloadConfig::new(ACTIONS_BYTES_MAX))
            .route(web::put().to(arm))
            .route(web::delete().to(disarm))
            .default_service(crate::ops::other_methods("PUT, DELETE, OPTIONS")),
    );
}

async fn arm(name: web::Path<String>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let actions = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("failpoint actions must be UTF-8"))?;
    fail::cfg(name.as_str(), actions.trim()).map_err(ApiError::bad_request)?;
    tracing::warn!(failpoint = %name, actions = actions.trim(), "failpoint armed");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "failpoint": name.as_str(), "actions": actions.trim() })))
}

async fn disarm(name: web::Path<String>) -> HttpResponse {
    fail::remove(name.as_str());
    tracing::warn!(failpoint = %name, "failpoint disarmed");
    HttpResponse::Ok().json(serde_json::json!({ "failpoint": name.as_str(), "actions": "off" }))
}
