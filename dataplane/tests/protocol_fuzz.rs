//! Raw malformed Socket.IO and engine.io frames over a real WebSocket to the
//! real binary: truncated, wrong types, huge, deeply nested, binary garbage,
//! and a seeded stream of random payloads for every `sync:*` event. Each
//! must get an error reply or a clean disconnect (or be ignored while the
//! connection keeps working); the process must never panic or stop
//! answering.

mod common;

use std::time::Duration;

use common::{
    ws::{next_text, Ws},
    Server,
};
use futures_util::SinkExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "sk_live_fuzzfuzzfuzzfuzzfuzzfuzz";
const EVENTS: [&str; 7] = [
    "sync:set",
    "sync:remove",
    "sync:get",
    "sync:getAll",
    "sync:subscribe",
    "sync:unsubscribe",
    "sync:ack",
];

async fn connect(server: &Server) -> Ws {
    common::ws::connect(
        server.port,
        "userId=fuzz&instanceId=fz",
        &json!({ "apiKey": KEY }),
    )
    .await
    .unwrap_or_else(|refusal| panic!("refused: {refusal}"))
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// An ack or `error` event whose body is `{message, code, details}`.
    Error(String),
    /// A successful ack.
    Reply,
    Closed,
    Silent,
}

/// Sends `frame` (with ack id 9 when it is an event) and classifies the answer.
async fn probe(ws: &mut Ws, frame: Message) -> Outcome {
    if ws.send(frame).await.is_err() {
        return Outcome::Closed;
    }
    let mut heard = Vec::new();
    loop {
        let Some(text) = next_text(ws, Duration::from_secs(5)).await else {
            return match ws.send(Message::text("3")).await {
                Ok(()) => {
                    eprintln!("silent; heard {heard:?}");
                    Outcome::Silent
                }
                Err(_) => Outcome::Closed,
            };
        };
        heard.push(text.chars().take(120).collect::<String>());
        let Some(body) = text
            .strip_prefix("43/sync,9")
            .or_else(|| text.strip_prefix("42/sync,"))
        else {
            continue; // a broadcast or a ping
        };
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let payload = if text.starts_with("42/sync,") {
            if v[0] != "error" {
                continue;
            }
            v[1].clone()
        } else {
            v[0].clone()
        };
        let err = if payload.get("error").is_some() {
            payload["error"].clone()
        } else {
            payload.clone()
        };
        if let (Some(code), Some(_)) = (err["code"].as_str(), err["message"].as_str()) {
            assert!(
                err.get("details").is_some(),
                "an error without details: {err}"
            );
            return Outcome::Error(code.to_string());
        }
        return Outcome::Reply;
    }
}

fn event(name: &str, payload: &str) -> Message {
    Message::text(format!("42/sync,9[\"{name}\",{payload}]"))
}

