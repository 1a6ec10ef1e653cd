//! The reports behind `GET /api/v1/analytics/*`: who may see which figures,
//! the window a query asks for, and the arithmetic over the aggregates
//! (rates, trends, health). Each report is a typed struct whose JSON shape
//! is the API's; the HTTP edge only parses the request and serialises the
//! answer.
//!
//! `analytics:read` (or `admin`) sees everything ([`Viewer::All`]). Without
//! it a caller sees only its own user, its own keys and its own devices
//! ([`Viewer::Own`]); the dashboard and the realtime view, which span
//! users, need the scope.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use utoipa::ToSchema;

use super::{
    aggregate::DAY_MS,
    query::{self, Cohort, Owner, Percentiles, Point, Seen, Totals, Window},
    Live,
};
use crate::{
    access::Scope,
    error::ApiError,
    storage::{conflicts, instances, keys, keys::KeyView, now_ms, Db},
};

const HOUR_MS: i64 = 3_600_000;
/// Longest window answered, in buckets of its granularity.
const MAX_BUCKETS: i64 = 10_000;
/// A device quiet for longer than this (10 minutes) is `inactive`.
const INACTIVE_AFTER_MS: i64 = 10 * 60_000;
/// A device whose share of failed requests exceeds this (5 %) is `degraded`.
const DEGRADED_ERROR_RATE: f64 = 0.05;

/// What a caller may see, from its scopes (`Principal::analytics_viewer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// `analytics:read` or `admin`: every user's figures.
    All,
    /// Only the figures of this user, its keys and its devices.
    Own(String),
}

impl Viewer {
    fn scope_required() -> ApiError {
        ApiError::ScopeRequired {
            scope: Scope::AnalyticsRead.as_str(),
        }
    }

    /// Cross-user views need `analytics:read`.
    fn require_all(&self) -> Result<(), ApiError> {
        match self {
            Viewer::All => Ok(()),
            Viewer::Own(_) => Err(Self::scope_required()),
        }
    }

    fn may_see_user(&self, user: &str) -> Result<(), ApiError> {
        match self {
            Viewer::Own(me) if me != user => Err(Self::scope_required()),
            _ => Ok(()),
        }
    }

    /// The owner a key must have to be visible, if any.
    fn key_owner(&self) -> Option<&str> {
        match self {
            Viewer::All => None,
            Viewer::Own(me) => Some(me),
        }
    }
}

fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    crate::instant::parse(v).map_err(|e| crate::text::Invalid::new(name, e.to_string()).query())
}

/// The window a query string asks for: `from` and `to` (ms since the epoch
/// or RFC 3339; default: the 24 hours before now) and `granularity`
/// (`minute`, `hour`, `day`; default: minute up to 2 hours, hour up to 7
/// days, day beyond), at most 10 000 buckets.
pub fn window(raw: Option<&str>, now: i64) -> Result<Window, ApiError> {
    let (mut from, mut to, mut granularity) = (None, None, None);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "granularity" => {
                granularity = Some(match v.as_ref() {
                    "minute" => "m",
                    "hour" => "h",
                    "day" => "d",
                    _ => {
                        return Err(crate::text::Invalid::new(
                            "granularity",
                            "is minute, hour or day",
                        )
                        .query())
                    }
                })
            }
            _ => {}
        }
    }
    let to = to.unwrap_or(now + 1);
    let from = from.unwrap_or(to - DAY_MS);
    if from >= to {
        return Err(crate::text::Invalid::new("from", "must be before to").query());
    }
    let span = to - from;
    let granularity = granularity.unwrap_or(if span <= 2 * HOUR_MS {
        "m"
    } else if span <= 7 * DAY_MS {
        "h"
    } else {
        "d"
    });
    let window = Window {
        from,
        to,
        granularity,
    };
    if span / window.width() > MAX_BUCKETS {
        return Err(crate::text::Invalid::new(
            "granularity",
            "makes the window more than 10000 buckets; use a coarser one",
        )
        .query());
    }
    Ok(window)
}

/// The window a report covers, as the caller can read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Range {
    /// Start, ms since the epoch (inclusive).
    pub from: i64,
    /// End, ms since the epoch (exclusive).
    pub to: i64,
    /// `minute`, `hour` or `day`.
    pub granularity: &'static str,
}

