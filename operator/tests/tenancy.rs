//! Issue 15, isolation and data safety, against a real kube-apiserver and
//! etcd and real PostgreSQL and MariaDB: stores in different namespaces
//! never share a schema or role, a schema is only ever touched by the store
//! that owns it, deleted ApiKeys stay deleted when their store comes back,
//! immutable fields are refused at apply time, and the scope list is the
//! data plane's.

mod common;

use common::{condition, mysql_admin, postgres_admin, Cluster};
use serde_json::Value;
use sqlx::Connection;
use syncstore::auth::{hash_key, Scope};
use syncstore::storage::keys;
use syncstore_operator::database::open_store;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Postgres,
    Mysql,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    fn admin(self) -> String {
        match self {
            Engine::Postgres => postgres_admin(),
            Engine::Mysql => mysql_admin(),
        }
    }
}

/// Applies a manifest given as YAML text; Err carries kubectl's stderr.
fn apply(c: &Cluster, yaml: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!(
        "{}-{:x}.yaml",
        c.ns,
        yaml.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
    ));
    std::fs::write(&path, yaml).expect("write");
    c.try_kubectl(&["apply", "-f", &path.to_string_lossy()])
}

fn store_yaml(name: &str, engine: Engine, extra_db: &str) -> String {
    format!(
        "apiVersion: syncstore.dev/v1alpha1\nkind: SyncStore\nmetadata: {{name: {name}}}\nspec:\n  image: ghcr.io/syncstore/syncstore:0.1.0\n  replicas: 1\n  database: {{engine: {}, adminSecretRef: {{name: db-admin, key: url}}{extra_db}}}\n",
        engine.name()
    )
}

fn key_yaml(name: &str, store: &str, scopes: &str) -> String {
    format!(
        "apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}}}\nspec: {{storeRef: {store}, userId: alice, scopes: [{scopes}]}}\n"
    )
}

fn cluster_with_operator(c: &mut Cluster, engine: Engine) {
    c.secret("db-admin", &[("url", &engine.admin())]);
    c.start_operator("op15");
}

/// The schema a store's status records.
fn recorded_schema(c: &Cluster, store: &str) -> String {
    c.must_get("syncstore", store)["status"]["database"]["schema"]
        .as_str()
        .expect("status.database.schema")
        .to_string()
}

async fn count_tables(engine: Engine, schema: &str) -> i64 {
    let q = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ";
    match engine {
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&engine.admin())
                .await
                .expect("admin");
            sqlx::query_scalar(&format!("{q}$1"))
                .bind(schema)
                .fetch_one(&mut c)
                .await
                .expect("count")
        }
        Engine::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(&engine.admin())
                .await
                .expect("admin");
            sqlx::query_scalar(&format!("{q}?"))
                .bind(schema)
                .fetch_one(&mut c)
                .await
                .expect("count")
        }
    }
}

fn ready_reason(obj: &Value) -> (String, String) {
    let c = condition(obj, "Ready").cloned().unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").into(),
        c["reason"].as_str().unwrap_or("").into(),
    )
}

