//! Masks credentials in log lines, whoever wrote them.
//!
//! The first defence is not to log secrets at all: statement logging is off
//! on the operator's secret-bearing connections, and the transport crates'
//! frame dumps are capped (see [`super::init`]). This is the second: every
//! formatted line passes through [`Redactor::redact`] before it is written,
//! so a secret that a dependency, a future log line or an explicit
//! `LOG_LEVEL` directive lets through is masked all the same.
//!
//! Pure: a line in, the line with its credentials replaced by `***` out.

use std::borrow::Cow;

use regex::Regex;

/// The replacement for every masked secret.
pub const MASK: &str = "***";

/// Names under which credentials travel: JSON fields (the Socket.IO
/// handshake's `auth`), header names in debug output, query parameters
/// (`?apiKey=`) and structured log fields.
const FIELDS: &str = r"api[_-]?key|x-api-key|access[_-]?token|refresh[_-]?token|id[_-]?token|token|password|passwd|secret|authorization|cookie";

/// An ANSI colour code, as the text log format writes around field names.
const ANSI: &str = r"\x1b\[[0-9;]*m";

/// Compiled rules. Cheap to share; build once per process.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Exact values known to be secret (the bootstrap key, JWT secrets).
    known: Vec<String>,
    rules: Vec<(Regex, String)>,
}

