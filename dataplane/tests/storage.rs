//! One storage suite, run unchanged against real SQLite, PostgreSQL and
//! MariaDB through the sync service (the one write path).

mod common;

use std::sync::Arc;

use common::{database, limits, unique_user};
use serde_json::{json, Value};
use syncstore::{
    audit::Source,
    auth::{KeyStore, NewKey, Scope},
    config::Limits,
    conflict::Strategy,
    error::ApiError,
    fanout::{Hub, LocalBus},
    metrics::Metrics,
    storage::{items, Db},
    sync::{Item, SetRequest, SyncService},
};

fn service(db: &Db, limits: Limits) -> SyncService {
    let bus = Arc::new(LocalBus::new(Arc::new(Hub::new()), "test"));
    let conflicts = syncstore::conflict::Settings::with_strategy(Strategy::FirstWriteWins);
    SyncService::new(
        db.clone(),
        limits,
        Arc::new(Metrics::new().expect("metrics")),
        bus,
        conflicts,
    )
}

/// A set through the write path, as REST sees it: a write that lost its
/// conflict (FIRST_WRITE_WINS here) is VERSION_CONFLICT with the current item.
async fn put(
    svc: &SyncService,
    user: &str,
    instance: &str,
    key: &str,
    req: &SetRequest,
) -> Result<Item, ApiError> {
    Ok(svc
        .set(user, instance, &Source::default(), key, req, None)
        .await?
        .won(req.version)?
        .item)
}

fn body(v: Value) -> SetRequest {
    serde_json::from_value(v).expect("valid set request")
}

fn value_of(item: &syncstore::sync::Item) -> Value {
    serde_json::from_str(item.value.as_ref().expect("has value").get()).expect("json")
}

async fn sequence_is_monotonic_without_gaps_per_user(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    // Concurrent writers on one user: every write takes the next number.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (svc, alice) = (svc.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let item = put(
                    &svc,
                    &alice,
                    "dev",
                    &format!("k{}", (w * 10 + i) % 13),
                    &body(json!({"value": i})),
                )
                .await;
                seqs.push(item.expect("write succeeds").seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=80).collect::<Vec<i64>>(),
        "seqs are exactly 1..=80"
    );
    // Another user's sequence is independent.
    let first = put(&svc, &bob, "dev", "k", &body(json!({"value": 1})))
        .await
        .unwrap();
    assert_eq!(first.seq, 1);
    // A rejected write consumes no sequence number.
    let err = put(
        &svc,
        &bob,
        "dev",
        "k",
        &body(json!({"value": 2, "version": 9})),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ApiError::VersionConflict { .. }));
    let next = put(&svc, &bob, "dev", "k2", &body(json!({"value": 3})))
        .await
        .unwrap();
    assert_eq!(next.seq, 2);
    let state = items::user_state(&db, &bob).await.unwrap().unwrap();
    assert_eq!(state.last_seq, 2);
}

async fn stale_version_conflicts_and_returns_current(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("conf");
    let v1 = put(&svc, &u, "a", "doc", &body(json!({"value": {"n": 1}})))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = put(
        &svc,
        &u,
        "b",
        "doc",
        &body(json!({"value": {"n": 2}, "version": 1})),
    )
    .await
    .unwrap();
    assert_eq!(v2.version, 2);
    match put(
        &svc,
        &u,
        "a",
        "doc",
        &body(json!({"value": {"n": 3}, "version": 1})),
    )
    .await
    {
        Err(ApiError::VersionConflict { current, .. }) => {
            assert_eq!(current.version, 2);
            assert_eq!(value_of(&current), json!({"n": 2}));
            assert_eq!(current.instance_id, "b");
        }
        other => panic!("expected VERSION_CONFLICT, got {other:?}"),
    }
    assert_eq!(
        value_of(&svc.get(&u, "doc").await.unwrap()),
        json!({"n": 2})
    );
}

