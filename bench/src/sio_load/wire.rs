//! The two wire protocols `sio-load` speaks over one raw WebSocket each:
//! Socket.IO v5 on engine.io v4 (syncstore's `/sync` and the Node socket.io
//! peer) and Centrifugo's bidirectional JSON protocol (client protocol v2,
//! one command or reply per line). Hand-written rather than through the
//! official clients so that 10,000 devices and the server fit on two cores
//! (a Node socket.io-client generator tops out near 77k messages/s here),
//! and so that every server is driven by the same code.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{stream::SplitSink, stream::SplitStream, SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::Mutex};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use crate::{now_us, Stats};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Socket.IO v5 `/sync`: syncstore, or the Node socket.io peer.
    Socketio,
    /// Centrifugo v6, JSON protocol; one channel per user.
    Centrifugo,
}

/// What a device does: a writer only writes (in Centrifugo it does not
/// subscribe, as a Socket.IO device is not sent its own writes), a reader
/// receives its user's changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Reader,
}

/// One connected device: its write half and what a write needs.
pub struct Device {
    pub role: Role,
    sink: Mutex<Sink>,
    protocol: Protocol,
    user: String,
    next_id: AtomicU64,
}

impl Device {
    /// Sends a write of `{"t": <now µs>}` under `key`, asking for an ack
    /// (counted in [`Stats::acked`] when it comes).
    pub async fn set(&self, key: &str) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = now_us();
        let frame = match self.protocol {
            Protocol::Socketio => format!(
                "42/sync,{id}[\"sync:set\",{{\"key\":\"{key}\",\"value\":{{\"t\":{t}}}}}]"
            ),
            Protocol::Centrifugo => format!(
                "{{\"id\":{id},\"publish\":{{\"channel\":\"{}\",\"data\":{{\"key\":\"{key}\",\"value\":{{\"t\":{t}}}}}}}}}",
                self.user
            ),
        };
        self.sink.lock().await.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Closes the connection (a WebSocket close frame), as a device going
    /// away does; its reader task ends when the server closes in turn.
    pub async fn close(&self) {
        let _ = self.sink.lock().await.close().await;
    }

    async fn send(&self, text: String) {
        let _ = self.sink.lock().await.send(Message::text(text)).await;
    }
}

fn ws_base(base: &str) -> String {
    base.replacen("http://", "ws://", 1)
}

/// Connects one device, waits until it is live (Socket.IO: connected to
/// `/sync`; Centrifugo: connected, and subscribed for a reader), and spawns
/// its reader.
pub async fn connect(
    protocol: Protocol,
    base: &str,
    key: &str,
    user: &str,
    instance: &str,
    role: Role,
    stats: Arc<Stats>,
) -> Result<Arc<Device>> {
    let url = match protocol {
        Protocol::Socketio => format!(
            "{}/socket.io/?EIO=4&transport=websocket&userId={user}&instanceId={instance}",
            ws_base(base)
        ),
        Protocol::Centrifugo => format!("{}/connection/websocket", ws_base(base)),
    };
    // TCP_NODELAY, as every server here sets on its side: small frames.
    let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (ws, _) = tokio::time::timeout(std::time::Duration::from_secs(30), connecting)
        .await
        .context("websocket: no answer in 30 s")?
        .context("websocket")?;
    let (tx, mut rx) = ws.split();
    let device = Arc::new(Device {
        role,
        sink: Mutex::new(tx),
        protocol,
        user: user.to_string(),
        next_id: AtomicU64::new(10),
    });
    match protocol {
        Protocol::Socketio => socketio_handshake(&device, &mut rx, key).await?,
        Protocol::Centrifugo => centrifugo_handshake(&device, &mut rx, role, &stats).await?,
    }
    let reader = device.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.next().await {
            let text = match &msg {
                Ok(Message::Text(t)) => t.as_str(),
                Ok(Message::Close(frame)) => {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    stats.error(Some(&format!("close {code}").into()));
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    stats.error(Some(&format!("read: {e}").into()));
                    break;
                }
            };
            match reader.protocol {
                Protocol::Socketio => socketio_frame(&reader, text, &stats).await,
                Protocol::Centrifugo => {
                    for line in text.lines() {
                        centrifugo_frame(&reader, line, &stats).await;
                    }
                }
            }
        }
    });
    Ok(device)
}