/// `team/a-chat` and `team-a/chat` (here `<ns>/a-chat` and `<ns>-a/chat`)
/// get different schemas and roles and keep their own keys; a third store
/// whose `schemaName` names the first one's schema is refused with
/// `SchemaOwnedByAnother`, changes nothing (the owner's password still
/// works), and deleting it with `deletionPolicy: Delete` drops nothing.
async fn namespaces_do_not_collide_and_schemas_are_owned(engine: Engine) {
    let mut a = Cluster::new("op15");
    let mut b = Cluster::with_namespace(format!("{}-a", a.ns));
    let mut thief = Cluster::new("op15-b");
    for c in [&mut a, &mut b, &mut thief] {
        cluster_with_operator(c, engine);
    }
    apply(&a, &store_yaml("a-chat", engine, "")).expect("store a");
    apply(&a, &key_yaml("ka", "a-chat", "")).expect("key a");
    apply(&b, &store_yaml("chat", engine, "")).expect("store b");
    apply(&b, &key_yaml("kb", "chat", "")).expect("key b");
    a.wait_condition("apikey/ka", "Ready", 90);
    b.wait_condition("apikey/kb", "Ready", 90);

    let (sa, sb) = (recorded_schema(&a, "a-chat"), recorded_schema(&b, "chat"));
    assert_ne!(sa, sb, "different namespaces, different schemas");
    let readable = format!("ss_{}_a_chat_", a.ns.replace('-', "_"));
    assert!(
        sa.starts_with(&readable) && sb.starts_with(&readable),
        "{sa} {sb}"
    );
    let role = |c: &Cluster, s: &str| {
        c.must_get("syncstore", s)["status"]["database"]["role"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_ne!(role(&a, "a-chat"), role(&b, "chat"));

    // Each key is in its own store only.
    let url_a = a.secret_value("a-chat-db", "DATABASE_URL").expect("url a");
    let url_b = b.secret_value("chat-db", "DATABASE_URL").expect("url b");
    let db_a = open_store(&url_a, 1).await.expect("store a connects");
    let db_b = open_store(&url_b, 1).await.expect("store b connects");
    let key_a = a.secret_value("ka-apikey", "apiKey").expect("key a");
    let key_b = b.secret_value("kb-apikey", "apiKey").expect("key b");
    for (db, mine, theirs) in [(&db_a, &key_a, &key_b), (&db_b, &key_b, &key_a)] {
        assert!(keys::find_by_hash(db, &hash_key(mine))
            .await
            .expect("query")
            .is_some_and(|r| r.is_active));
        assert!(keys::find_by_hash(db, &hash_key(theirs))
            .await
            .expect("query")
            .is_none());
    }
    let tables = count_tables(engine, &sa).await;
    assert!(tables >= 10, "store a is migrated ({tables} tables)");

    // A store in another namespace pointing at a's schema.
    apply(
        &thief,
        &store_yaml(
            "victim",
            engine,
            &format!(", schemaName: {sa}, deletionPolicy: Delete"),
        ),
    )
    .expect("thief store");
    let s = thief.eventually("SchemaOwnedByAnother", 60, || {
        let s = thief.get("syncstore", "victim")?;
        (ready_reason(&s).1 == "SchemaOwnedByAnother").then_some(s)
    });
    assert_eq!(ready_reason(&s).0, "False");
    let message = condition(&s, "Ready").expect("Ready")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains(&format!("{}/a-chat", a.ns)),
        "names the owner: {message}"
    );
    assert!(s["status"]["database"].is_null(), "nothing recorded");
    assert!(
        thief.get("deployment", "victim").is_none(),
        "no pods for a refused store"
    );
    // a's credentials still work (its password was not reset), it is Ready.
    db_a.close().await;
    let db_a = open_store(&url_a, 1).await.expect("store a still connects");
    assert_eq!(ready_reason(&a.must_get("syncstore", "a-chat")).0, "True");

    thief.kubectl(&["delete", "syncstore", "victim", "--timeout=60s"]);
    assert_eq!(
        count_tables(engine, &sa).await,
        tables,
        "deletionPolicy: Delete dropped nothing of a's"
    );
    assert!(keys::find_by_hash(&db_a, &hash_key(&key_a))
        .await
        .expect("query")
        .is_some_and(|r| r.is_active));
    // The event names whose schema it is, without the provisioning advice
    // ("choose another schemaName") that means nothing to a deleted store.
    let refused: Vec<String> = thief
        .events("involvedObject.name=victim,reason=DropRefused")
        .into_iter()
        .map(|(_, _, message)| message)
        .collect();
    let what = if matches!(engine, Engine::Postgres) {
        "schema"
    } else {
        "database"
    };
    assert_eq!(
        refused,
        [format!(
            "Dropped only what this store owns: {what} {sa} belongs to SyncStore {}/a-chat, so it was left in place",
            a.ns
        )]
    );
    db_a.close().await;
    db_b.close().await;

    // Cleanup: both stores were made with Retain; drop them by hand.
    for (c, store) in [(&a, "a-chat"), (&b, "chat")] {
        c.kubectl(&[
            "patch",
            "syncstore",
            store,
            "--type=merge",
            "-p",
            r#"{"spec":{"database":{"deletionPolicy":"Delete"}}}"#,
        ]);
        c.kubectl(&["delete", "syncstore", store, "--timeout=60s"]);
    }
    assert_eq!(count_tables(engine, &sa).await, 0, "a's owner drops it");
    assert_eq!(count_tables(engine, &sb).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_namespaces_do_not_collide_and_schemas_are_owned() {
    namespaces_do_not_collide_and_schemas_are_owned(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_namespaces_do_not_collide_and_schemas_are_owned() {
    namespaces_do_not_collide_and_schemas_are_owned(Engine::Mysql).await;
}

/// Delete a store (Retain), then its ApiKey, then create the store again:
/// the deleted key's row is inactive before the store is Ready again, while
/// a key whose ApiKey still exists and a key made outside Kubernetes (the
/// REST API, no ApiKey) stay active. Also: `tokens:issue` is accepted and
/// reaches the row; `audit:read` is refused by `kubectl apply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_stay_deleted_when_the_store_comes_back() {
    let mut c = Cluster::new("op15-keys");
    cluster_with_operator(&mut c, Engine::Postgres);
    apply(&c, &store_yaml("chat", Engine::Postgres, "")).expect("store");
    apply(&c, &key_yaml("gone", "chat", "")).expect("key");
    apply(&c, &key_yaml("kept", "chat", "tokens:issue")).expect("tokens:issue is accepted");
    let refused = apply(&c, &key_yaml("audit", "chat", "audit:read"))
        .expect_err("audit:read is not a data-plane scope");
    assert!(
        refused.contains("audit:read") && refused.contains("Unsupported value"),
        "{refused}"
    );
    c.wait_condition("apikey/gone", "Ready", 90);
    c.wait_condition("apikey/kept", "Ready", 90);

    let url = c.secret_value("chat-db", "DATABASE_URL").expect("url");
    let db = open_store(&url, 1).await.expect("store db");
    let gone = c.secret_value("gone-apikey", "apiKey").expect("key");
    let kept = c.secret_value("kept-apikey", "apiKey").expect("key");
    let kept_row = keys::find_by_hash(&db, &hash_key(&kept))
        .await
        .expect("query")
        .expect("row");
    assert!(kept_row.scopes.contains(&Scope::TokensIssue));
    // A key made through the REST API / `syncstore keys`: no ApiKey object.
    let rest_key = syncstore::auth::generate_key("sk_live_");
    let new = syncstore::auth::NewKey {
        name: "made-by-rest".into(),
        user_id: "bob".into(),
        scopes: vec![Scope::Read],
        expires_at: None,
        ip_restrictions: vec![],
        country_restrictions: vec![],
        domain_restrictions: vec![],
        user_agent_patterns: vec![],
        quotas: [None; 4],
    };
    keys::insert(&db, &new, &hash_key(&rest_key), "rest")
        .await
        .expect("insert");

    c.kubectl(&["delete", "syncstore", "chat", "--timeout=60s"]);
    // There is no garbage collector here: delete what it would have.
    c.kubectl(&[
        "delete",
        "deployment/chat",
        "service/chat",
        "pdb/chat",
        "configmap/chat-config",
        "secret/chat-db",
        "secret/chat-secrets",
    ]);
    c.kubectl(&["delete", "apikey", "gone", "--timeout=60s"]);
    let events = c.kubectl(&["get", "events", "-o", "json"]);
    assert!(events.contains("RevokeDeferred"), "{events}");
    assert!(
        keys::find_by_hash(&db, &hash_key(&gone))
            .await
            .expect("query")
            .is_some_and(|r| r.is_active),
        "with the store gone, nothing could revoke the row yet (and nothing serves it)"
    );

    apply(&c, &store_yaml("chat", Engine::Postgres, "")).expect("store again");
    c.wait_condition("syncstore/chat", "Ready", 90);
    let row = |k: &str| {
        let db = db.clone();
        let h = hash_key(k);
        async move {
            keys::find_by_hash(&db, &h)
                .await
                .expect("query")
                .expect("row kept for audit")
        }
    };
    assert!(
        !row(&gone).await.is_active,
        "the deleted ApiKey's row is revoked by the time the store is Ready"
    );
    assert!(row(&kept).await.is_active, "a live ApiKey's row stays");
    assert!(
        row(&rest_key).await.is_active,
        "a key made outside Kubernetes stays"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=chat",
        "-o",
        "json",
    ]);
    assert!(events.contains("OrphanKeysRevoked"), "{events}");
    db.close().await;

    // Cleanup: drop the retained schema through the store that owns it.
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"database":{"deletionPolicy":"Delete"}}}"#,
    ]);
    c.kubectl(&["delete", "syncstore", "chat", "--timeout=60s"]);
}

