//! Builds the shared state and the server, and runs it until a signal.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use crate::{
    analytics::{report::Reports, Analytics, Live},
    audit::Auditor,
    auth::{geoip::GeoIp, jwks::External, limiter::Limiter, Authenticator, KeyStore, Tokens},
    config::Config,
    conflict,
    error::ApiError,
    fanout::{Bus, Hub, LocalBus, RedisBus, RedisClusterBus},
    http,
    metrics::Metrics,
    presence::Presence,
    socket,
    storage::{idempotency, items, Db, DbError},
    sync::{review::Review, SyncService},
};

pub use crate::state::AppState;
use crate::state::Shared;

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot create metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot create the bootstrap API key: {0}")]
    Bootstrap(ApiError),
    #[error("cannot build the conflict resolver client: {0}")]
    Resolver(reqwest::Error),
    #[error("JWT_JWKS_URL: {0}")]
    Jwks(String),
    #[error("cannot open GEOIP_DB_PATH: {0}")]
    GeoIp(maxminddb::MaxMindDbError),
    /// `target` is [`crate::redis_conn::Target::describe`]: no password.
    #[error("REDIS_URL ({target}): cannot connect: {source}")]
    Redis {
        target: String,
        source: redis::RedisError,
    },
    #[error("REDIS_TLS_CA_FILE: {0}")]
    RedisTls(String),
    #[error("analytics: {0}")]
    Analytics(String),
    #[error("cannot register this process for presence: {0}")]
    Presence(sqlx::Error),
    #[error("cannot listen on port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Opens and migrates the database and assembles the state.
pub async fn build(config: Config) -> Result<AppState, StartError> {
    let db = Db::connect(&config.database, &config.data_dir).await?;
    let applied = db.migrate().await?;
    tracing::info!(database = db.dialect().name(), applied, "database ready");
    let metrics = Arc::new(Metrics::new()?);
    db.observe_acquire(metrics.db_pool_acquire.clone());
    let keys = KeyStore::new(db.clone()).counted(&metrics);
    if let Some(bootstrap) = &config.bootstrap {
        let created = keys
            .ensure(bootstrap.api_key.expose(), &bootstrap.user_id)
            .await
            .map_err(StartError::Bootstrap)?;
        tracing::info!(user_id = %bootstrap.user_id, created, "bootstrap API key present");
    }
    let hub = Arc::new(Hub::new());
    let presence = Presence::start(db.clone(), &config.pod_name, config.presence_heartbeat)
        .await
        .map_err(StartError::Presence)?;
    let tls = crate::redis_conn::Tls::load(config.redis_tls_ca_file.as_deref())
        .map_err(StartError::RedisTls)?;
    let bus = fanout_bus(&config, &tls, hub.clone(), metrics.clone()).await?;
    let audit = Auditor::start(db.clone(), metrics.clone());
    let live = Arc::new(Live::default());
    let analytics = Analytics::start(
        &config.analytics,
        db.clone(),
        &config.store_name,
        &config.pod_name,
        metrics.clone(),
        live.clone(),
    )
    .map_err(StartError::Analytics)?;
    let (limiter, live_redis) = limiter(&config, &tls, &live, &metrics).await?;
    let key_service = crate::keys::Keys::new(
        db.clone(),
        keys.clone(),
        config.api_keys.token_prefix.clone(),
        config.api_keys.rotation_grace,
    );
    let auth = authenticator(&config, keys, db.clone())
        .await?
        .with_audit(audit.clone());
    let reports = Reports::new(db.clone(), live, live_redis, config.store_name.clone());
    let sync = SyncService::new(
        db,
        config.limits.clone(),
        metrics.clone(),
        bus,
        conflict::Settings::from_config(&config.conflict).map_err(StartError::Resolver)?,
    )
    .with_audit(audit.clone());
    let review = Review::new(sync.clone(), audit.clone());
    Ok(AppState::new(Shared {
        sync,
        review,
        keys: key_service,
        auth,
        audit,
        metrics,
        limiter,
        hub,
        presence,
        analytics,
        reports,
        config: Arc::new(config),
        shutting_down: Arc::new(AtomicBool::new(false)),
    }))
}

