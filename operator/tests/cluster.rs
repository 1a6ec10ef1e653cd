//! The operator against a real kube-apiserver and etcd, real PostgreSQL and
//! MariaDB, and the examples applied verbatim with kubectl.

mod common;

use common::{condition, kubeconfig, mysql_admin, postgres_admin, Cluster};
use serde_json::Value;
use sqlx::{Connection, Row};

fn pg_secrets(c: &Cluster) {
    c.secret("pg-admin", &[("url", &postgres_admin())]);
    c.secret("redis", &[("url", "redis://127.0.0.1:6379")]);
}

fn schema(c: &Cluster, store: &str) -> String {
    syncstore_operator::database::derive_name(&c.ns, store, 63)
}

fn manager_of(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|f| {
                    (
                        f["manager"].as_str().unwrap_or("").to_string(),
                        f["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn controller_owner(obj: &Value) -> (String, String, bool) {
    let o = &obj["metadata"]["ownerReferences"][0];
    (
        o["kind"].as_str().unwrap_or("").into(),
        o["name"].as_str().unwrap_or("").into(),
        o["controller"].as_bool().unwrap_or(false),
    )
}

#[tokio::test]
async fn postgres_store_gets_children_schema_role_and_status() {
    let mut c = Cluster::new("pg");
    pg_secrets(&c);
    c.start_operator("op-a");
    c.apply_example("syncstore-postgres.yaml");
    c.wait_condition("syncstore/chat", "Ready", 60);

    // Generated secrets, once, and the derived database URL.
    let jwt = c
        .secret_value("chat-secrets", "JWT_SECRET")
        .expect("JWT_SECRET");
    let password = c
        .secret_value("chat-secrets", "DB_PASSWORD")
        .expect("DB_PASSWORD");
    assert_eq!(jwt.len(), 40);
    assert!(c
        .secret_value("chat-secrets", "JWT_REFRESH_SECRET")
        .is_some_and(|r| r != jwt));
    let url = c
        .secret_value("chat-db", "DATABASE_URL")
        .expect("DATABASE_URL");
    let role = schema(&c, "chat");
    assert!(
        url.starts_with(&format!("postgres://{role}:{password}@127.0.0.1:5432/")),
        "{url}"
    );

    // ConfigMap carries the spec's settings.
    let cm = c.must_get("configmap", "chat-config");
    assert_eq!(cm["data"]["MAX_ITEM_SIZE_KB"], "256");
    assert_eq!(cm["data"]["RATE_LIMIT_MAX_REQUESTS"], "6000");
    assert_eq!(cm["data"]["CORS_ORIGIN"], "https://app.example.com");
    assert_eq!(cm["data"]["CONFLICT_DEFAULT_STRATEGY"], "LAST_WRITE_WINS");
    assert_eq!(cm["data"]["SYNCSTORE_STORE"], schema(&c, "chat"));

    // The Deployment: owned, applied server-side by our manager, probes,
    // env from the ConfigMap and Secrets, drain, config hash.
    let d = c.must_get("deployment", "chat");
    assert_eq!(
        controller_owner(&d),
        ("SyncStore".into(), "chat".into(), true)
    );
    assert!(
        manager_of(&d).contains(&("syncstore-operator".into(), "Apply".into())),
        "{:?}",
        manager_of(&d)
    );
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/syncstore/syncstore:0.1.0");
    assert_eq!(container["args"][0], "serve");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");
    let env_from: Vec<String> = container["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .map(|e| {
            e["configMapRef"]["name"]
                .as_str()
                .or(e["secretRef"]["name"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(env_from, ["chat-config", "chat-secrets", "chat-db"]);
    assert!(container["env"]
        .as_array()
        .expect("env")
        .iter()
        .any(|e| e["name"] == "REDIS_URL" && e["valueFrom"]["secretKeyRef"]["name"] == "redis"));
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let hash1 = pod["metadata"]["annotations"]["syncstore.dev/config-hash"]
        .as_str()
        .expect("hash")
        .to_string();

    let svc = c.must_get("service", "chat");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(controller_owner(&svc).0, "SyncStore");
    assert_eq!(c.must_get("pdb", "chat")["spec"]["maxUnavailable"], 1);
    assert!(c.get("hpa", "chat").is_none(), "no HPA without autoscaling");
    let consumer = c.must_get("deployment", "chat-analytics");
    assert_eq!(
        consumer["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "analytics"
    );
    assert_eq!(
        c.must_get("configmap", "chat-config")["data"]["KAFKA_BROKERS"],
        "kafka.kafka.svc.cluster.local:9092"
    );

    // Status as kubectl sees it.
    let s = c.must_get("syncstore", "chat");
    assert_eq!(s["status"]["observedGeneration"], 1);
    assert_eq!(
        s["status"]["phase"], "Running",
        "the stand-in kubelet made every replica available"
    );
    for t in ["Ready", "DatabaseReady", "SchemaMigrated"] {
        assert_eq!(condition(&s, t).expect(t)["status"], "True", "{t}");
    }
    let available = condition(&s, "Available").expect("Available");
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "ReplicasAvailable");
    assert_eq!(s["status"]["readyReplicas"], 3);
    assert_eq!(
        s["status"]["endpoint"],
        format!("http://chat.{}.svc:80", c.ns)
    );
    let version = s["status"]["schemaVersion"]
        .as_i64()
        .expect("schemaVersion");
    let table = c.kubectl(&["get", "syncstores"]);
    assert!(
        table.contains("PHASE") && table.contains("Running") && table.contains("True"),
        "{table}"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=chat",
    ]);
    assert!(
        events.contains("SecretsGenerated") && events.contains("SchemaMigrated"),
        "{events}"
    );

    // In the database: the schema owned by the store's role, the tables in
    // it, the migrations recorded, and no rights beyond it.
    let mut admin = sqlx::PgConnection::connect(&postgres_admin())
        .await
        .expect("admin connects");
    let owner: String =
        sqlx::query("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1")
            .bind(&role)
            .fetch_one(&mut admin)
            .await
            .expect("schema exists")
            .get(0);
    assert_eq!(owner, role);
    let other = format!("{role}_other");
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{other}\""))
        .execute(&mut admin)
        .await
        .expect("other schema");
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS \"{other}\".secret_data (v TEXT)"
    ))
    .execute(&mut admin)
    .await
    .expect("other table");
    let mut store = sqlx::PgConnection::connect(&url)
        .await
        .expect("the store role logs in");
    let tables: i64 = sqlx::query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name IN ('sync_items','api_keys','item_versions','conflicts')")
        .bind(&role)
        .fetch_one(&mut store)
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 4);
    let newest: i64 = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut store)
        .await
        .expect("migrations in its schema")
        .get(0);
    assert_eq!(newest, version);
    let denied = sqlx::query(&format!("SELECT * FROM \"{other}\".secret_data"))
        .fetch_all(&mut store)
        .await;
    assert!(
        denied.is_err(),
        "the store role must not read another schema"
    );
    let can_create_elsewhere = sqlx::query(&format!("CREATE TABLE \"{other}\".x (v INT)"))
        .execute(&mut store)
        .await;
    assert!(
        can_create_elsewhere.is_err(),
        "the store role must not write another schema"
    );
    sqlx::query(&format!("DROP SCHEMA \"{other}\" CASCADE"))
        .execute(&mut admin)
        .await
        .expect("cleanup");

    // A spec edit lands: replicas and a limit; the hash changes and rolls pods.
    let ready_since = condition(&s, "Ready").expect("Ready")["lastTransitionTime"].clone();
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5,"limits":{"maxItemSizeKb":512}}}"#,
    ]);
    c.eventually("the edit to land", 30, || {
        let d = c.must_get("deployment", "chat");
        let hash = d["spec"]["template"]["metadata"]["annotations"]["syncstore.dev/config-hash"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (d["spec"]["replicas"] == 5 && hash != hash1).then_some(())
    });
    assert_eq!(
        c.must_get("configmap", "chat-config")["data"]["MAX_ITEM_SIZE_KB"],
        "512"
    );
    let s = c.eventually("observedGeneration 2", 30, || {
        let s = c.must_get("syncstore", "chat");
        (s["status"]["observedGeneration"] == 2).then_some(s)
    });
    assert_eq!(
        condition(&s, "Ready").expect("Ready")["lastTransitionTime"],
        ready_since,
        "no flip, no new transition time"
    );

    // Drift is reverted: a hand edit of replicas and of the ConfigMap.
    c.kubectl(&["scale", "deployment", "chat", "--replicas=1"]);
    c.kubectl(&[
        "patch",
        "configmap",
        "chat-config",
        "--type=merge",
        "-p",
        r#"{"data":{"MAX_ITEM_SIZE_KB":"1"}}"#,
    ]);
    c.eventually("drift to be reverted", 30, || {
        let replicas = c.must_get("deployment", "chat")["spec"]["replicas"].clone();
        let limit = c.must_get("configmap", "chat-config")["data"]["MAX_ITEM_SIZE_KB"].clone();
        (replicas == 5 && limit == "512").then_some(())
    });

    // Autoscaling on: an HPA appears; off again: the orphan is deleted.
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"autoscaling":{"minReplicas":2,"maxReplicas":4}}}"#,
    ]);
    let hpa = c.eventually("the HPA", 30, || c.get("hpa", "chat"));
    assert_eq!(hpa["spec"]["maxReplicas"], 4);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/autoscaling"}]"#,
    ]);
    c.eventually("the HPA to go", 30, || {
        c.get("hpa", "chat").is_none().then_some(())
    });

    // The generated secrets were never regenerated along the way.
    assert_eq!(
        c.secret_value("chat-secrets", "JWT_SECRET").as_deref(),
        Some(jwt.as_str())
    );
    assert_eq!(
        c.secret_value("chat-secrets", "DB_PASSWORD").as_deref(),
        Some(password.as_str())
    );

    // Operator metrics and health.
    let port = c.operator(0).http;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains(r#"syncstore_operator_reconciles_total{kind="SyncStore"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("syncstore_operator_reconcile_duration_seconds_bucket"));
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .expect("health");
    assert!(health.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_generated_stored_updated_rotated_and_revoked() {
    let mut c = Cluster::new("keys");
    pg_secrets(&c);
    c.start_operator("op-k");
    c.apply_example("syncstore-postgres.yaml");
    c.apply_example("apikeys.yaml");
    c.wait_condition("apikey/mobile-alice", "Ready", 60);
    c.wait_condition("apikey/dashboard", "Ready", 60);

    let key = c
        .secret_value("chat-mobile-key", "apiKey")
        .expect("key in its Secret");
    assert!(key.starts_with("sk_live_") && key.len() > 40);
    let secret = c.must_get("secret", "chat-mobile-key");
    assert_eq!(
        controller_owner(&secret),
        ("ApiKey".into(), "mobile-alice".into(), true)
    );
    let dash_key = c
        .secret_value("dashboard-apikey", "apiKey")
        .expect("default secret name");

    // The store's rows hold the hash and every restriction; the data plane's
    // own key lookup accepts the key.
    let url = c.secret_value("chat-db", "DATABASE_URL").expect("db url");
    let db = syncstore_operator::database::open_store(&url, 2)
        .await
        .expect("store db");
    let keys = syncstore::auth::KeyStore::new(db.clone());
    let found = keys
        .find(&key)
        .await
        .expect("lookup")
        .expect("row for the key");
    assert_eq!(found.user_id, "alice");
    assert!(found.can_read && found.can_write);
    assert_eq!(found.quotas, [Some(600), None, Some(100_000), None]);
    let view = syncstore::storage::keys::get(&db, &found.id, None)
        .await
        .expect("get")
        .expect("view");
    assert_eq!(view.ip_restrictions, ["127.0.0.0/8", "10.0.0.0/8"]);
    assert_eq!(view.name, "Alice's phone app");
    assert_ne!(view.key_hash, key, "only the hash is stored");
    let dash = keys
        .find(&dash_key)
        .await
        .expect("lookup")
        .expect("dashboard row");
    assert!(!dash.can_write);
    assert!(
        dash.allows(syncstore::auth::Scope::Admin)
            && dash.allows(syncstore::auth::Scope::AnalyticsRead)
    );
    assert_eq!(dash.expires_at, Some(1_893_456_000_000));

    // Status: id, secret, recognisable prefix; never the key.
    let k = c.must_get("apikey", "mobile-alice");
    assert_eq!(k["status"]["keyId"], found.id.as_str());
    assert_eq!(k["status"]["secretName"], "chat-mobile-key");
    assert_eq!(
        k["status"]["keyPrefix"],
        &key["sk_live_".len().."sk_live_".len() + 8]
    );
    assert_eq!(k["status"]["phase"], "Active");
    let table = c.kubectl(&["get", "apikeys"]);
    assert!(
        table.contains("STORE") && table.contains("chat") && table.contains("Active"),
        "{table}"
    );

    // Usage flows from the database into status.
    let (day, month) = syncstore::auth::usage::day_and_month(chrono::Utc::now());
    syncstore::storage::keys::add_usage(
        &db,
        &found.id,
        7,
        syncstore::storage::now_ms(),
        day,
        month,
    )
    .await
    .expect("usage");
    c.eventually("usage in status", 30, || {
        let k = c.must_get("apikey", "mobile-alice");
        (k["status"]["usageToday"] == 7
            && k["status"]["usageThisMonth"] == 7
            && k["status"]["lastUsedAt"].is_string())
        .then_some(())
    });

    // A spec edit updates the row.
    c.kubectl(&[
        "patch",
        "apikey",
        "mobile-alice",
        "--type=merge",
        "-p",
        r#"{"spec":{"ipRestrictions":["192.168.0.0/16"],"canWrite":false}}"#,
    ]);
    c.eventually("the row to follow the spec", 30, || {
        let view = futures_block(syncstore::storage::keys::get(&db, &found.id, None))
            .ok()
            .flatten()?;
        (view.ip_restrictions == ["192.168.0.0/16"] && !view.can_write).then_some(())
    });

    // Rotation: a new key in the Secret, the old one valid for the grace period.
    c.kubectl(&[
        "annotate",
        "apikey",
        "mobile-alice",
        "syncstore.dev/rotate=2026-11-26",
    ]);
    let rotated = c.eventually("a rotated key", 30, || {
        c.secret_value("chat-mobile-key", "apiKey")
            .filter(|k| *k != key)
    });
    assert_eq!(
        c.secret_value("chat-mobile-key", "previousApiKey")
            .as_deref(),
        Some(key.as_str())
    );
    let (new_row, old_row) = c.eventually("both rows", 30, || {
        let new = futures_block(syncstore::storage::keys::find_by_hash(
            &db,
            &syncstore::auth::hash_key(&rotated),
        ))
        .ok()
        .flatten()?;
        let old = futures_block(syncstore::storage::keys::find_by_hash(
            &db,
            &syncstore::auth::hash_key(&key),
        ))
        .ok()
        .flatten()?;
        old.expires_at.is_some().then_some((new, old))
    });
    assert!(new_row.is_active && old_row.is_active);
    let grace_left = old_row.expires_at.expect("grace") - syncstore::storage::now_ms();
    assert!(
        (3_500_000..=3_600_000).contains(&grace_left),
        "about an hour of grace, got {grace_left} ms"
    );
    assert_eq!(
        (&new_row.user_id, &new_row.scopes, new_row.quotas),
        (&old_row.user_id, &old_row.scopes, old_row.quotas)
    );
    c.eventually("status to show the new key", 30, || {
        let k = c.must_get("apikey", "mobile-alice");
        (k["status"]["keyId"] == new_row.id.as_str() && k["status"]["rotation"] == "2026-11-26")
            .then_some(())
    });
    // A second reconcile does not rotate again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        c.secret_value("chat-mobile-key", "apiKey").as_deref(),
        Some(rotated.as_str())
    );

    // An edit after the rotation narrows the key in its grace period too:
    // both rows get the new scopes and restriction, the old keeps its end.
    c.kubectl(&[
        "patch",
        "apikey",
        "mobile-alice",
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":[],"canWrite":false,"ipRestrictions":["10.9.9.9/32"]}}"#,
    ]);
    let narrowed = |k: &str| {
        let row = futures_block(syncstore::storage::keys::find_by_hash(
            &db,
            &syncstore::auth::hash_key(k),
        ))
        .ok()
        .flatten()?;
        let from = |ip: &str| syncstore::auth::restrictions::Caller {
            ip: ip.parse().ok(),
            ..Default::default()
        };
        let restricted = row.restrictions.check(&from("10.9.9.9")).is_ok()
            && row.restrictions.check(&from("192.0.2.1")).is_err();
        (row.scopes == [syncstore::auth::Scope::Read] && !row.can_write && restricted)
            .then_some(row)
    };
    c.eventually("the new key narrowed", 30, || narrowed(&rotated));
    let old_now = c.eventually("the old key narrowed too", 30, || narrowed(&key));
    assert_eq!(
        old_now.expires_at, old_row.expires_at,
        "the grace is not extended"
    );

    // Deletion revokes both rows first, then the Secret goes.
    c.kubectl(&["delete", "apikey", "mobile-alice", "--timeout=30s"]);
    for k in [&rotated, &key] {
        let row = syncstore::storage::keys::find_by_hash(&db, &syncstore::auth::hash_key(k))
            .await
            .expect("query")
            .expect("row kept for audit");
        assert!(!row.is_active, "revoked");
    }
    assert!(c.get("secret", "chat-mobile-key").is_none());

    // The keys never appear in status, events or the operator's logs.
    let everything = format!(
        "{}\n{}\n{}",
        c.kubectl(&["get", "apikeys,syncstores", "-o", "yaml"]),
        c.kubectl(&["get", "events", "-o", "yaml"]),
        c.operator_logs()
    );
    for secret in [&key, &rotated, &dash_key] {
        assert!(!everything.contains(secret.as_str()), "a key leaked");
    }
    assert!(!everything.contains(&url), "the database URL leaked");
}

/// Runs a future to completion from inside the synchronous `eventually`.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_store_with_autoscaling_ingress_and_delete_policy() {
    let mut c = Cluster::new("maria");
    c.secret("maria-admin", &[("url", &mysql_admin())]);
    c.start_operator("op-m");
    c.apply_example("syncstore-mariadb.yaml");
    c.wait_condition("syncstore/notes", "Ready", 60);

    let db_name = schema(&c, "notes");
    let url = c.secret_value("notes-db", "DATABASE_URL").expect("url");
    assert!(url.ends_with(&format!("/{db_name}")), "{url}");
    let mut store = sqlx::MySqlConnection::connect(&url)
        .await
        .expect("the store user logs in");
    let tables: i64 = sqlx::query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name IN ('sync_items','api_keys','item_versions','conflicts')")
        .bind(&db_name)
        .fetch_one(&mut store)
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 4);
    let others = sqlx::query("SHOW DATABASES")
        .fetch_all(&mut store)
        .await
        .expect("show");
    let visible: Vec<String> = others
        .iter()
        .map(|r| r.get::<String, _>(0))
        .filter(|d| d != "information_schema")
        .collect();
    assert_eq!(
        visible,
        std::slice::from_ref(&db_name),
        "the store user sees only its database"
    );
    drop(store);

    let d = c.must_get("deployment", "notes");
    let ours = d["metadata"]["managedFields"]
        .as_array()
        .and_then(|m| m.iter().find(|f| f["manager"] == "syncstore-operator"))
        .expect("our field set");
    assert!(
        ours["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "with autoscaling the HPA owns replicas"
    );
    let hpa = c.must_get("hpa", "notes");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].clone(),
            hpa["spec"]["maxReplicas"].clone()
        ),
        (2.into(), 6.into())
    );
    let ingress = c.must_get("ingress", "notes");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "notes.example.com");
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "notes-tls");
    assert_eq!(
        c.must_get("configmap", "notes-config")["data"]["CONFLICT_DEFAULT_STRATEGY"],
        "MERGE"
    );

    // deletionPolicy: Delete drops the database and the user.
    c.kubectl(&["delete", "syncstore", "notes", "--timeout=30s"]);
    let mut admin = sqlx::MySqlConnection::connect(&mysql_admin())
        .await
        .expect("admin");
    let left: i64 =
        sqlx::query("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?")
            .bind(&db_name)
            .fetch_one(&mut admin)
            .await
            .expect("count")
            .get(0);
    assert_eq!(left, 0, "database dropped");
    let users: i64 = sqlx::query("SELECT COUNT(*) FROM mysql.user WHERE user = ?")
        .bind(syncstore_operator::database::derive_name(
            &c.ns, "notes", 32,
        ))
        .fetch_one(&mut admin)
        .await
        .expect("users")
        .get(0);
    assert_eq!(users, 0, "user dropped");
}

