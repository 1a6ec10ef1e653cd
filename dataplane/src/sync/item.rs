//! The item model as clients see it, and the validation of what they send.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{error::ApiError, text};

/// A TTL as clients may give it: seconds from now, or an absolute RFC 3339 time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Ttl {
    /// Seconds from now: more than 0, at most 100 years.
    Seconds(f64),
    /// An RFC 3339 time in the future.
    At(String),
}

impl Ttl {
    /// The absolute expiry in Unix milliseconds.
    pub fn expires_at(&self, now_ms: i64) -> Result<i64, ApiError> {
        match self {
            Ttl::Seconds(s) if s.is_finite() && *s > 0.0 && *s <= 100.0 * 365.0 * 86400.0 => {
                // Bounded above, so the cast cannot overflow.
                Ok(now_ms + (s * 1000.0).round() as i64)
            }
            Ttl::Seconds(_) => Err(text::Invalid::new(
                "ttl",
                "in seconds must be more than 0 and at most 100 years",
            )
            .body()),
            Ttl::At(text) => {
                let at = chrono::DateTime::parse_from_rfc3339(text)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| {
                        text::Invalid::new("ttl", "must be seconds or an RFC 3339 time").body()
                    })?;
                // Like a ttl of 0 seconds: an item born expired would reach
                // live devices and then be removed at once.
                if at <= now_ms {
                    return Err(text::Invalid::new("ttl", "must be a time in the future").body());
                }
                Ok(at)
            }
        }
    }
}

/// The body of a set (REST PUT, socket `sync:set`).
/// Deepest nesting of arrays and objects accepted in a value or metadata.
/// Values are kept verbatim, so nothing here would recurse on them, but the
/// merge strategy and every client parser would: serde_json stops at 128,
/// browsers at a few thousand.
pub const MAX_NESTING: usize = 64;

/// Most tags an item holds (the schema's `maxItems` of `SetRequest.tags`).
pub const MAX_TAGS: usize = 64;

/// How deeply arrays and objects nest in a JSON text (brackets inside
/// strings do not count). A linear scan: it never recurses.
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `json` without the whitespace between its tokens (RFC 8259 §2 allows it
/// anywhere outside strings), or None when it has none. Values are kept as
/// sent otherwise: re-serialising through serde_json would rewrite numbers
/// (`1e400`, 30-digit integers) and merge duplicate keys, so this works on
/// the text, which serde_json has already validated.
fn strip_whitespace(json: &str) -> Option<String> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let bytes = json.as_bytes();
    if !bytes.iter().any(|&b| is_space(b)) {
        return None;
    }
    let (mut in_string, mut escaped) = (false, false);
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_space(b) {
            continue;
        }
        out.push(b);
    }
    // Only ASCII bytes were left out, so the rest is still UTF-8.
    String::from_utf8(out).ok().filter(|s| s.len() < json.len())
}

/// A JSON text as stored and measured: its size and the storage quota count
/// the value, not how the client formatted it, so REST and `sync:set` agree.
fn compact(raw: Box<RawValue>) -> Box<RawValue> {
    match strip_whitespace(raw.get()).map(RawValue::from_string) {
        Some(Ok(stripped)) => stripped,
        _ => raw,
    }
}

fn compact_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<RawValue>, D::Error> {
    Box::<RawValue>::deserialize(d).map(compact)
}

fn compact_metadata<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Option::<Box<RawValue>>::deserialize(d).map(|m| m.map(compact))
}

