//! Issue 13, item 7: slow and idle clients are cut off, the number of open
//! connections is capped, and meanwhile ordinary clients are served. Raw
//! TCP against the real binary with small limits; every test measures when
//! the server closed the connection and what it answered.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

const JWT: [(&str, &str); 2] = [
    ("JWT_SECRET", "timeouts-test-access-secret-0123456789"),
    (
        "JWT_REFRESH_SECRET",
        "timeouts-test-refresh-secret-0123456789",
    ),
];

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect")
}

/// Everything the server sends until it closes the connection, and when
/// (since `since`) it did; `None` when still open after `within`.
async fn until_closed(
    s: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> (String, Option<Duration>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((since + within).into(), s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), Some(since.elapsed()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /health` on a fresh connection, within `wait`.
async fn health(server: &Server, wait: Duration) -> Result<StatusCode, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(wait)
        .build()
        .expect("client")
        .get(server.url("/health"))
        .send()
        .await
        .map(|r| r.status())
}

fn assert_between(what: &str, took: Option<Duration>, low_ms: u64, high_ms: u64) {
    let took = took.unwrap_or_else(|| panic!("{what}: the connection was never closed"));
    assert!(
        took >= Duration::from_millis(low_ms) && took <= Duration::from_millis(high_ms),
        "{what}: closed after {took:?}, expected {low_ms}..{high_ms} ms"
    );
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
    let server = Server::start(&[
        ("HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("HTTP_BODY_TIMEOUT_MS", "1500"),
        ("HTTP_IDLE_TIMEOUT_MS", "2000"),
        JWT[0],
        JWT[1],
    ])
    .await;

    // Ordinary clients, all the while: /health answers 200 every 100 ms.
    let probe = {
        let base = server.base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .expect("client");
            let mut answered = Vec::new();
            let until = Instant::now() + Duration::from_millis(3500);
            while Instant::now() < until {
                let status = http.get(format!("{base}/health")).send().await;
                answered.push(status.map(|r| r.status().as_u16()).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        })
    };

    // A silent connection is closed one header timeout after accept.
    let silent_start = Instant::now();
    let mut silent = connect(&server).await;

    // Slow headers, trickled a byte every 200 ms: the deadline still counts
    // from accept.
    let trickle_start = Instant::now();
    let trickle = connect(&server).await;
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let dripper = tokio::spawn(async move {
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if trickle_write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // A slow body to an endpoint that needs no credential: 408, then closed.
    let body_start = Instant::now();
    let mut slow_body = connect(&server).await;
    slow_body
        .write_all(
            b"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"refreshToken\":\"",
        )
        .await
        .expect("write head");

    // An idle keep-alive connection after one good request.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = vec![0u8; 1024];
    let n = idle.read(&mut first).await.expect("response");
    let idle_start = Instant::now();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );

    let (said, took) = until_closed(&mut silent, silent_start, Duration::from_secs(5)).await;
    assert_between("silent connection", took, 900, 2000);
    assert_eq!(
        said, "",
        "nothing is answered to a connection that said nothing"
    );

    let mut buf = Vec::new();
    let took = loop {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), trickle_read.read(&mut chunk)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(trickle_start.elapsed()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    assert_between("trickled headers", took, 900, 2000);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    dripper.abort();

    let (said, took) = until_closed(&mut slow_body, body_start, Duration::from_secs(5)).await;
    assert_between("slow body", took, 1400, 2600);
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("\"code\":\"REQUEST_TIMEOUT\""), "{said}");
    assert!(
        said.to_ascii_lowercase().contains("connection: close"),
        "{said}"
    );

    let (said, took) = until_closed(&mut idle, idle_start, Duration::from_secs(5)).await;
    assert_between("idle keep-alive connection", took, 1900, 3000);
    assert_eq!(said, "");

    let answered = probe.await.expect("probe");
    assert!(answered.len() >= 20, "{answered:?}");
    assert!(answered.iter().all(|s| *s == 200), "{answered:?}");
}

#[tokio::test]
async fn connections_above_the_cap_wait_until_one_closes() {
    let server = Server::start(&[
        ("HTTP_MAX_CONNECTIONS", "4"),
        ("HTTP_HEADER_TIMEOUT_MS", "30000"),
    ])
    .await;
    // `wait_healthy`'s client may still hold a kept-alive connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth waits in the backlog: no answer within a second.
    let queued = health(&server, Duration::from_secs(1)).await;
    assert!(
        queued.as_ref().is_err_and(|e| e.is_timeout()),
        "a fifth connection is not served while four are open: {queued:?}"
    );
    // One closes: the next client is served at once.
    drop(held.pop());
    let started = Instant::now();
    assert_eq!(
        health(&server, Duration::from_secs(3)).await.ok(),
        Some(StatusCode::OK)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The held ones are still capped by the header timeout, not forever:
    // they were accepted, so they are open now.
    for mut c in held {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let (said, _) = until_closed(&mut c, Instant::now(), Duration::from_secs(3)).await;
        assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, or None when closed or silent for 5 s.
async fn next_text(ws: &mut Ws) -> Option<String> {
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .ok()??
        .ok()?;
    Some(msg.to_text().unwrap_or("").to_string())
}

#[tokio::test]
async fn a_socket_io_websocket_outlives_the_idle_timeout() {
    let key = "sk_live_timeouts_websocket_key_0123456789";
    let server = Server::start(&[
        ("HTTP_HEADER_TIMEOUT_MS", "500"),
        ("HTTP_IDLE_TIMEOUT_MS", "500"),
        ("BOOTSTRAP_API_KEY", key),
        ("BOOTSTRAP_USER_ID", "ws"),
    ])
    .await;
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&userId=ws&instanceId=w1",
        server.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let open = ws.next().await.expect("open").expect("frame");
    assert!(open.to_text().unwrap_or("").starts_with('0'), "{open:?}");
    ws.send(Message::text(format!("40/sync,{{\"apiKey\":\"{key}\"}}")))
        .await
        .expect("send");
    let mut connected = false;
    while let Some(text) = next_text(&mut ws).await {
        if text.starts_with("40/sync") {
            connected = true;
            break;
        }
    }
    assert!(connected, "the handshake completes");
    // Silent for six idle timeouts (engine.io pings only every 25 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws.send(Message::text(r#"42/sync,7["sync:get",{"key":"k"}]"#))
        .await
        .expect("the socket is still open");
    let mut reply = None;
    while let Some(text) = next_text(&mut ws).await {
        if text.starts_with("43/sync,7") {
            reply = Some(text);
            break;
        }
    }
    assert_eq!(reply.as_deref(), Some("43/sync,7[null]"));
}