#[tokio::test]
async fn failures_show_in_status_and_recover() {
    let mut c = Cluster::new("fail");
    // Wrong password in the admin URL.
    let bad = postgres_admin().replace(":syncstore@", ":wrong-password@");
    c.secret("pg-admin", &[("url", &bad)]);
    c.secret("redis", &[("url", "redis://127.0.0.1:6379")]);
    c.start_operator("op-f");
    c.apply_example("syncstore-postgres.yaml");
    // Past `Pending` (reason Provisioning), the failure shows.
    let s = c.eventually("Ready=False", 30, || {
        let s = c.must_get("syncstore", "chat");
        let cond = condition(&s, "Ready")?.clone();
        (cond["status"] == "False" && cond["reason"] != "Provisioning").then_some(s)
    });
    let ready = condition(&s, "Ready").expect("Ready");
    assert_eq!(ready["reason"], "DatabaseUnreachable");
    let message = ready["message"].as_str().expect("message");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("wrong-password"), "no secrets in status");
    assert_eq!(
        condition(&s, "DatabaseReady").expect("DatabaseReady")["status"],
        "False"
    );
    assert_eq!(s["status"]["phase"], "Failed");
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=chat,type=Warning",
    ]);
    assert!(events.contains("DatabaseUnreachable"), "{events}");
    // Retried with backoff: the failure count grows.
    c.eventually("a retry", 30, || {
        (c.must_get("syncstore", "chat")["status"]["failures"].as_u64()? >= 2).then_some(())
    });

    // Fixing the Secret heals the store on the next retry.
    c.kubectl(&["delete", "secret", "pg-admin"]);
    c.secret("pg-admin", &[("url", &postgres_admin())]);
    c.wait_condition("syncstore/chat", "Ready", 90);
    assert_eq!(c.must_get("syncstore", "chat")["status"]["failures"], 0);
}

