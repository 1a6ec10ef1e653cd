//! Reads of the aggregates for the analytics endpoints. Every figure is a
//! sum over rollup buckets, so any window at any granularity is answered
//! from the same tables.

use serde::Serialize;
use utoipa::ToSchema;

use super::{
    aggregate::{DAY_MS, SEP},
    histogram,
};
use crate::storage::{Db, Dialect, RowExt};

/// A time window and the bucket width to read it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    /// `m`, `h` or `d`.
    pub granularity: &'static str,
}

impl Window {
    /// The bucket width of the granularity, ms.
    pub fn width(&self) -> i64 {
        super::aggregate::GRANULARITIES
            .iter()
            .find(|(g, _)| *g == self.granularity)
            .map_or(DAY_MS, |(_, w)| *w)
    }

    /// The first bucket that overlaps the window.
    fn first_bucket(&self) -> i64 {
        self.from - self.from.rem_euclid(self.width())
    }

    fn first_day(&self) -> i64 {
        self.from - self.from.rem_euclid(DAY_MS)
    }
}

/// `SUM(col)` as a BIGINT on every dialect, 0 when there are no rows
/// (PostgreSQL sums BIGINTs into NUMERIC, which `Any` cannot decode).
fn sum(dialect: Dialect, col: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("COALESCE(CAST(SUM({col}) AS BIGINT), 0)"),
        Dialect::Mysql => format!("COALESCE(CAST(SUM({col}) AS SIGNED), 0)"),
        Dialect::Sqlite => format!("COALESCE(SUM({col}), 0)"),
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub requests: i64,
    pub errors: i64,
    pub denials: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency_sum_us: i64,
}

impl Totals {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the bucket, ms since the epoch.
    pub bucket: i64,
    #[serde(flatten)]
    pub totals: Totals,
}

const TOTAL_COLS: [&str; 6] = [
    "requests",
    "errors",
    "denials",
    "bytes_in",
    "bytes_out",
    "latency_sum_us",
];

fn totals_from(row: &sqlx::any::AnyRow, offset: usize) -> Result<Totals, sqlx::Error> {
    Ok(Totals {
        requests: row.i64_at(offset)?,
        errors: row.i64_at(offset + 1)?,
        denials: row.i64_at(offset + 2)?,
        bytes_in: row.i64_at(offset + 3)?,
        bytes_out: row.i64_at(offset + 4)?,
        latency_sum_us: row.i64_at(offset + 5)?,
    })
}

/// Whose rows of a dimension to read. Per-user dimensions (user, devices)
/// are stored per owner; a caller reads its own (`User`), and only the
/// cross-user views of `analytics:read` sum every owner's (`Anyone`), as do
/// the dimensions that span users (all, route, key), whose owner is ''.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    User(&'a str),
    Anyone,
}

impl<'a> Owner<'a> {
    /// The condition to splice after the subject's, bound by [`Self::bind`].
    fn clause(self) -> &'static str {
        match self {
            Owner::User(_) => " AND user_id = ?",
            Owner::Anyone => "",
        }
    }

    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>
    where
        'a: 'q,
    {
        match self {
            Owner::User(u) => q.bind(u),
            Owner::Anyone => q,
        }
    }
}

/// The window's buckets for one dimension and subject.
pub async fn series(
    db: &Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    subject: &str,
) -> Result<Vec<Point>, sqlx::Error> {
    let cols: Vec<String> = TOTAL_COLS.iter().map(|c| sum(db.dialect(), c)).collect();
    let q = format!(
        "SELECT bucket, {} FROM analytics_rollups WHERE granularity = ? AND dim = ? AND subject = ?{} \
         AND bucket >= ? AND bucket < ? GROUP BY bucket ORDER BY bucket",
        cols.join(", "),
        owner.clause()
    );
    let sql = db.sql(&q);
    let q = sqlx::query(&sql)
        .bind(w.granularity)
        .bind(dim)
        .bind(subject);
    let rows = owner
        .bind(q)
        .bind(w.first_bucket())
        .bind(w.to)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Point {
                bucket: r.i64_at(0)?,
                totals: totals_from(r, 1)?,
            })
        })
        .collect()
}

/// The sum over the window.
pub async fn totals(
    db: &Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    subject: &str,
) -> Result<Totals, sqlx::Error> {
    let cols: Vec<String> = TOTAL_COLS.iter().map(|c| sum(db.dialect(), c)).collect();
    let q = format!(
        "SELECT {} FROM analytics_rollups WHERE granularity = ? AND dim = ? AND subject = ?{} \
         AND bucket >= ? AND bucket < ?",
        cols.join(", "),
        owner.clause()
    );
    let sql = db.sql(&q);
    let q = sqlx::query(&sql)
        .bind(w.granularity)
        .bind(dim)
        .bind(subject);
    let row = owner
        .bind(q)
        .bind(w.first_bucket())
        .bind(w.to)
        .fetch_one(&mut *db.acquire().await?)
        .await?;
    totals_from(&row, 0)
}