async fn next_text(rx: &mut Stream, what: &str) -> Result<String> {
    let msg = rx
        .next()
        .await
        .ok_or_else(|| anyhow!("closed before {what}"))??;
    Ok(msg.to_text().unwrap_or("").to_string())
}

async fn socketio_handshake(device: &Device, rx: &mut Stream, key: &str) -> Result<()> {
    let open = next_text(rx, "open").await?;
    if !open.starts_with('0') {
        bail!("unexpected engine.io open: {open:?}");
    }
    device
        .send(format!("40/sync,{{\"apiKey\":\"{key}\"}}"))
        .await;
    loop {
        let text = next_text(rx, "connect").await?;
        if text == "2" {
            // A ping while the namespace is still connecting (a slow
            // handshake under load): answered, or the server closes the
            // connection after its ping timeout.
            device.send("3".into()).await;
        } else if text.starts_with("40/sync") {
            return Ok(());
        } else if text.starts_with("44/sync") {
            bail!("refused: {text}");
        }
    }
}

/// One Socket.IO frame after the handshake.
async fn socketio_frame(device: &Device, text: &str, stats: &Stats) {
    if text == "2" {
        return device.send("3".into()).await;
    }
    if let Some(rest) = text.strip_prefix("43/sync,") {
        // `<id>[reply]`: a refused write replies with `{"error":…}`.
        let body = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let v = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        match v[0].get("error") {
            Some(e) => stats.error(e.get("code")),
            None => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let Some(rest) = text.strip_prefix("42/sync,") else {
        return;
    };
    // `["event",{...}]`, maybe after an ack id.
    let body = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let ack_id = &rest[..rest.len() - body.len()];
    if body.starts_with("[\"pending-updates\"") {
        stats.ready.fetch_add(1, Ordering::Relaxed);
        if !ack_id.is_empty() {
            // Acknowledged, as socket.io-client does when the handler calls back.
            device.send(format!("43/sync,{ack_id}[]")).await;
        }
    } else if body.starts_with("[\"error\"") || body.starts_with("[\"sync:resync\"") {
        let v = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        let p = &v[1];
        stats.error(p.get("code").or(p.get("reason")));
    } else if body.starts_with("[\"sync:update\"") {
        let v = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        stats.delivered(v[1]["value"]["t"].as_u64());
    }
}

async fn centrifugo_handshake(
    device: &Device,
    rx: &mut Stream,
    role: Role,
    stats: &Stats,
) -> Result<()> {
    device
        .send(r#"{"id":1,"connect":{"name":"sio-load"}}"#.into())
        .await;
    centrifugo_reply(rx, 1, "connect").await?;
    if role == Role::Reader {
        device
            .send(format!(
                r#"{{"id":2,"subscribe":{{"channel":"{}"}}}}"#,
                device.user
            ))
            .await;
        centrifugo_reply(rx, 2, "subscribe").await?;
    }
    stats.ready.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn centrifugo_reply(rx: &mut Stream, id: u64, what: &str) -> Result<()> {
    loop {
        let text = next_text(rx, what).await?;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["id"].as_u64() == Some(id) {
                if v.get("error").is_some() {
                    bail!("{what} refused: {line}");
                }
                return Ok(());
            }
        }
    }
}

/// One line of Centrifugo's JSON protocol after the handshake: `{}` is the
/// server's ping (answered with `{}`), `{"push":{"pub":…}}` a publication,
/// `{"id":…,"publish":{}}` a write's ack.
async fn centrifugo_frame(device: &Device, line: &str, stats: &Stats) {
    if line == "{}" {
        return device.send("{}".into()).await;
    }
    let v = serde_json::from_str::<serde_json::Value>(line).unwrap_or_default();
    if let Some(e) = v.get("error") {
        stats.error(e.get("code"));
    } else if let Some(data) = v["push"]["pub"].get("data") {
        stats.delivered(data["value"]["t"].as_u64());
    } else if v.get("publish").is_some() {
        stats.acked.fetch_add(1, Ordering::Relaxed);
    }
}