async fn remove_leaves_a_tombstone_that_keeps_its_seq(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("tomb");
    put(&svc, &u, "a", "x", &body(json!({"value": "hello"})))
        .await
        .unwrap();
    put(&svc, &u, "a", "y", &body(json!({"value": "world"})))
        .await
        .unwrap();
    let removed = svc
        .remove(&u, "a", &Source::default(), "x", None)
        .await
        .unwrap();
    assert_eq!((removed.seq, removed.version), (3, 2));
    assert!(matches!(
        svc.get(&u, "x").await,
        Err(ApiError::NotFound { .. })
    ));
    assert_eq!(svc.keys(&u, "").await.unwrap(), vec!["y".to_string()]);
    assert!(matches!(
        svc.remove(&u, "a", &Source::default(), "x", None).await,
        Err(ApiError::NotFound { .. })
    ));
    // The change stream still carries the removal, in seq order.
    let changes = items::changes_since(&db, &u, 1).await.unwrap();
    let summary: Vec<(String, i64, bool)> = changes
        .iter()
        .map(|i| (i.key.clone(), i.seq, i.is_deleted))
        .collect();
    assert_eq!(summary, vec![("y".into(), 2, false), ("x".into(), 3, true)]);
    // Writing again continues the version line.
    let again = put(&svc, &u, "a", "x", &body(json!({"value": 1, "version": 2})))
        .await
        .unwrap();
    assert_eq!((again.version, again.seq), (3, 4));
}

async fn clear_removes_everything_with_one_seq_each(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("clear");
    for k in ["a", "b", "c"] {
        put(&svc, &u, "d", k, &body(json!({"value": k})))
            .await
            .unwrap();
    }
    svc.remove(&u, "d", &Source::default(), "b", None)
        .await
        .unwrap();
    let cleared = svc.clear(&u, "d", &Source::default(), None).await.unwrap();
    assert_eq!((cleared.cleared, cleared.last_seq), (2, 6));
    assert!(svc.list(&u, "").await.unwrap().is_empty());
    let state = items::user_state(&db, &u).await.unwrap().unwrap();
    assert_eq!((state.last_seq, state.bytes_used), (6, 0));
    let seqs: Vec<i64> = items::changes_since(&db, &u, 3)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(seqs, vec![4, 5, 6]);
}

async fn prefix_queries_treat_like_wildcards_literally(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("prefix");
    for k in [
        "a%1",
        "a%2",
        "ab",
        "a_c",
        "abc",
        "A%",
        "b!x",
        "b!!",
        "ключ/1",
        "ключ/2",
    ] {
        put(&svc, &u, "d", k, &body(json!({"value": k})))
            .await
            .unwrap();
    }
    assert_eq!(svc.keys(&u, "a%").await.unwrap(), vec!["a%1", "a%2"]);
    assert_eq!(svc.keys(&u, "a_").await.unwrap(), vec!["a_c"]);
    assert_eq!(svc.keys(&u, "b!").await.unwrap(), vec!["b!!", "b!x"]);
    assert_eq!(
        svc.keys(&u, "ключ/").await.unwrap(),
        vec!["ключ/1", "ключ/2"]
    );
    // Keys are case-sensitive in every backend.
    assert_eq!(svc.keys(&u, "A").await.unwrap(), vec!["A%"]);
    let items = svc.list(&u, "ab").await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        vec!["ab", "abc"]
    );
    assert_eq!(svc.keys(&u, "").await.unwrap().len(), 10);
    // "A" and "a" are different items.
    put(&svc, &u, "d", "K", &body(json!({"value": 1})))
        .await
        .unwrap();
    put(&svc, &u, "d", "k", &body(json!({"value": 2})))
        .await
        .unwrap();
    assert_eq!(value_of(&svc.get(&u, "K").await.unwrap()), json!(1));
}

async fn storage_quota_counts_live_bytes_only(backend: &str) {
    let (db, _dir) = database(backend).await;
    let small = Limits {
        max_item_bytes: 100,
        max_storage_bytes_per_user: 250,
        ..limits()
    };
    let svc = service(&db, small);
    let u = unique_user("quota");
    let v80 = json!({"value": "x".repeat(78)}); // 80 bytes with quotes
    put(&svc, &u, "d", "a", &body(v80.clone())).await.unwrap();
    put(&svc, &u, "d", "b", &body(v80.clone())).await.unwrap();
    put(&svc, &u, "d", "c", &body(v80.clone())).await.unwrap();
    match put(&svc, &u, "d", "d", &body(v80.clone())).await {
        Err(ApiError::StorageQuotaExceeded {
            would_use: 320,
            limit: 250,
        }) => {}
        other => panic!("expected STORAGE_QUOTA_EXCEEDED, got {other:?}"),
    }
    match put(
        &svc,
        &u,
        "d",
        "big",
        &body(json!({"value": "y".repeat(120)})),
    )
    .await
    {
        Err(ApiError::ItemTooLarge {
            size: 122,
            limit: 100,
        }) => {}
        other => panic!("expected ITEM_TOO_LARGE, got {other:?}"),
    }
    svc.remove(&u, "d", &Source::default(), "a", None)
        .await
        .unwrap();
    put(&svc, &u, "d", "d", &body(v80)).await.unwrap();
    put(&svc, &u, "d", "b", &body(json!({"value": 1})))
        .await
        .unwrap();
    let state = items::user_state(&db, &u).await.unwrap().unwrap();
    assert_eq!(state.bytes_used, 80 + 1 + 80);
}