/// Fan-out between pods through Redis (`REDIS_URL`), or within this
/// process when there is none.
async fn fanout_bus(
    config: &Config,
    tls: &crate::redis_conn::Tls,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Bus>, StartError> {
    use crate::redis_conn::Target;
    let timeout = config
        .rate_limit
        .redis_timeout
        .max(std::time::Duration::from_secs(1));
    Ok(match &config.redis {
        Some(Target::Cluster(nodes)) => Arc::new(
            RedisClusterBus::connect(
                nodes,
                timeout,
                tls,
                &config.store_name,
                &config.pod_name,
                hub,
                metrics,
            )
            .await
            .map_err(redis_error(config))?,
        ),
        Some(target) => Arc::new(
            RedisBus::connect(
                target,
                timeout,
                tls,
                &config.store_name,
                &config.pod_name,
                hub,
                metrics,
            )
            .await
            .map_err(redis_error(config))?,
        ),
        None => Arc::new(LocalBus::new(hub, &config.pod_name)),
    })
}

/// Who may call: API keys, our own tokens, an outside identity provider's
/// tokens (its JWKS loaded now), client addresses through trusted proxies
/// and their countries.
async fn authenticator(
    config: &Config,
    keys: KeyStore,
    db: Db,
) -> Result<Authenticator, StartError> {
    let geoip = config
        .geoip_db_path
        .as_deref()
        .map(GeoIp::open)
        .transpose()
        .map_err(StartError::GeoIp)?;
    let external = match &config.jwt.external {
        Some((src, iss, aud)) => Some(
            External::load(src, iss, aud)
                .await
                .map_err(StartError::Jwks)?,
        ),
        None => None,
    };
    Ok(Authenticator::new(
        keys,
        config.api_keys.enabled,
        Tokens::new(&config.jwt, db),
        config.trusted_proxies.clone(),
        config.geoip_country_header.clone(),
    )
    .with_geoip(geoip)
    .with_external(external))
}

/// The rate limiter: shared by every pod through Redis when there is one
/// (which then also carries the live figures), else this process's own.
async fn limiter(
    config: &Config,
    tls: &crate::redis_conn::Tls,
    live: &Arc<Live>,
    metrics: &Arc<Metrics>,
) -> Result<(Limiter, Option<crate::redis_conn::Conn>), StartError> {
    let (window, max) = (config.rate_limit.window, config.rate_limit.max_requests);
    let Some(target) = &config.redis else {
        return Ok((Limiter::local(window, max, metrics.clone()), None));
    };
    // Connected (and the limiter's script loaded) before serving, so a
    // cold burst is not answered by timeouts that fail open.
    let timeout = config.rate_limit.redis_timeout;
    let conn = target
        .connect(timeout, tls)
        .await
        .map_err(redis_error(config))?;
    tokio::spawn(crate::analytics::live::shared::publish_forever(
        conn.clone(),
        config.store_name.clone(),
        config.pod_name.clone(),
        live.clone(),
    ));
    let limiter = Limiter::redis(
        conn.clone(),
        &config.store_name,
        window,
        max,
        timeout,
        metrics.clone(),
    )
    .await
    .map_err(redis_error(config))?;
    Ok((limiter, Some(conn)))
}

/// A start-up failure to reach Redis, naming the variable and the target
/// (without its password) beside the client's reason.
fn redis_error(config: &Config) -> impl Fn(redis::RedisError) -> StartError + '_ {
    move |source| StartError::Redis {
        target: config
            .redis
            .as_ref()
            .map_or_else(String::new, |t| t.describe()),
        source,
    }
}

/// A binary older than its database's schema: rather than exit (and
/// crash-loop), it stays up with `/health` 200, so the kubelet does not
/// restart it, and everything else, `/ready` included, 503 with status
/// `VersionSkew` and the reason, so no traffic reaches it and `kubectl
/// describe pod` and the logs say why, until a newer image replaces it.
async fn serve_version_skew(port: u16, reason: String) -> Result<(), StartError> {
    use axum::{http::StatusCode, routing::get, Json, Router};
    tracing::error!(%reason, "VersionSkew: not serving; /ready answers 503 until a newer image runs");
    let body = serde_json::json!({ "status": "VersionSkew", "message": reason });
    let app = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .fallback(move || {
            let body = body.clone();
            async move { (StatusCode::SERVICE_UNAVAILABLE, Json(body)) }
        });
    let tcp = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| StartError::Bind { port, source })?;
    axum::serve(tcp, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(StartError::Serve)
}

