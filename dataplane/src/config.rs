//! Configuration: the seed's environment variables (and ours), each with a
//! `--flag` twin, parsed once into a typed [`Config`].
//!
//! clap only collects the raw strings; the parsing and validation live here so
//! that a bad value stops startup with exactly one line naming the variable,
//! and so that the value of a secret is never echoed back in that line.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;
use ipnet::IpNet;

use crate::{auth::Scope, conflict::Strategy};

/// The settings each layer owns, defined beside the code that reads them
/// and gathered here into [`Config`].
pub use crate::{
    analytics::AnalyticsConfig,
    auth::JwtConfig,
    conflict::ConflictConfig,
    domain::Secret,
    storage::DatabaseConfig,
    sync::Limits,
    telemetry::{LogConfig, LogFormat},
};

/// Raw settings as given by flags or environment variables.
#[derive(Args, Debug, Clone, Default)]
pub struct RawConfig {
    /// TCP port for REST and Socket.IO.
    #[arg(long, global = true, env = "PORT")]
    pub port: Option<String>,
    /// postgres://… or mysql://… ; unset means the embedded SQLite file.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Maximum open database connections per process.
    #[arg(long, global = true, env = "DB_CONNECTION_LIMIT")]
    pub db_connection_limit: Option<String>,
    /// Require TLS to the database server (true/false).
    #[arg(long, global = true, env = "DB_SSL")]
    pub db_ssl: Option<String>,
    /// redis://… for fan-out and shared rate limits across pods;
    /// redis+cluster://h1:7000,h2:7001 for a Redis Cluster;
    /// redis+sentinel://s1:26379,s2:26379/mymaster for Sentinel's master;
    /// rediss://…, rediss+cluster://… and rediss+sentinel://… over TLS.
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA certificates Redis servers' TLS certificates
    /// must chain to (with rediss://); the system's roots without it.
    #[arg(long, global = true, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<String>,
    /// The sentinels' own password (their requirepass or ACL user's), with
    /// a redis+sentinel:// or rediss+sentinel:// REDIS_URL.
    #[arg(
        long,
        global = true,
        env = "REDIS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,
    /// The sentinels' ACL user (with REDIS_SENTINEL_PASSWORD).
    #[arg(long, global = true, env = "REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,
    /// HMAC secret for access tokens (at least 32 characters).
    #[arg(long, global = true, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Access token lifetime, e.g. 15m, 7d, or seconds.
    #[arg(long, global = true, env = "JWT_EXPIRES_IN")]
    pub jwt_expires_in: Option<String>,
    /// HMAC secret for refresh tokens (at least 32 characters).
    #[arg(
        long,
        global = true,
        env = "JWT_REFRESH_SECRET",
        hide_env_values = true
    )]
    pub jwt_refresh_secret: Option<String>,
    /// Refresh token lifetime, e.g. 30d, or seconds.
    #[arg(long, global = true, env = "JWT_REFRESH_EXPIRES_IN")]
    pub jwt_refresh_expires_in: Option<String>,
    /// JWKS of an outside identity provider (file path or http(s) URL).
    #[arg(long, global = true, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Required `iss` of identity-provider tokens.
    #[arg(long, global = true, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of identity-provider tokens.
    #[arg(long, global = true, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept X-API-Key credentials (true/false).
    #[arg(long, global = true, env = "API_KEYS_ENABLED")]
    pub api_keys_enabled: Option<String>,
    /// Prefix of newly generated API keys.
    #[arg(long, global = true, env = "API_KEY_TOKEN_PREFIX")]
    pub api_key_token_prefix: Option<String>,
    /// Scopes of new keys: a JSON array or a comma-separated list.
    #[arg(long, global = true, env = "API_KEY_DEFAULT_SCOPES")]
    pub api_key_default_scopes: Option<String>,
    /// Default lifetime of new keys in days (0 = never expires).
    #[arg(long, global = true, env = "API_KEY_EXPIRATION_DAYS")]
    pub api_key_expiration_days: Option<String>,
    /// Seconds a rotated API key keeps working beside its replacement.
    #[arg(long, global = true, env = "API_KEY_ROTATION_GRACE_SECONDS")]
    pub api_key_rotation_grace_seconds: Option<String>,
    /// Rate-limit window in milliseconds.
    #[arg(long, global = true, env = "RATE_LIMIT_WINDOW_MS")]
    pub rate_limit_window_ms: Option<String>,
    /// Requests allowed per window, per key and per user.
    #[arg(long, global = true, env = "RATE_LIMIT_MAX_REQUESTS")]
    pub rate_limit_max_requests: Option<String>,
    /// How long a limit check waits for Redis before allowing the request,
    /// in milliseconds (default 2000).
    #[arg(long, global = true, env = "RATE_LIMIT_REDIS_TIMEOUT_MS")]
    pub rate_limit_redis_timeout_ms: Option<String>,
    /// Allowed CORS origins: `*` or a comma-separated list.
    #[arg(long, global = true, env = "CORS_ORIGIN")]
    pub cors_origin: Option<String>,
    /// Allow credentialed CORS requests (true/false).
    #[arg(long, global = true, env = "CORS_CREDENTIALS")]
    pub cors_credentials: Option<String>,
    /// trace, debug, info, warn or error (or a tracing filter directive).
    #[arg(long, global = true, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// json or text.
    #[arg(long, global = true, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Produce analytics events (true/false).
    #[arg(long, global = true, env = "ENABLE_ANALYTICS")]
    pub enable_analytics: Option<String>,
    /// Analytics events per batch sent to the sink.
    #[arg(long, global = true, env = "ANALYTICS_BATCH_SIZE")]
    pub analytics_batch_size: Option<String>,
    /// Largest item (value + metadata), in KiB.
    #[arg(long, global = true, env = "MAX_ITEM_SIZE_KB")]
    pub max_item_size_kb: Option<String>,
    /// Storage quota per user, in MiB.
    #[arg(long, global = true, env = "MAX_STORAGE_PER_USER_MB")]
    pub max_storage_per_user_mb: Option<String>,
    /// How often expired items are purged, in hours (fractions allowed).
    #[arg(long, global = true, env = "TTL_CLEANUP_INTERVAL_HOURS")]
    pub ttl_cleanup_interval_hours: Option<String>,
    /// How often items past their TTL become removals in their user's
    /// sequence, in milliseconds (default 1000).
    #[arg(long, global = true, env = "TTL_EXPIRY_INTERVAL_MS")]
    pub ttl_expiry_interval_ms: Option<String>,
    /// How long a write's operation id (`Idempotency-Key`, `opId`) is
    /// remembered, in milliseconds (default 86400000, a day).
    #[arg(long, global = true, env = "IDEMPOTENCY_WINDOW_MS")]
    pub idempotency_window_ms: Option<String>,
    /// How often each process refreshes its presence heartbeat, in
    /// milliseconds (default 10000). A process that stops beating (killed
    /// with -9) has its devices shown offline within three intervals.
    #[arg(long, global = true, env = "PRESENCE_HEARTBEAT_MS")]
    pub presence_heartbeat_ms: Option<String>,
    /// Events per aggregation transaction of `syncstore analytics`.
    #[arg(long, global = true, env = "ANALYTICS_CONSUMER_BATCH")]
    pub analytics_consumer_batch: Option<String>,
    /// How long an event waits for an unreachable Kafka before it counts as failed.
    #[arg(long, global = true, env = "ANALYTICS_KAFKA_TIMEOUT_MS")]
    pub analytics_kafka_timeout_ms: Option<String>,
    /// Kafka bootstrap servers for analytics events; unset means in-process.
    #[arg(long, global = true, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic for analytics events.
    #[arg(long, global = true, env = "KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// LAST_WRITE_WINS, FIRST_WRITE_WINS, MERGE, MANUAL or ASSISTED.
    #[arg(long, global = true, env = "CONFLICT_DEFAULT_STRATEGY")]
    pub conflict_default_strategy: Option<String>,
    /// MERGE's tiebreak for fields changed on both sides: LAST_WRITE_WINS or MANUAL.
    #[arg(long, global = true, env = "CONFLICT_MERGE_TIEBREAK")]
    pub conflict_merge_tiebreak: Option<String>,
    /// Timeout of the ASSISTED resolver webhook, in milliseconds.
    #[arg(long, global = true, env = "CONFLICT_RESOLVER_TIMEOUT_MS")]
    pub conflict_resolver_timeout_ms: Option<String>,
    /// Versions of each item kept as merge bases and history.
    #[arg(long, global = true, env = "CONFLICT_HISTORY_VERSIONS")]
    pub conflict_history_versions: Option<String>,
    /// http(s) endpoint that proposes resolutions for ASSISTED conflicts.
    #[arg(long, global = true, env = "CONFLICT_RESOLVER_URL")]
    pub conflict_resolver_url: Option<String>,
    /// MaxMind-format country database for country restrictions.
    #[arg(long, global = true, env = "GEOIP_DB_PATH")]
    pub geoip_db_path: Option<String>,
    /// A header carrying the client's ISO country, believed only from a
    /// trusted proxy (e.g. CF-IPCountry).
    #[arg(long, global = true, env = "GEOIP_COUNTRY_HEADER")]
    pub geoip_country_header: Option<String>,
    /// Comma-separated IPs/CIDRs whose X-Forwarded-For is believed.
    #[arg(long, global = true, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// An API key that `serve` makes sure exists, with every scope.
    #[arg(long, global = true, env = "BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_api_key: Option<String>,
    /// Owner user of the bootstrap key (default `demo`).
    #[arg(long, global = true, env = "BOOTSTRAP_USER_ID")]
    pub bootstrap_user_id: Option<String>,
    /// Days a removal stays replayable to offline devices before its
    /// tombstone is purged (devices older than that get `sync:resync`).
    #[arg(long, global = true, env = "SYNC_TOMBSTONE_RETENTION_DAYS")]
    pub sync_tombstone_retention_days: Option<String>,
    /// This store's name, in fan-out channel names (set by the operator).
    #[arg(long, global = true, env = "SYNCSTORE_STORE")]
    pub syncstore_store: Option<String>,
    /// This process's name in sessions and fan-out (the pod name on Kubernetes).
    #[arg(long, global = true, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Directory of the embedded SQLite database.
    #[arg(long, global = true, env = "SYNCSTORE_DATA_DIR")]
    pub syncstore_data_dir: Option<String>,
    /// Milliseconds a connection may take to send a request's headers.
    #[arg(long, global = true, env = "HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<String>,
    /// Milliseconds a request may take to send its body.
    #[arg(long, global = true, env = "HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<String>,
    /// Milliseconds a kept-alive connection may sit idle between requests.
    #[arg(long, global = true, env = "HTTP_IDLE_TIMEOUT_MS")]
    pub http_idle_timeout_ms: Option<String>,
    /// Open connections (HTTP and Socket.IO) per process.
    #[arg(long, global = true, env = "HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<String>,
}