async fn expired_items_vanish_at_once_and_are_purged_as_tombstones(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("ttl");
    put(
        &svc,
        &u,
        "d",
        "short",
        &body(json!({"value": 1, "ttl": 0.2})),
    )
    .await
    .unwrap();
    put(
        &svc,
        &u,
        "d",
        "long",
        &body(json!({"value": 2, "ttl": 3600})),
    )
    .await
    .unwrap();
    put(&svc, &u, "d", "forever", &body(json!({"value": 3})))
        .await
        .unwrap();
    assert!(svc.get(&u, "short").await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(matches!(
        svc.get(&u, "short").await,
        Err(ApiError::NotFound { .. })
    ));
    assert_eq!(svc.keys(&u, "").await.unwrap(), vec!["forever", "long"]);
    // The count is over every user of a shared server database, where
    // another process's expiry sweep may have written this one first: the
    // tombstone below is what must hold.
    svc.purge_expired().await.unwrap();
    let changes = items::changes_since(&db, &u, 3).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].is_deleted && changes[0].key == "short" && changes[0].seq == 4);
    let state = items::user_state(&db, &u).await.unwrap().unwrap();
    assert_eq!(state.bytes_used, 2);
}

async fn history_keeps_the_last_ten_versions(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("hist");
    for i in 0..15 {
        put(&svc, &u, "d", "doc", &body(json!({"value": i})))
            .await
            .unwrap();
    }
    let versions = items::versions(&db, &u, "doc").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.0).collect::<Vec<_>>(),
        (6..=15).rev().collect::<Vec<i64>>()
    );
}

async fn values_round_trip_exactly(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("values");
    let big = "z".repeat(90 * 1024);
    let cases = [
        json!(null),
        json!(true),
        json!(-1.5e300),
        json!("ünïcødé ✓ \"quoted\" \\ back"),
        json!({"nested": {"deep": [1, {"a": null}]}, "emoji": "🦀"}),
        json!([big]),
    ];
    for (i, v) in cases.iter().enumerate() {
        let key = format!("v{i}");
        put(
            &svc,
            &u,
            "d",
            &key,
            &body(json!({"value": v, "metadata": {"i": i}, "tags": ["t"], "priority": 7})),
        )
        .await
        .unwrap();
        let got = svc.get(&u, &key).await.unwrap();
        assert_eq!(&value_of(&got), v);
        assert_eq!(got.priority, 7);
        assert_eq!(
            got.metadata.as_ref().map(|m| m.get().to_string()),
            Some(format!("{{\"i\":{i}}}"))
        );
    }
}

