//! The REST API. Handlers parse and bound the request, hand a typed
//! operation to the node's Router actor, and turn the answer into HTTP.
//! This is the only place errors become statuses.
//!
//! # Layout
//! - [`kv`]: `PUT/GET/DELETE /v1/kv/{key}` (with `Fencing-Token`).
//! - [`locks`]: `/v1/locks/{name}` acquire, release, refresh, status.
//! - [`cluster`]: `GET /v1/cluster`, the map with per-shard leader and progress.
//! - [`scan`]: `GET /v1/kv?prefix=`: scatter-gather over every shard, merged and paged.
//! - [`request`]: pure parsing of keys, query and precondition headers.
//! - [`error`]: [`ApiError`], the JSON error body and status mapping.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, fallbacks, request metrics.

pub mod cluster;
pub mod error;
pub mod kv;
pub mod locks;
pub mod ops;
pub mod request;
pub mod scan;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Addr;
use actix_web::web;
use ringstore_router::{MapCell, Router};
use ringstore_shared::config::Limits;
use ringstore_shared::{NodeId, ShardId};

pub use error::ApiError;

/// Shared by every handler of one node.
#[derive(Clone)]
pub struct ApiState {
    pub node: NodeId,
    pub router: Addr<Router>,
    /// The node's current routing table (and the cluster map it came from).
    pub map: Arc<MapCell>,
    pub limits: Limits,
    /// Set when the node is shutting down: `/readyz` answers 503 so load
    /// balancers stop sending new requests while in-flight ones finish.
    pub draining: Arc<AtomicBool>,
    /// Shards with a replica on this node (what `/readyz` checks).
    pub local_shards: Arc<Vec<ShardId>>,
}

/// Registers every route. Use with `App::new().app_data(..).configure(api::routes)`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/kv/{key:.*}")
            .route(web::put().to(kv::put))
            .route(web::get().to(kv::get))
            .route(web::delete().to(kv::delete))
            .default_service(web::to(ops::method_not_allowed)),
    )
    .service(web::resource("/v1/kv").route(web::get().to(scan::scan)).default_service(web::to(ops::method_not_allowed)))
    .service(
        web::resource("/v1/cluster")
            .route(web::get().to(cluster::cluster))
            .default_service(web::to(ops::method_not_allowed)),
    )
    .service(lock_action("acquire", locks::acquire))
    .service(lock_action("release", locks::release))
    .service(lock_action("refresh", locks::refresh))
    .service(
        web::resource("/v1/locks/{name:.*}")
            .route(web::get().to(locks::status))
            .default_service(web::to(ops::method_not_allowed)),
    )
    .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
    .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
    .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
    .default_service(web::to(ops::not_found));
}

fn lock_action<F, Args>(action: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(format!("/v1/locks/{{name:.*}}/{action}"))
        // The body limit is explicit: larger bodies get 413 before parsing.
        .app_data(web::PayloadConfig::new(locks::LOCK_BODY_BYTES_MAX))
        .route(web::post().to(handler))
        .default_service(web::to(ops::method_not_allowed))
}
