//! Shared helpers for the integration tests: real databases and a real
//! `syncstore serve` process.
#![allow(dead_code)]

mod app;
pub mod redis;
pub mod ws;

// Each test target includes this module and uses what it needs of it.
#[allow(unused_imports)]
pub use app::{assert_error, key_id, send, TestApp};

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use syncstore::{
    config::{DatabaseConfig, Limits, Secret},
    storage::Db,
};

/// PostgreSQL started by `scripts/services.sh`; override with TEST_POSTGRES_URL.
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://syncstore:syncstore@127.0.0.1:5432/syncstore".into())
}

/// MariaDB started by `scripts/services.sh`; override with TEST_MYSQL_URL.
pub fn mysql_url() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://syncstore:syncstore@127.0.0.1:3306/syncstore".into())
}

/// A database of the given backend, migrated. SQLite gets a fresh file;
/// the servers are shared, so tests isolate themselves by user id.
pub async fn database(backend: &str) -> (Db, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match backend {
        "sqlite" => None,
        "postgres" => Some(postgres_url()),
        "mysql" => Some(mysql_url()),
        other => panic!("unknown backend {other}"),
    };
    let cfg = DatabaseConfig {
        url: url.map(Secret::new),
        connection_limit: 16,
        ssl: false,
    };
    let db = Db::connect(&cfg, dir.path()).await.unwrap_or_else(|e| {
        panic!("{backend} must be running (scripts/services.sh starts it): {e}")
    });
    db.migrate().await.expect("migrations apply");
    (db, Some(dir))
}

pub fn limits() -> Limits {
    Limits {
        max_item_bytes: 100 * 1024,
        max_storage_bytes_per_user: 1024 * 1024,
        ttl_cleanup_interval: Duration::from_secs(3600),
        ttl_expiry_interval: Duration::from_secs(1),
        tombstone_retention: Duration::from_secs(86400),
        idempotency_window: Duration::from_secs(86400),
    }
}

/// A user id no other test uses.
pub fn unique_user(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncstore"))
}

/// A running `syncstore serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: tempfile::TempDir,
    pub port: u16,
    /// `DATABASE_URL`, when the server is on a database server (given to
    /// [`Server::with_database`] or in its environment): the CLI
    /// (`create_key`, `cli`) and [`Server::db`] reach the same database.
    pub db_env: Vec<(&'static str, String)>,
}

/// The database URL of a backend: `None` for the embedded SQLite.
pub fn database_url(backend: &str) -> Option<String> {
    match backend {
        "sqlite" => None,
        "postgres" => Some(postgres_url()),
        "mysql" => Some(mysql_url()),
        other => panic!("unknown backend {other}"),
    }
}

impl Server {
    /// Starts the real binary on the database at `url` (the embedded SQLite
    /// when `None`) with `extra` variables; keys made with
    /// [`Server::create_key`] land in the same database.
    pub async fn with_database(url: Option<String>, extra: &[(&str, &str)]) -> Server {
        let db_env: Vec<(&'static str, String)> =
            url.map(|u| vec![("DATABASE_URL", u)]).unwrap_or_default();
        let mut env: Vec<(&str, &str)> = db_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        let mut server = Self::start(&env).await;
        server.db_env = db_env;
        server
    }

    /// The server's own database (its SQLite file, or `DATABASE_URL`),
    /// opened beside it with one connection, not migrated.
    pub async fn db(&self) -> Db {
        let cfg = DatabaseConfig {
            url: self.db_env.first().map(|(_, url)| Secret::new(url.clone())),
            connection_limit: 1,
            ssl: false,
        };
        Db::connect(&cfg, self.data_dir.path())
            .await
            .expect("the server's database opens")
    }

    /// The CLI's environment for this server's database.
    pub fn cli_env(&self) -> Vec<(&str, &str)> {
        self.db_env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Starts the real binary with `env` on a free port and waits until
    /// `/health` answers.
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, env).await
    }

    pub async fn start_in(data_dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        Self::start_command("serve", data_dir, env).await
    }

    /// Starts `syncstore <command>` (`serve` or `analytics`, which both
    /// answer `/health` on PORT).
    pub async fn start_command(
        command: &str,
        data_dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Server {
        let port = free_port();
        let mut cmd = Command::new(binary());
        cmd.arg(command)
            .env_clear()
            .env("PORT", port.to_string())
            .env("SYNCSTORE_DATA_DIR", data_dir.path())
            .env("LOG_LEVEL", "warn")
            // Tests make many requests per user; the limit tests set their own.
            .env("RATE_LIMIT_MAX_REQUESTS", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data_dir.path().join("server.log")).expect("log file"));
        let mut db_env = Vec::new();
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "DATABASE_URL" {
                db_env = vec![("DATABASE_URL", v.to_string())];
            }
        }
        let child = cmd.spawn().expect("spawn syncstore");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir,
            port,
            db_env,
        };
        server.wait_healthy().await;
        server
    }

    pub async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("syncstore did not become healthy on {}", self.base);
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates an API key with the same binary, data directory and database.
    pub fn create_key(&self, user: &str, extra: &[&str]) -> String {
        create_key(self.data_dir.path(), &self.cli_env(), user, extra)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `syncstore keys create` and returns the printed key.
pub fn create_key(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
    user: &str,
    extra: &[&str],
) -> String {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("SYNCSTORE_DATA_DIR", data_dir)
        .args(["keys", "create", "--name", "test", "--user", user]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(extra).output().expect("run keys create");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}