async fn api_keys_are_stored_hashed_and_found(backend: &str) {
    let (db, _dir) = database(backend).await;
    let keys = KeyStore::new(db.clone());
    let user = unique_user("keys");
    let new = NewKey {
        name: "ci".into(),
        user_id: user.clone(),
        scopes: vec![Scope::Read],
        ip_restrictions: vec!["10.0.0.0/8".into()],
        ..NewKey::default()
    };
    let service = syncstore::keys::Keys::new(
        db.clone(),
        keys.clone(),
        "sk_test_".into(),
        std::time::Duration::from_secs(60),
    );
    let owner = syncstore::auth::policy::Authority::Owner;
    let syncstore::keys::Created { view: record, key } = service
        .create(owner, &new, Default::default())
        .await
        .unwrap();
    assert!(key.starts_with("sk_test_"));
    let found = keys.find(&key).await.unwrap().expect("key is found");
    assert_eq!(found.id, record.id);
    assert_eq!(found.user_id, user);
    assert!(found.allows(Scope::Read) && !found.allows(Scope::Write));
    assert!(found.is_active && found.can_read && !found.can_write);
    // Restrictions round-trip through the table, compiled.
    let inside = syncstore::auth::restrictions::Caller {
        ip: "10.1.1.1".parse().ok(),
        ..Default::default()
    };
    let outside = syncstore::auth::restrictions::Caller {
        ip: "11.1.1.1".parse().ok(),
        ..Default::default()
    };
    assert!(
        found.restrictions.check(&inside).is_ok() && found.restrictions.check(&outside).is_err()
    );
    assert!(keys.find("sk_test_nope").await.unwrap().is_none());
    // Usage sums within a day and a month, and starts over after them.
    use syncstore::storage::keys as key_rows;
    key_rows::add_usage(&db, &record.id, 2, 1000, 20261124, 202611)
        .await
        .unwrap();
    key_rows::add_usage(&db, &record.id, 3, 2000, 20261124, 202611)
        .await
        .unwrap();
    let v = key_rows::get(&db, &record.id, None).await.unwrap().unwrap();
    assert_eq!(
        (v.usage_today, v.usage_this_month, v.last_used_at),
        (5, 5, Some(2000))
    );
    key_rows::add_usage(&db, &record.id, 1, 3000, 20261125, 202611)
        .await
        .unwrap();
    let v = key_rows::get(&db, &record.id, None).await.unwrap().unwrap();
    assert_eq!(
        (v.usage_today, v.usage_this_month, v.last_used_at),
        (1, 6, Some(3000))
    );
    // Only the hash is stored.
    let q = db.sql("SELECT COUNT(*) FROM api_keys WHERE key_hash = ? OR key_hint = ?");
    let row = sqlx::query(&q)
        .bind(key.as_str())
        .bind(key.as_str())
        .fetch_one(db.pool())
        .await
        .unwrap();
    let stored = syncstore::storage::RowExt::i64_at(&row, 0).unwrap();
    assert_eq!(stored, 0);
    // Rotation, in one transaction on every database: a new key with the
    // same settings, the old one expiring after the grace period.
    let (rotated, old_expires) = service.rotate(owner, &record.id, None).await.unwrap();
    let fresh = keys
        .find(&rotated.key)
        .await
        .unwrap()
        .expect("rotated key is found");
    assert_ne!(fresh.id, record.id);
    assert_eq!(
        (fresh.user_id.as_str(), fresh.scopes.clone()),
        (user.as_str(), vec![Scope::Read])
    );
    assert!(
        fresh.restrictions.check(&inside).is_ok() && fresh.restrictions.check(&outside).is_err()
    );
    let old = key_rows::get(&db, &record.id, None).await.unwrap().unwrap();
    assert_eq!(old.expires_at, old_expires);
    assert!(old_expires.is_some_and(|e| e > syncstore::storage::now_ms()));
    // The bootstrap key holds every scope and is created once.
    let boot = format!("sk_boot_{}", uuid::Uuid::new_v4().simple());
    assert!(keys.ensure(&boot, &user).await.unwrap());
    assert!(!keys.ensure(&boot, &user).await.unwrap());
    let b = keys.find(&boot).await.unwrap().unwrap();
    assert!(Scope::ALL.iter().all(|s| b.allows(*s)));
}

async fn device_cursors_and_sessions_are_recorded(backend: &str) {
    use syncstore::storage::instances::{self, Arrival};
    let (db, _dir) = database(backend).await;
    let user = unique_user("dev");
    let arrival = |instance: &'static str, now: i64| Arrival {
        user_id: "",
        instance_id: instance,
        pod: "pod-1",
        ip: Some("10.0.0.1"),
        user_agent: Some("ua/1"),
        now,
    };
    let first = Arrival {
        user_id: &user,
        ..arrival("phone", 1000)
    };
    let new = instances::arrive(&db, &first).await.unwrap();
    assert_eq!(
        (new.acked, new.acks, new.delivered, new.resume_from()),
        (0, false, 0, 0),
        "a new device starts at cursor 0"
    );
    instances::advance_cursor(&db, &user, "phone", 7)
        .await
        .unwrap();
    instances::advance_cursor(&db, &user, "phone", 3)
        .await
        .unwrap(); // never backwards
    let again = Arrival {
        user_id: &user,
        ..arrival("phone", 2000)
    };
    let again = instances::arrive(&db, &again).await.unwrap();
    assert_eq!((again.acked, again.acks, again.resume_from()), (7, true, 7));
    let laptop = Arrival {
        user_id: &user,
        ..arrival("laptop", 2500)
    };
    instances::arrive(&db, &laptop).await.unwrap();
    instances::leave(&db, &user, "phone", 9, 3000)
        .await
        .unwrap();
    // The delivered cursor never moves back either.
    instances::arrive(&db, &laptop).await.unwrap();
    instances::leave(&db, &user, "laptop", 5, 3000)
        .await
        .unwrap();
    instances::leave(&db, &user, "laptop", 4, 3000)
        .await
        .unwrap();
    let laptop_cursors = instances::arrive(&db, &laptop).await.unwrap();
    assert_eq!(
        (
            laptop_cursors.acks,
            laptop_cursors.delivered,
            laptop_cursors.resume_from()
        ),
        (false, 5, 5),
        "a device that never acks resumes after what it was sent"
    );
    // Nothing writes `last_seen` while a device stays connected: it is what
    // the device's last arrival or departure recorded.
    let list = instances::list(&db, &user).await.unwrap();
    let phone = list.iter().find(|i| i.instance_id == "phone").unwrap();
    assert_eq!(
        (phone.cursor_seq, phone.last_seen, phone.first_seen),
        (7, 3000, 1000)
    );
    assert_eq!(phone.user_agent.as_deref(), Some("ua/1"));
}

