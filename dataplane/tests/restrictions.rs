//! API key restrictions over REST, each allowed and denied.

mod common;

use common::{send, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// (name, key, request headers, expected (status, code)).
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    (StatusCode, String),
);

async fn status(
    http: &Client,
    server: &Server,
    key: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = http
        .get(server.url("/api/v1/sync-storage/keys"))
        .header("X-API-Key", key);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (s, body) = send(req).await;
    (s, body["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn every_restriction_allows_and_denies_with_its_own_code() {
    let server = Server::start(&[
        ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ("GEOIP_COUNTRY_HEADER", "X-Country"),
    ])
    .await;
    let http = Client::new();
    let ip_key = server.create_key("r", &["--ip", "203.0.113.0/24,2001:db8::/32"]);
    let country_key = server.create_key("r", &["--country", "GB,SE"]);
    let domain_key = server.create_key("r", &["--domain", "*.example.com,example.org"]);
    let ua_key = server.create_key("r", &["--user-agent", "^MyApp/[0-9]"]);
    let ok = (StatusCode::OK, String::new());
    let denied = |code: &str| (StatusCode::FORBIDDEN, code.to_string());
    let cases: Vec<Case> = vec![
        (
            "ip v4 in range",
            &ip_key,
            vec![("X-Forwarded-For", "203.0.113.7")],
            ok.clone(),
        ),
        (
            "ip v6 in range",
            &ip_key,
            vec![("X-Forwarded-For", "2001:db8::1")],
            ok.clone(),
        ),
        (
            "ip out of range",
            &ip_key,
            vec![("X-Forwarded-For", "198.51.100.1")],
            denied("IP_NOT_ALLOWED"),
        ),
        ("ip unknown", &ip_key, vec![], denied("IP_NOT_ALLOWED")),
        (
            "country allowed",
            &country_key,
            vec![("X-Country", "gb")],
            ok.clone(),
        ),
        (
            "country denied",
            &country_key,
            vec![("X-Country", "FR")],
            denied("COUNTRY_NOT_ALLOWED"),
        ),
        (
            "country unknown",
            &country_key,
            vec![],
            denied("COUNTRY_NOT_ALLOWED"),
        ),
        (
            "subdomain origin",
            &domain_key,
            vec![("Origin", "https://app.example.com")],
            ok.clone(),
        ),
        (
            "exact referer",
            &domain_key,
            vec![("Referer", "https://example.org/page")],
            ok.clone(),
        ),
        (
            "bare domain is not a subdomain",
            &domain_key,
            vec![("Origin", "https://example.com")],
            denied("DOMAIN_NOT_ALLOWED"),
        ),
        (
            "lookalike domain",
            &domain_key,
            vec![("Origin", "https://badexample.com")],
            denied("DOMAIN_NOT_ALLOWED"),
        ),
        (
            "no origin",
            &domain_key,
            vec![],
            denied("DOMAIN_NOT_ALLOWED"),
        ),
        (
            "user agent matches",
            &ua_key,
            vec![("User-Agent", "MyApp/3 (Android)")],
            ok.clone(),
        ),
        (
            "user agent does not",
            &ua_key,
            vec![("User-Agent", "curl/8")],
            denied("USER_AGENT_NOT_ALLOWED"),
        ),
    ];
    for (name, key, headers, want) in cases {
        assert_eq!(status(&http, &server, key, &headers).await, want, "{name}");
    }
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in [
        "IP_NOT_ALLOWED",
        "COUNTRY_NOT_ALLOWED",
        "DOMAIN_NOT_ALLOWED",
        "USER_AGENT_NOT_ALLOWED",
    ] {
        assert!(
            metrics.contains(&format!("syncstore_auth_denials_total{{code=\"{code}\"}}")),
            "{code} is counted"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let server = Server::start(&[("GEOIP_COUNTRY_HEADER", "X-Country")]).await;
    let http = Client::new();
    let ip_key = server.create_key("r", &["--ip", "203.0.113.0/24"]);
    let country_key = server.create_key("r", &["--country", "GB"]);
    assert_eq!(
        status(
            &http,
            &server,
            &ip_key,
            &[("X-Forwarded-For", "203.0.113.7")]
        )
        .await
        .1,
        "IP_NOT_ALLOWED"
    );
    assert_eq!(
        status(&http, &server, &country_key, &[("X-Country", "GB")])
            .await
            .1,
        "COUNTRY_NOT_ALLOWED"
    );
    let loopback = server.create_key("r", &["--ip", "127.0.0.0/8"]);
    assert_eq!(
        status(&http, &server, &loopback, &[]).await.0,
        StatusCode::OK
    );
}

#[test]
fn invalid_restrictions_are_refused_when_the_key_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["--ip", "10.0.0.0/33"],
        ["--country", "GBR"],
        ["--user-agent", "("],
    ] {
        let out = std::process::Command::new(common::binary())
            .env_clear()
            .env("SYNCSTORE_DATA_DIR", dir.path())
            .args(["keys", "create", "--name", "n", "--user", "u"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}

#[tokio::test]
async fn countries_come_from_the_maxmind_database() {
    let db = std::env::var("TEST_GEOIP_DB")
        .unwrap_or_else(|_| "/var/cache/syncstore/geoip/GeoLite2-Country-Test.mmdb".into());
    assert!(
        std::path::Path::new(&db).is_file(),
        "{db} missing: scripts/geoip-testdb.sh fetches it"
    );
    let server =
        Server::start(&[("GEOIP_DB_PATH", &db), ("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let http = Client::new();
    let gb_only = server.create_key("r", &["--country", "GB"]);
    // 81.2.69.160/27 is GB and 89.160.20.112/28 is SE in the test database.
    assert_eq!(
        status(
            &http,
            &server,
            &gb_only,
            &[("X-Forwarded-For", "81.2.69.161")]
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &http,
            &server,
            &gb_only,
            &[("X-Forwarded-For", "89.160.20.113")]
        )
        .await
        .1,
        "COUNTRY_NOT_ALLOWED"
    );
    // An address the database does not know is denied.
    assert_eq!(
        status(
            &http,
            &server,
            &gb_only,
            &[("X-Forwarded-For", "192.0.2.1")]
        )
        .await
        .1,
        "COUNTRY_NOT_ALLOWED"
    );
}

/// Issue 13, item 5: behind `TRUSTED_PROXIES=127.0.0.1/32`, a key allowed
/// only from 198.51.100.0/24, and forwarding headers as real proxies (and
/// attackers) write them. Each case names what it proves.
#[tokio::test]
async fn forwarding_headers_are_read_as_real_proxies_write_them() {
    let server = Server::start(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let http = Client::new();
    let key = server.create_key("r", &["--ip", "198.51.100.0/24"]);
    let ok = (StatusCode::OK, String::new());
    let denied = (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED".to_string());
    let xff = "X-Forwarded-For";
    let cases: Vec<Case> = vec![
        // The bypasses of the report: the proxy's right-most entry decides.
        (
            "ip:port hop",
            &key,
            vec![(xff, "198.51.100.7, 203.0.113.9:4711")],
            denied.clone(),
        ),
        (
            "[v6]:port hop",
            &key,
            vec![(xff, "198.51.100.7, [2001:db8::9]:4711")],
            denied.clone(),
        ),
        (
            "unknown hop",
            &key,
            vec![(xff, "198.51.100.7, unknown")],
            denied.clone(),
        ),
        (
            "garbage hop",
            &key,
            vec![(xff, "198.51.100.7, not-an-ip")],
            denied.clone(),
        ),
        (
            "two lines are one list",
            &key,
            vec![(xff, "198.51.100.7"), (xff, "203.0.113.9")],
            denied.clone(),
        ),
        (
            "two lines, the allowed one last",
            &key,
            vec![(xff, "203.0.113.9"), (xff, "198.51.100.7:4711")],
            ok.clone(),
        ),
        (
            "IPv4-mapped IPv6 is IPv4",
            &key,
            vec![(xff, "::ffff:198.51.100.5")],
            ok.clone(),
        ),
        // RFC 7239 Forwarded.
        (
            "Forwarded",
            &key,
            vec![("Forwarded", "for=198.51.100.7;proto=https")],
            ok.clone(),
        ),
        (
            "Forwarded, quoted with a port",
            &key,
            vec![("Forwarded", "for=203.0.113.1, for=\"198.51.100.7:4711\"")],
            ok.clone(),
        ),
        (
            "Forwarded, client element first",
            &key,
            vec![("Forwarded", "for=198.51.100.7, for=\"[2001:db8::9]:4711\"")],
            denied.clone(),
        ),
        (
            "Forwarded, two lines",
            &key,
            vec![
                ("Forwarded", "for=198.51.100.7"),
                ("Forwarded", "for=203.0.113.9"),
            ],
            denied.clone(),
        ),
        (
            "Forwarded, obfuscated client",
            &key,
            vec![("Forwarded", "for=198.51.100.7, for=_hidden")],
            denied.clone(),
        ),
        // Both headers: known only when they agree.
        (
            "both headers agree",
            &key,
            vec![(xff, "198.51.100.7"), ("Forwarded", "for=198.51.100.7")],
            ok.clone(),
        ),
        (
            "a client-written Forwarded beside the proxy's X-Forwarded-For",
            &key,
            vec![(xff, "203.0.113.9"), ("Forwarded", "for=198.51.100.7")],
            denied.clone(),
        ),
    ];
    for (name, key, headers, want) in cases {
        assert_eq!(status(&http, &server, key, &headers).await, want, "{name}");
    }

    // The audit trail records the resolved client, not the proxy. Entries
    // are written in batches, so wait for them.
    let admin = server.create_key("admin", &["--scopes", "read,admin"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ips = loop {
        let entries = http
            .get(server.url("/api/v1/audit?action=auth.denied&limit=100"))
            .header("X-API-Key", &admin)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let ips: Vec<String> = entries["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["ip"].as_str().map(str::to_owned))
            .collect();
        if ips.iter().any(|ip| ip == "2001:db8::9") || std::time::Instant::now() > deadline {
            break ips;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ips.iter().any(|ip| ip == "203.0.113.9"), "{ips:?}");
    assert!(ips.iter().any(|ip| ip == "2001:db8::9"), "{ips:?}");
    assert!(!ips.iter().any(|ip| ip == "127.0.0.1"), "{ips:?}");
}