impl RawConfig {
    /// The raw settings that the environment `vars` (name, value) would
    /// give, without reading this process's environment: for checking an
    /// environment meant for another process (the operator checks a
    /// store's before rolling it out). Names this type does not know are
    /// ignored, as they are in the environment.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        use clap::FromArgMatches;
        let vars: std::collections::HashMap<&str, &str> = vars.into_iter().collect();
        let cmd = Self::augment_args(clap::Command::new("syncstore"));
        let mut argv = vec!["syncstore".to_string()];
        for arg in cmd.get_arguments() {
            let env = arg.get_env().and_then(|e| e.to_str());
            if let (Some(env), Some(long)) = (env, arg.get_long()) {
                if let Some(value) = vars.get(env) {
                    argv.push(format!("--{long}={value}"));
                }
            }
        }
        // Without their `env`, the flags cannot fall back on this process's
        // environment: only `vars` count.
        let matches = cmd
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        Self::from_arg_matches(&matches).map_err(|e| e.to_string())
    }
}

/// A configuration value that cannot be used. Displays as one line naming
/// the variable and its flag (clap derives `--flag` from the same name).
#[derive(Debug, thiserror::Error)]
#[error("{var} (--{flag}): {problem}", flag = var.to_ascii_lowercase().replace('_', "-"))]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    pub enabled: bool,
    pub token_prefix: String,
    pub default_scopes: Vec<Scope>,
    /// `None` means new keys never expire.
    pub expiration_days: Option<u32>,
    pub rotation_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub window: Duration,
    pub max_requests: u64,
    /// A limit check that waits longer for Redis allows the request and is
    /// counted as a timeout.
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub origins: CorsOrigins,
    pub credentials: bool,
}