/// `schemaName` unset→set, set→unset, set→other and an `engine` change are
/// refused by the apiserver (CEL transition rules), with the rule's message.
#[test]
fn immutable_fields_are_refused_at_apply() {
    let c = Cluster::new("op15-cel");
    let plain = store_yaml("s1", Engine::Postgres, "");
    let named = store_yaml("s1", Engine::Postgres, ", schemaName: ss_op15_fixed");
    apply(&c, &plain).expect("created without schemaName");
    let e = apply(&c, &named).expect_err("unset -> set is refused");
    assert!(e.contains("schemaName is immutable"), "{e}");
    let e = apply(&c, &store_yaml("s1", Engine::Mysql, "")).expect_err("engine change");
    assert!(e.contains("engine is immutable"), "{e}");

    let named2 = store_yaml("s2", Engine::Postgres, ", schemaName: ss_op15_fixed");
    apply(&c, &named2).expect("created with schemaName");
    let e = apply(&c, &store_yaml("s2", Engine::Postgres, "")).expect_err("set -> unset");
    assert!(e.contains("schemaName is immutable"), "{e}");
    let e = apply(
        &c,
        &store_yaml("s2", Engine::Postgres, ", schemaName: ss_op15_other"),
    )
    .expect_err("set -> other");
    assert!(e.contains("schemaName is immutable"), "{e}");
    // Other fields still change.
    apply(
        &c,
        &store_yaml(
            "s2",
            Engine::Postgres,
            ", schemaName: ss_op15_fixed, deletionPolicy: Delete",
        ),
    )
    .expect("deletionPolicy may change");
}

