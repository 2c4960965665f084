//! The HTTP server of one node: one Router actor per worker thread, all
//! sharing the node's routing table (ring, replicas, leader cache), in
//! front of the REST API. Plain HTTP/1.1, or HTTPS (HTTP/1.1 only) with the
//! node's reloadable certificate.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::{map_config, IntoServiceFactory};
use actix_web::dev::{AppConfig, ServerHandle};
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
    /// HTTPS with this node's (reloadable) certificate; `None`: plain HTTP.
    pub tls: Option<Arc<ringstore_peer::NodeTls>>,
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
        tls,
    } = o;
    let limiter = Arc::new(match rate_limit {
        Some(l) => ringstore_api::limit::Limiter::new(l.per_second, l.burst),
        None => ringstore_api::limit::Limiter::off(),
    });
    let watchers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feeds = Arc::new(ringstore_api::feed::Feeds::default());
    let app = move || {
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
    };
    let workers = workers.max(1);
    let bind_err = || format!("binding HTTP for node {node} on {addr}");
    let (server, bound) = match tls {
        None => {
            let server = HttpServer::new(app)
                .workers(workers)
                .disable_signals()
                .shutdown_timeout(shutdown_timeout_s)
                .bind(addr)
                .with_context(bind_err)?;
            let bound = server.addrs().first().copied().context("HTTP server has no address")?;
            (server.run(), bound)
        }
        Some(tls) => {
            // HTTP/1.1 only, by ALPN and by service: actix-web's TLS
            // listener would also offer h2 (see the workspace manifest).
            let cfg = tls.http_server_config().context("HTTPS configuration")?;
            let listener = std::net::TcpListener::bind(addr).with_context(bind_err)?;
            let bound = listener.local_addr().context("HTTPS listener has no address")?;
            let server = actix_server::Server::build()
                .workers(workers)
                .disable_signals()
                .shutdown_timeout(shutdown_timeout_s)
                .listen("ringstore-https", listener, move || {
                    let app = app().into_factory();
                    HttpService::build()
                        .client_request_timeout(Duration::from_secs(5))
                        .h1(map_config(app, |_| AppConfig::default()))
                        .rustls_0_23(cfg.clone())
                })
                .with_context(bind_err)?
                .run();
            (server, bound)
        }
    };
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}