/// Limits of the listening socket against slow and idle clients.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request;
    /// upgraded (WebSocket) connections are exempt.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub api_key: Secret,
    pub user_id: String,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub database: DatabaseConfig,
    pub data_dir: PathBuf,
    /// `REDIS_URL`: one server, a cluster (`redis+cluster://…`) or
    /// Sentinel's master (`redis+sentinel://…`).
    pub redis: Option<crate::redis_conn::Target>,
    /// `REDIS_TLS_CA_FILE`, read at start (`redis_conn::Tls::load`): the
    /// file lives where the pod runs, not where the operator checks.
    pub redis_tls_ca_file: Option<PathBuf>,
    pub jwt: JwtConfig,
    pub api_keys: ApiKeyConfig,
    pub rate_limit: RateLimitConfig,
    pub cors: CorsConfig,
    pub log: LogConfig,
    pub analytics: AnalyticsConfig,
    pub limits: Limits,
    pub conflict: ConflictConfig,
    pub geoip_db_path: Option<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    pub geoip_country_header: Option<String>,
    pub bootstrap: Option<Bootstrap>,
    pub store_name: String,
    pub pod_name: String,
    pub http: HttpConfig,
    /// How often this process refreshes its presence heartbeat; its
    /// devices count as online for three of these after the last one.
    pub presence_heartbeat: Duration,
}

/// One variable being parsed: its names for error messages and its raw value.
struct Var<'a> {
    var: &'static str,
    raw: Option<&'a str>,
}

impl Var<'_> {
    fn err(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            var: self.var,
            problem: problem.into(),
        }
    }

    /// The trimmed value; empty counts as unset, as shells make that easy.
    fn value(&self) -> Option<&str> {
        self.raw.map(str::trim).filter(|v| !v.is_empty())
    }

    fn int<T>(&self, default: T, min: T, max: T, what: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.value() else {
            return Ok(default);
        };
        match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.err(format!(
                "invalid value '{v}': expected {what} from {min} to {max}"
            ))),
        }
    }

    fn boolean(&self, default: bool) -> Result<bool, ConfigError> {
        match self.value().map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(v) => Err(self.err(format!("invalid value '{v}': expected true or false"))),
        }
    }

    /// A lifetime: plain seconds (`3600`) or a humantime span (`15m`, `7d`).
    fn duration(&self, default: Duration) -> Result<Duration, ConfigError> {
        let Some(v) = self.value() else {
            return Ok(default);
        };
        let parsed = match v.parse::<u64>() {
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => humantime::parse_duration(v).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(self.err(format!("invalid value '{v}': must be longer than zero"))),
            Err(e) => Err(self.err(format!(
                "invalid value '{v}': expected seconds or a span like 15m or 7d ({e})"
            ))),
        }
    }

    /// A secret: validated without ever repeating its value.
    fn secret(&self, min_len: usize) -> Result<Option<Secret>, ConfigError> {
        match self.value() {
            None => Ok(None),
            Some(v) if v.chars().count() < min_len => {
                Err(self.err(format!("too short: must be at least {min_len} characters")))
            }
            Some(v) => Ok(Some(Secret::new(v))),
        }
    }

    /// A positive amount that may have a fraction (`0.5` hours), at most `max`.
    fn fraction(&self, default: f64, max: f64, unit: &str) -> Result<f64, ConfigError> {
        let Some(v) = self.value() else {
            return Ok(default);
        };
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n <= max => Ok(n),
            _ => Err(self.err(format!(
                "invalid value '{v}': expected {unit}, more than 0 and at most {max}"
            ))),
        }
    }

    fn url(&self, schemes: &[&str]) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.value() else {
            return Ok(None);
        };
        let scheme = v.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme {
            Some(s) if schemes.contains(&s.as_str()) => Ok(Some(v.to_string())),
            _ => Err(self.err(format!(
                "must be a URL starting with {}",
                schemes.join("://, ") + "://"
            ))),
        }
    }
}

macro_rules! var {
    ($raw:expr, $field:ident, $var:literal) => {
        Var {
            var: $var,
            raw: $raw.$field.as_deref(),
        }
    };
}

