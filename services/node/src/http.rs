//! The HTTP server of one node: one Router actor per worker thread, all
//! sharing the node's routing table (ring, replicas, leader cache), in
//! front of the REST API.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use ringstore_api::{ApiState, Handover, LocalShards};
use ringstore_router::{MapCell, Router};
use ringstore_shared::config::Limits;
use ringstore_shared::NodeId;
use ringstore_storage::Transport;

pub struct HttpOptions {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub workers: usize,
    pub map: Arc<MapCell>,
    pub local_shards: LocalShards,
    pub transport: Arc<dyn Transport>,
    pub cluster_id: u64,
    pub handover: Handover,
    pub limits: Limits,
    pub draining: Arc<AtomicBool>,
    /// Seconds in-flight requests get to finish on a graceful stop.
    pub shutdown_timeout_s: u64,
    /// Bearer tokens (`Auth::off()`: none needed).
    pub auth: Arc<ringstore_api::auth::Auth>,
    /// Requests per second and burst per client (`None`: no limit).
    pub rate_limit: Option<ringstore_api::limit::RateLimit>,
}

/// Binds and starts the server on the current actix system.
pub fn start(o: HttpOptions) -> anyhow::Result<(ServerHandle, SocketAddr)> {
    let HttpOptions {
        node,
        addr,
        workers,
        map,
        local_shards,
        transport,
        cluster_id,
        handover,
        limits,
        draining,
        shutdown_timeout_s,
        auth,
        rate_limit,
    } = o;
    let limiter = Arc::new(match rate_limit {
        Some(l) => ringstore_api::limit::Limiter::new(l.per_second, l.burst),
        None => ringstore_api::limit::Limiter::off(),
    });
    let watchers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feeds = Arc::new(ringstore_api::feed::Feeds::default());
    let server = HttpServer::new(move || {
        // Runs once on each worker thread: that worker's own Router.
        let router = actix::Actor::start(Router::new(node, map.clone(), transport.clone()));
        let state = ApiState {
            node,
            router,
            map: map.clone(),
            limits: limits.clone(),
            draining: draining.clone(),
            local_shards: local_shards.clone(),
            transport: transport.clone(),
            cluster_id,
            handover: handover.clone(),
            watchers: watchers.clone(),
            feeds: feeds.clone(),
            auth: auth.clone(),
            limiter: limiter.clone(),
        };
        App::new()
            .app_data(web::Data::new(state))
            // Inside authentication: the limit is per token when there are tokens.
            .wrap(from_fn(ringstore_api::limit::shed))
            .wrap(from_fn(ringstore_api::auth::authenticate))
            .wrap(from_fn(ringstore_api::ops::json_errors))
            .wrap(from_fn(ringstore_api::ops::track))
            .configure(ringstore_api::routes)
    })
    .workers(workers.max(1))
    .disable_signals()
    .shutdown_timeout(shutdown_timeout_s)
    .bind(addr)
    .with_context(|| format!("binding HTTP for node {node} on {addr}"))?;
    let bound = server.addrs().first().copied().context("HTTP server has no address")?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}