/// A store provisioned by an older operator (status with `schemaVersion`,
/// no `status.database`, an unmarked `ss_<namespace>_<name>` schema and
/// role) keeps that schema, and it is marked as the store's; a new store
/// whose `schemaName` names an unmarked schema is refused and leaves it be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_an_older_operator_keeps_its_schema() {
    let mut c = Cluster::new("op15-old");
    let legacy = format!("ss_{}_chat", c.ns.replace('-', "_"));
    let foreign = format!("ss_{}_foreign", c.ns.replace('-', "_"));
    let mut admin = sqlx::PgConnection::connect(&postgres_admin())
        .await
        .expect("admin");
    for ddl in [
        format!("CREATE ROLE \"{legacy}\" WITH LOGIN PASSWORD 'Old0Password0123456'"),
        format!("GRANT \"{legacy}\" TO CURRENT_USER"),
        format!("CREATE SCHEMA \"{legacy}\" AUTHORIZATION \"{legacy}\""),
        format!("CREATE TABLE \"{legacy}\".kept_by_upgrade (v TEXT)"),
        format!("CREATE SCHEMA \"{foreign}\""),
        format!("CREATE TABLE \"{foreign}\".billing (v TEXT)"),
    ] {
        sqlx::query(&ddl).execute(&mut admin).await.expect(&ddl);
    }
    c.secret("db-admin", &[("url", &postgres_admin())]);
    apply(&c, &store_yaml("chat", Engine::Postgres, "")).expect("store");
    // What an older operator left in status.
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"schemaVersion":20261201000004,"phase":"Running"}}"#,
    ]);
    apply(
        &c,
        &store_yaml(
            "intruder",
            Engine::Postgres,
            &format!(", schemaName: {foreign}, deletionPolicy: Delete"),
        ),
    )
    .expect("intruder");
    c.start_operator("op15");
    c.wait_condition("syncstore/chat", "Ready", 90);
    let s = c.must_get("syncstore", "chat");
    assert_eq!(s["status"]["database"]["schema"], legacy.as_str());
    assert_eq!(s["status"]["database"]["role"], legacy.as_str());
    assert_eq!(s["status"]["database"]["storeId"], legacy.as_str());
    assert_eq!(
        c.must_get("configmap", "chat-config")["data"]["SYNCSTORE_STORE"],
        legacy.as_str()
    );
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
    )
    .bind(&legacy)
    .fetch_one(&mut admin)
    .await
    .expect("schema");
    let uid = s["metadata"]["uid"].as_str().expect("uid");
    assert!(comment.is_some_and(|m| m.contains(uid)), "marked");
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'kept_by_upgrade'",
    )
    .bind(&legacy)
    .fetch_one(&mut admin)
    .await
    .expect("count");
    assert_eq!(kept, 1, "the old schema, data included, is the store's");

    let i = c.eventually("the intruder refused", 60, || {
        let s = c.get("syncstore", "intruder")?;
        (ready_reason(&s).1 == "SchemaOwnedByAnother").then_some(s)
    });
    let message = condition(&i, "Ready").expect("Ready")["message"].to_string();
    assert!(
        message.contains("not created for this SyncStore"),
        "{message}"
    );
    c.kubectl(&["delete", "syncstore", "intruder", "--timeout=60s"]);
    assert_eq!(
        count_tables(Engine::Postgres, &foreign).await,
        1,
        "not dropped"
    );

    // Cleanup: the store drops what is now marked as its own.
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"database":{"deletionPolicy":"Delete"}}}"#,
    ]);
    c.kubectl(&["delete", "syncstore", "chat", "--timeout=60s"]);
    assert_eq!(count_tables(Engine::Postgres, &legacy).await, 0);
    sqlx::query(&format!("DROP SCHEMA \"{foreign}\" CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop foreign");
}

