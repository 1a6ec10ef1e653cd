//! Text that every database can store and compare: the one rule for every
//! string a client sends that reaches a query.
//!
//! PostgreSQL cannot hold NUL in text at all (the query fails, which was a
//! 500), and a control character in an id, a key or a name is never meant;
//! so every such field is checked here by the same rule as item keys:
//! bounded length in bytes, no control characters. A refusal names the
//! field, and the edge turns it into its own code (`INVALID_KEY`,
//! `INVALID_BODY`, `INVALID_QUERY`, `INVALID_HANDSHAKE`) with
//! `details.field`. Values that are only recorded, never looked up (a
//! device's User-Agent, analytics dimensions), are [`sanitize`]d instead of
//! refused: a header the client cannot easily change should not lock it out.
//!
//! Nothing here trims or folds case: ids and keys compare byte-exactly on
//! all three databases (MariaDB through a NO PAD collation), so `alice` and
//! `alice ` are two users and `a` and `a ` two keys.
//!
//! A leaf module: it imports nothing of the crate but the error type.

use std::fmt;

/// How long a value may be, and whether it may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Most bytes of UTF-8 (the columns are at most this many characters,
    /// and a character is at least one byte).
    pub max_bytes: usize,
    pub may_be_empty: bool,
}

/// User ids, instance ids, key ids, conflict ids, names: `VARCHAR(255)`.
pub const ID: Rule = Rule {
    max_bytes: 255,
    may_be_empty: false,
};
/// Item keys: `VARCHAR(256)`.
pub const KEY: Rule = Rule {
    max_bytes: 256,
    may_be_empty: false,
};
/// A key prefix: a key that may be empty.
pub const PREFIX: Rule = Rule {
    max_bytes: 256,
    may_be_empty: true,
};
/// Short labels: `compressionType`, `encryptionType` (`VARCHAR(64)`).
pub const LABEL: Rule = Rule {
    max_bytes: 64,
    may_be_empty: true,
};
/// One tag of an item.
pub const TAG: Rule = Rule {
    max_bytes: 128,
    may_be_empty: false,
};
/// One entry of a key's restriction list (an IP, a country, a domain, a
/// User-Agent pattern).
pub const RESTRICTION: Rule = Rule {
    max_bytes: 512,
    may_be_empty: false,
};

/// A refused value: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.reason)
    }
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.to_string()
    }
}

/// Checks `value` of `field` against `rule`.
pub fn check(field: &str, value: &str, rule: Rule) -> Result<(), Invalid> {
    if value.is_empty() && !rule.may_be_empty {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > rule.max_bytes {
        return Err(Invalid::new(
            field,
            format!(
                "is {} bytes, over the limit of {}",
                value.len(),
                rule.max_bytes
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must not contain control characters (NUL included)",
        ));
    }
    Ok(())
}

/// Checks every entry of a list field.
pub fn check_all<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a String>,
    rule: Rule,
) -> Result<(), Invalid> {
    values.into_iter().try_for_each(|v| check(field, v, rule))
}

/// A value to record, made storable: control characters become U+FFFD and
/// at most `max_chars` characters are kept.
pub fn sanitize(value: &str, max_chars: usize) -> String {
    value
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Whether every `%` of a raw URI path or query starts an escape of two hex
/// digits. axum and `form_urlencoded` pass `%ZZ` through as the text
/// `%ZZ`, so `PUT /item/a%ZZ` stored the key `a%ZZ`; the edges check the
/// raw text with this first. (Invalid UTF-8 once decoded is refused by the
/// decoders themselves.)
pub fn well_encoded(raw: &str) -> Result<(), &'static str> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|b| *b == b'%') {
        let start = i + at;
        let hex = |k: usize| bytes.get(start + k).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(1) && hex(2)) {
            return Err("has a '%' that is not followed by two hex digits");
        }
        i = start + 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nul_and_other_control_characters_are_refused_with_the_field() {
        let e = check("compressionType", "gz\0ip", LABEL).unwrap_err();
        assert_eq!(e.field, "compressionType");
        assert!(check("name", "a\u{7f}", ID).is_err());
        assert!(check("name", "a\u{85}", ID).is_err(), "C1 controls too");
        assert!(check("name", "tab\there", ID).is_err());
    }

    #[test]
    fn spaces_and_case_are_kept_not_refused() {
        // Byte-exact ids: a trailing space is a different id, not an error.
        assert!(check("userId", "alice ", ID).is_ok());
        assert!(check("key", " a ", KEY).is_ok());
        assert!(check("key", "ключ🔑", KEY).is_ok());
    }

    #[test]
    fn bounds_are_bytes() {
        assert!(check("key", &"é".repeat(128), KEY).is_ok());
        assert!(check("key", &"é".repeat(129), KEY).is_err());
        assert!(check("key", "", KEY).is_err());
        assert!(check("prefix", "", PREFIX).is_ok());
    }

    #[test]
    fn errors_carry_the_field_and_the_edge_code() {
        let e = check("encryptionType", "\0", LABEL).unwrap_err().body();
        assert_eq!(e.code(), "INVALID_BODY");
        assert_eq!(e.details()["field"], "encryptionType");
        let e = check("key", "", KEY).unwrap_err().key();
        assert_eq!((e.code(), e.status().as_u16()), ("INVALID_KEY", 400));
    }

    #[test]
    fn percent_escapes_need_two_hex_digits() {
        assert!(well_encoded("/api/v1/sync-storage/item/a%2Fb%c3%A9").is_ok());
        assert!(well_encoded("/item/a%ZZ").is_err());
        assert!(well_encoded("/item/a%2").is_err());
        assert!(well_encoded("/item/a%").is_err());
        assert!(well_encoded("prefix=100%25&x=%G1").is_err());
        assert!(well_encoded("plain").is_ok());
    }

    #[test]
    fn sanitize_replaces_controls_and_bounds_characters() {
        assert_eq!(sanitize("curl/8\0x", 100), "curl/8\u{fffd}x");
        assert_eq!(sanitize("ééé", 2), "éé");
    }

    proptest! {
        /// Whatever goes in, what comes out passes the rule.
        #[test]
        fn sanitized_text_always_checks(s in "\\PC*|[\\x00-\\x20a]{0,40}") {
            let clean = sanitize(&s, 64);
            prop_assert!(clean.chars().count() <= 64);
            let rule = Rule { max_bytes: 64 * 4, may_be_empty: true };
            prop_assert!(check("x", &clean, rule).is_ok());
        }

        /// A string made only of valid escapes and unreserved text passes.
        #[test]
        fn valid_escapes_pass(parts in proptest::collection::vec("[a-z/]{0,3}|%[0-9a-fA-F]{2}", 0..10)) {
            prop_assert!(well_encoded(&parts.concat()).is_ok());
        }
    }
}