/// Presence rows count while their process's deadline holds, and never
/// longer: no counter to drift, nothing a dead process must undo.
async fn presence_counts_sockets_of_live_processes_only(backend: &str) {
    use syncstore::storage::presence::{self, Connection};
    let (db, _dir) = database(backend).await;
    let user = unique_user("presence");
    let id = |tag: &str| format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    let (alive, dead) = (id("alive"), id("dead"));
    // The database is shared with running servers, which sweep what expired
    // by their clock: the dead process expired a day ago, the live one
    // beats a day ahead, so none of them changes what this test sees.
    let day = 86_400_000;
    let (past, future) = (
        syncstore::storage::now_ms() - day,
        syncstore::storage::now_ms() + day,
    );
    let socket = |sid: &str, instance: &str| Connection {
        socket_id: sid.into(),
        user_id: user.clone(),
        instance_id: instance.into(),
        connected_at: past,
    };
    presence::register(&db, &alive, "pod-a", future, future + 3000)
        .await
        .unwrap();
    presence::register(&db, &dead, "pod-b", past, past + 3000)
        .await
        .unwrap();
    presence::open(&db, &alive, &[socket("a1", "phone"), socket("a2", "phone")])
        .await
        .unwrap();
    presence::open(&db, &dead, &[socket("b1", "phone"), socket("b2", "laptop")])
        .await
        .unwrap();
    // Recording a socket twice (a re-registration) counts it once.
    presence::open(&db, &alive, &[socket("a1", "phone")])
        .await
        .unwrap();
    let counts = |now| {
        let (db, user) = (db.clone(), user.clone());
        async move {
            let mut c: Vec<_> = presence::live(&db, &user, now)
                .await
                .unwrap()
                .into_iter()
                .map(|(instance, live)| (instance, live.connections))
                .collect();
            c.sort();
            c
        }
    };
    let phone = |n| ("phone".to_string(), n);
    // Before the dead process's deadline, every socket counts once.
    assert_eq!(
        counts(past).await,
        vec![("laptop".to_string(), 1), phone(3)]
    );
    // After it, only the live process's.
    assert_eq!(counts(future).await, vec![phone(2)]);
    presence::close(&db, &alive, &["a2".to_string()])
        .await
        .unwrap();
    assert_eq!(counts(future).await, vec![phone(1)]);
    assert!(presence::beat(&db, &alive, future + 1000, future + 4000)
        .await
        .unwrap());
    // A connected device was seen at its process's latest heartbeat.
    let live = presence::live(&db, &user, future).await.unwrap();
    assert_eq!(
        live,
        vec![(
            "phone".to_string(),
            presence::Live {
                connections: 1,
                seen_at: future + 1000
            }
        )]
    );
    // A device on the dead process, last recorded when it arrived.
    let laptop = syncstore::storage::instances::Arrival {
        user_id: &user,
        instance_id: "laptop",
        pod: "pod-b",
        ip: None,
        user_agent: None,
        now: past - 60_000,
    };
    syncstore::storage::instances::arrive(&db, &laptop)
        .await
        .unwrap();
    // A sweep takes the expired process and its sockets, and leaves its
    // devices seen at its last heartbeat; the process, if it was only
    // paused, learns it from its next beat.
    assert!(presence::sweep(&db, past + 5000).await.unwrap() >= 1);
    assert_eq!(counts(past).await, vec![phone(1)]);
    let seen = syncstore::storage::instances::list(&db, &user)
        .await
        .unwrap();
    assert_eq!(
        seen.iter()
            .map(|i| (i.instance_id.as_str(), i.last_seen))
            .collect::<Vec<_>>(),
        vec![("laptop", past)]
    );
    assert!(!presence::beat(&db, &dead, past + 6000, past + 9000)
        .await
        .unwrap());
    presence::retire(&db, &alive).await.unwrap();
    assert_eq!(counts(past).await, vec![]);
}