impl Config {
    /// Parses and validates every setting, failing on the first bad one
    /// (sections are read in the order of [`Config`]'s fields).
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let port = var!(raw, port, "PORT").int(3000u16, 0, u16::MAX, "a port number")?;
        let database = database(raw)?;
        let redis_var = var!(raw, redis_url, "REDIS_URL");
        let mut redis = redis_var
            .value()
            .map(crate::redis_conn::Target::parse)
            .transpose()
            .map_err(|e| redis_var.err(e))?;
        redis = sentinel_auth(raw, redis)?;
        let ca_var = var!(raw, redis_tls_ca_file, "REDIS_TLS_CA_FILE");
        let redis_tls_ca_file = match (ca_var.value(), &redis) {
            (None, _) => None,
            (Some(path), Some(target)) if target.uses_tls() => Some(PathBuf::from(path)),
            (Some(_), _) => {
                return Err(ca_var.err(
                    "is set, but REDIS_URL does not use TLS (rediss://, rediss+cluster:// or rediss+sentinel://)",
                ))
            }
        };
        let jwt = jwt(raw)?;
        let api_keys = api_keys(raw)?;
        let rate_limit = rate_limit(raw)?;
        let cors = cors(raw)?;
        let log = log(raw)?;
        let analytics = analytics(raw)?;
        let limits = limits(raw)?;
        let conflict = conflict(raw)?;
        let (geoip_db_path, trusted_proxies) = network(raw)?;
        let bootstrap = bootstrap(raw)?;
        let data_dir = PathBuf::from(
            var!(raw, syncstore_data_dir, "SYNCSTORE_DATA_DIR")
                .value()
                .unwrap_or("./syncstore-data"),
        );
        let (store_name, pod_name) = identity(raw)?;
        let http = http(raw)?;
        Ok(Config {
            port,
            database,
            data_dir,
            redis,
            redis_tls_ca_file,
            jwt,
            api_keys,
            rate_limit,
            cors,
            log,
            analytics,
            limits,
            conflict,
            geoip_db_path,
            trusted_proxies,
            geoip_country_header: var!(raw, geoip_country_header, "GEOIP_COUNTRY_HEADER")
                .value()
                .map(|h| h.to_ascii_lowercase()),
            bootstrap,
            store_name,
            pod_name,
            http,
            presence_heartbeat: Duration::from_millis(
                var!(raw, presence_heartbeat_ms, "PRESENCE_HEARTBEAT_MS").int(
                    10_000u64,
                    50,
                    600_000,
                    "milliseconds",
                )?,
            ),
        })
    }
}

/// `REDIS_SENTINEL_PASSWORD` and `REDIS_SENTINEL_USERNAME` on a Sentinel
/// `target`: the username needs the password, and both need a Sentinel URL.
fn sentinel_auth(
    raw: &RawConfig,
    target: Option<crate::redis_conn::Target>,
) -> Result<Option<crate::redis_conn::Target>, ConfigError> {
    let password_var = var!(raw, redis_sentinel_password, "REDIS_SENTINEL_PASSWORD");
    let user_var = var!(raw, redis_sentinel_username, "REDIS_SENTINEL_USERNAME");
    let Some(password) = password_var.secret(1)? else {
        return match user_var.value() {
            Some(_) => Err(user_var.err("is set without REDIS_SENTINEL_PASSWORD")),
            None => Ok(target),
        };
    };
    let auth = crate::redis_conn::SentinelAuth {
        username: user_var.value().map(str::to_string),
        password,
    };
    match target {
        Some(t) => t
            .with_sentinel_auth(auth)
            .map(Some)
            .map_err(|e| password_var.err(e)),
        None => Err(password_var.err("is set, but REDIS_URL is not")),
    }
}

/// `DATABASE_URL`, `DB_CONNECTION_LIMIT`, `DB_SSL`.
fn database(raw: &RawConfig) -> Result<DatabaseConfig, ConfigError> {
    let db_url = var!(raw, database_url, "DATABASE_URL");
    let url = db_url
        .value()
        .map(|v| {
            let scheme = v.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("postgres" | "postgresql" | "mysql" | "mariadb" | "sqlite") => {
                    Ok(Secret::new(v))
                }
                _ => Err(db_url.err("must start with postgres://, mysql:// or sqlite://")),
            }
        })
        .transpose()?;
    Ok(DatabaseConfig {
        url,
        connection_limit: var!(raw, db_connection_limit, "DB_CONNECTION_LIMIT").int(
            10u32,
            1,
            1000,
            "a connection count",
        )?,
        ssl: var!(raw, db_ssl, "DB_SSL").boolean(false)?,
    })
}

/// The `JWT_*` variables: our own HMAC secrets (set together, and
/// different) or an outside identity provider's JWKS with its issuer and
/// audience.
fn jwt(raw: &RawConfig) -> Result<JwtConfig, ConfigError> {
    let jwks = var!(raw, jwt_jwks_url, "JWT_JWKS_URL");
    let external = match jwks.value() {
        None => None,
        Some(src) => {
            let iss = var!(raw, jwt_issuer, "JWT_ISSUER");
            let aud = var!(raw, jwt_audience, "JWT_AUDIENCE");
            let issuer = iss
                .value()
                .ok_or_else(|| iss.err("required with JWT_JWKS_URL"))?;
            let audience = aud
                .value()
                .ok_or_else(|| aud.err("required with JWT_JWKS_URL"))?;
            Some((src.to_string(), issuer.to_string(), audience.to_string()))
        }
    };
    let jwt = JwtConfig {
        external,
        secret: var!(raw, jwt_secret, "JWT_SECRET").secret(32)?,
        expires_in: var!(raw, jwt_expires_in, "JWT_EXPIRES_IN")
            .duration(Duration::from_secs(15 * 60))?,
        refresh_secret: var!(raw, jwt_refresh_secret, "JWT_REFRESH_SECRET").secret(32)?,
        refresh_expires_in: var!(raw, jwt_refresh_expires_in, "JWT_REFRESH_EXPIRES_IN")
            .duration(Duration::from_secs(30 * 24 * 3600))?,
    };
    if jwt.secret.is_some() != jwt.refresh_secret.is_some() {
        let missing = if jwt.secret.is_some() {
            "JWT_REFRESH_SECRET"
        } else {
            "JWT_SECRET"
        };
        return Err(ConfigError {
            var: missing,
            problem: "JWT_SECRET and JWT_REFRESH_SECRET are set together".into(),
        });
    }
    if jwt.secret.is_some() && jwt.secret == jwt.refresh_secret {
        return Err(ConfigError {
            var: "JWT_REFRESH_SECRET",
            problem: "must differ from JWT_SECRET".into(),
        });
    }
    Ok(jwt)
}