async fn assert_alive(server: &Server) {
    let health = reqwest::get(server.url("/health"))
        .await
        .expect("health answers");
    assert!(health.status().is_success());
    let mut ws = connect(server).await;
    let out = probe(&mut ws, event("sync:set", r#"{"key":"alive","value":1}"#)).await;
    assert_eq!(out, Outcome::Reply, "a valid event still works");
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn malformed_frames_get_errors_or_a_clean_disconnect() {
    let server = Server::start(&[("BOOTSTRAP_API_KEY", KEY), ("BOOTSTRAP_USER_ID", "fuzz")]).await;
    let huge = format!(
        r#"{{"key":"big","value":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let deep_value = format!(r#"{{"key":"deep","value":{}}}"#, nested(20_000));
    let cases: Vec<(&str, Message)> = vec![
        (
            "truncated JSON",
            Message::text(r#"42/sync,9["sync:set",{"key":"a","val"#),
        ),
        ("not an array", Message::text(r#"42/sync,9{"sync:set":1}"#)),
        (
            "event name not a string",
            Message::text(r#"42/sync,9[123,{}]"#),
        ),
        ("no event name", Message::text("42/sync,9[]")),
        ("unknown event", event("sync:explode", "{}")),
        (
            "garbage ack id",
            Message::text(r#"42/sync,9x9["sync:get",{"key":"a"}]"#),
        ),
        ("huge value (3 MiB)", event("sync:set", &huge)),
        (
            "deeply nested array",
            Message::text(format!("42/sync,9[\"sync:set\",{}]", nested(50_000))),
        ),
        ("deeply nested value", event("sync:set", &deep_value)),
        ("unknown engine.io type", Message::text("9hello")),
        ("empty frame", Message::text("")),
        (
            "binary garbage",
            Message::binary(vec![0xff, 0x00, 0x13, 0x37, 0xde, 0xad]),
        ),
        (
            "unknown namespace",
            Message::text(r#"42/nowhere,9["sync:set",{}]"#),
        ),
        ("socket.io disconnect then event", Message::text("41/sync,")),
    ];
    let mut seen = Vec::new();
    for (name, frame) in cases {
        let mut ws = connect(&server).await;
        let out = probe(&mut ws, frame).await;
        seen.push(format!("{name}: {out:?}"));
        if out == Outcome::Silent {
            // Ignored is fine only if the connection still works.
            let check = probe(&mut ws, event("sync:get", r#"{"key":"alive"}"#)).await;
            assert!(
                matches!(check, Outcome::Reply | Outcome::Error(_) | Outcome::Closed),
                "{name}: connection wedged ({check:?})"
            );
        }
        assert!(
            out != Outcome::Reply || name == "garbage ack id",
            "{name} succeeded: {out:?}"
        );
        if name == "unknown event" {
            assert_eq!(out, Outcome::Error("UNKNOWN_EVENT".into()));
        }
    }
    // Wrong types for every event: an error reply each, never silence.
    for name in EVENTS {
        for payload in [
            "123",
            "\"text\"",
            "null",
            "[]",
            r#"{"key":5}"#,
            r#"{"keys":"a"}"#,
            r#"{"seq":"x"}"#,
            r#"{"key":""}"#,
        ] {
            let mut ws = connect(&server).await;
            let out = probe(&mut ws, event(name, payload)).await;
            assert!(
                matches!(out, Outcome::Error(_) | Outcome::Closed)
                    || (out == Outcome::Reply && tolerant(name, payload)),
                "{name} {payload}: {out:?}"
            );
        }
    }
    assert_alive(&server).await;
    eprintln!("outcomes:\n  {}", seen.join("\n  "));
}

/// Payloads some events may accept: getAll and unsubscribe take anything
/// they can ignore (no prefix / nothing to drop).
fn tolerant(event: &str, payload: &str) -> bool {
    matches!(event, "sync:getAll" | "sync:unsubscribe")
        && matches!(payload, "null" | "[]" | r#"{"key":5}"#)
        || event == "sync:getAll" && payload == r#"{"keys":"a"}"#
        || event == "sync:getAll" && payload == r#"{"seq":"x"}"#
        || event == "sync:getAll" && payload == r#"{"key":""}"#
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => json!(rng.gen::<f64>()),
        4 => {
            let len = rng.gen_range(0..40);
            let s: String = (0..len)
                .map(|_| char::from_u32(rng.gen_range(0x20..0x2fff)).unwrap_or('?'))
                .collect();
            json!(s)
        }
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..5) {
                let k = [
                    "key",
                    "value",
                    "keys",
                    "prefix",
                    "seq",
                    "version",
                    "metadata",
                    "ttl",
                    "expectedVersion",
                ][rng.gen_range(0..9)];
                m.insert(k.into(), random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

#[tokio::test]
async fn seeded_random_payloads_for_every_event() {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261126);
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let server = Server::start(&[("BOOTSTRAP_API_KEY", KEY), ("BOOTSTRAP_USER_ID", "fuzz")]).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ws = connect(&server).await;
    let (mut errors, mut replies, mut closes) = (0, 0, 0);
    for i in 0..cases {
        let name = EVENTS[rng.gen_range(0..EVENTS.len())];
        let payload = random_json(&mut rng, 0);
        let out = probe(&mut ws, event(name, &payload.to_string())).await;
        match out {
            Outcome::Error(_) => errors += 1,
            Outcome::Reply => replies += 1,
            Outcome::Closed => {
                closes += 1;
                ws = connect(&server).await;
            }
            Outcome::Silent => panic!("case {i} (seed {seed}): {name} {payload} got no answer"),
        }
    }
    eprintln!("seed {seed}: {cases} cases, {errors} error replies, {replies} successes, {closes} disconnects");
    assert!(errors > 0 && replies > 0);
    assert_alive(&server).await;
}