/// A set as a client sends it: the body of REST `PUT
/// /sync-storage/item/{key}` and the payload of `sync:set`.
// Serialised only for its fingerprint (see `operation`), which leaves out
// `key` and `opId`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetRequest {
    /// The key, for `sync:set`; REST takes it from the path and ignores this.
    #[serde(default)]
    pub key: Option<String>,
    /// Any JSON value, kept as sent without the whitespace between tokens
    /// (at most 64 levels deep). Required: JSON `null` is a value, absence
    /// is not.
    #[serde(deserialize_with = "compact_value")]
    #[schema(value_type = serde_json::Value)]
    pub value: Box<RawValue>,
    /// An object; `conflictStrategy` overrides the store's strategy.
    #[serde(default, deserialize_with = "compact_metadata")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// The version this write was based on.
    #[serde(default)]
    pub version: Option<i64>,
    /// The client's clock in Unix milliseconds (or RFC 3339); the server's
    /// when absent.
    #[serde(default, deserialize_with = "crate::instant::option")]
    #[schema(value_type = Option<crate::instant::Written>)]
    pub timestamp: Option<i64>,
    /// Seconds to live, or the RFC 3339 time it expires.
    #[serde(default)]
    pub ttl: Option<Ttl>,
    /// At most 64.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub compression_type: Option<String>,
    #[serde(default)]
    pub encryption_type: Option<String>,
    /// An operation id: a socket write's, or REST's when there is no
    /// `Idempotency-Key` header (which wins).
    #[serde(default)]
    pub op_id: Option<String>,
}

impl SetRequest {
    /// Checks what serde's types cannot: metadata is an object, the small
    /// string fields are bounded.
    pub fn validate(&self) -> Result<(), ApiError> {
        for (name, raw) in [
            ("value", Some(&self.value)),
            ("metadata", self.metadata.as_ref()),
        ] {
            if raw.is_some_and(|r| nesting_depth(r.get()) > MAX_NESTING) {
                return Err(text::Invalid::new(
                    name,
                    format!("nests deeper than {MAX_NESTING} levels"),
                )
                .body());
            }
        }
        if let Some(m) = &self.metadata {
            let text = m.get().trim_start();
            if !(text.starts_with('{') || text == "null") {
                return Err(text::Invalid::new("metadata", "must be a JSON object").body());
            }
        }
        // Checked on every write, not only when there is a conflict to
        // settle: a bad strategy is refused whatever the item's state.
        self.strategy_override()?;
        if let Some(v) = self.version {
            if v < 0 {
                return Err(text::Invalid::new("version", "must not be negative").body());
            }
        }
        if let Some(ts) = self.timestamp {
            if ts < 0 {
                return Err(text::Invalid::new("timestamp", "must not be before 1970").body());
            }
        }
        if let Some(tags) = &self.tags {
            if tags.len() > MAX_TAGS {
                return Err(text::Invalid::new("tags", "holds at most 64 tags").body());
            }
            text::check_all("tags", tags, text::TAG).map_err(text::Invalid::body)?;
        }
        for (name, v) in [
            ("compressionType", &self.compression_type),
            ("encryptionType", &self.encryption_type),
        ] {
            if let Some(v) = v {
                text::check(name, v, text::LABEL).map_err(text::Invalid::body)?;
            }
        }
        Ok(())
    }

    /// `metadata.conflictStrategy`, which overrides the store's default for
    /// this one write.
    pub fn strategy_override(&self) -> Result<Option<crate::conflict::Strategy>, ApiError> {
        let Some(meta) = self.metadata_text() else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Meta {
            #[serde(rename = "conflictStrategy")]
            conflict_strategy: Option<String>,
        }
        let field = "metadata.conflictStrategy";
        let meta: Meta = serde_json::from_str(meta)
            .map_err(|e| text::Invalid::new(field, e.to_string()).body())?;
        meta.conflict_strategy
            .map(|s| {
                s.parse()
                    .map_err(|e: String| text::Invalid::new(field, e).body())
            })
            .transpose()
    }

    /// Metadata as stored: JSON `null` and absence are the same thing.
    /// The operation id sent in the body (`opId`), checked.
    pub fn operation(&self) -> Result<Option<super::OperationId>, ApiError> {
        super::OperationId::from_op_id(self.op_id.as_deref())
    }

    pub fn metadata_text(&self) -> Option<&str> {
        self.metadata
            .as_deref()
            .map(RawValue::get)
            .filter(|m| m.trim() != "null")
    }
}

/// A key is 1–256 bytes of UTF-8 with no control characters.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    text::check("key", key, text::KEY).map_err(text::Invalid::key)
}

/// A prefix obeys the key rules but may be empty.
pub fn validate_prefix(prefix: &str) -> Result<(), ApiError> {
    text::check("prefix", prefix, text::PREFIX).map_err(text::Invalid::query)
}