/// Subjects of `dim` starting with `prefix`, ranked by requests over the
/// window. The prefix is literal (one escape for every dialect, see
/// `storage::like`), and the result is checked against it once more.
pub async fn top_subjects(
    db: &Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    prefix: &str,
    limit: i64,
) -> Result<Vec<(String, Totals)>, sqlx::Error> {
    let cols: Vec<String> = TOTAL_COLS.iter().map(|c| sum(db.dialect(), c)).collect();
    let q = format!(
        "SELECT subject, {} FROM analytics_rollups WHERE granularity = ? AND dim = ? AND {}{} \
         AND bucket >= ? AND bucket < ? GROUP BY subject ORDER BY 2 DESC, subject LIMIT ?",
        cols.join(", "),
        crate::storage::like("subject"),
        owner.clause()
    );
    let sql = db.sql(&q);
    let q = sqlx::query(&sql)
        .bind(w.granularity)
        .bind(dim)
        .bind(crate::storage::like_prefix(prefix));
    let rows = owner
        .bind(q)
        .bind(w.first_bucket())
        .bind(w.to)
        .bind(limit)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let subject = r.str_at(0)?;
        if subject.starts_with(prefix) {
            out.push((subject, totals_from(r, 1)?));
        }
    }
    Ok(out)
}

/// p50, p95 and p99 in milliseconds over the window, from the histograms.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

pub async fn percentiles(
    db: &Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    subject: &str,
) -> Result<Percentiles, sqlx::Error> {
    let q = format!(
        "SELECT le, {} FROM analytics_latency WHERE granularity = ? AND dim = ? AND subject = ?{} \
         AND bucket >= ? AND bucket < ? GROUP BY le",
        sum(db.dialect(), "n"),
        owner.clause()
    );
    let sql = db.sql(&q);
    let q = sqlx::query(&sql)
        .bind(w.granularity)
        .bind(dim)
        .bind(subject);
    let rows = owner
        .bind(q)
        .bind(w.first_bucket())
        .bind(w.to)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    let mut counts = vec![0i64; histogram::BUCKETS];
    for r in &rows {
        counts[le_index(r.i64_at(0)?)] += r.i64_at(1)?;
    }
    Ok(Percentiles::of(&counts))
}

/// A stored histogram bucket index, clamped to the known buckets.
fn le_index(le: i64) -> usize {
    usize::try_from(le).unwrap_or(0).min(histogram::BUCKETS - 1)
}

impl Percentiles {
    fn of(counts: &[i64]) -> Self {
        let ms = |q: f64| histogram::quantile(counts, q).map(|us| us as f64 / 1000.0);
        Self {
            p50: ms(0.5),
            p95: ms(0.95),
            p99: ms(0.99),
        }
    }
}

/// The percentiles of each bucket of the window, in one query (rather than
/// one per bucket).
pub async fn percentiles_by_bucket(
    db: &Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    subject: &str,
) -> Result<std::collections::BTreeMap<i64, Percentiles>, sqlx::Error> {
    let q = format!(
        "SELECT bucket, le, n FROM analytics_latency WHERE granularity = ? AND dim = ? AND subject = ?{} \
         AND bucket >= ? AND bucket < ?",
        owner.clause()
    );
    let sql = db.sql(&q);
    let q = sqlx::query(&sql)
        .bind(w.granularity)
        .bind(dim)
        .bind(subject);
    let rows = owner
        .bind(q)
        .bind(w.first_bucket())
        .bind(w.to)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    let mut counts: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for r in &rows {
        counts
            .entry(r.i64_at(0)?)
            .or_insert_with(|| vec![0; histogram::BUCKETS])[le_index(r.i64_at(1)?)] +=
            r.i64_at(2)?;
    }
    Ok(counts
        .into_iter()
        .map(|(bucket, c)| (bucket, Percentiles::of(&c)))
        .collect())
}