/// Serves until SIGTERM or SIGINT, then stops accepting connections and
/// drains the requests in flight.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let port = config.port;
    let state = match build(config).await {
        Err(StartError::Db(e @ DbError::VersionSkew(_))) => {
            return serve_version_skew(port, e.to_string()).await
        }
        other => other?,
    };
    let tcp = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| StartError::Bind { port, source })?;
    let addr = tcp.local_addr().map_err(StartError::Serve)?;
    tracing::info!(%addr, "syncstore listening");
    // Capped connections with header, body and idle deadlines (slowloris).
    let listener = crate::server::Listener::new(tcp, &state.config.http);

    let sweeper = tokio::spawn(ttl_sweeper(state.clone()));
    let expiry = tokio::spawn(expiry_sweeper(state.clone()));
    let heartbeat = tokio::spawn(socket::heartbeat(state.clone()));
    let usage = tokio::spawn(
        state
            .limiter
            .usage()
            .clone()
            .flush_forever(state.sync.db().clone()),
    );
    let flag = state.shutting_down.clone();
    let (socket_layer, _io) = socket::layer(state.clone());
    let app = crate::server::track(
        http::edge(
            http::router(state.clone()).layer(socket_layer),
            &state.config.cors,
        ),
        &state.config.http,
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::server::Peer>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        flag.store(true, Ordering::Relaxed);
        tracing::info!("shutdown signal received, draining");
    })
    .await
    .map_err(StartError::Serve)?;
    sweeper.abort();
    expiry.abort();
    heartbeat.abort();
    usage.abort();
    // Once the heartbeat has stopped (it would register the process
    // again): this process's devices go offline now, not after the expiry.
    let _ = heartbeat.await;
    state.presence.retire().await;
    state.limiter.usage().flush(state.sync.db()).await;
    state.analytics.flush().await;
    state.audit.flush(std::time::Duration::from_secs(5)).await;
    state.sync.db().close().await;
    tracing::info!("syncstore stopped");
    Ok(())
}

/// Turns items past their TTL into removals in their user's sequence, so
/// that connected devices drop them (`sync:remove`) within about
/// `TTL_EXPIRY_INTERVAL_MS`. Every pod runs it; a key another pod expired
/// first is skipped.
async fn expiry_sweeper(state: AppState) {
    let mut every = tokio::time::interval(state.config.limits.ttl_expiry_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.sync.purge_expired().await {
            Ok(0) => {}
            Ok(expired) => tracing::debug!(expired, "expired items removed"),
            Err(e) => tracing::warn!(error = %e, "TTL expiry failed; will retry"),
        }
    }
}

/// Purges tombstones past their retention, and idempotency records past
/// their window, every `TTL_CLEANUP_INTERVAL_HOURS`.
async fn ttl_sweeper(state: AppState) {
    let mut every = tokio::time::interval(state.config.limits.ttl_cleanup_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await; // the first tick is immediate; start one interval in
    loop {
        every.tick().await;
        let retention =
            chrono::Duration::from_std(state.config.limits.tombstone_retention).unwrap_or_default();
        let older_than = (chrono::Utc::now() - retention).timestamp_millis();
        match items::purge_tombstones(state.sync.db(), older_than, 1000).await {
            Ok(0) => {}
            Ok(users) => tracing::info!(users, "tombstones past retention purged"),
            Err(e) => {
                tracing::warn!(error = %e, "tombstone purge failed; will retry next interval")
            }
        }
        // Records past the window are already ignored; this only frees them.
        let window =
            chrono::Duration::from_std(state.config.limits.idempotency_window).unwrap_or_default();
        let before = (chrono::Utc::now() - window).timestamp_millis();
        match idempotency::sweep(state.sync.db(), before).await {
            Ok(0) => {}
            Ok(records) => tracing::info!(records, "idempotency records past the window purged"),
            Err(e) => {
                tracing::warn!(error = %e, "idempotency sweep failed; will retry next interval")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `syncstore analytics`: consumes analytics events from Kafka into the
/// aggregate tables until SIGTERM, serving `/health` and `/metrics` on PORT.
pub async fn analytics(config: Config) -> Result<(), StartError> {
    let Some(brokers) = config.analytics.kafka_brokers.clone() else {
        return Err(StartError::Analytics(
            "KAFKA_BROKERS is required: without Kafka each serve process aggregates its own events"
                .into(),
        ));
    };
    let db = Db::connect(&config.database, &config.data_dir).await?;
    db.migrate().await?;
    let metrics = Arc::new(Metrics::new()?);
    db.observe_acquire(metrics.db_pool_acquire.clone());
    let port = config.port;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| StartError::Bind { port, source })?;
    let (served, pool) = (metrics.clone(), db.clone());
    let router = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (m, pool) = (served.clone(), pool.clone());
                async move {
                    m.pool(pool.pool_stats());
                    m.render()
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let group = format!("syncstore-analytics.{}", config.store_name);
    let source = crate::analytics::kafka::Source {
        brokers: &brokers,
        topic: &config.analytics.kafka_topic,
        store: &config.store_name,
        group: &group,
        batch: config.analytics.consumer_batch,
    };
    crate::analytics::kafka::consume(source, db.clone(), metrics, shutdown_signal())
        .await
        .map_err(StartError::Analytics)?;
    db.close().await;
    Ok(())
}
