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
        tls: false,
        engine,
        schema: name.clone(),
        role: name,
        owner: syncstore_operator::database::Owner {
            namespace: "logtest".into(),
            name: "store".into(),
            uid: random(12),
        },
        adopt_unmarked: false,
        predecessor: None,
        provisioned_on: None,
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

/// Issue 15, item 15: the operator itself, at `trace` (sqlx's statement
/// logging included), writes none of the generated secrets of a
/// PostgreSQL and a MariaDB store and their keys, plain or base64.
#[test]
fn the_operator_at_trace_logs_no_generated_secret() {
    use base64::Engine as _;
    let mut c = common::Cluster::new("tracelog");
    c.secret("pg-admin", &[("url", &common::postgres_admin())]);
    c.secret("my-admin", &[("url", &common::mysql_admin())]);
    let kubeconfig = common::kubeconfig();
    let op = c.start_operator_with("op-trace", &kubeconfig, &[("LOG_LEVEL", "trace")]);
    let mut manifests = String::new();
    for (store, engine, admin) in [("pg", "postgres", "pg-admin"), ("my", "mysql", "my-admin")] {
        manifests.push_str(&format!(
            "apiVersion: syncstore.dev/v1alpha1\nkind: SyncStore\nmetadata: {{name: {store}}}\nspec:\n  image: ghcr.io/syncstore/syncstore:0.1.0\n  replicas: 1\n  database: {{engine: {engine}, adminSecretRef: {{name: {admin}, key: url}}}}\n---\napiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: {store}-key}}\nspec: {{storeRef: {store}, userId: alice}}\n---\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("{}-stores.yaml", c.ns));
    std::fs::write(&path, manifests).expect("write");
    c.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    let mut secrets = Vec::new();
    for store in ["pg", "my"] {
        c.wait_condition(&format!("syncstore/{store}"), "Ready", 90);
        c.wait_condition(&format!("apikey/{store}-key"), "Ready", 60);
        let generated = format!("{store}-secrets");
        for key in ["DB_PASSWORD", "JWT_SECRET", "JWT_REFRESH_SECRET"] {
            secrets.push(c.secret_value(&generated, key).expect(key));
        }
        secrets.push(
            c.secret_value(&format!("{store}-key-apikey"), "apiKey")
                .expect("apiKey"),
        );
    }
    let log = c.log_of(op);
    assert!(
        log.contains("sqlx::query"),
        "sqlx's statement logging is on at trace"
    );
    for secret in &secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(
            !log.contains(secret.as_str()) && !log.contains(&b64),
            "a generated secret reached the log at trace"
        );
    }
}