impl From<Window> for Range {
    fn from(w: Window) -> Self {
        Range {
            from: w.from,
            to: w.to,
            granularity: match w.granularity {
                "m" => "minute",
                "h" => "hour",
                _ => "day",
            },
        }
    }
}

/// `part / whole`, 0 when there is no whole.
fn ratio(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

macro_rules! counted {
    ($(#[$doc:meta] $name:ident { $field:ident })*) => {$(
        #[$doc]
        #[derive(Debug, Clone, Serialize, ToSchema)]
        pub struct $name {
            pub $field: String,
            pub count: i64,
        }

        impl $name {
            fn all(rows: Vec<(String, i64)>) -> Vec<Self> {
                rows.into_iter().map(|($field, count)| Self { $field, count }).collect()
            }
        }
    )*};
}

// Facet counts, each named for what it counts (the seed's shapes).
counted! {
    /// Denials of one error code.
    CodeCount { code }
    /// Requests that touched one item key.
    KeyCount { key }
    /// Requests that touched keys of one prefix (up to the first `/`, `:` or `.`).
    PrefixCount { prefix }
    /// Requests from one user-agent family.
    FamilyCount { family }
    /// Denials for one reason (error code).
    ReasonCount { reason }
    /// Denials of one client IP.
    IpCount { ip }
    /// Denials from one country (ISO 3166-1 alpha-2).
    CountryCount { country }
}

/// One route's share of the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteTotals {
    /// `METHOD /path` or `socket:<event>`.
    pub route: String,
    pub requests: i64,
    pub errors: i64,
}

/// The dashboard's totals over the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardTotals {
    pub requests: i64,
    pub errors: i64,
    /// errors / requests (0 without requests).
    pub error_rate: f64,
    pub denials: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// Daily, weekly and monthly active users, counted back from now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActiveUsers {
    pub dau: i64,
    pub wau: i64,
    pub mau: i64,
}

/// Conflicts recorded since the window's start.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConflictCounts {
    pub total: i64,
    /// Still waiting for a manual resolution.
    pub pending: i64,
}

/// `GET /api/v1/analytics/dashboard`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    pub range: Range,
    pub totals: DashboardTotals,
    pub latency_ms: Percentiles,
    pub users: ActiveUsers,
    /// Users by the week first seen, the last 8 weeks.
    pub cohorts: Vec<Cohort>,
    pub series: Vec<Point>,
    /// The 10 busiest routes.
    pub top_routes: Vec<RouteTotals>,
    /// The 20 most frequent denial codes.
    pub denials: Vec<CodeCount>,
    pub conflicts: ConflictCounts,
    /// Sockets connected now, every pod.
    pub connected_sockets: i64,
}

/// `GET /api/v1/analytics/realtime`: this pod's live figures, or every
/// pod's summed through Redis.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Realtime {
    pub connected_sockets: i64,
    pub ops_last_minute: u64,
    pub ops_per_second: f64,
    /// Operations in each of the last 60 seconds, oldest first.
    pub ops_per_second_series: Vec<u64>,
    /// Pods whose figures are summed.
    pub pods: usize,
    /// When the figures were read, ms since the epoch.
    pub at: i64,
}

/// `GET /api/v1/analytics/users/{user}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserReport {
    pub user_id: String,
    pub range: Range,
    /// ms since the epoch; null if never seen.
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// Days with activity within the window.
    pub active_days: i64,
    pub totals: Totals,
    pub error_rate: f64,
    pub series: Vec<Point>,
    /// The user's 20 busiest routes.
    pub top_routes: Vec<RouteTotals>,
}

/// `GET /api/v1/analytics/users/{user}/engagement`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Engagement {
    pub user_id: String,
    pub range: Range,
    /// Socket connections opened in the window.
    pub sessions: i64,
    /// Socket connections closed in the window.
    pub completed_sessions: i64,
    /// Mean length of the completed sessions, seconds.
    pub avg_session_seconds: f64,
    /// Requests and socket events other than connect and disconnect.
    pub operations: i64,
    pub operations_per_session: f64,
    pub active_days: i64,
    pub active_last7_days: i64,
    pub active_last30_days: i64,
    /// Monday 00:00 UTC of the week first seen, ms; null if never seen.
    pub cohort_week: Option<i64>,
}