#[test]
fn dangling_references_and_invalid_specs() {
    let mut c = Cluster::new("refs");
    c.start_operator("op-r");
    // An ApiKey whose store does not exist.
    c.kubectl(&[
        "apply",
        "-f",
        &common::repo()
            .join("examples/apikeys.yaml")
            .to_string_lossy(),
    ]);
    c.eventually("StoreNotFound", 30, || {
        let k = c.must_get("apikey", "mobile-alice");
        (condition(&k, "Ready")?["reason"] == "StoreNotFound").then_some(())
    });
    // A store whose admin Secret is missing.
    c.apply_example("syncstore-postgres.yaml");
    c.eventually("SecretMissing", 30, || {
        let s = c.must_get("syncstore", "chat");
        let r = condition(&s, "Ready")?;
        (r["reason"] == "SecretMissing" && r["message"].as_str()?.contains("pg-admin"))
            .then_some(())
    });
    // Deleting an ApiKey whose store never existed still completes.
    c.kubectl(&["delete", "apikey", "mobile-alice", "--timeout=30s"]);

    // CRD validation refuses what can never work, at apply time.
    let bad_scale = r#"{"apiVersion":"syncstore.dev/v1alpha1","kind":"SyncStore","metadata":{"name":"bad"},"spec":{"image":"x","database":{"engine":"postgres","adminSecretRef":{"name":"a"}},"autoscaling":{"minReplicas":5,"maxReplicas":2}}}"#;
    let err = apply_json(&c, bad_scale).expect_err("minReplicas > maxReplicas is refused");
    assert!(
        err.contains("minReplicas must not exceed maxReplicas"),
        "{err}"
    );
    let bad_engine = bad_scale
        .replace(
            r#""autoscaling":{"minReplicas":5,"maxReplicas":2}"#,
            r#""replicas":1"#,
        )
        .replace("postgres", "oracle");
    let err = apply_json(&c, &bad_engine).expect_err("unknown engine is refused");
    assert!(
        err.contains("Unsupported value") && err.contains("oracle"),
        "{err}"
    );
    let bad_schema = bad_scale
        .replace(
            r#""autoscaling":{"minReplicas":5,"maxReplicas":2}"#,
            r#""replicas":1"#,
        )
        .replace(
            r#""adminSecretRef""#,
            r#""schemaName":"Robert'); DROP","adminSecretRef""#,
        );
    assert!(
        apply_json(&c, &bad_schema).is_err(),
        "a schema name that is not an identifier is refused"
    );
}

