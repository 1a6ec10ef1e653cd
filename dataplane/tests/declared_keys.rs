//! The key service's owner side (what the operator's ApiKey objects go
//! through), on real SQLite, PostgreSQL and MariaDB: a declared key is
//! stored once, brought in line when its declaration changes, retired with
//! a bounded grace period, and revoked.

mod common;

use std::time::Duration;

use common::{database, unique_user};
use syncstore::{
    auth::{generate_key, KeyStore, NewKey, Scope},
    keys::{Declared, Keys, Put, Revoked},
    storage::{keys, now_ms},
};

fn declared_key(user: &str) -> NewKey {
    NewKey {
        name: "declared".into(),
        user_id: user.into(),
        scopes: vec![Scope::Read],
        expires_at: None,
        ip_restrictions: vec![],
        country_restrictions: vec![],
        domain_restrictions: vec![],
        user_agent_patterns: vec![],
        quotas: [None, None, None, Some(1000)],
    }
}

fn declared(key: &NewKey) -> Declared<'_> {
    Declared {
        key,
        can_read: true,
        can_write: false,
    }
}

async fn declared_keys_are_stored_as_declared(backend: &str) {
    let (db, _dir) = database(backend).await;
    let service = Keys::new(
        db.clone(),
        KeyStore::new(db.clone()),
        "sk_".into(),
        Duration::from_secs(60),
    );
    let user = unique_user("declared");
    let mut new = declared_key(&user);
    let material = generate_key("sk_");

    let (id, put) = service.put(&material, &declared(&new)).await.unwrap();
    assert_eq!(put, Put::Created);
    let again = service.put(&material, &declared(&new)).await.unwrap();
    assert_eq!(again, (id.clone(), Put::Unchanged));

    new.ip_restrictions = vec!["10.0.0.0/8".into()];
    new.quotas[0] = Some(5);
    assert_eq!(
        service.put(&material, &declared(&new)).await.unwrap(),
        (id.clone(), Put::Updated)
    );
    let row = keys::get(&db, &id, None).await.unwrap().expect("row");
    assert_eq!(row.ip_restrictions, vec!["10.0.0.0/8".to_string()]);
    assert_eq!(
        (row.quota_per_minute, row.quota_per_month),
        (Some(5), Some(1000))
    );
    assert!(row.can_read && !row.can_write && row.is_active);

    // A rotated-out key: the grace period from now, once.
    let before = now_ms();
    let retired = service.retire(&material, &declared(&new)).await.unwrap();
    assert_eq!(retired.as_deref(), Some(id.as_str()));
    let ends = keys::get(&db, &id, None).await.unwrap().unwrap().expires_at;
    let ends = ends.expect("expires");
    assert!(
        (before + 60_000..=now_ms() + 60_000).contains(&ends),
        "{ends}"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    service.retire(&material, &declared(&new)).await.unwrap();
    let later = keys::get(&db, &id, None).await.unwrap().unwrap().expires_at;
    assert_eq!(later, Some(ends), "a later retire never extends the grace");
    assert_eq!(
        service
            .retire(&generate_key("sk_"), &declared(&new))
            .await
            .unwrap(),
        None
    );

    assert_eq!(service.find(&material).await.unwrap(), Some(id.clone()));
    assert_eq!(service.revoke(&id).await.unwrap(), Revoked::Now);
    assert_eq!(service.revoke(&id).await.unwrap(), Revoked::Already);
    assert_eq!(
        service.revoke("no-such-key").await.unwrap(),
        Revoked::NoSuchKey
    );
    assert!(!keys::get(&db, &id, None).await.unwrap().unwrap().is_active);
    // Declaring the key again brings it back: the object exists again.
    assert_eq!(
        service.put(&material, &declared(&new)).await.unwrap(),
        (id.clone(), Put::Updated)
    );
    assert!(keys::get(&db, &id, None).await.unwrap().unwrap().is_active);
}

#[tokio::test]
async fn sqlite() {
    declared_keys_are_stored_as_declared("sqlite").await
}

#[tokio::test]
async fn postgres() {
    declared_keys_are_stored_as_declared("postgres").await
}

#[tokio::test]
async fn mariadb() {
    declared_keys_are_stored_as_declared("mysql").await
}