/// Issue 14 §11: a device seen before is never new, whatever its cursors;
/// its subscriptions come back with it; a re-fetch after a resync moves
/// the resume point of either client style, and never backwards.
async fn known_devices_their_subscriptions_and_resyncs_are_recorded(backend: &str) {
    use syncstore::storage::instances::{self, Arrival};
    let (db, _dir) = database(backend).await;
    let user = unique_user("known");
    let arrival = |instance: &'static str| Arrival {
        user_id: &user,
        instance_id: instance,
        pod: "pod-1",
        ip: None,
        user_agent: None,
        now: 1000,
    };
    let first = instances::arrive(&db, &arrival("quiet")).await.unwrap();
    assert_eq!(
        (first.known, first.returning(), first.subscriptions.len()),
        (false, false, 0)
    );
    // Sent nothing, acknowledged nothing: still known the next time.
    instances::leave(&db, &user, "quiet", 0, 2000)
        .await
        .unwrap();
    let again = instances::arrive(&db, &arrival("quiet")).await.unwrap();
    assert_eq!(
        (again.known, again.returning(), again.resume_from()),
        (true, true, 0)
    );

    let patterns = vec!["profile".to_string(), "settings/*".to_string()];
    instances::save_subscriptions(&db, &user, "quiet", &patterns)
        .await
        .unwrap();
    let back = instances::arrive(&db, &arrival("quiet")).await.unwrap();
    assert_eq!(back.subscriptions, patterns);
    instances::save_subscriptions(&db, &user, "quiet", &[])
        .await
        .unwrap();
    let none = instances::arrive(&db, &arrival("quiet")).await.unwrap();
    assert_eq!(none.subscriptions, Vec::<String>::new());

    // The seed's style resumes after what it was sent; ours after its ack.
    instances::resynced(&db, &user, "quiet", 9).await.unwrap();
    instances::resynced(&db, &user, "quiet", 4).await.unwrap(); // never backwards
    let seed = instances::arrive(&db, &arrival("quiet")).await.unwrap();
    assert_eq!(
        (seed.acks, seed.delivered, seed.resume_from()),
        (false, 9, 9)
    );
    instances::arrive(&db, &arrival("acker")).await.unwrap();
    instances::advance_cursor(&db, &user, "acker", 2)
        .await
        .unwrap();
    instances::resynced(&db, &user, "acker", 12).await.unwrap();
    let acker = instances::arrive(&db, &arrival("acker")).await.unwrap();
    assert_eq!(
        (acker.acks, acker.acked, acker.resume_from()),
        (true, 12, 12)
    );
}

async fn old_tombstones_are_purged_and_raise_purged_seq(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("purge");
    put(&svc, &u, "d", "a", &body(json!({"value": 1})))
        .await
        .unwrap();
    put(&svc, &u, "d", "b", &body(json!({"value": 2})))
        .await
        .unwrap();
    svc.remove(&u, "d", &Source::default(), "a", None)
        .await
        .unwrap();
    svc.remove(&u, "d", &Source::default(), "b", None)
        .await
        .unwrap(); // newer than the cutoff: kept
                   // The purge is over every user of a shared server database: "a" is
                   // dated back to 1970 and the cutoff is there, so no other test's
                   // tombstone is older than it.
    let q = db.sql("UPDATE sync_items SET last_modified = 0 WHERE user_id = ? AND item_key = ?");
    sqlx::query(&q)
        .bind(u.as_str())
        .bind("a")
        .execute(db.pool())
        .await
        .unwrap();
    items::purge_tombstones(&db, 1, 1000).await.unwrap();
    assert_eq!(items::heads(&db, &u).await.unwrap(), (4, 3));
    let left: Vec<(String, i64)> = items::changes_since(&db, &u, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.key, i.seq))
        .collect();
    assert_eq!(left, vec![("b".to_string(), 4)]);
    // A purged key written again starts over at version 1: its kept
    // versions went with the tombstone (they collided with it: a 500).
    let again = put(&svc, &u, "d", "a", &body(json!({"value": 3})))
        .await
        .unwrap();
    assert_eq!((again.version, again.seq), (1, 5));
}