fn apply_json(c: &Cluster, json: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("{}-{}.json", c.ns, json.len()));
    std::fs::write(&path, json).expect("write");
    c.try_kubectl(&["apply", "-f", &path.to_string_lossy()])
}

#[tokio::test]
async fn a_killed_operator_duplicates_nothing() {
    let mut c = Cluster::new("crash");
    pg_secrets(&c);
    let first = c.start_operator("op-1");
    c.apply_example("syncstore-postgres.yaml");
    c.apply_example("apikeys.yaml");
    // Kill it in the middle: as soon as the first generated Secret exists.
    c.eventually("the first child", 30, || {
        c.get("secret", "chat-secrets").map(|_| ())
    });
    c.operator(first).kill();
    let password = c.secret_value("chat-secrets", "DB_PASSWORD");
    // Twice more, at different points, then let one finish.
    for delay_ms in [700, 1500] {
        let i = c.start_operator(&format!("op-{delay_ms}"));
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        c.operator(i).kill();
    }
    let mobile_key = c.secret_value("chat-mobile-key", "apiKey");
    c.start_operator("op-final");
    c.wait_condition("syncstore/chat", "Ready", 90);
    c.wait_condition("apikey/mobile-alice", "Ready", 90);
    c.wait_condition("apikey/dashboard", "Ready", 90);

    assert_eq!(
        c.secret_value("chat-secrets", "DB_PASSWORD"),
        password,
        "generated once"
    );
    if let Some(before) = mobile_key {
        assert_eq!(
            c.secret_value("chat-mobile-key", "apiKey"),
            Some(before),
            "the key survived the crash"
        );
    }
    let url = c.secret_value("chat-db", "DATABASE_URL").expect("url");
    let mut store = sqlx::PgConnection::connect(&url).await.expect("store");
    for user in ["alice", "ops"] {
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut store)
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, 1, "exactly one key row for {user}");
    }
    let deployments = c.kubectl(&["get", "deployments", "-o", "name"]);
    assert_eq!(
        deployments.lines().count(),
        2,
        "serve and analytics: {deployments}"
    );
    let secrets = c.kubectl(&[
        "get",
        "secrets",
        "-l",
        "app.kubernetes.io/managed-by=syncstore-operator",
        "-o",
        "name",
    ]);
    assert_eq!(
        secrets.lines().count(),
        4,
        "chat-secrets, chat-db and two key Secrets: {secrets}"
    );
}