/// A schema planted before the store exists, marked with the store's
/// namespace and name (its derived name is predictable) but a UID the
/// operator never recorded, is not adopted: the store is refused with
/// `SchemaOwnedByAnother` and migrates nothing into it. Only the UID of a
/// store the operator itself retained (`syncstore-retained`) is adopted.
async fn a_planted_mark_is_not_adopted(engine: Engine) {
    use syncstore_operator::database::{
        derive_name, Owner, MYSQL_DATABASE_MAX, OWNER_TABLE, PG_MAX,
    };
    let mut c = Cluster::new("op15-plant");
    let max = match engine {
        Engine::Postgres => PG_MAX,
        Engine::Mysql => MYSQL_DATABASE_MAX,
    };
    let schema = derive_name(&c.ns, "future", max);
    let forged = Owner {
        namespace: c.ns.clone(),
        name: "future".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
    }
    .mark();
    match engine {
        Engine::Postgres => {
            let mut admin = sqlx::PgConnection::connect(&engine.admin())
                .await
                .expect("admin");
            for ddl in [
                format!("CREATE SCHEMA \"{schema}\""),
                format!("COMMENT ON SCHEMA \"{schema}\" IS '{forged}'"),
            ] {
                sqlx::query(&ddl).execute(&mut admin).await.expect(&ddl);
            }
        }
        Engine::Mysql => {
            let mut admin = sqlx::MySqlConnection::connect(&engine.admin())
                .await
                .expect("admin");
            for ddl in [
                format!("CREATE DATABASE `{schema}`"),
                format!(
                    "CREATE TABLE `{schema}`.`{OWNER_TABLE}` (id INT NOT NULL PRIMARY KEY, mark TEXT NOT NULL, role_name VARCHAR(80) NOT NULL)"
                ),
                format!("INSERT INTO `{schema}`.`{OWNER_TABLE}` VALUES (1, '{forged}', 'nobody')"),
            ] {
                sqlx::query(&ddl).execute(&mut admin).await.expect(&ddl);
            }
        }
    }
    cluster_with_operator(&mut c, engine);
    apply(&c, &store_yaml("future", engine, "")).expect("store");
    let store = c.eventually("the store refused", 60, || {
        let s = c.get("syncstore", "future")?;
        (ready_reason(&s) == ("False".into(), "SchemaOwnedByAnother".into())).then_some(s)
    });
    let message = condition(&store, "Ready").expect("Ready")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains(&schema)
            && message.ends_with(
                "; the operator leaves it untouched, so choose another spec.database.schemaName for this store"
            ),
        "{store}"
    );
    let planted_tables = match engine {
        Engine::Postgres => 0,
        Engine::Mysql => 1, // the planted owner table itself
    };
    assert_eq!(count_tables(engine, &schema).await, planted_tables);
    // Re-attack finding 5: the refused store, deleted (with `Retain`), is
    // not recorded in `syncstore-retained`: it never provisioned anything.
    c.kubectl(&["delete", "syncstore", "future", "--timeout=60s"]);
    let retained = c.get("configmap", "syncstore-retained");
    assert!(
        retained
            .as_ref()
            .is_none_or(|cm| cm["data"]["future"].is_null()),
        "{retained:?}"
    );
    drop(c);
    let drop = match engine {
        Engine::Postgres => format!("DROP SCHEMA \"{schema}\" CASCADE"),
        Engine::Mysql => format!("DROP DATABASE `{schema}`"),
    };
    match engine {
        Engine::Postgres => {
            let mut admin = sqlx::PgConnection::connect(&engine.admin())
                .await
                .expect("admin");
            sqlx::query(&drop).execute(&mut admin).await.expect(&drop);
        }
        Engine::Mysql => {
            let mut admin = sqlx::MySqlConnection::connect(&engine.admin())
                .await
                .expect("admin");
            sqlx::query(&drop).execute(&mut admin).await.expect(&drop);
        }
    }
}