/// `GET /api/v1/analytics/users/{user}/behavior`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    pub user_id: String,
    pub range: Range,
    pub top_keys: Vec<KeyCount>,
    pub top_prefixes: Vec<PrefixCount>,
    /// Requests in each hour of the day, UTC, 0 to 23.
    pub active_hours_utc: [i64; 24],
    pub devices: Vec<FamilyCount>,
    pub top_routes: Vec<RouteTotals>,
}

/// A key's quotas (null: unlimited).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    pub per_minute: Option<i64>,
    pub per_hour: Option<i64>,
    pub per_day: Option<i64>,
    pub per_month: Option<i64>,
}

/// `GET /api/v1/analytics/api-keys/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    pub key_id: String,
    pub name: String,
    pub user_id: String,
    pub range: Range,
    pub totals: Totals,
    pub error_rate: f64,
    pub latency_ms: Percentiles,
    pub usage_today: i64,
    pub usage_this_month: i64,
    pub last_used_at: Option<i64>,
    pub quotas: Quotas,
}

/// `GET /api/v1/analytics/api-keys/{id}/security`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySecurity {
    pub key_id: String,
    pub range: Range,
    pub requests: i64,
    pub denials: i64,
    /// denials / requests (0 without requests).
    pub denial_rate: f64,
    pub by_reason: Vec<ReasonCount>,
    pub by_ip: Vec<IpCount>,
    pub by_country: Vec<CountryCount>,
}

/// `GET /api/v1/analytics/api-keys/{id}/trends`: the series, and the change
/// from the first half of the window to the second.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyTrends {
    pub key_id: String,
    pub range: Range,
    pub series: Vec<Point>,
    pub requests_first_half: i64,
    pub requests_second_half: i64,
    /// (second − first) / first × 100; null when the first half is empty.
    pub change_percent: Option<f64>,
}

/// `GET /api/v1/analytics/instances/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub instance_id: String,
    /// Whose device; null when every user's device of this name is summed.
    pub user_id: Option<String>,
    pub range: Range,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub totals: Totals,
    pub error_rate: f64,
    pub series: Vec<Point>,
    pub top_routes: Vec<RouteTotals>,
}

/// One bucket of [`InstancePerformance`].
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPoint {
    /// Start of the bucket, ms since the epoch.
    pub bucket: i64,
    pub requests: i64,
    pub latency_ms: Percentiles,
}

/// `GET /api/v1/analytics/instances/{id}/performance`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancePerformance {
    pub instance_id: String,
    pub user_id: Option<String>,
    pub range: Range,
    pub requests: i64,
    pub avg_latency_ms: f64,
    pub latency_ms: Percentiles,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub series: Vec<LatencyPoint>,
}

/// A device's health, from when it was last seen and its error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Never seen.
    Unknown,
    /// Not seen for more than 10 minutes.
    Inactive,
    /// More than 5 % of its requests in the window failed.
    Degraded,
    Healthy,
}

impl Health {
    /// The rule: quiet first, then errors.
    pub fn judge(quiet_ms: Option<i64>, error_rate: f64) -> Self {
        match quiet_ms {
            None => Health::Unknown,
            Some(q) if q > INACTIVE_AFTER_MS => Health::Inactive,
            _ if error_rate > DEGRADED_ERROR_RATE => Health::Degraded,
            _ => Health::Healthy,
        }
    }
}

/// `GET /api/v1/analytics/instances/{id}/health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceHealth {
    pub instance_id: String,
    pub user_id: Option<String>,
    pub range: Range,
    pub status: Health,
    pub last_seen: Option<i64>,
    pub requests: i64,
    pub errors: i64,
    pub error_rate: f64,
    /// Socket connections opened in the window.
    pub reconnects: i64,
    /// The share of requests served without a server error (1 without
    /// requests).
    pub reliability: f64,
}

/// Reads the reports. Cheap to clone.
#[derive(Clone)]
pub struct Reports {
    db: Db,
    live: Arc<Live>,
    /// Where every pod's live figures meet, when Redis is configured.
    shared: Option<crate::redis_conn::Conn>,
    store: String,
}

impl Reports {
    pub fn new(
        db: Db,
        live: Arc<Live>,
        shared: Option<crate::redis_conn::Conn>,
        store: String,
    ) -> Self {
        Self {
            db,
            live,
            shared,
            store,
        }
    }

