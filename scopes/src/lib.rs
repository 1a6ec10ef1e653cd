//! The one list of API-key scopes.
//!
//! It lives in a crate of its own because two crates must agree on it and
//! neither should depend on the other: the data plane (`syncstore`, which
//! checks scopes on every request) and the CRD types (`syncstore-crds`,
//! whose `ApiKey.spec.scopes` enum is generated from [`Scope::ALL`]). A
//! scope added here is accepted by `kubectl apply` and honoured by the data
//! plane in the same release; a scope the data plane does not know cannot
//! be written into an ApiKey.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A permission an API key (or token) carries. `admin` implies all others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Reading the key owner's items.
    #[serde(rename = "read")]
    Read,
    /// Writing the key owner's items.
    #[serde(rename = "write")]
    Write,
    /// Everything, including every user's data.
    #[serde(rename = "admin")]
    Admin,
    /// Reading every user's analytics.
    #[serde(rename = "analytics:read")]
    AnalyticsRead,
    /// Minting user tokens (JWTs) for an app's backend.
    #[serde(rename = "tokens:issue")]
    TokensIssue,
    /// Managing keys through the REST API.
    #[serde(rename = "keys:manage")]
    KeysManage,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Read,
        Scope::Write,
        Scope::Admin,
        Scope::AnalyticsRead,
        Scope::TokensIssue,
        Scope::KeysManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::AnalyticsRead => "analytics:read",
            Scope::TokensIssue => "tokens:issue",
            Scope::KeysManage => "keys:manage",
        }
    }

    /// Parses a JSON array (`["read","write"]`, the seed's form) or a
    /// comma-separated list (`read,write`), dropping duplicates.
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, String> {
        let text = text.trim();
        let names: Vec<String> = if text.starts_with('[') {
            serde_json::from_str(text).map_err(|e| format!("invalid JSON array of scopes: {e}"))?
        } else {
            text.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let mut scopes = Vec::new();
        for name in names {
            let scope: Scope = name.parse()?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            format!("unknown scope '{s}': expected read, write, admin, analytics:read, tokens:issue or keys:manage")
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_parse_in_both_forms() {
        assert_eq!(
            Scope::parse_list(r#"["read", "write"]"#).unwrap(),
            vec![Scope::Read, Scope::Write]
        );
        assert_eq!(
            Scope::parse_list("read, tokens:issue,read").unwrap(),
            vec![Scope::Read, Scope::TokensIssue]
        );
        assert!(Scope::parse_list("read,root").is_err());
        assert!(Scope::parse_list("[read]").is_err());
    }
}