#[tokio::test]
async fn postgres_a_planted_mark_is_not_adopted() {
    a_planted_mark_is_not_adopted(Engine::Postgres).await;
}

#[tokio::test]
async fn mariadb_a_planted_mark_is_not_adopted() {
    a_planted_mark_is_not_adopted(Engine::Mysql).await;
}

/// A store deleted while its pods still serve (`--cascade=orphan`, or
/// before the garbage collector reaches the children; this control plane
/// has none, so deleting the store alone is that case): deleting one of its
/// keys revokes the row at once through the database Secret the store left,
/// rather than deferring to a re-provisioning that may never come.
#[tokio::test]
async fn keys_of_an_orphaned_store_are_revoked_at_once() {
    let mut c = Cluster::new("op15-orphan");
    cluster_with_operator(&mut c, Engine::Postgres);
    apply(&c, &store_yaml("lim", Engine::Postgres, "")).expect("store");
    apply(&c, &key_yaml("lk", "lim", "")).expect("key");
    c.wait_condition("apikey/lk", "Ready", 90);
    let url = c.secret_value("lim-db", "DATABASE_URL").expect("url");
    let value = c.secret_value("lk-apikey", "apiKey").expect("key");
    c.kubectl(&["delete", "syncstore", "lim", "--timeout=60s"]);
    assert!(c.get("secret", "lim-db").is_some(), "the children stay");
    c.kubectl(&["delete", "apikey", "lk", "--timeout=60s"]);
    let db = open_store(&url, 1).await.expect("store db");
    let row = keys::find_by_hash(&db, &hash_key(&value))
        .await
        .expect("query")
        .expect("row");
    assert!(!row.is_active, "the deleted key no longer authenticates");
    let events = c.kubectl(&["get", "events", "-o", "json"]);
    assert!(events.contains("KeyRevoked"), "{events}");
    assert!(!events.contains("RevokeDeferred"), "{events}");
}

/// The admin Secret decides the server and database a store lives on
/// (recorded in `status.database.server`); pointing a provisioned store at
/// a database that lacks its schema is refused (`ImmutableFieldChanged`)
/// rather than moving it to a new, empty schema.
#[tokio::test]
async fn a_store_does_not_move_to_another_database() {
    let mut c = Cluster::new("op15-move");
    cluster_with_operator(&mut c, Engine::Postgres);
    apply(&c, &store_yaml("chat", Engine::Postgres, "")).expect("store");
    c.wait_condition("syncstore/chat", "Ready", 90);
    let server = c.must_get("syncstore", "chat")["status"]["database"]["server"].clone();
    assert_eq!(server, "127.0.0.1:5432/syncstore");
    let url = c.secret_value("chat-db", "DATABASE_URL").expect("url");
    let admin = postgres_admin();
    let elsewhere = format!("{}/postgres", admin.rsplit_once('/').expect("a path").0);
    c.secret("other-admin", &[("url", &elsewhere)]);
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"database":{"adminSecretRef":{"name":"other-admin","key":"url"}}}}"#,
    ]);
    let store = c.eventually("the move refused", 60, || {
        let s = c.get("syncstore", "chat")?;
        let d = condition(&s, "DatabaseReady")?;
        (d["status"] == "False" && d["reason"] == "ImmutableFieldChanged").then_some(s)
    });
    // Finding 2: the Deployment still serves, and Ready says so.
    assert_eq!(
        ready_reason(&store),
        ("True".into(), "Serving".into()),
        "{}",
        store["status"]
    );
    assert_eq!(
        condition(&store, "Available").expect("Available")["status"],
        "True"
    );
    let message = condition(&store, "DatabaseReady").expect("DatabaseReady")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains("127.0.0.1:5432/syncstore") && message.contains("cannot move"),
        "{message}"
    );
    assert_eq!(
        c.secret_value("chat-db", "DATABASE_URL").as_deref(),
        Some(url.as_str()),
        "the store's database is unchanged"
    );
}

