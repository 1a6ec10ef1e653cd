//! Turns a batch of events into additive deltas, and adds them to the
//! aggregate tables in one transaction. Everything is a sum (or a min/max),
//! so deltas from any number of batches, pods or consumers merge in any
//! order; sorted maps give every transaction the same lock order, so two
//! consumers never deadlock on the same rows.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{any::AnyArguments, Any, AnyConnection, Arguments};

use super::{event::Event, histogram};
use crate::storage::{Db, Dialect};

/// Rollup granularities: code and bucket width in milliseconds.
pub const GRANULARITIES: [(&str, i64); 3] = [("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];
pub const DAY_MS: i64 = 86_400_000;
/// Separates the two parts of a compound subject (`user_route`, …).
pub const SEP: char = '\u{1f}';

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RollKey {
    pub granularity: &'static str,
    pub dim: &'static str,
    pub subject: String,
    /// The user the subject belongs to (`user_id`): set for the per-user
    /// dimensions (user, user_route, instance, instance_route), empty for
    /// those that span users (all, route, key). Devices are per user: two
    /// users' devices named alike (say `rest`, every REST call's default)
    /// are two subjects, and a user is only ever shown its own.
    pub owner: String,
    pub bucket: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roll {
    pub requests: i64,
    pub errors: i64,
    pub denials: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency_sum_us: i64,
}

/// What a batch adds to the aggregates.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub rollups: BTreeMap<RollKey, Roll>,
    pub latency: BTreeMap<(RollKey, usize), i64>,
    /// (scope, subject, facet, value, day) → count.
    pub facets: BTreeMap<(&'static str, String, &'static str, String, i64), i64>,
    pub user_days: BTreeSet<(String, i64)>,
    /// user → (first seen, last seen).
    pub users: BTreeMap<String, (i64, i64)>,
    /// (instance, user) → (first seen, last seen).
    pub instances: BTreeMap<(String, String), (i64, i64)>,
    pub events: usize,
}

/// Longest subject or value stored (the columns are VARCHAR(255)).
const MAX_CHARS: usize = 255;

/// One value of an event as stored: storable text (events carry what
/// clients sent, e.g. a refused request's raw key or `X-Instance-Id`, and
/// one NUL used to fail the whole batch on PostgreSQL), within the column.
fn clip(s: &str) -> String {
    crate::text::sanitize(s, MAX_CHARS)
}

/// A compound subject of two clipped parts, within the column.
fn compound(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}").chars().take(MAX_CHARS).collect()
}

fn see<K: Ord>(map: &mut BTreeMap<K, (i64, i64)>, who: K, ts: i64) {
    let e = map.entry(who).or_insert((ts, ts));
    e.0 = e.0.min(ts);
    e.1 = e.1.max(ts);
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        let route = clip(&e.route_or_event);
        let user = e.user_id.as_deref().map(clip);
        let key = e.api_key_id.as_deref().map(clip);
        let instance = e.instance_id.as_deref().map(clip);
        // An event without a user (a refused request) owns nothing.
        let owner = user.clone().unwrap_or_default();
        // (dimension, subject, owner, with a latency histogram)
        let mut dims: Vec<(&'static str, String, String, bool)> = vec![
            ("all", String::new(), String::new(), true),
            ("route", route.clone(), String::new(), true),
        ];
        if let Some(u) = &user {
            dims.push(("user", u.clone(), u.clone(), false));
            dims.push(("user_route", compound(u, &route), u.clone(), false));
        }
        if let Some(k) = &key {
            dims.push(("key", k.clone(), String::new(), true));
        }
        if let Some(i) = &instance {
            dims.push(("instance", i.clone(), owner.clone(), true));
            dims.push(("instance_route", compound(i, &route), owner.clone(), false));
        }
        self.roll_up(e, &dims, !route.ends_with(":disconnect"));
        self.count_facets(e, user.as_deref(), key.as_deref());
        if let Some(u) = &user {
            let day = e.ts - e.ts.rem_euclid(DAY_MS);
            self.user_days.insert((u.clone(), day));
            see(&mut self.users, u.clone(), e.ts);
        }
        if let Some(i) = &instance {
            see(&mut self.instances, (i.clone(), owner), e.ts);
        }
    }

    /// Adds `e` to the rollup of every dimension in `dims` (dimension,
    /// subject, owner, with a latency histogram) at every granularity. A
    /// disconnect's "latency" is the session's length: summed for
    /// engagement, kept out of the latency percentiles (`timed` false).
    fn roll_up(&mut self, e: &Event, dims: &[(&'static str, String, String, bool)], timed: bool) {
        let le = histogram::bucket_of(e.latency_us);
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (granularity, width) in GRANULARITIES {
            let bucket = e.ts - e.ts.rem_euclid(width);
            for (dim, subject, owner, histogram) in dims {
                let k = RollKey {
                    granularity,
                    dim,
                    subject: subject.clone(),
                    owner: owner.clone(),
                    bucket,
                };
                let r = self.rollups.entry(k.clone()).or_default();
                r.requests += 1;
                r.errors += i64::from(e.is_error());
                r.denials += i64::from(e.is_denial());
                r.bytes_in += to_i64(e.bytes_in);
                r.bytes_out += to_i64(e.bytes_out);
                r.latency_sum_us = r.latency_sum_us.saturating_add(to_i64(e.latency_us));
                if *histogram && timed {
                    *self.latency.entry((k, le)).or_default() += 1;
                }
            }
        }
    }

    /// Counts `e`'s facets for the day: a user's active hours, clients and
    /// keys touched; denials by code, and a key's by IP and country.
    fn count_facets(&mut self, e: &Event, user: Option<&str>, key: Option<&str>) {
        let day = e.ts - e.ts.rem_euclid(DAY_MS);
        let mut facet = |scope: &'static str, subject: &str, name: &'static str, value: &str| {
            *self
                .facets
                .entry((scope, clip(subject), name, clip(value), day))
                .or_default() += 1;
        };
        if let Some(u) = user {
            let hour = (e.ts.rem_euclid(DAY_MS)) / 3_600_000;
            facet("user", u, "hour", &format!("{hour:02}"));
            if let Some(ua) = &e.ua_family {
                facet("user", u, "ua", ua);
            }
            if let Some(k) = &e.item_key {
                facet("user", u, "item_key", k);
            }
        }
        if e.is_denial() {
            let code = e.error_code.as_deref().unwrap_or("UNKNOWN");
            facet("all", "", "denial", code);
            if let Some(k) = key {
                facet("key", k, "denial", code);
                if let Some(ip) = &e.ip {
                    facet("key", k, "ip", ip);
                }
                if let Some(c) = &e.country {
                    facet("key", k, "country", c);
                }
            }
        }
    }
}

/// A bound value of a generated multi-row statement.
enum V {
    I(i64),
    S(String),
}

/// `INSERT … ON CONFLICT/DUPLICATE KEY` adding `adds`, keeping the least
/// of `mins` and the greatest of `maxs`; with none of those, insert-ignore.
struct Upsert {
    table: &'static str,
    keys: &'static [&'static str],
    adds: &'static [&'static str],
    mins: &'static [&'static str],
    maxs: &'static [&'static str],
}

