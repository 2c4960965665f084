//! The REST API. Handlers parse and bound the request, hand a typed
//! operation to the node's Router actor, and turn the answer into HTTP.
//! This is the only place errors become statuses.
//!
//! # Layout
//! - [`kv`]: `PUT/GET/DELETE /v1/kv/{key}` (with `Fencing-Token`).
//! - [`locks`]: `/v1/locks/{name}` acquire, release, refresh, status.
//! - [`cluster`]: `GET /v1/cluster`, the map with per-shard leader and progress.
//! - [`scan`]: `GET /v1/kv?prefix=`: scatter-gather over every shard, merged and paged;
//!   `DELETE /v1/kv?prefix=`: delete by prefix, page by page.
//! - [`txn`]: `POST /v1/txn`: compare and then/else on the keys of one shard.
//! - [`batch`]: `POST /v1/kv:batch`: independent puts, gets and deletes in one request.
//! - [`watch`]: `GET /v1/watch/{key}`, `GET /v1/watch?prefix=`: streams of changes.
//! - [`feed`]: the node's shared feed of each watched shard, which streams read.
//! - [`rebalance`]: join, drain, and the Rebalancer's jobs API (`/v1/rebalance`).
//! - [`request`]: pure parsing of keys, query and precondition headers.
//! - [`error`]: [`ApiError`], the JSON error body and status mapping.
//! - [`auth`]: bearer tokens with scopes and key prefixes (middleware and checks).
//! - [`limit`]: per-client rate limits (429 with `Retry-After`).
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, fallbacks, request metrics.
//! - `debug` (test builds only, feature `failpoints`): failpoints armed at run time.

pub mod auth;
pub mod batch;
pub mod cluster;
#[cfg(feature = "failpoints")]
pub mod debug;
pub mod error;
pub mod feed;
pub mod kv;
pub mod limit;
pub mod locks;
pub mod ops;
pub mod params;
pub mod rebalance;
pub mod request;
pub mod scan;
pub mod txn;
pub mod watch;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Addr;
use actix_web::web;
use ringstore_router::{MapCell, Router};
use ringstore_shared::config::Limits;
use ringstore_shared::{NodeId, ShardId};
use ringstore_storage::Transport;

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
    /// Shards with a replica on this node now (what `/readyz` checks).
    pub local_shards: LocalShards,
    /// How this node reaches shards directly (cluster-map edits).
    pub transport: Arc<dyn Transport>,
    /// The cluster this node belongs to (0 in a single-process cluster).
    pub cluster_id: u64,
    /// Hands every leadership this node holds to another replica (the
    /// `preStop` of a pod, before SIGTERM).
    pub handover: Handover,
    /// Watch streams the node serves now (all workers').
    pub watchers: Arc<std::sync::atomic::AtomicUsize>,
    /// The node's shared watch feeds, one per watched shard (all workers').
    pub feeds: Arc<feed::Feeds>,
    /// Bearer tokens, or none (authentication off).
    pub auth: Arc<auth::Auth>,
    /// Per-client rate limits (all workers').
    pub limiter: Arc<limit::Limiter>,
}

/// Moves the node's leaderships away; resolves once they moved (bounded).
pub type Handover = Arc<dyn Fn() -> futures::future::LocalBoxFuture<'static, ()> + Send + Sync>;

/// The node's replicas change as they move; asked on each `/readyz`.
pub type LocalShards = Arc<dyn Fn() -> Vec<ShardId> + Send + Sync>;