#[test]
fn a_second_replica_waits_for_the_lease() {
    let mut c = Cluster::new("lease");
    pg_secrets(&c);
    let a = c.start_operator("replica-a");
    c.eventually("replica-a to lead", 30, || {
        c.log_of(a).contains("\"leading\"").then_some(())
    });
    let b = c.start_operator("replica-b");
    c.eventually("replica-b to wait", 30, || {
        c.log_of(b).contains("waiting for leadership").then_some(())
    });
    let lease = c.must_get("lease", "syncstore-operator");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    c.apply_example("syncstore-postgres.yaml");
    c.wait_condition("syncstore/chat", "Ready", 60);
    assert!(
        !c.log_of(b).contains("\"leading\""),
        "the standby must not lead"
    );

    // The leader dies; the standby takes over once the lease expires.
    c.operator(a).kill();
    c.eventually("replica-b to lead", 60, || {
        c.log_of(b).contains("\"leading\"").then_some(())
    });
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    c.eventually("the new leader to reconcile", 30, || {
        (c.must_get("deployment", "chat")["spec"]["replicas"] == 4).then_some(())
    });
}

/// Outside a cluster, without POD_NAMESPACE, there is no namespace to lead
/// in: the operator refuses to start (status 2) and takes no Lease, rather
/// than lead in `default` beside the chart's operator leading in its own.
#[test]
fn no_lease_namespace_no_start() {
    let c = Cluster::new("nolease");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncstore-operator"))
        .env("KUBECONFIG", kubeconfig())
        .env("WATCH_NAMESPACE", &c.ns)
        .env_remove("POD_NAMESPACE")
        .env("POD_NAME", "nolease-probe")
        .env("OPERATOR_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .expect("operator runs");
    assert_eq!(out.status.code(), Some(2), "exit status");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("set POD_NAMESPACE"), "says what to set: {log}");
    let leases = c.kubectl(&["get", "lease", "--all-namespaces", "-o", "json"]);
    assert!(
        !leases.contains("nolease-probe"),
        "no Lease held anywhere: {leases}"
    );
}

