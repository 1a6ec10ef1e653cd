//! A binary older than its database's schema (a newer release migrated it,
//! then the deployment rolled back, or an old image stayed pinned) must not
//! crash-loop: `serve` stays up with `/health` 200 and `/ready` 503
//! `VersionSkew`, and says so in its log. Run on the embedded SQLite file
//! and on a schema of its own on the real PostgreSQL.

mod common;

use common::{postgres_url, Server};
use sqlx::Connection;
use syncstore::{
    config::{DatabaseConfig, Secret},
    storage::{Db, DbError},
};

/// A migration no release of this binary has.
const FUTURE: i64 = 99_990_101_000_000;

async fn add_future_migration(db: &Db, checksum: &str) {
    let q = format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({FUTURE}, 'from a newer release', TRUE, {checksum}, 0)"
    );
    sqlx::query(&q).execute(db.pool()).await.expect("insert");
}

/// Migrates, then plays a newer release: migrating again is refused as a
/// skew, not as a generic failure.
async fn skewed(cfg: &DatabaseConfig, dir: &std::path::Path, checksum: &str) {
    let db = Db::connect(cfg, dir).await.expect("connect");
    db.migrate().await.expect("migrations apply");
    add_future_migration(&db, checksum).await;
    match db.migrate().await {
        Err(DbError::VersionSkew(v)) => assert_eq!(v, FUTURE),
        other => panic!("expected VersionSkew, got {other:?}"),
    }
    db.pool().close().await;
}

async fn assert_reports_skew(server: &Server) {
    let client = reqwest::Client::new();
    let health = client
        .get(server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let ready = client
        .get(server.url("/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "VersionSkew");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&FUTURE.to_string()), "{message}");
    let items = client
        .get(server.url("/api/v1/items"))
        .send()
        .await
        .expect("items");
    assert_eq!(items.status(), 503, "nothing is served on a skewed schema");
    assert!(server.log().contains("VersionSkew"), "{}", server.log());
}

#[tokio::test]
async fn an_older_binary_on_sqlite_reports_version_skew_instead_of_exiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DatabaseConfig {
        url: None,
        connection_limit: 2,
        ssl: false,
    };
    skewed(&cfg, dir.path(), "X'00'").await;
    let server = Server::start_in(dir, &[]).await;
    assert_reports_skew(&server).await;
}

#[tokio::test]
async fn an_older_binary_on_postgres_reports_version_skew_instead_of_exiting() {
    let schema = format!("skew_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&postgres_url())
        .await
        .expect("PostgreSQL must be running (scripts/services.sh)");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("create");
    let sep = if postgres_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-csearch_path%3D{schema}", postgres_url());
    let cfg = DatabaseConfig {
        url: Some(Secret::new(url.clone())),
        connection_limit: 2,
        ssl: false,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    skewed(&cfg, dir.path(), "'\\x00'::bytea").await;
    let server = Server::with_database(Some(url), &[]).await;
    assert_reports_skew(&server).await;
    drop(server);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop");
}
