//! Presence survives crashes (issue 14 §5), against the real binary on
//! SQLite, PostgreSQL and MariaDB: a device of a process killed with -9 is
//! offline once that process's heartbeat expires (three intervals of
//! `PRESENCE_HEARTBEAT_MS`), whatever restarts on the same data, and
//! `connections` counts the sockets that are alive, exactly.

mod common;

use std::time::{Duration, Instant};

use common::{unique_user, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The heartbeat interval of these tests; a device of a dead process is
/// offline at most three of these after the process died.
const HEARTBEAT_MS: u64 = 300;
const EXPIRY: Duration = Duration::from_millis(3 * HEARTBEAT_MS);

fn env() -> Vec<(&'static str, String)> {
    vec![("PRESENCE_HEARTBEAT_MS", HEARTBEAT_MS.to_string())]
}

async fn start(url: Option<String>, data_dir: Option<tempfile::TempDir>) -> Server {
    let env = env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let db_env: Vec<(&'static str, String)> = url
        .clone()
        .map(|u| vec![("DATABASE_URL", u)])
        .unwrap_or_default();
    vars.extend(db_env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut server = match data_dir {
        Some(dir) => Server::start_in(dir, &vars).await,
        None => Server::start(&vars).await,
    };
    server.db_env = db_env;
    server
}

/// A `/sync` socket of `instance`, connected (the server answered the
/// namespace connect).
async fn connect(server: &Server, user: &str, instance: &str, key: &str) -> Ws {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&userId={user}&instanceId={instance}",
        server.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let open = next_text(&mut ws).await.expect("engine.io open");
    assert!(open.starts_with('0'), "{open}");
    ws.send(Message::text(format!(
        "40/sync,{}",
        json!({ "apiKey": key })
    )))
    .await
    .expect("send connect");
    loop {
        let text = next_text(&mut ws).await.expect("connect reply");
        if text.starts_with("40/sync") {
            return ws;
        }
        assert!(!text.starts_with("44/sync"), "refused: {text}");
    }
}

/// The next text frame, answering engine.io pings on the way.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
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

/// A clean disconnect: the namespace's disconnect packet, then a close.
async fn disconnect(mut ws: Ws) {
    ws.send(Message::text("41/sync,"))
        .await
        .expect("send disconnect");
    let _ = ws.close(None).await;
}

/// `instance` as `GET /sessions` shows it, or `None` while it is not
/// listed (before its first connect was recorded).
async fn session(server: &Server, key: &str, instance: &str) -> Option<Value> {
    let list: Value = reqwest::Client::new()
        .get(server.url("/api/v1/sync-storage/sessions"))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("sessions")
        .json()
        .await
        .expect("sessions JSON");
    list.as_array()
        .expect("sessions is a list")
        .iter()
        .find(|d| d["instanceId"] == instance)
        .cloned()
}

/// `(online, connections)` of `instance` as `GET /sessions` shows it.
async fn presence(server: &Server, key: &str, instance: &str) -> Option<(bool, i64)> {
    let device = session(server, key, instance).await?;
    Some((
        device["online"].as_bool().expect("online is a boolean"),
        device["connections"]
            .as_i64()
            .expect("connections is a number"),
    ))
}

/// `lastSeen` of `instance` (ms since the epoch).
async fn last_seen(server: &Server, key: &str, instance: &str) -> i64 {
    session(server, key, instance).await.expect("listed")["lastSeen"]
        .as_i64()
        .expect("lastSeen is a number")
}

/// Waits (connect and disconnect are handled asynchronously) until the
/// device shows `want`, and fails with what it showed last otherwise.
async fn settles_at(server: &Server, key: &str, instance: &str, want: (bool, i64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = presence(server, key, instance).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{instance}: (online, connections) stayed {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_killed_process_leaves_no_device_online(backend: &str) {
    let url = common::database_url(backend);
    let mut first = start(url.clone(), None).await;
    let user = unique_user("presence");
    let key = first.create_key(&user, &["--scopes", "read,write"]);

    let connected_ms = syncstore::storage::now_ms();
    let phone = connect(&first, &user, "phone", &key).await;
    let tablet = connect(&first, &user, "tablet", &key).await;
    settles_at(&first, &key, "phone", (true, 1)).await;
    // Connected, a device is seen at its process's latest heartbeat (its
    // row is not written meanwhile): three intervals on, at least two
    // heartbeats came after the connect.
    tokio::time::sleep(EXPIRY).await;
    let seen_alive = last_seen(&first, &key, "tablet").await;
    assert!(
        seen_alive >= connected_ms + HEARTBEAT_MS as i64,
        "{backend}: lastSeen {seen_alive} follows the heartbeat (connected at {connected_ms})"
    );

    // kill -9: no disconnect handler, no shutdown, nothing said.
    first.child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let killed_ms = syncstore::storage::now_ms();
    drop(tablet);
    first.child.wait().expect("reaped");
    drop(phone);
    let data_dir = std::mem::replace(&mut first.data_dir, tempfile::tempdir().expect("tempdir"));
    drop(first);

    let second = start(url, Some(data_dir)).await;
    // The dead process's last heartbeat came before it died, so past one
    // expiry after the kill its device is offline: exactly, on the first
    // look, without waiting for a sweep.
    let bound = killed_at + EXPIRY + Duration::from_millis(50);
    if let Some(left) = bound.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(
        presence(&second, &key, "phone").await,
        Some((false, 0)),
        "{backend}: a device of a process killed with -9 is offline {EXPIRY:?} after"
    );

    // Back on the new process, twice: each live socket counts once.
    let phone = connect(&second, &user, "phone", &key).await;
    settles_at(&second, &key, "phone", (true, 1)).await;
    let again = connect(&second, &user, "phone", &key).await;
    settles_at(&second, &key, "phone", (true, 2)).await;
    // And it stays so across heartbeats and sweeps (the dead process's
    // rows are swept meanwhile; these are not).
    tokio::time::sleep(EXPIRY * 2).await;
    assert_eq!(
        presence(&second, &key, "phone").await,
        Some((true, 2)),
        "{backend}"
    );
    // The sweep left the dead process's device seen at its last heartbeat:
    // not before the one read above, not after the kill.
    assert_eq!(
        presence(&second, &key, "tablet").await,
        Some((false, 0)),
        "{backend}"
    );
    let seen = last_seen(&second, &key, "tablet").await;
    assert!(
        (seen_alive..=killed_ms).contains(&seen),
        "{backend}: tablet last seen {seen}, killed at {killed_ms}"
    );

    // Clean disconnects, one at a time: nothing of the dead process's
    // count is left over.
    disconnect(again).await;
    settles_at(&second, &key, "phone", (true, 1)).await;
    disconnect(phone).await;
    settles_at(&second, &key, "phone", (false, 0)).await;
    tokio::time::sleep(EXPIRY).await;
    assert_eq!(
        presence(&second, &key, "phone").await,
        Some((false, 0)),
        "{backend}"
    );
}

#[tokio::test]
async fn a_killed_process_leaves_no_device_online_sqlite() {
    a_killed_process_leaves_no_device_online("sqlite").await;
}

#[tokio::test]
async fn a_killed_process_leaves_no_device_online_postgres() {
    a_killed_process_leaves_no_device_online("postgres").await;
}

#[tokio::test]
async fn a_killed_process_leaves_no_device_online_mysql() {
    a_killed_process_leaves_no_device_online("mysql").await;
}

/// SIGTERM: the process removes its own rows on the way out, so its devices
/// are offline at once, not one expiry later (a long interval here makes
/// the difference visible).
async fn a_clean_shutdown_takes_its_devices_offline_at_once(backend: &str) {
    let url = common::database_url(backend);
    let long = [("PRESENCE_HEARTBEAT_MS", "60000")];
    let mut first = Server::with_database(url.clone(), &long).await;
    let user = unique_user("presence-term");
    let key = first.create_key(&user, &["--scopes", "read,write"]);
    let phone = connect(&first, &user, "phone", &key).await;
    settles_at(&first, &key, "phone", (true, 1)).await;

    let pid = first.child.id().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(phone);
    let data_dir = std::mem::replace(&mut first.data_dir, tempfile::tempdir().expect("tempdir"));
    drop(first);

    let second = Server::start_in(
        data_dir,
        &url.iter()
            .map(|u| ("DATABASE_URL", u.as_str()))
            .chain(long)
            .collect::<Vec<_>>(),
    )
    .await;
    // Well inside the 180 s expiry of the first process.
    assert_eq!(
        presence(&second, &key, "phone").await,
        Some((false, 0)),
        "{backend}"
    );
}

#[tokio::test]
async fn a_clean_shutdown_takes_its_devices_offline_at_once_sqlite() {
    a_clean_shutdown_takes_its_devices_offline_at_once("sqlite").await;
}

#[tokio::test]
async fn a_clean_shutdown_takes_its_devices_offline_at_once_postgres() {
    a_clean_shutdown_takes_its_devices_offline_at_once("postgres").await;
}

#[tokio::test]
async fn a_clean_shutdown_takes_its_devices_offline_at_once_mysql() {
    a_clean_shutdown_takes_its_devices_offline_at_once("mysql").await;
}