/// The `API_KEY*` variables.
fn api_keys(raw: &RawConfig) -> Result<ApiKeyConfig, ConfigError> {
    let prefix = var!(raw, api_key_token_prefix, "API_KEY_TOKEN_PREFIX");
    let token_prefix = match prefix.raw {
        None => "sk_live_".to_string(),
        Some(p)
            if p.len() <= 32
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            p.to_string()
        }
        Some(_) => {
            return Err(prefix.err("must be at most 32 characters of A-Z, a-z, 0-9, '_' or '-'"))
        }
    };
    let scopes_var = var!(raw, api_key_default_scopes, "API_KEY_DEFAULT_SCOPES");
    let default_scopes = match scopes_var.value() {
        None => vec![Scope::Read, Scope::Write],
        Some(v) => Scope::parse_list(v).map_err(|e| scopes_var.err(e))?,
    };
    let expiration_days = var!(raw, api_key_expiration_days, "API_KEY_EXPIRATION_DAYS").int(
        365u32,
        0,
        36500,
        "a number of days",
    )?;
    Ok(ApiKeyConfig {
        enabled: var!(raw, api_keys_enabled, "API_KEYS_ENABLED").boolean(true)?,
        token_prefix,
        default_scopes,
        expiration_days: (expiration_days > 0).then_some(expiration_days),
        rotation_grace: Duration::from_secs(
            var!(
                raw,
                api_key_rotation_grace_seconds,
                "API_KEY_ROTATION_GRACE_SECONDS"
            )
            .int(86_400u64, 0, 90 * 86_400, "seconds")?,
        ),
    })
}

/// The `RATE_LIMIT_*` variables.
fn rate_limit(raw: &RawConfig) -> Result<RateLimitConfig, ConfigError> {
    Ok(RateLimitConfig {
        window: Duration::from_millis(
            var!(raw, rate_limit_window_ms, "RATE_LIMIT_WINDOW_MS").int(
                60_000u64,
                1,
                86_400_000,
                "milliseconds",
            )?,
        ),
        max_requests: var!(raw, rate_limit_max_requests, "RATE_LIMIT_MAX_REQUESTS").int(
            100u64,
            1,
            1_000_000_000,
            "a request count",
        )?,
        redis_timeout: Duration::from_millis(
            var!(
                raw,
                rate_limit_redis_timeout_ms,
                "RATE_LIMIT_REDIS_TIMEOUT_MS"
            )
            .int(2_000u64, 10, 60_000, "milliseconds")?,
        ),
    })
}

/// `CORS_ORIGIN` and `CORS_CREDENTIALS`: `*` with credentials is refused,
/// as browsers refuse it (Fetch standard, CORS protocol).
fn cors(raw: &RawConfig) -> Result<CorsConfig, ConfigError> {
    let credentials = var!(raw, cors_credentials, "CORS_CREDENTIALS").boolean(false)?;
    let cors_var = var!(raw, cors_origin, "CORS_ORIGIN");
    let origins = match cors_var.value() {
        None | Some("*") => CorsOrigins::Any,
        Some(list) => CorsOrigins::List(
            list.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| serialized_origin(o).map_err(|why| cors_var.err(why)))
                .collect::<Result<_, _>>()?,
        ),
    };
    if origins == CorsOrigins::Any && credentials {
        return Err(cors_var
            .err("'*' cannot be combined with CORS_CREDENTIALS=true: list the allowed origins"));
    }
    Ok(CorsConfig {
        origins,
        credentials,
    })
}

/// One `CORS_ORIGIN` entry as the Origin header carries it (RFC 6454 §6.2,
/// the ASCII serialization): browsers send the scheme and host in lower case
/// and leave out the default port, and both the CORS layer and the socket
/// handshake compare bytes, so `https://App.example.com:443` is stored as
/// `https://app.example.com`. What no browser ever sends (a wildcard, a
/// path, a query, credentials) is refused rather than kept as an entry that
/// never matches. The `url` crate does the WHATWG parsing.
fn serialized_origin(entry: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected * or http(s)://host[:port], comma-separated";
    let bad = |why: &str| format!("invalid origin '{entry}': {why}; {EXPECTED}");
    if entry.contains('*') {
        return Err(bad("wildcards are not supported, list each origin"));
    }
    let url = match url::Url::parse(entry) {
        Ok(url) if entry.contains("://") && matches!(url.scheme(), "http" | "https") => url,
        Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(bad("the scheme must be http:// or https://"))
        }
        Err(e) => return Err(bad(&e.to_string())),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("an origin has no user or password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an origin has no path, query or fragment"));
    }
    Ok(url.origin().ascii_serialization())
}