    pub async fn dashboard(
        &self,
        viewer: &Viewer,
        raw: Option<&str>,
    ) -> Result<Dashboard, ApiError> {
        viewer.require_all()?;
        let w = window(raw, now_ms())?;
        let (db, now) = (&self.db, now_ms());
        let totals = query::totals(db, w, "all", Owner::Anyone, "").await?;
        let routes = query::top_subjects(db, w, "route", Owner::Anyone, "", 10).await?;
        let conflict_rows = conflicts::counts(db, None, w.from).await?;
        let active = |days| query::active_users(db, now - days * DAY_MS, now + 1);
        Ok(Dashboard {
            range: w.into(),
            totals: DashboardTotals {
                requests: totals.requests,
                errors: totals.errors,
                error_rate: totals.error_rate(),
                denials: totals.denials,
                bytes_in: totals.bytes_in,
                bytes_out: totals.bytes_out,
            },
            latency_ms: query::percentiles(db, w, "all", Owner::Anyone, "").await?,
            users: ActiveUsers {
                dau: active(1).await?,
                wau: active(7).await?,
                mau: active(30).await?,
            },
            cohorts: query::cohorts(db, now - 8 * query::WEEK_MS, now).await?,
            series: query::series(db, w, "all", Owner::Anyone, "").await?,
            top_routes: routes
                .into_iter()
                .map(|(route, t)| RouteTotals {
                    route,
                    requests: t.requests,
                    errors: t.errors,
                })
                .collect(),
            denials: CodeCount::all(query::facet(db, w, "all", "", "denial", 20).await?),
            conflicts: ConflictCounts {
                total: conflict_rows.iter().map(|r| r.3).sum(),
                pending: conflict_rows
                    .iter()
                    .filter(|r| r.2 == "pending")
                    .map(|r| r.3)
                    .sum(),
            },
            connected_sockets: self.live_figures().await.connected_sockets,
        })
    }

    pub async fn realtime(&self, viewer: &Viewer) -> Result<Realtime, ApiError> {
        viewer.require_all()?;
        Ok(self.live_figures().await)
    }

    async fn live_figures(&self) -> Realtime {
        let mut figures = self.live.figures();
        let mut pods = 1;
        if let Some(conn) = &self.shared {
            let mut conn = conn.clone();
            match super::live::shared::total(&mut conn, &self.store).await {
                Ok((sum, n)) if n > 0 => {
                    figures = sum;
                    pods = n;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "live figures of other pods unavailable"),
            }
        }
        let last_minute = figures.ops_last_minute();
        Realtime {
            connected_sockets: figures.connected_sockets,
            ops_last_minute: last_minute,
            ops_per_second: last_minute as f64 / 60.0,
            ops_per_second_series: figures.ops_per_second,
            pods,
            at: now_ms(),
        }
    }

    pub async fn user(
        &self,
        viewer: &Viewer,
        user: &str,
        raw: Option<&str>,
    ) -> Result<UserReport, ApiError> {
        viewer.may_see_user(user)?;
        let w = window(raw, now_ms())?;
        let (db, mine) = (&self.db, Owner::User(user));
        let totals = query::totals(db, w, "user", mine, user).await?;
        let seen = query::seen(db, Seen::User, mine, user).await?;
        Ok(UserReport {
            user_id: user.into(),
            range: w.into(),
            first_seen: seen.map(|s| s.0),
            last_seen: seen.map(|s| s.1),
            active_days: query::active_days(db, user, w.from, w.to).await?,
            error_rate: totals.error_rate(),
            totals,
            series: query::series(db, w, "user", mine, user).await?,
            top_routes: self.routes_of(w, "user_route", mine, user).await?,
        })
    }

    /// The top routes of a user (`user_route`) or a device
    /// (`instance_route`): the owner's rows whose subject starts with `who`
    /// and the separator.
    async fn routes_of(
        &self,
        w: Window,
        dim: &str,
        owner: Owner<'_>,
        who: &str,
    ) -> Result<Vec<RouteTotals>, ApiError> {
        let rows = query::top_subjects(&self.db, w, dim, owner, &query::pair(who, ""), 20).await?;
        Ok(rows
            .into_iter()
            .map(|(s, t)| RouteTotals {
                route: query::second(&s).to_string(),
                requests: t.requests,
                errors: t.errors,
            })
            .collect())
    }

