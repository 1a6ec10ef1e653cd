//! API key restrictions: client IP (and CIDR), country, Origin/Referer
//! domain and User-Agent pattern. Parsed and compiled once per key (the key
//! cache holds the result); checked in one place for REST and Socket.IO.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use super::client_addr;
use crate::error::ApiError;

/// A key's compiled restrictions. Empty lists restrict nothing.
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    ips: Vec<IpNet>,
    countries: Vec<String>,
    domains: Vec<String>,
    user_agents: Vec<Regex>,
}

/// What is known about the caller of one request.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    /// ISO 3166 alpha-2, upper case.
    pub country: Option<String>,
    /// The host of Origin, or else of Referer.
    pub domain: Option<String>,
    pub user_agent: Option<String>,
}

fn list(json: Option<&str>) -> Result<Vec<String>, String> {
    match json.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Vec::new()),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("not a JSON array of strings: {e}"))
        }
    }
}

impl Restrictions {
    /// Parses the seed's JSON-array columns.
    pub fn parse(
        ips: Option<&str>,
        countries: Option<&str>,
        domains: Option<&str>,
        user_agents: Option<&str>,
    ) -> Result<Self, String> {
        Self::from_lists(
            &list(ips)?,
            &list(countries)?,
            &list(domains)?,
            &list(user_agents)?,
        )
    }