/// `LOG_LEVEL` (a tracing filter directive) and `LOG_FORMAT`.
fn log(raw: &RawConfig) -> Result<LogConfig, ConfigError> {
    let level_var = var!(raw, log_level, "LOG_LEVEL");
    let filter = level_var.value().unwrap_or("info").to_string();
    if tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
        return Err(level_var.err(format!(
            "invalid value '{filter}': expected trace, debug, info, warn or error"
        )));
    }
    let format_var = var!(raw, log_format, "LOG_FORMAT");
    let format = match format_var.value().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") | Some("pretty") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(v) => {
            return Err(format_var.err(format!("invalid value '{v}': expected json or text")))
        }
    };
    Ok(LogConfig { filter, format })
}

/// `ENABLE_ANALYTICS`, `ANALYTICS_*` and the `KAFKA_*` variables; a topic
/// name follows Kafka's own rule (at most 249 of `[A-Za-z0-9._-]`).
fn analytics(raw: &RawConfig) -> Result<AnalyticsConfig, ConfigError> {
    let topic_var = var!(raw, kafka_topic, "KAFKA_TOPIC");
    let kafka_topic = topic_var
        .value()
        .unwrap_or("syncstore.analytics")
        .to_string();
    if kafka_topic.len() > 249
        || !kafka_topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(topic_var
            .err("invalid topic name: up to 249 characters of A-Z, a-z, 0-9, '.', '_' or '-'"));
    }
    Ok(AnalyticsConfig {
        enabled: var!(raw, enable_analytics, "ENABLE_ANALYTICS").boolean(true)?,
        batch_size: var!(raw, analytics_batch_size, "ANALYTICS_BATCH_SIZE").int(
            100usize,
            1,
            100_000,
            "a batch size",
        )?,
        consumer_batch: var!(raw, analytics_consumer_batch, "ANALYTICS_CONSUMER_BATCH").int(
            20_000usize,
            1,
            1_000_000,
            "a batch size",
        )?,
        kafka_timeout_ms: var!(
            raw,
            analytics_kafka_timeout_ms,
            "ANALYTICS_KAFKA_TIMEOUT_MS"
        )
        .int(60_000u64, 1_000, 3_600_000, "milliseconds")?,
        kafka_brokers: var!(raw, kafka_brokers, "KAFKA_BROKERS")
            .value()
            .map(String::from),
        kafka_topic,
    })
}

/// The sizes, quotas and intervals of the write path.
fn limits(raw: &RawConfig) -> Result<Limits, ConfigError> {
    let ttl_hours = var!(
        raw,
        ttl_cleanup_interval_hours,
        "TTL_CLEANUP_INTERVAL_HOURS"
    )
    .fraction(24.0, 24.0 * 365.0, "hours")?;
    let retention_days = var!(
        raw,
        sync_tombstone_retention_days,
        "SYNC_TOMBSTONE_RETENTION_DAYS"
    )
    .fraction(30.0, 3650.0, "days")?;
    Ok(Limits {
        max_item_bytes: var!(raw, max_item_size_kb, "MAX_ITEM_SIZE_KB").int(
            100i64,
            1,
            16 * 1024,
            "KiB",
        )? * 1024,
        max_storage_bytes_per_user: var!(raw, max_storage_per_user_mb, "MAX_STORAGE_PER_USER_MB")
            .int(100i64, 1, 1024 * 1024, "MiB")?
            * 1024
            * 1024,
        ttl_cleanup_interval: Duration::from_secs_f64(ttl_hours * 3600.0),
        ttl_expiry_interval: Duration::from_millis(
            var!(raw, ttl_expiry_interval_ms, "TTL_EXPIRY_INTERVAL_MS").int(
                1_000u64,
                50,
                3_600_000,
                "milliseconds",
            )?,
        ),
        tombstone_retention: Duration::from_secs_f64(retention_days * 86_400.0),
        idempotency_window: Duration::from_millis(
            var!(raw, idempotency_window_ms, "IDEMPOTENCY_WINDOW_MS").int(
                86_400_000u64,
                1_000,
                30 * 86_400_000,
                "milliseconds",
            )?,
        ),
    })
}

/// The `CONFLICT_*` variables.
fn conflict(raw: &RawConfig) -> Result<ConflictConfig, ConfigError> {
    let strategy_var = var!(raw, conflict_default_strategy, "CONFLICT_DEFAULT_STRATEGY");
    let default_strategy = match strategy_var.value() {
        None => Strategy::LastWriteWins,
        Some(v) => v.parse().map_err(|e: String| strategy_var.err(e))?,
    };
    let resolver_url =
        var!(raw, conflict_resolver_url, "CONFLICT_RESOLVER_URL").url(&["http", "https"])?;
    let tiebreak = var!(raw, conflict_merge_tiebreak, "CONFLICT_MERGE_TIEBREAK");
    let merge_tiebreak_manual = match tiebreak.value().map(str::to_ascii_uppercase).as_deref() {
        None | Some("LAST_WRITE_WINS") => false,
        Some("MANUAL") => true,
        Some(other) => {
            return Err(tiebreak.err(format!(
                "invalid value '{other}': expected LAST_WRITE_WINS or MANUAL"
            )))
        }
    };
    Ok(ConflictConfig {
        default_strategy,
        resolver_url,
        merge_tiebreak_manual,
        resolver_timeout: Duration::from_millis(
            var!(
                raw,
                conflict_resolver_timeout_ms,
                "CONFLICT_RESOLVER_TIMEOUT_MS"
            )
            .int(2000u64, 1, 60_000, "milliseconds")?,
        ),
        history_versions: var!(raw, conflict_history_versions, "CONFLICT_HISTORY_VERSIONS").int(
            10i64,
            1,
            1000,
            "a version count",
        )?,
    })
}