    pub async fn engagement(
        &self,
        viewer: &Viewer,
        user: &str,
        raw: Option<&str>,
    ) -> Result<Engagement, ApiError> {
        viewer.may_see_user(user)?;
        let w = window(raw, now_ms())?;
        let (db, mine, now) = (&self.db, Owner::User(user), now_ms());
        let all = query::totals(db, w, "user", mine, user).await?;
        let (connect, disconnect) = (
            query::pair(user, "socket:connect"),
            query::pair(user, "socket:disconnect"),
        );
        let connects = query::totals(db, w, "user_route", mine, &connect).await?;
        let ends = query::totals(db, w, "user_route", mine, &disconnect).await?;
        let sessions = connects.requests;
        let operations = all.requests - connects.requests - ends.requests;
        let seen = query::seen(db, Seen::User, mine, user).await?;
        let active_since = |days| query::active_days(db, user, now - days * DAY_MS, now + 1);
        Ok(Engagement {
            user_id: user.into(),
            range: w.into(),
            sessions,
            completed_sessions: ends.requests,
            avg_session_seconds: ratio(ends.latency_sum_us, ends.requests) / 1e6,
            operations,
            operations_per_session: if sessions > 0 {
                ratio(operations, sessions)
            } else {
                operations as f64
            },
            active_days: query::active_days(db, user, w.from, w.to).await?,
            active_last7_days: active_since(7).await?,
            active_last30_days: active_since(30).await?,
            cohort_week: seen.map(|s| query::week_of(s.0)),
        })
    }

    pub async fn behavior(
        &self,
        viewer: &Viewer,
        user: &str,
        raw: Option<&str>,
    ) -> Result<Behavior, ApiError> {
        viewer.may_see_user(user)?;
        let w = window(raw, now_ms())?;
        let db = &self.db;
        let keys = query::facet(db, w, "user", user, "item_key", 1000).await?;
        let mut hours = [0i64; 24];
        for (h, n) in query::facet(db, w, "user", user, "hour", 24).await? {
            if let Some(slot) = h.parse::<usize>().ok().and_then(|i| hours.get_mut(i)) {
                *slot += n;
            }
        }
        Ok(Behavior {
            user_id: user.into(),
            range: w.into(),
            top_prefixes: PrefixCount::all(prefixes(&keys).into_iter().take(20).collect()),
            top_keys: KeyCount::all(keys.into_iter().take(20).collect()),
            active_hours_utc: hours,
            devices: FamilyCount::all(query::facet(db, w, "user", user, "ua", 20).await?),
            top_routes: self
                .routes_of(w, "user_route", Owner::User(user), user)
                .await?,
        })
    }

    /// The key, if the viewer may see it; otherwise the same NOT_FOUND as a
    /// key that does not exist, so ids of other users' keys leak nothing.
    async fn visible_key(&self, viewer: &Viewer, id: &str) -> Result<KeyView, ApiError> {
        keys::get(&self.db, id, viewer.key_owner())
            .await?
            .ok_or_else(|| ApiError::NotFound { key: id.into() })
    }

    pub async fn key(
        &self,
        viewer: &Viewer,
        id: &str,
        raw: Option<&str>,
    ) -> Result<KeyReport, ApiError> {
        let key = self.visible_key(viewer, id).await?;
        let w = window(raw, now_ms())?;
        let db = &self.db;
        let totals = query::totals(db, w, "key", Owner::Anyone, id).await?;
        Ok(KeyReport {
            key_id: id.into(),
            name: key.name,
            user_id: key.user_id,
            range: w.into(),
            error_rate: totals.error_rate(),
            totals,
            latency_ms: query::percentiles(db, w, "key", Owner::Anyone, id).await?,
            usage_today: key.usage_today,
            usage_this_month: key.usage_this_month,
            last_used_at: key.last_used_at,
            quotas: Quotas {
                per_minute: key.quota_per_minute,
                per_hour: key.quota_per_hour,
                per_day: key.quota_per_day,
                per_month: key.quota_per_month,
            },
        })
    }

    pub async fn key_security(
        &self,
        viewer: &Viewer,
        id: &str,
        raw: Option<&str>,
    ) -> Result<KeySecurity, ApiError> {
        self.visible_key(viewer, id).await?;
        let w = window(raw, now_ms())?;
        let db = &self.db;
        let totals = query::totals(db, w, "key", Owner::Anyone, id).await?;
        let facet = |name| query::facet(db, w, "key", id, name, 50);
        Ok(KeySecurity {
            key_id: id.into(),
            range: w.into(),
            requests: totals.requests,
            denials: totals.denials,
            denial_rate: ratio(totals.denials, totals.requests),
            by_reason: ReasonCount::all(facet("denial").await?),
            by_ip: IpCount::all(facet("ip").await?),
            by_country: CountryCount::all(facet("country").await?),
        })
    }

