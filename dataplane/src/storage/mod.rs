//! Database access through sqlx's `Any` driver.
//!
//! One set of queries serves SQLite, PostgreSQL and MySQL/MariaDB. The schema
//! keeps to types every dialect shares (VARCHAR/TEXT, BIGINT, BOOLEAN, times
//! as Unix milliseconds), queries are written with `?` placeholders and
//! rewritten for PostgreSQL, and the few real differences (upsert syntax,
//! locking reads) are the [`Dialect`]'s to answer. That keeps the write path
//! in one place instead of three copies that drift.

pub mod audit;
pub mod conflicts;
pub mod idempotency;
pub mod instances;
pub mod items;
pub mod keys;
pub mod presence;
pub mod refresh_tokens;
pub mod turns;

use std::{borrow::Cow, path::Path, sync::Arc, time::Duration};

use sqlx::{
    any::{AnyPoolOptions, AnyRow},
    migrate::Migrator,
    AnyPool, Executor, Row,
};

use crate::domain::Secret;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/mysql");

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }

    fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::Mysql),
            _ => None,
        }
    }

    /// A locking-read suffix. SQLite has none and needs none: its writer
    /// lock is already held by the time the write path reads.
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            _ => " FOR UPDATE",
        }
    }
}

/// Failure to open or migrate the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("unsupported database URL scheme (expected postgres://, mysql:// or sqlite://)")]
    Scheme,
    #[error("cannot connect to the {dialect} database: {source}")]
    Connect {
        dialect: &'static str,
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database has a migration this binary does not know: a newer
    /// release migrated it, and this one cannot safely use it.
    #[error("VersionSkew: the database has migration {0}, which this binary does not know (a newer release migrated it); run that release or a later one")]
    VersionSkew(i64),
}

/// A connection pool plus the dialect it speaks.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite has one writer at a time. Queueing writers here, in order,
    /// beats letting them spin on SQLITE_BUSY with the busy handler's
    /// sleeps, which is what made tail latency explode under load.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
    /// Writers waiting for `sqlite_writer` now.
    writers_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// On the servers, each user's writes queue here (see [`turns`]).
    user_turns: Arc<turns::UserTurns>,
    /// Where [`Db::begin`] records how long it waited for a connection;
    /// set once by the process that exports it (see [`Db::observe_acquire`]).
    acquire_wait: Arc<std::sync::OnceLock<prometheus::Histogram>>,
    max_connections: u32,
}

