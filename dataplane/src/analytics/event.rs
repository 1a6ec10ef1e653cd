//! One analytics event per REST request and per socket event (DESIGN §8).

use serde::{Deserialize, Serialize};

/// Fields of DESIGN §8, plus three it lacks that the seed's analytics need:
/// `ip` and `error_code` (security: denials by reason and by address) and
/// `item_key` (behaviour: top keys and prefixes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// Milliseconds since the epoch.
    pub ts: i64,
    pub store: String,
    pub pod: String,
    /// `rest` or `socket`.
    pub kind: String,
    /// REST: `METHOD /route/template`; socket: the event name
    /// (`sync:set`, …, `connect`, `disconnect`).
    pub route_or_event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// HTTP status, or for socket events 200 on success and the status of
    /// the error otherwise.
    pub status: u16,
    /// Handling time; for `disconnect`, the length of the session.
    pub latency_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ua_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_key: Option<String>,
    /// The trace of the request or socket event, when it is traced. Not
    /// part of the event: Kafka carries it in the record's headers, where
    /// tracing tools look for it.
    #[serde(skip)]
    pub trace: Option<crate::telemetry::TraceContext>,
}

impl Event {
    /// Whether the request was refused by authentication, restrictions,
    /// a rate limit or a quota (by reason in `error_code`: `RATE_LIMITED`,
    /// `QUOTA_EXCEEDED`, `IP_NOT_ALLOWED`, …).
    pub fn is_denial(&self) -> bool {
        matches!(self.status, 401 | 403 | 429)
    }

    pub fn is_error(&self) -> bool {
        self.status >= 500
    }
}

/// A coarse browser/client family from a User-Agent, for the device mix.
/// Order matters: Edge and Opera also say Chrome, Chrome also says Safari.
pub fn ua_family(ua: &str) -> &'static str {
    let ua = ua.to_ascii_lowercase();
    const FAMILIES: [(&str, &str); 12] = [
        ("edg/", "Edge"),
        ("opr/", "Opera"),
        ("firefox/", "Firefox"),
        ("chrome/", "Chrome"),
        ("crios/", "Chrome"),
        ("safari/", "Safari"),
        ("okhttp", "Android app"),
        ("cfnetwork", "iOS app"),
        ("node", "Node.js"),
        ("curl/", "curl"),
        ("python", "Python"),
        ("wrk", "wrk"),
    ];
    FAMILIES
        .iter()
        .find(|(needle, _)| ua.contains(needle))
        .map_or("Other", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            ua_family("Mozilla/5.0 (X11) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"),
            "Chrome"
        );
        assert_eq!(
            ua_family("Mozilla/5.0 Chrome/120.0 Safari/537.36 Edg/120.0"),
            "Edge"
        );
        assert_eq!(
            ua_family("Mozilla/5.0 (iPhone) Version/17.0 Mobile Safari/604.1"),
            "Safari"
        );
        assert_eq!(ua_family("node-XMLHttpRequest"), "Node.js");
        assert_eq!(ua_family(""), "Other");
    }

    #[test]
    fn round_trips_as_json() {
        let e = Event {
            id: "1".into(),
            ts: 5,
            kind: "rest".into(),
            status: 403,
            error_code: Some("IP_NOT_ALLOWED".into()),
            ..Event::default()
        };
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(back, e);
        assert!(e.is_denial() && !e.is_error());
        let limited = Event {
            status: 429,
            error_code: Some("QUOTA_EXCEEDED".into()),
            ..e
        };
        assert!(limited.is_denial() && !limited.is_error());
    }
}