/// `GEOIP_DB_PATH` (must exist) and `TRUSTED_PROXIES` (IPs or CIDRs).
fn network(raw: &RawConfig) -> Result<(Option<PathBuf>, Vec<IpNet>), ConfigError> {
    let geo_var = var!(raw, geoip_db_path, "GEOIP_DB_PATH");
    let geoip_db_path = match geo_var.value() {
        None => None,
        Some(p) if std::path::Path::new(p).is_file() => Some(PathBuf::from(p)),
        Some(p) => return Err(geo_var.err(format!("no such file: {p}"))),
    };
    let proxies_var = var!(raw, trusted_proxies, "TRUSTED_PROXIES");
    let trusted_proxies = proxies_var
        .value()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| proxies_var.err(format!("invalid IP or CIDR '{p}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((geoip_db_path, trusted_proxies))
}

/// `BOOTSTRAP_USER_ID` and `BOOTSTRAP_API_KEY`.
fn bootstrap(raw: &RawConfig) -> Result<Option<Bootstrap>, ConfigError> {
    let user_var = var!(raw, bootstrap_user_id, "BOOTSTRAP_USER_ID");
    let user_id = user_var.value().unwrap_or("demo").to_string();
    crate::sync::validate_user_id(&user_id).map_err(|e| user_var.err(e))?;
    let key_var = var!(raw, bootstrap_api_key, "BOOTSTRAP_API_KEY");
    Ok(key_var
        .secret(24)?
        .map(|api_key| Bootstrap { api_key, user_id }))
}

/// `SYNCSTORE_STORE` and `POD_NAME`: names that go into fan-out channels
/// and session records.
fn identity(raw: &RawConfig) -> Result<(String, String), ConfigError> {
    let store_var = var!(raw, syncstore_store, "SYNCSTORE_STORE");
    let store_name = store_var.value().unwrap_or("default").to_string();
    if store_name.len() > 63
        || !store_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(store_var.err("must be at most 63 characters of A-Z, a-z, 0-9, '-' or '_'"));
    }
    let pod_var = var!(raw, pod_name, "POD_NAME");
    let pod_name = match pod_var.value() {
        Some(p) => {
            crate::sync::validate_instance_id(p).map_err(|e| pod_var.err(e))?;
            p.to_string()
        }
        None => format!("syncstore-{}", std::process::id()),
    };
    Ok((store_name, pod_name))
}

/// The `HTTP_*` limits of the listening socket.
fn http(raw: &RawConfig) -> Result<HttpConfig, ConfigError> {
    let ms = |var: Var<'_>, default: u64| -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(var.int(
            default,
            100,
            3_600_000,
            "milliseconds",
        )?))
    };
    Ok(HttpConfig {
        header_timeout: ms(
            var!(raw, http_header_timeout_ms, "HTTP_HEADER_TIMEOUT_MS"),
            10_000,
        )?,
        body_timeout: ms(
            var!(raw, http_body_timeout_ms, "HTTP_BODY_TIMEOUT_MS"),
            30_000,
        )?,
        idle_timeout: ms(
            var!(raw, http_idle_timeout_ms, "HTTP_IDLE_TIMEOUT_MS"),
            75_000,
        )?,
        max_connections: var!(raw, http_max_connections, "HTTP_MAX_CONNECTIONS").int(
            10_000usize,
            1,
            1_000_000,
            "a connection count",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: impl FnOnce(&mut RawConfig)) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        f(&mut raw);
        Config::from_raw(&raw)
    }

    #[test]
    fn from_vars_reads_only_the_given_variables() {
        // The test process's own environment must not leak in.
        std::env::set_var("MAX_ITEM_SIZE_KB", "7");
        let raw = RawConfig::from_vars([
            ("CORS_ORIGIN", "app.example.com"),
            ("PORT", "8080"),
            ("NOT_A_SETTING", "x"),
        ])
        .expect("raw");
        assert_eq!(raw.port.as_deref(), Some("8080"));
        assert_eq!(raw.max_item_size_kb, None);
        let e = Config::from_raw(&raw).expect_err("bad origin");
        assert_eq!(e.var, "CORS_ORIGIN");
        assert!(
            e.problem.contains("invalid origin 'app.example.com'"),
            "{e}"
        );
        // A value that looks like a flag is still a value.
        let raw = RawConfig::from_vars([("LOG_LEVEL", "--weird")]).expect("raw");
        assert_eq!(raw.log_level.as_deref(), Some("--weird"));
    }

    #[test]
    fn sentinel_credentials_need_a_sentinel_url_and_a_password() {
        let sentinel = |r: &mut RawConfig| {
            r.redis_url = Some("rediss+sentinel://s1:26379/m".into());
            r.redis_sentinel_password = Some("s3ntinel".into());
            r.redis_sentinel_username = Some("watcher".into());
        };
        let c = parse(sentinel).expect("sentinel credentials");
        assert!(c.redis.as_ref().is_some_and(|t| t.uses_tls()));
        let e = parse(|r| {
            sentinel(r);
            r.redis_url = Some("redis://h:6379".into());
        })
        .unwrap_err();
        assert_eq!(
            (e.var, e.problem.as_str()),
            (
                "REDIS_SENTINEL_PASSWORD",
                "is set, but REDIS_URL is not a Sentinel URL (redis+sentinel://)"
            )
        );
        let e = parse(|r| {
            sentinel(r);
            r.redis_sentinel_password = None;
        })
        .unwrap_err();
        assert_eq!(e.var, "REDIS_SENTINEL_USERNAME");
        let e = parse(|r| {
            sentinel(r);
            r.redis_url = None;
        })
        .unwrap_err();
        assert_eq!(e.var, "REDIS_SENTINEL_PASSWORD");
        assert!(!e.to_string().contains("s3ntinel"), "{e}");
    }

    #[test]
    fn defaults_are_the_embedded_store_on_port_3000() {
        let c = parse(|_| {}).expect("defaults are valid");
        assert_eq!(c.port, 3000);
        assert!(c.database.url.is_none());
        assert_eq!(c.limits.max_item_bytes, 100 * 1024);
        assert_eq!(c.limits.max_storage_bytes_per_user, 100 * 1024 * 1024);
        assert_eq!(c.api_keys.token_prefix, "sk_live_");
        assert_eq!(c.api_keys.default_scopes, vec![Scope::Read, Scope::Write]);
        assert_eq!(c.conflict.default_strategy, Strategy::LastWriteWins);
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.body_timeout, Duration::from_secs(30));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.http.max_connections, 10_000);
    }

    #[test]
    fn connection_limits_are_validated() {
        let c = parse(|r| {
            r.http_header_timeout_ms = Some("500".into());
            r.http_max_connections = Some("64".into());
        })
        .unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_millis(500));
        assert_eq!(c.http.max_connections, 64);
        let e = parse(|r| r.http_idle_timeout_ms = Some("0".into())).unwrap_err();
        assert_eq!(e.var, "HTTP_IDLE_TIMEOUT_MS");
        let e = parse(|r| r.http_max_connections = Some("many".into())).unwrap_err();
        assert_eq!(e.var, "HTTP_MAX_CONNECTIONS");
    }

    #[test]
    fn presence_heartbeat_defaults_to_ten_seconds_and_is_bounded() {
        let c = parse(|_| {}).expect("defaults are valid");
        assert_eq!(c.presence_heartbeat, Duration::from_secs(10));
        let c = parse(|r| r.presence_heartbeat_ms = Some("250".into())).expect("valid");
        assert_eq!(c.presence_heartbeat, Duration::from_millis(250));
        let e = parse(|r| r.presence_heartbeat_ms = Some("10".into())).unwrap_err();
        assert_eq!(e.var, "PRESENCE_HEARTBEAT_MS");
    }

    #[test]
    fn bad_values_name_the_variable_in_one_line() {
        let e = parse(|r| r.port = Some("abc".into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("PORT (--port): invalid value 'abc'"), "{e}");
        let e = parse(|r| r.max_item_size_kb = Some("-1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("MAX_ITEM_SIZE_KB (--max-item-size-kb)"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = parse(|r| r.db_ssl = Some("maybe".into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("DB_SSL"), "{e}");
        let e = parse(|r| r.api_key_default_scopes = Some("[\"read\",\"fly\"]".into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("API_KEY_DEFAULT_SCOPES"), "{e}");
        let e = parse(|r| r.conflict_default_strategy = Some("YOLO".into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("CONFLICT_DEFAULT_STRATEGY"), "{e}");
        let e = parse(|r| r.trusted_proxies = Some("10.0.0.0/8, nope".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TRUSTED_PROXIES") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn secret_values_are_never_echoed() {
        let e = parse(|r| r.jwt_secret = Some("hunter2".into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("JWT_SECRET") && !e.contains("hunter2"), "{e}");
        let c = parse(|r| r.bootstrap_api_key = Some("sk_live_0123456789abcdefghijklmnop".into()))
            .unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn wildcard_cors_with_credentials_is_refused() {
        let e = parse(|r| r.cors_credentials = Some("true".into())).unwrap_err();
        assert_eq!(e.var, "CORS_ORIGIN");
        let c = parse(|r| {
            r.cors_credentials = Some("true".into());
            r.cors_origin = Some("https://app.example.com, http://localhost:5173".into());
        })
        .unwrap();
        assert_eq!(
            c.cors.origins,
            CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:5173".into()
            ])
        );
    }

    #[test]
    fn cors_origins_are_kept_as_browsers_send_them() {
        let c = parse(|r| {
            r.cors_origin =
                Some("https://App.Example.com:443, HTTP://localhost:80/, http://[::1]:5173".into())
        })
        .unwrap();
        assert_eq!(
            c.cors.origins,
            CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost".into(),
                "http://[::1]:5173".into()
            ])
        );
        for (entry, why) in [
            ("https://*.example.com", "wildcards are not supported"),
            ("app.example.com", "the scheme must be http:// or https://"),
            (
                "ftp://app.example.com",
                "the scheme must be http:// or https://",
            ),
            (
                "https://app.example.com/app",
                "an origin has no path, query or fragment",
            ),
            (
                "https://app.example.com?x=1",
                "an origin has no path, query or fragment",
            ),
            (
                "https://u:p@app.example.com",
                "an origin has no user or password",
            ),
            ("https://app.example.com:99999", "invalid port number"),
        ] {
            let e = parse(|r| r.cors_origin = Some(format!("https://ok.example, {entry}")))
                .expect_err(entry);
            assert_eq!(e.var, "CORS_ORIGIN");
            assert!(
                e.problem
                    .starts_with(&format!("invalid origin '{entry}': {why}")),
                "{entry}: {e}"
            );
        }
    }

    #[test]
    fn lifetimes_accept_seconds_and_spans() {
        let c = parse(|r| {
            r.jwt_expires_in = Some("7d".into());
            r.jwt_refresh_expires_in = Some("3600".into());
            r.ttl_cleanup_interval_hours = Some("0.5".into());
        })
        .unwrap();
        assert_eq!(c.jwt.expires_in, Duration::from_secs(7 * 86400));
        assert_eq!(c.jwt.refresh_expires_in, Duration::from_secs(3600));
        assert_eq!(c.limits.ttl_cleanup_interval, Duration::from_secs(1800));
    }
}