/// How long a request waits for a pooled connection (or its user's write
/// turn) before it is told SERVICE_UNAVAILABLE rather than hanging on a
/// dead or overloaded database.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts a writer waiting for SQLite's write turn while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Db {
    /// Opens the configured server database, or the embedded SQLite file
    /// under `data_dir` when no URL is set.
    pub async fn connect(cfg: &DatabaseConfig, data_dir: &Path) -> Result<Self, DbError> {
        Self::open(cfg, data_dir, false).await
    }

    /// [`Self::connect`] for a long-lived pool that is used now and then
    /// (the operator's per-store pools): a database restart, a failover or
    /// an idle timeout may have cut its connections since the last use, so
    /// each is checked with a round trip before it is handed out. The data
    /// plane's busy pools skip that round trip.
    pub async fn connect_verified(cfg: &DatabaseConfig, data_dir: &Path) -> Result<Self, DbError> {
        Self::open(cfg, data_dir, true).await
    }

    async fn open(cfg: &DatabaseConfig, data_dir: &Path, verify: bool) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let url = match &cfg.url {
            Some(url) => with_tls(url.expose(), cfg.ssl),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.join("syncstore.db").display()
                )
            }
        };
        let dialect = Dialect::from_url(&url).ok_or(DbError::Scheme)?;
        let mut options = AnyPoolOptions::new()
            .max_connections(cfg.connection_limit)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(verify);
        if dialect == Dialect::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the one writer; busy_timeout
                    // makes writers queue instead of failing with SQLITE_BUSY;
                    // case_sensitive_like makes prefix LIKE match PostgreSQL.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA busy_timeout = 10000; PRAGMA case_sensitive_like = ON;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|source| DbError::Connect {
                dialect: dialect.name(),
                source,
            })?;
        Ok(Self {
            pool,
            dialect,
            sqlite_writer: Arc::new(tokio::sync::Mutex::new(())),
            writers_waiting: Arc::default(),
            user_turns: Arc::default(),
            acquire_wait: Arc::default(),
            max_connections: cfg.connection_limit,
        })
    }

    /// Applies the embedded migrations of this dialect. Already-applied
    /// migrations are skipped, so running it twice is a no-op.
    pub async fn migrate(&self) -> Result<usize, DbError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
            Dialect::Mysql => &MYSQL_MIGRATIONS,
        };
        let applied_before = self.applied_migrations().await;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(sqlx::migrate::MigrateError::from)?;
        if self.dialect == Dialect::Mysql {
            // sqlx locks with GET_LOCK(name, -1), which MariaDB answers with
            // NULL at once instead of waiting, so pods (or tests) starting
            // together raced on the same migration. Our own lock waits.
            let got = sqlx::query("SELECT GET_LOCK('syncstore.migrate', 120)")
                .fetch_one(&mut *conn)
                .await
                .and_then(|row| row.i64_at(0))
                .map_err(sqlx::migrate::MigrateError::from)?;
            if got != 1 {
                return Err(DbError::Migrate(sqlx::migrate::MigrateError::Execute(
                    sqlx::Error::Protocol("timed out waiting for the migration lock".into()),
                )));
            }
        }
        let result = async {
            if self.dialect == Dialect::Mysql {
                finish_interrupted(&mut conn, migrator)
                    .await
                    .map_err(sqlx::migrate::MigrateError::Execute)?;
            }
            migrator.run_direct(&mut *conn).await
        }
        .await;
        if self.dialect == Dialect::Mysql {
            let _ = sqlx::query("SELECT RELEASE_LOCK('syncstore.migrate')")
                .execute(&mut *conn)
                .await;
        }
        result.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => DbError::VersionSkew(v),
            e => DbError::Migrate(e),
        })?;
        Ok(migrator.iter().count().saturating_sub(applied_before))
    }

    async fn applied_migrations(&self) -> usize {
        sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|row| row.i64_at(0).ok())
            .map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }

    /// Held for the length of a write transaction: the writer's turn on
    /// SQLite, nothing on the servers (their row locks do the job).
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.dialect {
            Dialect::Sqlite => {
                let _waiting = Waiting::new(&self.writers_waiting);
                Some(self.sqlite_writer.lock().await)
            }
            _ => None,
        }
    }

    /// Held for the whole of one write of `user_id` on the servers, retries
    /// included (see [`turns`]); on SQLite the writer's turn already puts
    /// writes in order. A queue that gave no turn for as long as a request
    /// waits for a pooled connection is the same `PoolTimedOut` (503).
    pub async fn user_turn(&self, user_id: &str) -> Result<Option<turns::UserTurn>, sqlx::Error> {
        if self.dialect == Dialect::Sqlite {
            return Ok(None);
        }
        match self.user_turns.take(user_id, ACQUIRE_TIMEOUT).await {
            Some(turn) => Ok(Some(turn)),
            None => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Writers waiting for their turn now (always 0 on the servers).
    pub fn writers_waiting(&self) -> usize {
        self.writers_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A pooled connection for reads and single statements, its wait
    /// recorded in the histogram of [`Self::observe_acquire`]. Every query
    /// of the data plane takes its connection here or in [`Self::begin`],
    /// so the histogram sees every wait.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await;
        self.record_wait(started);
        conn
    }

    /// Starts a transaction on a pooled connection, recording how long
    /// that took (the wait for a connection, plus `BEGIN`'s round trip).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let started = std::time::Instant::now();
        let tx = self.pool.begin().await;
        self.record_wait(started);
        tx
    }

    fn record_wait(&self, started: std::time::Instant) {
        if let Some(h) = self.acquire_wait.get() {
            h.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Records the connection wait of every later [`Self::acquire`] and
    /// [`Self::begin`] (of this pool and its clones) in `histogram`; only
    /// the first call counts.
    pub fn observe_acquire(&self, histogram: prometheus::Histogram) {
        let _ = self.acquire_wait.set(histogram);
    }

    /// The pool itself, for migrations and tests; the data plane's queries
    /// go through [`Self::acquire`] and [`Self::begin`].
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The query text for this dialect: `?` placeholders become `$1, $2, …`
    /// on PostgreSQL. Queries are our own constants, so no `?` ever appears
    /// inside a string literal.
    pub fn sql<'a>(&self, query: &'a str) -> Cow<'a, str> {
        match self.dialect {
            Dialect::Postgres => Cow::Owned(numbered_placeholders(query)),
            _ => Cow::Borrowed(query),
        }
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        match self.acquire().await {
            Ok(mut conn) => sqlx::query("SELECT 1").fetch_one(&mut *conn).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Open, idle and at most allowed connections, for the pool gauges.
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        (self.pool.size(), self.pool.num_idle(), self.max_connections)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn numbered_placeholders(query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 16);
    let mut n = 0;
    for c in query.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// DB_SSL=true asks the driver to refuse plaintext connections.
fn with_tls(url: &str, ssl: bool) -> String {
    if !ssl {
        return url.to_string();
    }
    let param = match Dialect::from_url(url) {
        Some(Dialect::Postgres) => "sslmode=require",
        Some(Dialect::Mysql) => "ssl-mode=REQUIRED",
        _ => return url.to_string(),
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// Typed column access that tolerates each driver's integer and boolean
/// widths (PostgreSQL BOOLEAN, MySQL TINYINT(1), SQLite INTEGER), which the
/// `Any` driver otherwise reports as different kinds.
pub trait RowExt {
    fn i64_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<i64, sqlx::Error>;
    fn opt_i64<I: sqlx::ColumnIndex<AnyRow> + Copy>(
        &self,
        col: I,
    ) -> Result<Option<i64>, sqlx::Error>;
    fn bool_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<bool, sqlx::Error>;
    fn str_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<String, sqlx::Error>;
    fn opt_str<I: sqlx::ColumnIndex<AnyRow> + Copy>(
        &self,
        col: I,
    ) -> Result<Option<String>, sqlx::Error>;
}

impl RowExt for AnyRow {
    fn i64_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<i64, sqlx::Error> {
        self.opt_i64(col)?
            .ok_or_else(|| sqlx::Error::Decode("unexpected NULL in an integer column".into()))
    }

    fn opt_i64<I: sqlx::ColumnIndex<AnyRow> + Copy>(
        &self,
        col: I,
    ) -> Result<Option<i64>, sqlx::Error> {
        if let Ok(v) = self.try_get::<Option<i64>, _>(col) {
            return Ok(v);
        }
        if let Ok(v) = self.try_get::<Option<i32>, _>(col) {
            return Ok(v.map(i64::from));
        }
        if let Ok(v) = self.try_get::<Option<i16>, _>(col) {
            return Ok(v.map(i64::from));
        }
        if let Ok(v) = self.try_get::<Option<bool>, _>(col) {
            return Ok(v.map(i64::from));
        }
        // Decimal results (e.g. MySQL SUM) arrive as text through `Any`.
        match self.try_get::<Option<String>, _>(col)? {
            None => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e))),
        }
    }

    fn bool_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<bool, sqlx::Error> {
        match self.try_get::<bool, _>(col) {
            Ok(b) => Ok(b),
            Err(_) => Ok(self.i64_at(col)? != 0),
        }
    }

    fn str_at<I: sqlx::ColumnIndex<AnyRow> + Copy>(&self, col: I) -> Result<String, sqlx::Error> {
        self.opt_str(col)?
            .ok_or_else(|| sqlx::Error::Decode("unexpected NULL in a text column".into()))
    }

    /// MySQL reports text in a binary collation (ours, `utf8mb4_nopad_bin`, chosen
    /// for byte-exact keys and ids) as BLOB, so bytes are accepted as UTF-8.
    fn opt_str<I: sqlx::ColumnIndex<AnyRow> + Copy>(
        &self,
        col: I,
    ) -> Result<Option<String>, sqlx::Error> {
        match self.try_get::<Option<String>, _>(col) {
            Ok(v) => Ok(v),
            Err(text_err) => match self.try_get::<Option<Vec<u8>>, _>(col) {
                Ok(bytes) => bytes
                    .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
                    .transpose(),
                Err(_) => Err(text_err),
            },
        }
    }
}

/// Stored JSON text as a raw value, checked but not re-serialised.
pub(crate) fn raw_json(
    text: Option<String>,
) -> Result<Option<Box<serde_json::value::RawValue>>, sqlx::Error> {
    text.map(|t| {
        serde_json::value::RawValue::from_string(t).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    })
    .transpose()
}

/// The escape character of every `LIKE`, stated in each query through
/// [`like`]: SQLite has no default escape and PostgreSQL and MariaDB
/// default to a backslash (which MariaDB's string literals unescape once
/// more), so a pattern escaped for one dialect matched more in another:
/// `u\_1` (meaning `u_1`) matched `u\x1` on SQLite. `!` means the same in
/// all three and needs no doubling anywhere.
pub const LIKE_ESCAPE: char = '!';

/// `column LIKE ? ESCAPE '!'`: the only way a query here says LIKE. Bind
/// a pattern from [`like_prefix`].
pub fn like(column: &str) -> String {
    format!("{column} LIKE ? ESCAPE '{LIKE_ESCAPE}'")
}

/// The [`like`] pattern that matches exactly the values starting with
/// `prefix`: `%`, `_` and the escape itself are escaped.
pub fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '%' | '_') || c == LIKE_ESCAPE {
            out.push(LIKE_ESCAPE);
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The current time as Unix milliseconds, the unit of every stored time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether the database is down, overloaded or lost a lock race, rather
/// than refusing what was asked: worth answering 503 (and retrying).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL admin_shutdown, crash_shutdown, cannot_connect_now,
        // too_many_connections.
        sqlx::Error::Database(db) => {
            is_retryable(err)
                || matches!(
                    db.code().as_deref(),
                    Some("57P01" | "57P02" | "57P03" | "53300")
                )
        }
        _ => false,
    }
}