/// Registers every route. Use with `App::new().app_data(..).configure(api::routes)`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/kv/{key:.*}")
            .route(web::put().to(kv::put))
            .route(web::get().to(kv::get))
            // Headers of a GET, no body (actix-web leaves the body out).
            .route(web::head().to(kv::get))
            .route(web::delete().to(kv::delete))
            .default_service(ops::other_methods("GET, HEAD, PUT, DELETE, OPTIONS")),
    )
    .service(
        web::resource("/v1/kv")
            .route(web::get().to(scan::scan))
            .route(web::delete().to(scan::delete_prefix))
            .default_service(ops::other_methods("GET, DELETE, OPTIONS")),
    )
    .service(
        web::resource("/v1/txn")
            .app_data(web::PayloadConfig::new(txn::TXN_BODY_BYTES_MAX))
            .route(web::post().to(txn::txn))
            .default_service(ops::other_methods("POST, OPTIONS")),
    )
    .service(get_only("/v1/watch", web::get().to(watch::watch_prefix)))
    .service(get_only("/v1/watch/{key:.*}", web::get().to(watch::watch_key)))
    .service(
        web::resource("/v1/kv:batch")
            .app_data(web::PayloadConfig::new(batch::BATCH_BODY_BYTES_MAX))
            .route(web::post().to(batch::batch))
            .default_service(ops::other_methods("POST, OPTIONS")),
    )
    .service(get_only("/v1/cluster", web::get().to(cluster::cluster)))
    .service(admin("/v1/cluster/nodes", web::post().to(rebalance::join), "POST, OPTIONS"))
    .service(admin("/v1/cluster/nodes/{id}/drain", web::post().to(rebalance::drain), "POST, OPTIONS"))
    .service(admin("/v1/cluster/shards", web::post().to(rebalance::add_shards), "POST, OPTIONS"))
    .service(get_only("/v1/rebalance", web::get().to(rebalance::status)))
    .service(admin("/v1/node/handover", web::post().to(ops::handover), "POST, OPTIONS"))
    .service(admin("/v1/rebalance/pause", web::post().to(rebalance::pause), "POST, OPTIONS"))
    .service(admin("/v1/rebalance/resume", web::post().to(rebalance::resume), "POST, OPTIONS"))
    .service(admin("/v1/rebalance/config", web::put().to(rebalance::config), "PUT, OPTIONS"))
    .service(get_only("/v1/locks", web::get().to(locks::list)))
    .service(lock_action("acquire", locks::acquire))
    .service(lock_action("release", locks::release))
    .service(lock_action("refresh", locks::refresh))
    .service(
        web::resource("/v1/locks/{name:.*}")
            .route(web::get().to(locks::status))
            .default_service(web::to(ops::lock_fallback)),
    )
    .service(get_only("/healthz", web::get().to(ops::healthz)))
    .service(get_only("/readyz", web::get().to(ops::readyz)))
    .service(get_only("/metrics", web::get().to(ops::metrics)));
    #[cfg(feature = "failpoints")]
    cfg.configure(debug::routes);
    cfg.default_service(web::to(ops::not_found));
}

/// The body limit of the route `pattern` matched, for 413 answers that
/// actix-web gives before the handler runs.
pub fn body_limit(pattern: Option<&str>) -> Option<usize> {
    let p = pattern?;
    if p == "/v1/kv:batch" {
        Some(batch::BATCH_BODY_BYTES_MAX)
    } else if p == "/v1/txn" {
        Some(txn::TXN_BODY_BYTES_MAX)
    } else if p.starts_with("/v1/locks/") {
        Some(locks::LOCK_BODY_BYTES_MAX)
    } else if p.starts_with("/v1/cluster/") || p.starts_with("/v1/rebalance/") || p == "/v1/node/handover" {
        Some(rebalance::ADMIN_BODY_BYTES_MAX)
    } else {
        None
    }
}

fn get_only(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path).route(route).default_service(ops::other_methods("GET, OPTIONS"))
}

/// An admin endpoint: one method, a small JSON body (413 beyond its limit).
fn admin(path: &str, route: actix_web::Route, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .app_data(web::PayloadConfig::new(rebalance::ADMIN_BODY_BYTES_MAX))
        .route(route)
        .default_service(ops::other_methods(allow))
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
        .default_service(ops::other_methods("POST, OPTIONS"))
}
