//! Tokens from an outside identity provider, verified against its JWKS.

mod common;

use std::process::Command;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::{send, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const ISS: &str = "https://idp.example.test/";
const AUD: &str = "syncstore-tests";
const SECRET: &str = "jwks-test-access-secret-0123456789abcdef";

/// An RSA key made with openssl, and its JWKS (kid `k1`).
fn rsa_key(dir: &std::path::Path) -> (Vec<u8>, Value) {
    let pem = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .status()
        .expect("openssl");
    assert!(ok.success());
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwks = json!({ "keys": [{ "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB" }] });
    (std::fs::read(&pem).unwrap(), jwks)
}

#[tokio::test]
async fn identity_provider_tokens_are_checked_for_key_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, jwks) = rsa_key(dir.path());
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let jwks_path = jwks_path.to_string_lossy().to_string();
    let server = Server::start(&[
        ("JWT_JWKS_URL", &jwks_path),
        ("JWT_ISSUER", ISS),
        ("JWT_AUDIENCE", AUD),
        ("JWT_SECRET", SECRET),
        (
            "JWT_REFRESH_SECRET",
            "jwks-test-refresh-secret-0123456789abcdef",
        ),
    ])
    .await;
    let http = Client::new();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, exp: i64| json!({"sub": "idp-user", "iss": iss, "aud": aud, "exp": exp, "scope": "read write"});
    let rs = |kid: &str, c: &Value| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        encode(&h, c, &key).unwrap()
    };
    let put = |token: String| {
        let req = http
            .put(server.url("/api/v1/sync-storage/item/k"))
            .bearer_auth(token)
            .json(&json!({"value": 1}));
        send(req)
    };
    let (s, b) = put(rs("k1", &claims(ISS, AUD, now + 300))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["item"]["userId"], "idp-user");
    for (name, token, reason) in [
        (
            "wrong audience",
            rs("k1", &claims(ISS, "someone-else", now + 300)),
            "invalid_token",
        ),
        (
            "wrong issuer",
            rs("k1", &claims("https://evil.test/", AUD, now + 300)),
            "invalid_token",
        ),
        (
            "expired",
            rs("k1", &claims(ISS, AUD, now - 3600)),
            "token_expired",
        ),
        (
            // Not valid for another hour (RFC 7519 nbf): refused beyond the 5 s leeway.
            "not yet valid",
            rs("k1", &{
                let mut c = claims(ISS, AUD, now + 7200);
                c["nbf"] = json!(now + 3600);
                c
            }),
            "token_not_yet_valid",
        ),
        (
            "unknown kid",
            rs("k2", &claims(ISS, AUD, now + 300)),
            "invalid_token",
        ),
        (
            // HS256 "signed" with the public JWKS material: the classic confusion.
            "HS256 with the public key as secret",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some("k1".into());
                encode(
                    &h,
                    &claims(ISS, AUD, now + 300),
                    &EncodingKey::from_secret(jwks.to_string().as_bytes()),
                )
                .unwrap()
            },
            "invalid_token",
        ),
    ] {
        let (s, b) = put(token).await;
        assert_eq!(
            (s, b["details"]["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(reason)),
            "{name}: {b}"
        );
    }
    // A scope claim narrows what the token may do.
    let mut read_only = claims(ISS, AUD, now + 300);
    read_only["scope"] = json!("read");
    let (s, b) = put(rs("k1", &read_only)).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("SCOPE_REQUIRED"))
    );
}

#[test]
fn a_jwks_without_issuer_and_audience_is_a_configuration_error() {
    let out = Command::new(common::binary())
        .env_clear()
        .env("JWT_JWKS_URL", "/nonexistent.json")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_ISSUER"));
}