/// Whether a failed transaction is worth running again: it lost a deadlock,
/// a serialization check or a busy lock, and nothing it did was kept.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "40001" | "40P01" | "5" | "6" | "517" | "262")
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

impl From<sqlx::Error> for crate::error::ApiError {
    /// Connection-level failures, lost lock races and a server shutting down
    /// mean the database is down or overloaded (503, retryable); anything
    /// else is our bug (500, logged).
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            Self::ServiceUnavailable
        } else {
            Self::Internal(err.to_string())
        }
    }
}

/// How to reach the database (`DATABASE_URL`, `DB_CONNECTION_LIMIT`,
/// `DB_SSL`), as `config` parses it.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// A server URL, or `None` for the embedded SQLite file.
    pub url: Option<Secret>,
    pub connection_limit: u32,
    pub ssl: bool,
}

/// Finishes the MySQL migrations an earlier run left half applied. MySQL
/// and MariaDB commit each DDL statement on its own, so a process killed
/// during a migration leaves its `_sqlx_migrations` row at `success = 0`
/// with some statements done, and sqlx then refuses every later run
/// ("partially applied") until someone repairs it by hand. Each statement
/// of such a migration is run again, an "already there" refusal counting as
/// done, and the row is marked applied; its checksum is the one sqlx
/// recorded, so the run that follows checks it as usual. Every MySQL
/// migration is written so that this holds (tests/storage.rs replays each).
async fn finish_interrupted(
    conn: &mut sqlx::AnyConnection,
    migrator: &Migrator,
) -> Result<(), sqlx::Error> {
    // No table yet: nothing ran before.
    let Ok(rows) = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 0")
        .fetch_all(&mut *conn)
        .await
    else {
        return Ok(());
    };
    for row in rows {
        let version = row.try_get::<i64, _>(0)?;
        // A version this binary does not know is sqlx's to report.
        let Some(migration) = migrator.iter().find(|m| m.version == version) else {
            continue;
        };
        for statement in statements(&migration.sql) {
            match sqlx::query(&statement).execute(&mut *conn).await {
                Err(e) if !already_applied(&e) => return Err(e),
                _ => {}
            }
        }
        sqlx::query("UPDATE _sqlx_migrations SET success = 1 WHERE version = ?")
            .bind(version)
            .execute(&mut *conn)
            .await?;
        tracing::warn!(
            version,
            "finished a migration that an interrupted run left half applied"
        );
    }
    Ok(())
}