    /// Compiles (and so validates) restriction lists as written.
    pub fn from_lists(
        ips: &[String],
        countries: &[String],
        domains: &[String],
        user_agents: &[String],
    ) -> Result<Self, String> {
        Ok(Restrictions {
            ips: ips
                .iter()
                .map(|p| {
                    p.parse::<IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                        // Client addresses are canonical (IPv4-mapped IPv6
                        // is IPv4), so the networks they are matched to are too.
                        .map(client_addr::canonical_net)
                        .map_err(|_| format!("invalid IP or CIDR '{p}'"))
                })
                .collect::<Result<_, _>>()?,
            countries: countries
                .iter()
                .map(|c| {
                    let c = c.trim().to_ascii_uppercase();
                    if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()) {
                        Ok(c)
                    } else {
                        Err(format!("invalid ISO 3166 country code '{c}'"))
                    }
                })
                .collect::<Result<_, _>>()?,
            domains: domains
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .collect(),
            user_agents: user_agents
                .iter()
                .map(|p| {
                    Regex::new(p).map_err(|e| {
                        format!("invalid user-agent pattern '{p}': {}", regex_problem(&e))
                    })
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// The compiled lists: IPs, countries, domains, User-Agent patterns.
    pub(super) fn lists(&self) -> (&[IpNet], &[String], &[String], &[Regex]) {
        (&self.ips, &self.countries, &self.domains, &self.user_agents)
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
            && self.countries.is_empty()
            && self.domains.is_empty()
            && self.user_agents.is_empty()
    }

    /// Allows or denies `caller`, with the denial's own code. Anything a
    /// restriction needs that is unknown (no Origin, no country) is denied.
    pub fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        if !self.ips.is_empty()
            && !caller
                .ip
                .is_some_and(|ip| self.ips.iter().any(|net| net.contains(&ip)))
        {
            return Err(ApiError::Restricted {
                code: "IP_NOT_ALLOWED",
                what: "this IP address",
            });
        }
        if !self.countries.is_empty()
            && !caller
                .country
                .as_ref()
                .is_some_and(|c| self.countries.iter().any(|a| a.eq_ignore_ascii_case(c)))
        {
            return Err(ApiError::Restricted {
                code: "COUNTRY_NOT_ALLOWED",
                what: "this country",
            });
        }
        if !self.domains.is_empty()
            && !caller
                .domain
                .as_deref()
                .is_some_and(|d| self.domains.iter().any(|p| domain_matches(p, d)))
        {
            return Err(ApiError::Restricted {
                code: "DOMAIN_NOT_ALLOWED",
                what: "this origin",
            });
        }
        if !self.user_agents.is_empty()
            && !caller
                .user_agent
                .as_deref()
                .is_some_and(|ua| self.user_agents.iter().any(|re| re.is_match(ua)))
        {
            return Err(ApiError::Restricted {
                code: "USER_AGENT_NOT_ALLOWED",
                what: "this user agent",
            });
        }
        Ok(())
    }
}

/// `example.com` matches only itself; `*.example.com` matches any subdomain
/// (not the bare domain, and not `badexample.com`).
pub fn domain_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => host == pattern,
    }
}

/// The host of an Origin or Referer header value.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..])?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// What a request's headers and peer say about its caller. The client
/// address follows [`client_addr::resolve`]; the country header is believed
/// only from a trusted proxy, like the forwarding headers.
pub fn caller_from(
    headers: &axum::http::HeaderMap,
    peer: Option<IpAddr>,
    trusted: &[IpNet],
    country_header: Option<&str>,
) -> Caller {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let client = client_addr::resolve(peer, headers, trusted);
    Caller {
        ip: client.ip,
        country: country_header
            .filter(|_| client.via_trusted_proxy)
            .and_then(|name| last_value(headers, name))
            .map(str::to_ascii_uppercase),
        domain: header("origin")
            .or_else(|| header("referer"))
            .and_then(host_of),
        user_agent: header("user-agent").map(str::to_owned),
    }
}

/// The last value of a header a trusted proxy sets: its last line, and the
/// last of a comma-separated list. A proxy that appends its own value (as
/// HAProxy's `add-header` does) puts it after whatever the client sent, as
/// for `X-Forwarded-For`; one that overwrites leaves one value.
fn last_value<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    let line = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    line.rsplit(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What is wrong with a pattern, in one line: the regex crate's syntax
/// errors span several lines (the pattern, a caret under the fault, then
/// `error: unclosed group`), which an API error or a status condition
/// would show broken up.
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bad_user_agent_pattern_is_one_line() {
        let Err(e) = Restrictions::from_lists(&[], &[], &[], &["(unclosed".into()]) else {
            panic!("a pattern that does not compile is refused");
        };
        assert_eq!(e, "invalid user-agent pattern '(unclosed': unclosed group");
    }

    fn r(ips: &str, countries: &str, domains: &str, uas: &str) -> Restrictions {
        fn opt(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        Restrictions::parse(opt(ips), opt(countries), opt(domains), opt(uas)).unwrap()
    }

    fn code(result: Result<(), ApiError>) -> Option<&'static str> {
        result.err().map(|e| e.code())
    }

    #[test]
    fn each_restriction_allows_and_denies_with_its_code() {
        let caller = Caller {
            ip: "10.1.2.3".parse().ok(),
            country: Some("GB".into()),
            domain: Some("app.example.com".into()),
            user_agent: Some("MyApp/2.1 (iOS)".into()),
        };
        assert!(r("", "", "", "").check(&caller).is_ok());
        assert!(r(
            r#"["10.0.0.0/8"]"#,
            r#"["gb","SE"]"#,
            r#"["*.example.com"]"#,
            r#"["^MyApp/"]"#
        )
        .check(&caller)
        .is_ok());
        assert_eq!(
            code(r(r#"["192.168.0.0/16","::1"]"#, "", "", "").check(&caller)),
            Some("IP_NOT_ALLOWED")
        );
        assert_eq!(
            code(r("", r#"["SE"]"#, "", "").check(&caller)),
            Some("COUNTRY_NOT_ALLOWED")
        );
        assert_eq!(
            code(r("", "", r#"["example.com"]"#, "").check(&caller)),
            Some("DOMAIN_NOT_ALLOWED")
        );
        assert_eq!(
            code(r("", "", "", r#"["^Other"]"#).check(&caller)),
            Some("USER_AGENT_NOT_ALLOWED")
        );
        // Unknown facts are denied when a restriction needs them.
        let unknown = Caller::default();
        assert_eq!(
            code(r("", r#"["GB"]"#, "", "").check(&unknown)),
            Some("COUNTRY_NOT_ALLOWED")
        );
        assert_eq!(
            code(r("", "", r#"["example.com"]"#, "").check(&unknown)),
            Some("DOMAIN_NOT_ALLOWED")
        );
        assert_eq!(
            code(r(r#"["10.0.0.1"]"#, "", "", "").check(&unknown)),
            Some("IP_NOT_ALLOWED")
        );
    }

    #[test]
    fn ipv6_cidrs_match() {
        let caller = Caller {
            ip: "2001:db8::42".parse().ok(),
            ..Caller::default()
        };
        assert!(r(r#"["2001:db8::/32"]"#, "", "", "").check(&caller).is_ok());
        assert!(r(r#"["2001:db9::/32"]"#, "", "", "")
            .check(&caller)
            .is_err());
    }

    #[test]
    fn bad_restrictions_are_refused_at_parse() {
        assert!(Restrictions::parse(Some(r#"["10.0.0.0/33"]"#), None, None, None).is_err());
        assert!(Restrictions::parse(None, Some(r#"["GBR"]"#), None, None).is_err());
        assert!(Restrictions::parse(None, None, None, Some(r#"["("]"#)).is_err());
        assert!(Restrictions::parse(Some("not json"), None, None, None).is_err());
    }

    #[test]
    fn wildcard_domains_match_subdomains_only() {
        assert!(domain_matches("*.example.com", "a.example.com"));
        assert!(domain_matches("*.example.com", "a.b.example.com"));
        assert!(!domain_matches("*.example.com", "example.com"));
        assert!(!domain_matches("*.example.com", "badexample.com"));
        assert!(domain_matches("example.com", "EXAMPLE.com."));
    }

    #[test]
    fn hosts_come_from_origin_or_referer_urls() {
        assert_eq!(
            host_of("https://App.Example.com:8443").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            host_of("https://user@x.io/path?q#f").as_deref(),
            Some("x.io")
        );
        assert_eq!(host_of("http://[::1]:3000/").as_deref(), Some("::1"));
        assert_eq!(host_of("null"), Some("null".into()));
    }

    #[test]
    fn the_country_header_is_believed_only_from_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-country", "gb".parse().unwrap());
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let proxied = caller_from(&h, "10.0.0.5".parse().ok(), &trusted, Some("x-country"));
        assert_eq!(proxied.country.as_deref(), Some("GB"));
        assert_eq!(proxied.ip, "203.0.113.9".parse().ok());
        let direct = caller_from(&h, "198.51.100.1".parse().ok(), &trusted, Some("x-country"));
        assert_eq!(direct.country, None);
        assert_eq!(direct.ip, "198.51.100.1".parse().ok());
        // A proxy that appends: its value, not the client's, counts.
        h.append("x-country", "fr".parse().unwrap());
        let appended = caller_from(&h, "10.0.0.5".parse().ok(), &trusted, Some("x-country"));
        assert_eq!(appended.country.as_deref(), Some("FR"));
        h.insert("x-country", "GB, SE".parse().unwrap());
        let listed = caller_from(&h, "10.0.0.5".parse().ok(), &trusted, Some("x-country"));
        assert_eq!(listed.country.as_deref(), Some("SE"));
    }

    #[test]
    fn mapped_restrictions_match_canonical_callers() {
        let caller = Caller {
            ip: "203.0.113.5".parse().ok(),
            ..Caller::default()
        };
        assert!(r(r#"["::ffff:203.0.113.0/120"]"#, "", "", "")
            .check(&caller)
            .is_ok());
    }

    proptest! {
        #[test]
        fn an_ip_is_allowed_exactly_when_a_cidr_contains_it(a in any::<u8>(), b in any::<u8>(), prefix in 8u8..=32) {
            let ip: IpAddr = format!("10.{a}.{b}.1").parse().unwrap();
            let net: IpNet = format!("10.0.0.0/{prefix}").parse().unwrap();
            let rs = Restrictions { ips: vec![net], ..Restrictions::default() };
            let caller = Caller { ip: Some(ip), ..Caller::default() };
            prop_assert_eq!(rs.check(&caller).is_ok(), net.contains(&ip));
        }

        #[test]
        fn wildcard_never_matches_a_host_without_the_dot(label in "[a-z]{1,8}") {
            let glued = format!("{label}example.com");
            let dotted = format!("{label}.example.com");
            prop_assert!(!domain_matches("*.example.com", &glued));
            prop_assert!(domain_matches("*.example.com", &dotted));
        }
    }
}