/// The chart's RBAC and ServiceAccount, rendered by helm for release
/// `release` in namespace `ns`, with `values` (`--set` pairs).
fn chart_rbac(release: &str, ns: &str, values: &[&str]) -> String {
    let helm = std::env::var("TEST_HELM").unwrap_or_else(|_| {
        panic!(
            "TEST_HELM is not set: scripts/helm-bin.sh builds helm (the test command exports it)"
        )
    });
    let out = std::process::Command::new(helm)
        .args([
            "template",
            release,
            &common::repo()
                .join("charts/syncstore-operator")
                .to_string_lossy(),
            "-n",
            ns,
        ])
        .args([
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ])
        .args(values.iter().flat_map(|v| ["--set", v]))
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn least_privilege_rbac_is_enough() {
    let mut c = Cluster::new("rbac");
    pg_secrets(&c);
    let release = format!("r-{}", c.ns);
    let path = std::env::temp_dir().join(format!("rbac-{}.yaml", c.ns));
    std::fs::write(&path, chart_rbac(&release, &c.ns, &[])).expect("write");
    c.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    let sa = format!("{release}-syncstore-operator");
    let config = c.service_account_kubeconfig(&sa);
    // The service account may not do what the role leaves out.
    let denied = c.try_kubectl(&["--kubeconfig", &config, "get", "pods"]);
    assert!(denied.is_err(), "pods are not in the role");

    c.start_operator_as("limited", &config);
    c.apply_example("syncstore-postgres.yaml");
    c.apply_example("apikeys.yaml");
    c.wait_condition("syncstore/chat", "Ready", 60);
    c.wait_condition("apikey/mobile-alice", "Ready", 60);
    c.kubectl(&["delete", "apikey", "mobile-alice", "--timeout=30s"]);
    let logs = c.operator_logs();
    assert!(
        !logs.contains("forbidden"),
        "the operator hit a missing permission:\n{}",
        common::tail(&logs, 20)
    );
    // Cluster-scoped RBAC outlives the namespace; remove it.
    let _ = c.try_kubectl(&["delete", "clusterrole,clusterrolebinding", &sa]);
    for role in ["view", "edit"] {
        let _ = c.try_kubectl(&["delete", "clusterrole", &format!("{sa}-{role}")]);
    }
}

/// With `watchNamespace` the chart grants a Role in that namespace only:
/// the operator still does its whole job there and can read nothing
/// elsewhere.
#[test]
fn namespace_scoped_rbac_is_enough() {
    let mut c = Cluster::new("nsrbac");
    pg_secrets(&c);
    let release = format!("r-{}", c.ns);
    let path = std::env::temp_dir().join(format!("rbac-{}.yaml", c.ns));
    let watch = format!("watchNamespace={}", c.ns);
    let rendered = chart_rbac(&release, &c.ns, &[&watch]);
    assert!(
        !rendered.contains("kind: ClusterRoleBinding"),
        "no cluster-wide grant to the operator: {rendered}"
    );
    std::fs::write(&path, &rendered).expect("write");
    c.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    let sa = format!("{release}-syncstore-operator");
    let config = c.service_account_kubeconfig(&sa);
    let can = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", config.as_str(), "auth", "can-i"];
        all.extend_from_slice(args);
        c.try_kubectl(&all).map(|s| s.trim().to_string())
    };
    assert_eq!(can(&["list", "secrets"]), Ok("yes".into()));
    assert!(
        can(&["list", "secrets", "-n", "default"]).is_err(),
        "secrets of other namespaces are out of reach"
    );
    assert!(can(&["list", "syncstores", "--all-namespaces"]).is_err());

    c.start_operator_as("scoped", &config);
    c.apply_example("syncstore-postgres.yaml");
    c.apply_example("apikeys.yaml");
    c.wait_condition("syncstore/chat", "Ready", 60);
    c.wait_condition("apikey/mobile-alice", "Ready", 60);
    let logs = c.operator_logs();
    assert!(
        !logs.contains("forbidden"),
        "the operator hit a missing permission:\n{}",
        common::tail(&logs, 20)
    );
    for role in ["view", "edit"] {
        let _ = c.try_kubectl(&["delete", "clusterrole", &format!("{sa}-{role}")]);
    }
}