/// The statements of one of our migration files: `--` comment lines left
/// out, the rest split at `;`. Not a general SQL splitter (a `;` inside a
/// string literal would break it): our MySQL migrations hold none, which
/// tests/storage.rs checks by replaying every statement.
fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// MySQL's refusals of a DDL statement whose effect is already there:
/// table exists (1050), duplicate column (1060), duplicate key name (1061),
/// multiple primary keys (1068).
fn already_applied(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|d| matches!(d.number(), 1050 | 1060 | 1061 | 1068))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE x = ? AND y IN (?, ?)"),
            "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)"
        );
    }

    #[test]
    fn like_wildcards_in_a_prefix_are_literal() {
        assert_eq!(like_prefix("a%"), "a!%%");
        assert_eq!(like_prefix("a_b!"), "a!_b!!%");
        assert_eq!(
            like_prefix("u\\x"),
            "u\\x%",
            "a backslash is an ordinary character"
        );
        assert_eq!(like_prefix(""), "%");
        assert_eq!(like("item_key"), "item_key LIKE ? ESCAPE '!'");
    }

    proptest::proptest! {
        /// Unescaping the pattern (minus the final %) gives the prefix back,
        /// and no wildcard is left unescaped.
        #[test]
        fn escaped_pattern_round_trips(prefix in "[a-z%_!\\\\]{0,12}") {
            let pat = like_prefix(&prefix);
            let body = &pat[..pat.len() - 1];
            let mut out = String::new();
            let mut esc = false;
            for c in body.chars() {
                if !esc && c == LIKE_ESCAPE { esc = true; continue; }
                proptest::prop_assert!(esc || !matches!(c, '%' | '_'));
                esc = false;
                out.push(c);
            }
            proptest::prop_assert_eq!(out, prefix);
        }
    }

    #[test]
    fn db_ssl_adds_the_drivers_require_flag() {
        assert_eq!(
            with_tls("postgres://u@h/db", true),
            "postgres://u@h/db?sslmode=require"
        );
        assert_eq!(
            with_tls("mysql://u@h/db?x=1", true),
            "mysql://u@h/db?x=1&ssl-mode=REQUIRED"
        );
        assert_eq!(with_tls("mysql://u@h/db", false), "mysql://u@h/db");
    }
}