impl Upsert {
    fn sql(&self, dialect: Dialect, rows: usize) -> String {
        let cols: Vec<&str> = self
            .keys
            .iter()
            .chain(self.adds)
            .chain(self.mins)
            .chain(self.maxs)
            .copied()
            .collect();
        let mut n = 0;
        let tuples: Vec<String> = (0..rows)
            .map(|_| {
                let marks: Vec<String> = cols
                    .iter()
                    .map(|_| {
                        n += 1;
                        match dialect {
                            Dialect::Postgres => format!("${n}"),
                            _ => "?".into(),
                        }
                    })
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let head = format!(
            "INTO {} ({}) VALUES {}",
            self.table,
            cols.join(", "),
            tuples.join(", ")
        );
        self.with_conflict_clause(dialect, &head)
    }

    /// `INSERT {head}` with what each dialect says on a duplicate key.
    fn with_conflict_clause(&self, dialect: Dialect, head: &str) -> String {
        let only_keys = self.adds.is_empty() && self.mins.is_empty() && self.maxs.is_empty();
        let t = self.table;
        match dialect {
            Dialect::Mysql if only_keys => format!("INSERT IGNORE {head}"),
            Dialect::Mysql => {
                let sets: Vec<String> = self
                    .adds
                    .iter()
                    .map(|c| format!("{c} = {c} + VALUES({c})"))
                    .chain(
                        self.mins
                            .iter()
                            .map(|c| format!("{c} = LEAST({c}, VALUES({c}))")),
                    )
                    .chain(
                        self.maxs
                            .iter()
                            .map(|c| format!("{c} = GREATEST({c}, VALUES({c}))")),
                    )
                    .collect();
                format!("INSERT {head} ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            _ if only_keys => format!("INSERT {head} ON CONFLICT DO NOTHING"),
            _ => {
                let (least, greatest) = if dialect == Dialect::Sqlite {
                    ("MIN", "MAX")
                } else {
                    ("LEAST", "GREATEST")
                };
                let sets: Vec<String> = self
                    .adds
                    .iter()
                    .map(|c| format!("{c} = {t}.{c} + excluded.{c}"))
                    .chain(
                        self.mins
                            .iter()
                            .map(|c| format!("{c} = {least}({t}.{c}, excluded.{c})")),
                    )
                    .chain(
                        self.maxs
                            .iter()
                            .map(|c| format!("{c} = {greatest}({t}.{c}, excluded.{c})")),
                    )
                    .collect();
                format!(
                    "INSERT {head} ON CONFLICT ({}) DO UPDATE SET {}",
                    self.keys.join(", "),
                    sets.join(", ")
                )
            }
        }
    }

    async fn run(
        &self,
        conn: &mut AnyConnection,
        dialect: Dialect,
        rows: Vec<Vec<V>>,
    ) -> Result<(), sqlx::Error> {
        // Bounded statements: PostgreSQL takes at most 65535 parameters.
        for chunk in rows.chunks(500) {
            let mut args = AnyArguments::default();
            for row in chunk {
                for v in row {
                    match v {
                        V::I(i) => args.add(*i),
                        V::S(s) => args.add(s.as_str()),
                    }
                    .map_err(sqlx::Error::Encode)?;
                }
            }
            sqlx::query_with::<Any, _>(&self.sql(dialect, chunk.len()), args)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

const ROLLUPS: Upsert = Upsert {
    table: "analytics_rollups",
    keys: &["granularity", "dim", "subject", "user_id", "bucket"],
    adds: &[
        "requests",
        "errors",
        "denials",
        "bytes_in",
        "bytes_out",
        "latency_sum_us",
    ],
    mins: &[],
    maxs: &[],
};
const LATENCY: Upsert = Upsert {
    table: "analytics_latency",
    keys: &["granularity", "dim", "subject", "user_id", "bucket", "le"],
    adds: &["n"],
    mins: &[],
    maxs: &[],
};
const FACETS: Upsert = Upsert {
    table: "analytics_facets",
    keys: &["scope", "subject", "facet", "value", "day"],
    adds: &["n"],
    mins: &[],
    maxs: &[],
};
const USER_DAYS: Upsert = Upsert {
    table: "analytics_user_days",
    keys: &["user_id", "day"],
    adds: &[],
    mins: &[],
    maxs: &[],
};
const USERS: Upsert = Upsert {
    table: "analytics_users",
    keys: &["user_id"],
    adds: &[],
    mins: &["first_seen"],
    maxs: &["last_seen"],
};
const INSTANCES: Upsert = Upsert {
    table: "analytics_instances",
    keys: &["instance_id", "user_id"],
    adds: &[],
    mins: &["first_seen"],
    maxs: &["last_seen"],
};
const OFFSETS: Upsert = Upsert {
    table: "analytics_offsets",
    keys: &["topic", "part"],
    adds: &[],
    mins: &[],
    maxs: &["next_offset"],
};

/// Adds `delta` inside the caller's transaction.
pub async fn write(
    conn: &mut AnyConnection,
    dialect: Dialect,
    delta: &Delta,
) -> Result<(), sqlx::Error> {
    let rk = |k: &RollKey| {
        vec![
            V::S(k.granularity.into()),
            V::S(k.dim.into()),
            V::S(k.subject.clone()),
            V::S(k.owner.clone()),
            V::I(k.bucket),
        ]
    };
    let rows = delta
        .rollups
        .iter()
        .map(|(k, r)| {
            let mut row = rk(k);
            row.extend(
                [
                    r.requests,
                    r.errors,
                    r.denials,
                    r.bytes_in,
                    r.bytes_out,
                    r.latency_sum_us,
                ]
                .map(V::I),
            );
            row
        })
        .collect();
    ROLLUPS.run(conn, dialect, rows).await?;
    let rows = delta
        .latency
        .iter()
        .map(|((k, le), n)| {
            let mut row = rk(k);
            row.extend([V::I(*le as i64), V::I(*n)]);
            row
        })
        .collect();
    LATENCY.run(conn, dialect, rows).await?;
    let rows = delta
        .facets
        .iter()
        .map(|((scope, subject, facet, value, day), n)| {
            vec![
                V::S((*scope).into()),
                V::S(subject.clone()),
                V::S((*facet).into()),
                V::S(value.clone()),
                V::I(*day),
                V::I(*n),
            ]
        })
        .collect();
    FACETS.run(conn, dialect, rows).await?;
    let rows = delta
        .user_days
        .iter()
        .map(|(u, d)| vec![V::S(u.clone()), V::I(*d)])
        .collect();
    USER_DAYS.run(conn, dialect, rows).await?;
    let users = delta
        .users
        .iter()
        .map(|(u, (f, l))| vec![V::S(u.clone()), V::I(*f), V::I(*l)])
        .collect();
    USERS.run(conn, dialect, users).await?;
    let instances = delta
        .instances
        .iter()
        .map(|((i, u), (f, l))| vec![V::S(i.clone()), V::S(u.clone()), V::I(*f), V::I(*l)])
        .collect();
    INSTANCES.run(conn, dialect, instances).await?;
    Ok(())
}

/// Adds `delta` in a transaction of its own (embedded mode: no offsets).
pub async fn write_alone(db: &Db, delta: &Delta) -> Result<(), sqlx::Error> {
    if delta.is_empty() {
        return Ok(());
    }
    let _turn = db.write_turn().await;
    let mut tx = db.begin().await?;
    write(&mut tx, db.dialect(), delta).await?;
    tx.commit().await
}

/// Stored next offsets of `topic`'s partitions, read under a row lock
/// where the database has one, so a second consumer handed the same
/// partition waits for this transaction instead of counting twice.
pub async fn offsets(
    conn: &mut AnyConnection,
    dialect: Dialect,
    topic: &str,
    parts: &[i32],
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    use crate::storage::RowExt;
    let lock = match dialect {
        Dialect::Sqlite => "",
        _ => " FOR UPDATE",
    };
    let mut out = BTreeMap::new();
    for part in parts {
        // Insert-ignore first, so that there is a row to lock.
        OFFSETS
            .run(
                conn,
                dialect,
                vec![vec![V::S(topic.into()), V::I(i64::from(*part)), V::I(0)]],
            )
            .await?;
        let q = match dialect {
            Dialect::Postgres => format!(
                "SELECT next_offset FROM analytics_offsets WHERE topic = $1 AND part = $2{lock}"
            ),
            _ => format!(
                "SELECT next_offset FROM analytics_offsets WHERE topic = ? AND part = ?{lock}"
            ),
        };
        let row = sqlx::query(&q)
            .bind(topic)
            .bind(*part)
            .fetch_one(&mut *conn)
            .await?;
        out.insert(*part, row.i64_at(0)?);
    }
    Ok(out)
}

/// Moves the stored offsets forward (never back).
pub async fn advance(
    conn: &mut AnyConnection,
    dialect: Dialect,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let rows = next
        .iter()
        .map(|(p, o)| vec![V::S(topic.into()), V::I(i64::from(*p)), V::I(*o)])
        .collect();
    OFFSETS.run(conn, dialect, rows).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, route: &str, status: u16, ts: i64) -> Event {
        Event {
            ts,
            kind: "rest".into(),
            route_or_event: route.into(),
            user_id: Some(user.into()),
            api_key_id: Some("k1".into()),
            instance_id: Some("phone".into()),
            status,
            latency_us: 900,
            bytes_in: 10,
            bytes_out: 20,
            ..Event::default()
        }
    }

    #[test]
    fn one_event_counts_once_per_dimension_and_granularity() {
        let mut d = Delta::default();
        d.add(&event("alice", "GET /x", 200, 90_000_000));
        // all, route, user, user_route, key, instance, instance_route.
        assert_eq!(d.rollups.len(), 7 * 3);
        assert!(d
            .rollups
            .values()
            .all(|r| r.requests == 1 && r.bytes_out == 20));
        // Histograms for all, route, key and instance.
        assert_eq!(d.latency.len(), 4 * 3);
        assert_eq!(d.users["alice"], (90_000_000, 90_000_000));
        // The device is alice's, the route and key dimensions nobody's.
        let owners: BTreeSet<(&str, &str)> = d
            .rollups
            .keys()
            .map(|k| (k.dim, k.owner.as_str()))
            .collect();
        assert!(
            owners.contains(&("instance", "alice"))
                && owners.contains(&("instance_route", "alice"))
        );
        assert!(owners.contains(&("route", "")) && owners.contains(&("key", "")));
        assert_eq!(
            d.instances[&("phone".to_string(), "alice".to_string())],
            (90_000_000, 90_000_000)
        );
    }

    #[test]
    fn devices_named_alike_stay_apart_per_user() {
        let mut d = Delta::default();
        d.add(&event("alice", "PUT /x", 200, 0));
        d.add(&event("bob", "PUT /x", 200, 0));
        let phones: Vec<(&str, i64)> = d
            .rollups
            .iter()
            .filter(|(k, _)| k.dim == "instance" && k.granularity == "d")
            .map(|(k, r)| (k.owner.as_str(), r.requests))
            .collect();
        assert_eq!(phones, vec![("alice", 1), ("bob", 1)]);
    }

    #[test]
    fn text_a_database_cannot_store_is_made_storable() {
        let mut e = event("alice", "PUT /x", 400, 0);
        e.item_key = Some("a\0b".into());
        e.instance_id = Some("dev\u{7}".into());
        let mut d = Delta::default();
        d.add(&e);
        assert!(d
            .facets
            .keys()
            .any(|k| k.2 == "item_key" && k.3 == "a\u{fffd}b"));
        assert!(d.instances.keys().all(|(i, _)| i == "dev\u{fffd}"));
        // The separator of compound subjects survives.
        assert!(d
            .rollups
            .keys()
            .any(|k| k.subject == format!("alice{SEP}PUT /x")));
    }

    #[test]
    fn batches_merge_by_addition() {
        let events: Vec<Event> = (0..50)
            .map(|i| {
                event(
                    if i % 3 == 0 { "a" } else { "b" },
                    "GET /x",
                    if i % 7 == 0 { 403 } else { 200 },
                    i * 10_000,
                )
            })
            .collect();
        let mut whole = Delta::default();
        events.iter().for_each(|e| whole.add(e));
        let all = whole
            .rollups
            .iter()
            .find(|(k, _)| k.dim == "all" && k.granularity == "d")
            .map(|(_, r)| *r)
            .unwrap_or_default();
        assert_eq!(all.requests, 50);
        assert_eq!(all.denials, 8);
        let denials: i64 = whole
            .facets
            .iter()
            .filter(|(k, _)| k.0 == "all" && k.2 == "denial")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(denials, 8);
    }

    #[test]
    fn upsert_sql_per_dialect() {
        let pg = ROLLUPS.sql(Dialect::Postgres, 2);
        assert!(pg.contains("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11), ($12,"));
        assert!(pg.contains("ON CONFLICT (granularity, dim, subject, user_id, bucket) DO UPDATE SET requests = analytics_rollups.requests + excluded.requests"));
        let my = USERS.sql(Dialect::Mysql, 1);
        assert!(my.contains("ON DUPLICATE KEY UPDATE first_seen = LEAST(first_seen, VALUES(first_seen)), last_seen = GREATEST(last_seen, VALUES(last_seen))"));
        assert!(USER_DAYS
            .sql(Dialect::Mysql, 1)
            .starts_with("INSERT IGNORE INTO"));
        assert!(USER_DAYS
            .sql(Dialect::Sqlite, 1)
            .ends_with("ON CONFLICT DO NOTHING"));
        assert!(USERS
            .sql(Dialect::Sqlite, 1)
            .contains("MIN(analytics_users.first_seen, excluded.first_seen)"));
    }
}
