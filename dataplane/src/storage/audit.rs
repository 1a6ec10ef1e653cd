//! Appends to `audit_log`: who did what, to what, with which result.

use super::{now_ms, Db};

/// One audit entry.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub result: &'a str,
    pub request_id: Option<&'a str>,
    pub details: Option<serde_json::Value>,
}

pub async fn record(db: &Db, entry: &AuditEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "INSERT INTO audit_log (id, ts, actor, action, target, ip, result, request_id, details) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(now_ms())
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target)
    .bind(entry.ip)
    .bind(entry.result)
    .bind(entry.request_id)
    .bind(entry.details.as_ref().map(|d| d.to_string()))
    .execute(db.pool())
    .await?;
    Ok(())
}
