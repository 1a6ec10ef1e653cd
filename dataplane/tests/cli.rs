//! The `syncstore` command line: configuration errors, migrate, keys.

mod common;

use std::process::Command;

use common::{binary, mysql_url, postgres_url};

fn run(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("SYNCSTORE_DATA_DIR", dir.path())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run syncstore")
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("PORT", "abc"),
        ("MAX_ITEM_SIZE_KB", "-1"),
        ("DB_CONNECTION_LIMIT", "0"),
        ("LOG_FORMAT", "xml"),
        ("RATE_LIMIT_WINDOW_MS", "soon"),
        ("DATABASE_URL", "oracle://x"),
        ("JWT_SECRET", "short"),
        ("CONFLICT_DEFAULT_STRATEGY", "COIN_FLIP"),
        // A CA file for a Redis URL that does not use TLS.
        ("REDIS_TLS_CA_FILE", "/etc/hostname"),
    ] {
        let out = run(&[(var, value)], &["serve"]);
        assert_eq!(out.status.code(), Some(2), "{var}={value} exits 2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line for {var}: {stderr}"
        );
        assert!(stderr.contains(var), "the line names {var}: {stderr}");
    }
    // The flag form is checked the same way.
    let out = run(&[], &["serve", "--port", "99999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
}

/// A Redis server whose TLS certificate does not chain to
/// `REDIS_TLS_CA_FILE` is refused at start, naming the variable.
#[test]
fn a_redis_certificate_from_another_ca_is_refused_at_start() {
    let redis = common::redis::PrivateRedis::start_tls();
    let certs = common::redis::tls_certs();
    let url = redis.url().replace("rediss://", "rediss://app:s3cret@");
    let ca = format!("{certs}/other-ca.pem");
    let out = run(
        &[("REDIS_URL", &url), ("REDIS_TLS_CA_FILE", &ca)],
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("REDIS_URL (redis rediss://app:***@127.0.0.1:")
            && said.contains("invalid peer certificate: UnknownIssuer"),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "{said}");
}

/// A CA file whose PEM block is no certificate is refused at start naming
/// REDIS_TLS_CA_FILE (it was a connect error naming REDIS_URL), and a real
/// CA bundle passes that check.
#[test]
fn a_ca_file_that_is_no_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let junk = junk.to_string_lossy().to_string();
    let out = run(
        &[
            ("REDIS_URL", "rediss://127.0.0.1:1"),
            ("REDIS_TLS_CA_FILE", &junk),
        ],
        &["serve"],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "REDIS_TLS_CA_FILE: {junk} holds a certificate (#1) that is not valid X.509"
        )),
        "{said}"
    );
    let ca = format!("{}/ca.pem", common::redis::tls_certs());
    let real = std::fs::read(&ca).unwrap();
    assert_eq!(syncstore::redis_conn::check_ca(&real), Ok(1));
}

/// Redis unreachable at start: the process exits, and what it says names
/// the variable and the address, never the password.
#[test]
fn an_unreachable_redis_at_start_names_redis_url_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = run(
        &[
            ("REDIS_URL", "redis://app:s3cret@127.0.0.1:1"),
            ("PORT", &port),
        ],
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("REDIS_URL (redis redis://app:***@127.0.0.1:1): cannot connect"),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "{said}");
}

#[test]
fn migrate_twice_is_a_no_op_on_every_backend() {
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite_dir = sqlite_dir.path().to_string_lossy().to_string();
    let pg = postgres_url();
    let my = mysql_url();
    for env in [
        vec![("SYNCSTORE_DATA_DIR", sqlite_dir.as_str())],
        vec![("DATABASE_URL", pg.as_str())],
        vec![("DATABASE_URL", my.as_str())],
    ] {
        let first = run(&env, &["migrate"]);
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let second = run(&env, &["migrate"]);
        assert!(second.status.success());
        assert!(
            String::from_utf8_lossy(&second.stdout).starts_with("applied 0 migration(s)"),
            "{env:?}"
        );
    }
}