/// Turning autoscaling on for a running store hands `replicas` to the HPA
/// without a drop: the Deployment keeps its count (within the autoscaling
/// bounds) instead of falling back to the default of one replica.
#[tokio::test]
async fn enabling_autoscaling_keeps_the_replica_count() {
    let mut c = Cluster::new("op15-hpa");
    cluster_with_operator(&mut c, Engine::Postgres);
    apply(
        &c,
        &store_yaml("chat", Engine::Postgres, "").replace("replicas: 1", "replicas: 4"),
    )
    .expect("store");
    c.wait_condition("syncstore/chat", "Ready", 90);
    assert_eq!(c.must_get("deployment", "chat")["spec"]["replicas"], 4);
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"autoscaling":{"minReplicas":3,"maxReplicas":6}}}"#,
    ]);
    c.eventually("the HPA", 60, || c.get("hpa", "chat"));
    // Another reconcile after the hand-over keeps it too.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let d = c.must_get("deployment", "chat");
    assert_eq!(
        d["spec"]["replicas"], 4,
        "{}",
        d["metadata"]["managedFields"]
    );
}

/// The operator's pool of a store outlives the store's connections: after
/// the database cut them (a restart, a failover, an idle timeout; here
/// `pg_terminate_backend`), the next key edit goes through instead of
/// failing with "terminating connection due to administrator command".
#[tokio::test]
async fn cut_connections_do_not_fail_the_next_key_edit() {
    let mut c = Cluster::new("op15-cut");
    cluster_with_operator(&mut c, Engine::Postgres);
    apply(&c, &store_yaml("chat", Engine::Postgres, "")).expect("store");
    apply(&c, &key_yaml("k", "chat", "")).expect("key");
    c.wait_condition("apikey/k", "Ready", 90);
    let role = c.must_get("syncstore", "chat")["status"]["database"]["role"]
        .as_str()
        .expect("role")
        .to_string();
    let mut admin = sqlx::PgConnection::connect(&postgres_admin())
        .await
        .expect("admin");
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
    )
    .bind(&role)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!cut.is_empty(), "the operator held connections as {role}");
    c.kubectl(&[
        "patch",
        "apikey",
        "k",
        "--type=merge",
        "-p",
        r#"{"spec":{"displayName":"renamed"}}"#,
    ]);
    let url = c.secret_value("chat-db", "DATABASE_URL").expect("url");
    let db = open_store(&url, 1).await.expect("store db");
    let value = c.secret_value("k-apikey", "apiKey").expect("key");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = keys::find_by_hash(&db, &hash_key(&value))
            .await
            .expect("query");
        if row.is_some_and(|r| r.name == "renamed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit never reached the row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let k = c.must_get("apikey", "k");
    assert_eq!(ready_reason(&k), ("True".into(), "Active".into()), "{k}");
    let events = c.kubectl(&["get", "events", "-o", "json"]);
    assert!(!events.contains("KeyStoreError"), "{events}");
}

/// Derived names are predictable, so a `schemaName` could take another
/// namespace's store's name before that store exists and lock it out; a
/// new schema of that form is only created for the store it is derived
/// from.
#[tokio::test]
async fn a_derived_name_cannot_be_squatted() {
    use syncstore_operator::database::{derive_name, PG_MAX};
    let mut c = Cluster::new("op15-squat");
    cluster_with_operator(&mut c, Engine::Postgres);
    let victim_ns = format!("{}-v", c.ns);
    let taken = derive_name(&victim_ns, "victim", PG_MAX);
    apply(
        &c,
        &store_yaml(
            "squatter",
            Engine::Postgres,
            &format!(", schemaName: {taken}"),
        ),
    )
    .expect("store");
    let s = c.eventually("the squat refused", 60, || {
        let s = c.get("syncstore", "squatter")?;
        (ready_reason(&s) == ("False".into(), "SchemaOwnedByAnother".into())).then_some(s)
    });
    assert!(s.to_string().contains(&taken), "{s}");
    assert_eq!(count_tables(Engine::Postgres, &taken).await, 0);
    let mut admin = sqlx::PgConnection::connect(&postgres_admin())
        .await
        .expect("admin");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&taken)
            .fetch_one(&mut admin)
            .await
            .expect("query");
    assert!(!exists, "the schema was not created");
}