/// People get the two kinds through Kubernetes' own `view`/`edit`/`admin`
/// roles: the chart's `-view` and `-edit` ClusterRoles carry the
/// aggregation labels. The aggregation itself is done by the
/// kube-controller-manager, which this test control plane does not run, so
/// the roles are bound directly to check what each grants.
#[test]
fn view_and_edit_roles_aggregate_and_grant_what_they_say() {
    let c = Cluster::new("aggr");
    let release = format!("r-{}", c.ns);
    let rendered = chart_rbac(&release, &c.ns, &[]);
    let roles: Vec<Value> = rendered
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|doc| doc["kind"] == "ClusterRole")
        .collect();
    let role = |suffix: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["name"] == format!("{release}-syncstore-operator-{suffix}"))
            .unwrap_or_else(|| panic!("no -{suffix} ClusterRole in {rendered}"))
            .clone()
    };
    let labels = |r: &Value| {
        let mut l: Vec<String> = r["metadata"]["labels"]
            .as_object()
            .expect("labels")
            .keys()
            .filter(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            .cloned()
            .collect();
        l.sort();
        l
    };
    let to = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| format!("rbac.authorization.k8s.io/aggregate-to-{n}"))
            .collect()
    };
    assert_eq!(labels(&role("view")), to(&["admin", "edit", "view"]));
    assert_eq!(labels(&role("edit")), to(&["admin", "edit"]));

    let path = std::env::temp_dir().join(format!("aggr-{}.yaml", c.ns));
    std::fs::write(&path, &rendered).expect("write");
    c.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    for who in ["viewer", "editor"] {
        c.kubectl(&["create", "serviceaccount", who]);
    }
    let sa = |who: &str| format!("{}:{who}", c.ns);
    let bind = |name: &str, role: &str, who: &str| {
        c.kubectl(&[
            "create",
            "rolebinding",
            name,
            &format!("--clusterrole={release}-syncstore-operator-{role}"),
            &format!("--serviceaccount={}", sa(who)),
        ]);
    };
    bind("viewer-view", "view", "viewer");
    bind("editor-view", "view", "editor");
    bind("editor-edit", "edit", "editor");
    // `can-i` exits 0 for yes and 1 for no.
    let can = |who: &str, verb: &str, what: &str| {
        c.try_kubectl(&[
            "auth",
            "can-i",
            "--quiet",
            verb,
            what,
            &format!("--as=system:serviceaccount:{}", sa(who)),
        ])
        .is_ok()
    };
    assert!(can("viewer", "list", "syncstores.syncstore.dev"));
    assert!(can("viewer", "get", "apikeys.syncstore.dev"));
    assert!(!can("viewer", "create", "syncstores.syncstore.dev"));
    assert!(!can("viewer", "get", "secrets"));
    assert!(can("editor", "create", "apikeys.syncstore.dev"));
    assert!(can("editor", "delete", "syncstores.syncstore.dev"));
    assert!(!can("editor", "get", "secrets"));
    for role in ["view", "edit", ""] {
        let name = format!("{release}-syncstore-operator-{role}");
        let _ = c.try_kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            name.trim_end_matches('-'),
        ]);
    }
}