    pub async fn key_trends(
        &self,
        viewer: &Viewer,
        id: &str,
        raw: Option<&str>,
    ) -> Result<KeyTrends, ApiError> {
        self.visible_key(viewer, id).await?;
        let w = window(raw, now_ms())?;
        let series = query::series(&self.db, w, "key", Owner::Anyone, id).await?;
        let (early, late) = halves(&series, w);
        Ok(KeyTrends {
            key_id: id.into(),
            range: w.into(),
            series,
            requests_first_half: early,
            requests_second_half: late,
            change_percent: (early > 0).then(|| (late - early) as f64 * 100.0 / early as f64),
        })
    }

    /// Whose device `id` a request asks about (`asked`: its `?userId=`).
    /// Devices are per user: a viewer of its own sees only its own
    /// devices' figures (and 404 for a name none of its devices had); with
    /// the scope, `asked` picks the user, and without it the figures of
    /// every user's device of that name are summed.
    async fn device_owner(
        &self,
        viewer: &Viewer,
        id: &str,
        asked: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        let Viewer::Own(me) = viewer else {
            return Ok(asked);
        };
        if asked.as_ref().is_some_and(|u| u != me) {
            return Err(Viewer::scope_required());
        }
        let connected = instances::list(&self.db, me)
            .await?
            .iter()
            .any(|i| i.instance_id == id);
        let seen = query::seen(&self.db, Seen::Instance, Owner::User(me), id)
            .await?
            .is_some();
        if connected || seen {
            Ok(Some(me.clone()))
        } else {
            Err(ApiError::NotFound { key: id.into() })
        }
    }

    pub async fn instance(
        &self,
        viewer: &Viewer,
        id: &str,
        asked: Option<String>,
        raw: Option<&str>,
    ) -> Result<InstanceReport, ApiError> {
        let user = self.device_owner(viewer, id, asked).await?;
        let w = window(raw, now_ms())?;
        let (db, owner) = (&self.db, owner_of(&user));
        let totals = query::totals(db, w, "instance", owner, id).await?;
        let seen = query::seen(db, Seen::Instance, owner, id).await?;
        Ok(InstanceReport {
            instance_id: id.into(),
            range: w.into(),
            first_seen: seen.map(|s| s.0),
            last_seen: seen.map(|s| s.1),
            error_rate: totals.error_rate(),
            totals,
            series: query::series(db, w, "instance", owner, id).await?,
            top_routes: self.routes_of(w, "instance_route", owner, id).await?,
            user_id: user,
        })
    }

    pub async fn instance_performance(
        &self,
        viewer: &Viewer,
        id: &str,
        asked: Option<String>,
        raw: Option<&str>,
    ) -> Result<InstancePerformance, ApiError> {
        let user = self.device_owner(viewer, id, asked).await?;
        let w = window(raw, now_ms())?;
        let (db, owner) = (&self.db, owner_of(&user));
        let totals = query::totals(db, w, "instance", owner, id).await?;
        let series = query::series(db, w, "instance", owner, id).await?;
        let mut latency = query::percentiles_by_bucket(db, w, "instance", owner, id).await?;
        let series = series
            .iter()
            .map(|p| LatencyPoint {
                bucket: p.bucket,
                requests: p.totals.requests,
                latency_ms: latency.remove(&p.bucket).unwrap_or_default(),
            })
            .collect();
        Ok(InstancePerformance {
            instance_id: id.into(),
            range: w.into(),
            requests: totals.requests,
            avg_latency_ms: ratio(totals.latency_sum_us, totals.requests) / 1000.0,
            latency_ms: query::percentiles(db, w, "instance", owner, id).await?,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            series,
            user_id: user,
        })
    }