/// MariaDB's old `utf8mb4_bin` padded spaces: `alice` and `alice ` were one
/// tenant, and the keys `a` and `a ` collided (a 500). Every backend now
/// compares ids and keys byte by byte.
async fn ids_and_keys_compare_byte_exactly(backend: &str) {
    use syncstore::storage::{instances, keys as key_rows};
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let alice = unique_user("alice");
    let padded = format!("{alice} ");
    for k in ["a", "b", "c"] {
        put(&svc, &alice, "d", k, &body(json!({"value": k})))
            .await
            .unwrap();
    }
    put(&svc, &padded, "d", "a", &body(json!({"value": "padded"})))
        .await
        .unwrap();
    assert_eq!(svc.keys(&alice, "").await.unwrap(), vec!["a", "b", "c"]);
    assert_eq!(svc.keys(&padded, "").await.unwrap(), vec!["a"]);
    assert_eq!(value_of(&svc.get(&alice, "a").await.unwrap()), json!("a"));
    assert_eq!(
        value_of(&svc.get(&padded, "a").await.unwrap()),
        json!("padded")
    );
    // Two sequences, each from 1.
    assert_eq!(items::heads(&db, &alice).await.unwrap().0, 3);
    assert_eq!(items::heads(&db, &padded).await.unwrap().0, 1);
    // Clearing one tenant leaves the other alone.
    let cleared = svc
        .clear(&padded, "d", &Source::default(), None)
        .await
        .unwrap();
    assert_eq!((cleared.cleared, cleared.last_seq), (1, 2));
    assert_eq!(svc.keys(&alice, "").await.unwrap().len(), 3);
    // `a` and `a ` (and ` a`) are three keys.
    for (k, v) in [("a ", 2), (" a", 3)] {
        let item = put(&svc, &alice, "d", k, &body(json!({"value": v})))
            .await
            .unwrap();
        assert_eq!((item.key.as_str(), item.version), (k, 1));
    }
    assert_eq!(svc.keys(&alice, "a").await.unwrap(), vec!["a", "a "]);
    assert_eq!(svc.keys(&alice, "a ").await.unwrap(), vec!["a "]);
    assert_eq!(svc.list(&alice, "").await.unwrap().len(), 5);
    assert_eq!(value_of(&svc.get(&alice, "a ").await.unwrap()), json!(2));
    assert_eq!(value_of(&svc.get(&alice, "a").await.unwrap()), json!("a"));
    // Devices `phone` and `phone ` are two devices.
    for instance in ["phone", "phone "] {
        let arrival = instances::Arrival {
            user_id: &alice,
            instance_id: instance,
            pod: "pod-1",
            ip: None,
            user_agent: Some("ua\0with NUL"),
            now: 1000,
        };
        instances::arrive(&db, &arrival).await.unwrap();
    }
    let devices = instances::list(&db, &alice).await.unwrap();
    assert_eq!(devices.len(), 2);
    // A header is recorded, made storable, rather than refused.
    assert!(devices
        .iter()
        .all(|d| d.user_agent.as_deref() == Some("ua\u{fffd}with NUL")));
    // Keys of one tenant are not the other's.
    let store = KeyStore::new(db.clone());
    let new = |user: &str| NewKey {
        name: "k".into(),
        user_id: user.into(),
        scopes: vec![Scope::Read],
        ..NewKey::default()
    };
    let service = syncstore::keys::Keys::new(
        db.clone(),
        store,
        "sk_".into(),
        std::time::Duration::from_secs(60),
    );
    let owner = syncstore::auth::policy::Authority::Owner;
    for user in [&alice, &padded] {
        service
            .create(owner, &new(user), Default::default())
            .await
            .unwrap();
    }
    for user in [&alice, &padded] {
        let listed = key_rows::list(&db, Some(user)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(&listed[0].user_id, user);
    }
}

/// PostgreSQL cannot store NUL in text (the query failed: a 500). Every
/// text field is refused before any query, naming the field.
async fn text_the_database_cannot_store_is_refused_naming_the_field(backend: &str) {
    let (db, _dir) = database(backend).await;
    let svc = service(&db, limits());
    let u = unique_user("nul");
    for (field, extra) in [
        ("compressionType", json!({"compressionType": "gz\0ip"})),
        ("encryptionType", json!({"encryptionType": "\0"})),
        ("tags", json!({"tags": ["ok", "b\0d"]})),
    ] {
        let mut req = json!({"value": 1});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        match put(&svc, &u, "d", "k", &body(req)).await {
            Err(e) => {
                assert_eq!((e.code(), e.status().as_u16()), ("INVALID_BODY", 400));
                assert_eq!(e.details()["field"], field);
            }
            Ok(item) => panic!("{field} with NUL was stored: {item:?}"),
        }
    }
    let e = put(&svc, &u, "d", "a\0b", &body(json!({"value": 1})))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.details()["field"].as_str()),
        ("INVALID_KEY", Some("key"))
    );
    let e = put(&svc, "u\0", "d", "k", &body(json!({"value": 1})))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.details()["field"].as_str()),
        ("INVALID_BODY", Some("userId"))
    );
    let e = put(&svc, &u, "d\0", "k", &body(json!({"value": 1})))
        .await
        .unwrap_err();
    assert_eq!(e.details()["field"], "instanceId");
    let e = svc.get(&u, "\0").await.unwrap_err();
    assert_eq!(e.code(), "INVALID_KEY");
    let e = svc.keys(&u, "p\0").await.unwrap_err();
    assert_eq!(
        (e.code(), e.details()["field"].as_str()),
        ("INVALID_QUERY", Some("prefix"))
    );
    // Nothing was written.
    assert_eq!(items::heads(&db, &u).await.unwrap(), (0, 0));
}

