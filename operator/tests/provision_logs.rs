//! Issue 13, item 11: provisioning a store's database role logs no password,
//! even at `trace`, on PostgreSQL and MariaDB. The subscriber here does not
//! redact, so the test proves that the password never reaches a log event
//! at all (the operator's real writer masks it as well).

mod common;

use std::{
    io,
    sync::{Arc, Mutex},
};

use sqlx::{Connection, Executor};
use syncstore_crds::Engine;
use syncstore_operator::database::{drop_store, provision, Target};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// `n` random ASCII letters and digits.
fn random(n: usize) -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

async fn provision_and_drop_logging_at_trace(engine: Engine, admin: &str) {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let name = format!("ss_logtest_{}", random(12).to_ascii_lowercase());
    let target = Target {
        engine,
        schema: name.clone(),
        role: name,
        owner: syncstore_operator::database::Owner {
            namespace: "logtest".into(),
            name: "store".into(),
            uid: random(12),
        },
        adopt_unmarked: false,
    };
    let password = random(32);
    // Create, then re-assert (the ALTER path), then drop.
    provision(admin, &target, &password)
        .await
        .expect("provision");
    provision(admin, &target, &password)
        .await
        .expect("provision again");
    drop_store(admin, &target).await.expect("drop");

    // The capture sees sqlx's statement logging where it is on, so its
    // silence about the password above is meaningful.
    match engine {
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(admin).await.expect("connect");
            c.execute("SELECT 4711").await.expect("select");
            let _ = c.close().await;
        }
        Engine::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(admin)
                .await
                .expect("connect");
            c.execute("SELECT 4711").await.expect("select");
            let _ = c.close().await;
        }
    }

    let text = out.text();
    assert!(
        text.contains("SELECT 4711"),
        "statement logging is visible to the capture: {text}"
    );
    assert!(
        !text.contains(&password),
        "the password reached a log line on {engine:?}: {text}"
    );
}

#[tokio::test]
async fn provisioning_on_postgres_logs_no_password_at_trace() {
    provision_and_drop_logging_at_trace(Engine::Postgres, &common::postgres_admin()).await;
}

#[tokio::test]
async fn provisioning_on_mariadb_logs_no_password_at_trace() {
    provision_and_drop_logging_at_trace(Engine::Mysql, &common::mysql_admin()).await;
}