impl Redactor {
    /// Masks API keys that start with `key_prefix` (`API_KEY_TOKEN_PREFIX`;
    /// an empty prefix cannot be recognised and is skipped), `known`
    /// values, and the shapes every deployment shares: JWTs, `Bearer`
    /// credentials, passwords in URLs and SQL literals, and any value under
    /// a credential's name.
    pub fn new(key_prefix: &str, known: impl IntoIterator<Item = String>) -> Self {
        let mut known: Vec<String> = known.into_iter().filter(|s| s.len() >= 8).collect();
        // Longest first, so a secret containing another is masked whole.
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut rules: Vec<(String, String)> = vec![
            // scheme://user:password@host
            (
                r#"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s"']*:)[^@\s"'/]+@"#.into(),
                "${1}***@".into(),
            ),
            // CREATE/ALTER ROLE … PASSWORD '…', IDENTIFIED BY '…'
            (
                r"(?i)\b(password|identified\s+by)(\s*)'(?:[^'\\]|''|\\.)*'".into(),
                "$1$2'***'".into(),
            ),
            (
                r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+".into(),
                "$1$2***".into(),
            ),
            // JWTs (our access and refresh tokens, identity providers').
            (
                r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*".into(),
                "eyJ***".into(),
            ),
        ];
        if !key_prefix.is_empty() {
            rules.push((
                format!(r"{}[A-Za-z0-9_-]{{6,}}", regex::escape(key_prefix)),
                format!("{}{MASK}", key_prefix.replace('$', "$$")),
            ));
        }
        // "apiKey":"…" in JSON, also inside an escaped JSON string (\"…\").
        rules.push((
            format!(r#"(?i)(\\*"(?:{FIELDS})\\*"\s*:\s*\\*")[^"\\]+"#),
            "${1}***".into(),
        ));
        // apiKey=… in a query string or a structured log field (which the
        // text format may colour: ANSI codes around the `=`).
        rules.push((
            format!(r#"(?i)((?:\b|{ANSI})(?:{FIELDS})(?:{ANSI})*=(?:{ANSI})*(?:\\*")?)[^&\s"',;\\)\]\x1b]+"#),
            "${1}***".into(),
        ));
        let rules = rules
            .into_iter()
            .map(|(pattern, with)| {
                let re = Regex::new(&pattern).expect("redaction patterns are valid");
                (re, with)
            })
            .collect();
        Self { known, rules }
    }

    /// `line` with every credential replaced by [`MASK`].
    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for secret in &self.known {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        for (re, with) in &self.rules {
            if let Cow::Owned(replaced) = re.replace_all(&out, with.as_str()) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn redactor() -> Redactor {
        Redactor::new("sk_live_", ["bootstrap-key-without-prefix".to_string()])
    }

    const KEY: &str = "sk_live_AbCdEf0123456789_-xyzXYZ0123456789abcdefg";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn the_leaks_of_the_report_are_masked() {
        let r = redactor();
        let cases = [
            // socketioxide's debug of the CONNECT packet and its auth.
            format!(r#"Packet: Packet {{ inner: Connect(Some(Str("{{\"apiKey\":\"{KEY}\"}}"))), ns: "/sync" }}"#),
            format!(r#"auth: Some(Str("{{\"token\":\"{JWT}\"}}", None))"#),
            // engine.io / tungstenite message text.
            format!(r#"Received message 40/sync,{{"apiKey":"{KEY}"}}"#),
            // The handshake URL with the key as a query parameter.
            format!("GET /socket.io/?EIO=4&transport=websocket&apiKey={KEY}&userId=u"),
            // Headers in debug output.
            format!(r#"{{"x-api-key": "{KEY}", "authorization": "Bearer {JWT}"}}"#),
            // sqlx statement logging of the operator's provisioning.
            "summary=\"ALTER ROLE \\\"ss_a\\\" WITH …\" db.statement=ALTER ROLE \"ss_a\" WITH LOGIN PASSWORD 'Zq8pLm2Xw9Rt4Yv6'".to_string(),
            "CREATE USER IF NOT EXISTS 'ss_a'@'%' IDENTIFIED BY 'Zq8pLm2Xw9Rt4Yv6'".to_string(),
            "cannot connect to postgres://admin:Zq8pLm2Xw9Rt4Yv6@db:5432/app".to_string(),
            // Token bodies and structured fields.
            format!(r#"{{"accessToken":"{JWT}","refreshToken":"{JWT}","expiresIn":900}}"#),
            "refresh_token=opaque-refresh-value password=\"Zq8pLm2Xw9Rt4Yv6\"".to_string(),
            // A coloured structured field of the text format.
            "\x1b[3mpassword\x1b[0m\x1b[2m=\x1b[0m\"Zq8pLm2Xw9Rt4Yv6\"".to_string(),
            "started with bootstrap-key-without-prefix".to_string(),
        ];
        for line in cases {
            let out = r.redact(&line);
            for secret in [
                KEY,
                JWT,
                "Zq8pLm2Xw9Rt4Yv6",
                "opaque-refresh-value",
                "bootstrap-key-without-prefix",
                "AbCdEf0123456789",
            ] {
                assert!(!out.contains(secret), "{secret} survived in {out}");
            }
            assert!(out.contains(MASK), "{out}");
        }
    }

    #[test]
    fn ordinary_lines_are_left_alone() {
        let r = redactor();
        for line in [
            "request done status=200 route=/api/v1/sync-storage/item/{*key}",
            "API key restriction denied key_id=0190ab ip=Some(203.0.113.9) code=IP_NOT_ALLOWED",
            "scopes read,write,tokens:issue",
            "sk_live_ is the default prefix",
        ] {
            assert_eq!(r.redact(line), line);
        }
        // The shape is kept, so an operator still sees what was presented.
        assert_eq!(r.redact(&format!("key={KEY}")), "key=sk_live_***");
    }

    proptest! {
        /// A generated key (prefix + base64url) never survives, wherever it
        /// stands in a line.
        #[test]
        fn generated_keys_never_survive(
            body in "[A-Za-z0-9_-]{43}",
            before in "[ -~]{0,20}",
            after in "[ -~]{0,20}",
        ) {
            let key = format!("sk_live_{body}");
            let line = format!("{before}{key}{after}");
            let out = redactor().redact(&line);
            prop_assert!(!out.contains(&body), "{}", out);
        }

        /// So does a JWT-shaped token.
        #[test]
        fn jwts_never_survive(
            payload in "[A-Za-z0-9_-]{8,60}",
            signature in "[A-Za-z0-9_-]{16,60}",
            before in "[ -~]{0,20}",
        ) {
            let token = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.{signature}");
            let line = format!("{before}{token}");
            let out = redactor().redact(&line);
            prop_assert!(!out.contains(&signature), "{}", out);
        }
    }
}
