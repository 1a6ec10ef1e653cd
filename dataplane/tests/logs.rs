//! What the server logs (`LOG_FORMAT`, `LOG_LEVEL`), read from the real
//! binary's stderr: JSON values as plain text, text lines without colour
//! codes when stderr is not a terminal, and a line for every failed socket
//! event and refused handshake, as REST logs `request rejected`.

mod common;

use std::time::{Duration, Instant};

use common::{ws::Ws, Server, TestApp};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

/// The first JSON log line `wanted` accepts, waiting up to 5 s for it.
async fn logged(server: &Server, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.log();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| wanted(l));
        if let Some(line) = found {
            return line;
        }
        assert!(Instant::now() < deadline, "no such line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket to `/sync` as `user`, with `X-Request-Id: request_id`, and
/// the CONNECT sent with `key`.
async fn open(server: &Server, user: &str, key: &str, request_id: &'static str) -> Ws {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&userId={user}&instanceId=logs",
        server.port
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("x-request-id", HeaderValue::from_static(request_id));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    let open = next_text(&mut ws).await.expect("engine.io open");
    assert!(open.starts_with('0'), "{open}");
    ws.send(Message::text(format!("40/sync,{{\"apiKey\":\"{key}\"}}")))
        .await
        .expect("send");
    ws
}

/// The next text frame, answering engine.io pings on the way.
async fn next_text(ws: &mut Ws) -> Option<String> {
    common::ws::next_text(ws, Duration::from_secs(5)).await
}

/// The next frame that starts with `prefix`.
async fn frame(ws: &mut Ws, prefix: &str) -> String {
    loop {
        let text = next_text(ws).await.expect("a frame");
        if text.starts_with(prefix) {
            return text;
        }
    }
}

/// The address of a refused key was logged as `"ip":"Some(127.0.0.1)"`.
#[tokio::test]
async fn json_lines_carry_the_client_address_as_text() {
    let app = TestApp::start(&[("LOG_FORMAT", "json"), ("LOG_LEVEL", "info")]).await;
    let key = app.key("far", &["--ip", "203.0.113.0/24"]);
    let (s, b) = app.get("/api/v1/sync-storage/keys", &key).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("IP_NOT_ALLOWED"))
    );
    let line = logged(&app.server, |l| {
        l["message"] == "API key restriction denied"
    })
    .await;
    assert_eq!(line["ip"], "127.0.0.1", "{line}");
    assert_eq!(line["code"], "IP_NOT_ALLOWED", "{line}");
}

/// Text lines written to a file (or a pipe) are plain: colour codes are for
/// a terminal.
#[tokio::test]
async fn text_lines_to_a_file_carry_no_colour_codes() {
    let app = TestApp::start(&[("LOG_FORMAT", "text"), ("LOG_LEVEL", "info")]).await;
    let (s, _) = app
        .get("/api/v1/sync-storage/keys", "sk_live_nosuchkey")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let log = app.server.log();
    assert!(log.contains("syncstore listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in:\n{log}");
}

/// A socket event that fails is logged once, at REST's level, with the
/// event, the code, the socket id and the handshake's request id; so is a
/// refused handshake. They used to log nothing.
#[tokio::test]
async fn failed_socket_events_and_handshakes_are_logged() {
    let app = TestApp::start(&[("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug")]).await;
    let user = common::unique_user("logs");
    let read_only = app.key(&user, &["--scopes", "read"]);
    let mut ws = open(&app.server, &user, &read_only, "rid-socket").await;
    let connected = frame(&mut ws, "40/sync").await;
    ws.send(Message::text(
        r#"42/sync,7["sync:set",{"key":"k","value":1}]"#,
    ))
    .await
    .expect("send");
    let ack = frame(&mut ws, "43/sync,7").await;
    assert!(ack.contains("FORBIDDEN"), "{ack}");
    let line = logged(&app.server, |l| {
        l["event"] == "sync:set" && l.get("code").is_some()
    })
    .await;
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(line["message"], "socket event rejected", "{line}");
    assert_eq!(line["code"], "FORBIDDEN", "{line}");
    assert_eq!(line["request_id"], "rid-socket", "{line}");
    let sid: Value = serde_json::from_str(&connected["40/sync,".len()..]).expect("sid");
    assert_eq!(line["sid"], sid["sid"], "{line} {connected}");

    let mut refused = open(&app.server, &user, "sk_live_nosuchkey", "rid-refused").await;
    let answer = frame(&mut refused, "44/sync").await;
    assert!(answer.contains("UNAUTHORIZED"), "{answer}");
    let line = logged(&app.server, |l| l["request_id"] == "rid-refused").await;
    assert_eq!(
        (&line["message"], &line["event"], &line["code"]),
        (
            &"socket event rejected".into(),
            &"connect".into(),
            &"UNAUTHORIZED".into()
        ),
        "{line}"
    );
    assert!(
        line["sid"].as_str().is_some_and(|s| !s.is_empty()),
        "{line}"
    );
}