    pub async fn instance_health(
        &self,
        viewer: &Viewer,
        id: &str,
        asked: Option<String>,
        raw: Option<&str>,
    ) -> Result<InstanceHealth, ApiError> {
        let user = self.device_owner(viewer, id, asked).await?;
        let w = window(raw, now_ms())?;
        let (db, owner, now) = (&self.db, owner_of(&user), now_ms());
        let totals = query::totals(db, w, "instance", owner, id).await?;
        let connects = query::pair(id, "socket:connect");
        let reconnects = query::totals(db, w, "instance_route", owner, &connects)
            .await?
            .requests;
        let last_seen = query::seen(db, Seen::Instance, owner, id)
            .await?
            .map(|s| s.1);
        Ok(InstanceHealth {
            instance_id: id.into(),
            range: w.into(),
            status: Health::judge(last_seen.map(|l| now - l), totals.error_rate()),
            last_seen,
            requests: totals.requests,
            errors: totals.errors,
            error_rate: totals.error_rate(),
            reconnects,
            reliability: if totals.requests > 0 {
                1.0 - totals.error_rate()
            } else {
                1.0
            },
            user_id: user,
        })
    }
}

fn owner_of(user: &Option<String>) -> Owner<'_> {
    user.as_deref().map_or(Owner::Anyone, Owner::User)
}

/// Item-key counts summed by prefix (up to the first `/`, `:` or `.`),
/// most used first, ties by name.
fn prefixes(keys: &[(String, i64)]) -> Vec<(String, i64)> {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for (k, n) in keys {
        let prefix = k.split_once(['/', ':', '.']).map_or(k.as_str(), |(p, _)| p);
        *sums.entry(prefix.to_string()).or_default() += n;
    }
    let mut sums: Vec<(String, i64)> = sums.into_iter().collect();
    sums.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sums
}

/// Requests in the first and the second half of the window.
fn halves(series: &[Point], w: Window) -> (i64, i64) {
    let mid = w.from + (w.to - w.from) / 2;
    series.iter().fold((0, 0), |(e, l), p| {
        if p.bucket < mid {
            (e + p.totals.requests, l)
        } else {
            (e, l + p.totals.requests)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_and_validate() {
        let now = 10 * DAY_MS;
        let w = window(None, now).expect("default");
        assert_eq!((w.to - w.from, w.granularity), (DAY_MS, "h"));
        let w = window(Some("from=0&to=3600000"), now).expect("an hour");
        assert_eq!(w.granularity, "m");
        let w = window(
            Some("from=2026-11-01T00:00:00Z&granularity=day"),
            1_830_000_000_000,
        )
        .expect("rfc3339");
        assert_eq!(w.granularity, "d");
        assert!(window(Some("granularity=week"), now).is_err());
        assert!(window(Some("from=5&to=5"), now).is_err());
        assert!(window(Some("from=yesterday"), now).is_err());
        assert!(window(Some("from=0&to=999999999999&granularity=minute"), now).is_err());
    }

    #[test]
    fn health_is_judged_by_quiet_then_errors() {
        assert_eq!(Health::judge(None, 0.0), Health::Unknown);
        assert_eq!(Health::judge(Some(600_001), 0.9), Health::Inactive);
        assert_eq!(Health::judge(Some(600_000), 0.051), Health::Degraded);
        assert_eq!(Health::judge(Some(0), 0.05), Health::Healthy);
    }

    #[test]
    fn viewers_see_their_own() {
        let me = Viewer::Own("u1".into());
        assert!(me.may_see_user("u1").is_ok());
        assert!(me.may_see_user("u2").is_err());
        assert!(me.require_all().is_err());
        assert_eq!(me.key_owner(), Some("u1"));
        assert!(Viewer::All.may_see_user("u2").is_ok());
        assert_eq!(Viewer::All.key_owner(), None);
    }

    #[test]
    fn prefixes_sum_and_sort() {
        let keys = vec![
            ("a/1".to_string(), 2),
            ("b:1".to_string(), 3),
            ("a.2".to_string(), 2),
            ("c".to_string(), 1),
        ];
        assert_eq!(
            prefixes(&keys),
            vec![("a".into(), 4), ("b".into(), 3), ("c".into(), 1)]
        );
    }

    #[test]
    fn halves_split_at_the_middle() {
        let w = Window {
            from: 0,
            to: 4,
            granularity: "m",
        };
        let point = |bucket, requests| Point {
            bucket,
            totals: Totals {
                requests,
                ..Totals::default()
            },
        };
        assert_eq!(halves(&[point(0, 1), point(1, 2), point(2, 5)], w), (3, 5));
    }
}