/// User ids: 1–255 bytes, no control characters, compared byte-exactly.
pub fn validate_user_id(id: &str) -> Result<(), text::Invalid> {
    text::check("userId", id, text::ID)
}

/// Instance (device) ids: as user ids.
pub fn validate_instance_id(id: &str) -> Result<(), text::Invalid> {
    text::check("instanceId", id, text::ID)
}

/// An instance id a client gives (`field`: the handshake's `instanceId`,
/// REST's `X-Instance-Id`): as [`validate_instance_id`], and not the one
/// the server's TTL expiry writes with, whose removals name the version
/// they expired (a client removing as it would hide its value's base).
pub fn validate_client_instance_id(field: &str, id: &str) -> Result<(), text::Invalid> {
    text::check(field, id, text::ID)?;
    if id == super::plan::EXPIRY_INSTANCE {
        return Err(text::Invalid::new(
            field,
            format!("{id} is the server's own instance id (TTL expiry); choose another"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn whitespace_between_tokens_is_not_stored_and_strings_keep_theirs() {
        let set = |body: &str| serde_json::from_str::<SetRequest>(body).unwrap();
        let pretty = set(
            "{\"value\": [1,\n  2, {\"a b\" :\t\"x \\\" y\"}],\r\n \"metadata\": { \"m\": 1e400 }}",
        );
        assert_eq!(pretty.value.get(), r#"[1,2,{"a b":"x \" y"}]"#);
        assert_eq!(pretty.metadata_text(), Some(r#"{"m":1e400}"#));
        // Numbers and duplicate keys stay as sent.
        let odd = set(r#"{"value": {"n": 123456789012345678901234567890, "n": 1}}"#);
        assert_eq!(
            odd.value.get(),
            r#"{"n":123456789012345678901234567890,"n":1}"#
        );
        assert_eq!(strip_whitespace(r#"{"a":"  "}"#), None);
    }

    #[test]
    fn nesting_depth_ignores_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(nesting_depth(r#"{"a":"[[[[{{{\"]]]"}"#), 1);
        assert_eq!(
            nesting_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))),
            100
        );
    }

    proptest::proptest! {
        /// The scan agrees with serde_json's own parse on any nesting it can parse.
        #[test]
        fn nesting_depth_matches_the_parse(depth in 0usize..100, wrap in proptest::bool::ANY) {
            let (open, close) = if wrap { ("[", "]") } else { ("{\"k\":", "}") };
            let text = format!("{}\"x\"{}", open.repeat(depth), close.repeat(depth));
            proptest::prop_assert_eq!(nesting_depth(&text), depth);
            proptest::prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), depth <= 127);
        }
    }

    use super::*;

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(validate_key("settings/theme").is_ok());
        assert!(validate_key("ключ🔑").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a\nb").is_err());
        assert!(validate_key("\u{7f}").is_err());
        assert!(validate_key(&"k".repeat(256)).is_ok());
        assert!(validate_key(&"k".repeat(257)).is_err());
        // 128 two-byte characters are 256 bytes; 129 are too many.
        assert!(validate_key(&"é".repeat(128)).is_ok());
        assert!(validate_key(&"é".repeat(129)).is_err());
    }

    #[test]
    fn metadata_must_be_an_object() {
        let req: SetRequest = serde_json::from_str(r#"{"value":1,"metadata":[1]}"#).unwrap();
        assert!(req.validate().is_err());
        let req: SetRequest = serde_json::from_str(r#"{"value":1,"metadata":{"a":1}}"#).unwrap();
        assert!(req.validate().is_ok());
        let req: SetRequest = serde_json::from_str(r#"{"value":null,"metadata":null}"#).unwrap();
        assert!(req.validate().is_ok() && req.metadata_text().is_none());
    }

    #[test]
    fn ttl_is_seconds_or_a_time() {
        assert_eq!(Ttl::Seconds(1.5).expires_at(1000).unwrap(), 2500);
        assert!(Ttl::Seconds(-1.0).expires_at(0).is_err());
        assert_eq!(
            Ttl::At("1970-01-01T00:00:02Z".into())
                .expires_at(0)
                .unwrap(),
            2000
        );
        assert!(Ttl::At("tomorrow".into()).expires_at(0).is_err());
    }
}
