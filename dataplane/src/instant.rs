//! Points in time as clients may write them: Unix milliseconds (a JSON
//! number or a string of digits) or an RFC 3339 date-time, the ISO 8601
//! profile the seed's `DateTime` fields use in JSON
//! (`"2026-12-01T00:00:00Z"`, `"2026-12-01T01:00:00.250+01:00"`).
//! Responses always carry Unix milliseconds. This module imports nothing of
//! the crate.

use serde::{de, Deserialize, Deserializer};

/// Parses Unix milliseconds or an RFC 3339 date-time into Unix milliseconds.
pub fn parse(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!("'{text}' is neither Unix milliseconds nor an RFC 3339 date-time (e.g. 2026-12-01T00:00:00Z)")
        })
}

/// A time as a client writes it: either form.
// Also the OpenAPI schema of such a time, so the two cannot differ.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = Instant)]
pub enum Written {
    /// Unix milliseconds.
    Millis(i64),
    /// Unix milliseconds as digits, or an RFC 3339 date-time
    /// (`2026-12-01T00:00:00Z`).
    Text(String),
}

impl Written {
    fn millis<E: de::Error>(self) -> Result<i64, E> {
        match self {
            Written::Millis(ms) => Ok(ms),
            Written::Text(t) => parse(&t).map_err(E::custom),
        }
    }
}

/// `#[serde(deserialize_with = "instant::option")]` for an optional time.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Written>::deserialize(d)?
        .map(Written::millis)
        .transpose()
}

/// `#[serde(deserialize_with = "instant::required")]` for a time that must be there.
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Written::deserialize(d)?.millis()
}

/// For a field where absent, `null` and a time differ (a patch): absent is
/// `None` (with `#[serde(default)]`), `null` is `Some(None)`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    option(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "option")]
        at: Option<i64>,
    }

    fn at(json: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.at)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_give_unix_milliseconds() {
        assert_eq!(at(r#"{"at": 1796083200000}"#), Ok(Some(1_796_083_200_000)));
        assert_eq!(
            at(r#"{"at": "1796083200000"}"#),
            Ok(Some(1_796_083_200_000))
        );
        assert_eq!(
            at(r#"{"at": "2026-12-01T00:00:00Z"}"#),
            Ok(Some(1_796_083_200_000))
        );
        assert_eq!(
            at(r#"{"at": "2026-12-01T01:00:00.250+01:00"}"#),
            Ok(Some(1_796_083_200_250))
        );
        assert_eq!(at(r#"{"at": null}"#), Ok(None));
        assert_eq!(at(r#"{}"#), Ok(None));
        assert!(at(r#"{"at": "tomorrow"}"#)
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(at(r#"{"at": "2026-13-01T00:00:00Z"}"#).is_err());
        assert!(at(r#"{"at": true}"#).is_err());
    }
}