#[test]
fn keys_create_prints_only_a_prefixed_high_entropy_key() {
    let out = run(&[], &["keys", "create", "--name", "n", "--user", "u"]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sk_live_") && key.len() >= 8 + 43, "{key}");
    let out = run(
        &[("API_KEY_TOKEN_PREFIX", "ss_test_")],
        &[
            "keys",
            "create",
            "--name",
            "n",
            "--user",
            "u",
            "--scopes",
            "read,analytics:read",
        ],
    );
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(key.starts_with("ss_test_"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[read, analytics:read]"));
    let out = run(
        &[],
        &[
            "keys", "create", "--name", "n", "--user", "u", "--scopes", "root",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = run(&[], &["keys", "create", "--name", "n", "--user", ""]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn keys_list_rotate_and_delete_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run_in = |args: &[&str]| {
        Command::new(binary())
            .env_clear()
            .env("SYNCSTORE_DATA_DIR", dir.path())
            .args(args)
            .output()
            .expect("run syncstore")
    };
    let created = run_in(&[
        "keys",
        "create",
        "--name",
        "cli",
        "--user",
        "carol",
        "--quota-per-day",
        "50",
    ]);
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let listed = run_in(&["keys", "list", "--user", "carol"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (
            lines[0]["userId"].as_str(),
            lines[0]["quotaPerDay"].as_i64()
        ),
        (Some("carol"), Some(50))
    );
    let text = lines[0].to_string();
    assert!(
        !text.contains(&key) && !text.contains("keyHash"),
        "the key and its hash are never listed"
    );
    let id = lines[0]["id"].as_str().unwrap().to_string();

    let rotated = run_in(&["keys", "rotate", "--id", &id]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let new_key = String::from_utf8(rotated.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(new_key.starts_with("sk_live_") && new_key != key);
    let listed = run_in(&["keys", "list"]);
    let all: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().all(|k| k["quotaPerDay"] == 50),
        "the new key keeps the settings"
    );
    assert!(
        all.iter()
            .any(|k| k["id"] == id.as_str() && k["expiresAt"].is_i64()),
        "the old key now expires"
    );

    let updated = run_in(&[
        "keys",
        "update",
        "--id",
        &id,
        "--ip",
        "10.0.0.0/8,::1",
        "--quota-per-day",
        "0",
        "--active",
        "false",
    ]);
    assert!(
        updated.status.success(),
        "{}",
        String::from_utf8_lossy(&updated.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&updated.stdout).unwrap();
    assert_eq!(
        (
            view["ipRestrictions"].clone(),
            view["quotaPerDay"].clone(),
            view["isActive"].clone()
        ),
        (
            serde_json::json!(["10.0.0.0/8", "::1"]),
            serde_json::Value::Null,
            serde_json::json!(false)
        )
    );
    assert_eq!(
        run_in(&["keys", "update", "--id", &id, "--country", "GBR"])
            .status
            .code(),
        Some(1)
    );

    assert!(run_in(&["keys", "delete", "--id", &id]).status.success());
    assert_eq!(
        run_in(&["keys", "delete", "--id", &id]).status.code(),
        Some(1)
    );
    assert_eq!(
        String::from_utf8(run_in(&["keys", "list"]).stdout)
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// Sentinel over TLS whose sentinels require their own password: without
/// it, or with a wrong one, the process stops at start naming REDIS_URL,
/// and neither password (the URL's, the sentinels') is ever printed.
#[test]
fn sentinels_refuse_a_wrong_password_at_start_without_showing_either() {
    let url = std::env::var("TEST_REDIS_SENTINEL_TLS").unwrap_or_else(|_| {
        panic!("TEST_REDIS_SENTINEL_TLS is not set: run REDIS_SENTINEL_TLS=1 scripts/redis-sentinel-up.sh (the test command does)")
    });
    let ca = format!("{}/ca.pem", common::redis::tls_certs());
    let data_password = "data-test-password";
    assert!(url.contains(data_password), "{url}");
    for (sentinel_password, reason) in [
        (None, "NOAUTH"),
        (
            Some("not-the-sentinels-password"),
            "Password authentication failed",
        ),
    ] {
        let mut env = vec![("REDIS_URL", url.as_str()), ("REDIS_TLS_CA_FILE", &ca)];
        env.extend(sentinel_password.map(|p| ("REDIS_SENTINEL_PASSWORD", p)));
        let out = run(&env, &["serve"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("REDIS_URL (redis sentinel [rediss://127.0.0.1:")
                && said.contains(reason),
            "{said}"
        );
        assert!(!said.contains(data_password), "{said}");
        assert!(!said.contains("not-the-sentinels-password"), "{said}");
    }
}