/// Values of a facet over the window's days, most frequent first.
pub async fn facet(
    db: &Db,
    w: Window,
    scope: &str,
    subject: &str,
    facet: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let q = format!(
        "SELECT value, {} FROM analytics_facets WHERE scope = ? AND subject = ? AND facet = ? AND day >= ? AND day < ? \
         GROUP BY value ORDER BY 2 DESC, value LIMIT ?",
        sum(db.dialect(), "n")
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(scope)
        .bind(subject)
        .bind(facet)
        .bind(w.first_day())
        .bind(w.to)
        .bind(limit)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter()
        .map(|r| Ok((r.str_at(0)?, r.i64_at(1)?)))
        .collect()
}

/// Distinct users active on days in `[from, to)`.
pub async fn active_users(db: &Db, from: i64, to: i64) -> Result<i64, sqlx::Error> {
    let row =
        sqlx::query(&db.sql(
            "SELECT COUNT(DISTINCT user_id) FROM analytics_user_days WHERE day >= ? AND day < ?",
        ))
        .bind(from - from.rem_euclid(DAY_MS))
        .bind(to)
        .fetch_one(&mut *db.acquire().await?)
        .await?;
    row.i64_at(0)
}

/// Days user `user` was active in `[from, to)`.
pub async fn active_days(db: &Db, user: &str, from: i64, to: i64) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT COUNT(*) FROM analytics_user_days WHERE user_id = ? AND day >= ? AND day < ?",
    ))
    .bind(user)
    .bind(from - from.rem_euclid(DAY_MS))
    .bind(to)
    .fetch_one(&mut *db.acquire().await?)
    .await?;
    row.i64_at(0)
}

/// First and last time a user, or an owner's instance, was seen.
pub async fn seen(
    db: &Db,
    table: Seen,
    owner: Owner<'_>,
    id: &str,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let q = match table {
        Seen::User => {
            "SELECT MIN(first_seen), MAX(last_seen) FROM analytics_users WHERE user_id = ?".to_string()
        }
        Seen::Instance => format!(
            "SELECT MIN(first_seen), MAX(last_seen) FROM analytics_instances WHERE instance_id = ?{}",
            owner.clause()
        ),
    };
    let sql = db.sql(&q);
    let q = sqlx::query(&sql).bind(id);
    let q = match table {
        Seen::User => q,
        Seen::Instance => owner.bind(q),
    };
    let row = q.fetch_one(&mut *db.acquire().await?).await?;
    Ok(row.opt_i64(0)?.zip(row.opt_i64(1)?))
}

#[derive(Debug, Clone, Copy)]
pub enum Seen {
    User,
    Instance,
}

/// Users grouped by the week they were first seen, with the share of each
/// cohort active in each following week.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cohort {
    /// Monday 00:00 UTC of the cohort's week, ms.
    pub week: i64,
    pub users: i64,
    /// Share active in week 0, 1, 2, … after the first.
    pub retention: Vec<f64>,
}

pub const WEEK_MS: i64 = 7 * DAY_MS;

/// Start of the (Monday-based) UTC week of `ts`. The epoch was a Thursday.
pub fn week_of(ts: i64) -> i64 {
    let monday_offset = 3 * DAY_MS;
    ts - (ts + monday_offset).rem_euclid(WEEK_MS)
}

pub async fn cohorts(db: &Db, since: i64, now: i64) -> Result<Vec<Cohort>, sqlx::Error> {
    let users = sqlx::query(
        &db.sql("SELECT user_id, first_seen FROM analytics_users WHERE first_seen >= ?"),
    )
    .bind(week_of(since))
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    let days = sqlx::query(&db.sql(
        "SELECT d.user_id, d.day FROM analytics_user_days d JOIN analytics_users u ON u.user_id = d.user_id WHERE u.first_seen >= ?",
    ))
    .bind(week_of(since))
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    let mut first = std::collections::HashMap::new();
    for r in &users {
        first.insert(r.str_at(0)?, week_of(r.i64_at(1)?));
    }
    let mut active: std::collections::HashMap<(i64, usize), std::collections::HashSet<String>> =
        Default::default();
    for r in &days {
        let user = r.str_at(0)?;
        if let Some(w) = first.get(&user) {
            let k = usize::try_from((week_of(r.i64_at(1)?) - w) / WEEK_MS).unwrap_or(0);
            active.entry((*w, k)).or_default().insert(user);
        }
    }
    let mut sizes: std::collections::BTreeMap<i64, i64> = Default::default();
    for w in first.values() {
        *sizes.entry(*w).or_default() += 1;
    }
    Ok(sizes
        .into_iter()
        .map(|(week, n)| {
            let weeks = usize::try_from((week_of(now) - week) / WEEK_MS).unwrap_or(0) + 1;
            let retention = (0..weeks)
                .map(|k| active.get(&(week, k)).map_or(0, |s| s.len()) as f64 / n as f64)
                .collect();
            Cohort {
                week,
                users: n,
                retention,
            }
        })
        .collect())
}

/// A compound subject (`user_route`, `instance_route`).
pub fn pair(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

/// The part of a compound subject after the separator.
pub fn second(subject: &str) -> &str {
    subject.split_once(SEP).map_or(subject, |(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-26 is a Thursday; its week starts Monday 2026-11-23.
        let thursday = 1_795_651_200_000; // 2026-11-26T00:00:00Z
        assert_eq!(week_of(thursday), thursday - 3 * DAY_MS);
        assert_eq!(week_of(week_of(thursday)), week_of(thursday));
    }
}