async fn migrating_twice_is_a_no_op(backend: &str) {
    let (db, _dir) = database(backend).await;
    assert_eq!(db.migrate().await.unwrap(), 0);
    assert_eq!(db.migrate().await.unwrap(), 0);
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test("sqlite").await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test("postgres").await } )* }
        mod mariadb { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test("mysql").await } )* }
    };
}

suite!(
    sequence_is_monotonic_without_gaps_per_user,
    stale_version_conflicts_and_returns_current,
    remove_leaves_a_tombstone_that_keeps_its_seq,
    clear_removes_everything_with_one_seq_each,
    prefix_queries_treat_like_wildcards_literally,
    storage_quota_counts_live_bytes_only,
    expired_items_vanish_at_once_and_are_purged_as_tombstones,
    history_keeps_the_last_ten_versions,
    values_round_trip_exactly,
    api_keys_are_stored_hashed_and_found,
    device_cursors_and_sessions_are_recorded,
    presence_counts_sockets_of_live_processes_only,
    known_devices_their_subscriptions_and_resyncs_are_recorded,
    old_tombstones_are_purged_and_raise_purged_seq,
    ids_and_keys_compare_byte_exactly,
    text_the_database_cannot_store_is_refused_naming_the_field,
    migrating_twice_is_a_no_op,
);

/// MariaDB commits each DDL statement on its own: a process killed during a
/// migration leaves it half applied and marked unfinished. The next run
/// finishes it instead of refusing for ever; every MySQL migration must
/// allow that, so each is replayed here over a schema that already has it.
#[tokio::test]
async fn every_mysql_migration_can_be_finished_after_an_interruption() {
    let name = format!("ss_migtest_{}", uuid::Uuid::new_v4().simple());
    let (admin, _dir) = database("mysql").await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .expect("create a database of its own");
    let base = common::mysql_url();
    let url = format!(
        "{}/{name}",
        base.rsplit_once('/').expect("a database path").0
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = syncstore::config::DatabaseConfig {
        url: Some(syncstore::config::Secret::new(url)),
        connection_limit: 2,
        ssl: false,
    };
    let db = Db::connect(&cfg, dir.path()).await.expect("connect");
    db.migrate().await.expect("migrations apply");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert!(versions.len() >= 15, "{versions:?}");
    for version in &versions {
        sqlx::query("UPDATE _sqlx_migrations SET success = 0 WHERE version = ?")
            .bind(version)
            .execute(db.pool())
            .await
            .unwrap();
        db.migrate()
            .await
            .unwrap_or_else(|e| panic!("migration {version} not finished: {e}"));
        let unfinished: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 0")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(unfinished, 0, "after finishing {version}");
    }
    // Interrupted before its statement ran: the column comes back.
    let last = versions.last().unwrap();
    for sql in [
        "ALTER TABLE instances DROP COLUMN resync_due",
        "UPDATE _sqlx_migrations SET success = 0 WHERE version = 20261201000005",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    assert_eq!(*last, 20261201000005);
    db.migrate().await.expect("finished");
    sqlx::query("SELECT resync_due FROM instances LIMIT 1")
        .fetch_optional(db.pool())
        .await
        .expect("the column is there again");
    drop(db);
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(admin.pool())
        .await
        .unwrap();
}
