//! A raw Socket.IO v5 client over a real WebSocket, for tests that compare
//! what the socket answers with what REST answers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/sync` on `port` with `query` (`userId=…&instanceId=…`) and the
/// handshake's `auth` object: the socket, or the refusal's error body.
pub async fn connect(port: u16, query: &str, auth: &Value) -> Result<Ws, Value> {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let open = next_text(&mut ws, Duration::from_secs(5)).await;
    assert!(
        open.as_deref().is_some_and(|t| t.starts_with('0')),
        "{open:?}"
    );
    ws.send(Message::text(format!("40/sync,{auth}")))
        .await
        .expect("send");
    loop {
        let text = next_text(&mut ws, Duration::from_secs(5))
            .await
            .expect("connect reply");
        if text.starts_with("40/sync") {
            return Ok(ws);
        }
        if let Some(data) = text.strip_prefix("44/sync,") {
            // `{message}`, where the message is the error body as JSON text.
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            let body = data["message"]
                .as_str()
                .and_then(|m| serde_json::from_str(m).ok());
            return Err(body.unwrap_or(data));
        }
    }
}

/// The next text frame, answering engine.io pings on the way; None when the
/// connection closed or nothing came in time.
pub async fn next_text(ws: &mut Ws, wait: Duration) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        match msg {
            Message::Text(t) if t.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            Message::Text(t) => return Some(t.to_string()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Emits `event` with the raw JSON `payload` and ack id 7; the ack's first
/// argument.
pub async fn call(ws: &mut Ws, event: &str, payload: &str) -> Value {
    ws.send(Message::text(format!("42/sync,7[\"{event}\",{payload}]")))
        .await
        .expect("send");
    loop {
        let text = next_text(ws, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no ack for {event} {payload}"));
        if let Some(body) = text.strip_prefix("43/sync,7") {
            let v: Value = serde_json::from_str(body).expect("ack JSON");
            return v[0].clone();
        }
    }
}
