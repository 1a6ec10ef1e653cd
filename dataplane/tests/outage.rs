//! The database going away: requests get SERVICE_UNAVAILABLE (never a 500
//! or a hang), `/ready` fails, `/health` stays up, and service resumes when
//! the database returns. PostgreSQL is reached through a TCP proxy that the
//! test cuts and restores.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{postgres_url, unique_user, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};

/// Forwards a local port to PostgreSQL until stopped; stopping drops every
/// open connection, as a network cut or a database crash would.
struct Proxy {
    port: u16,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { port, task }
    }

    fn stop(self) -> u16 {
        self.task.abort();
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_service_unavailable_then_recovers() {
    let pg = postgres_url();
    let upstream: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(0, upstream).await;
    let url = pg.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(
        url, pg,
        "TEST_POSTGRES_URL must point at 127.0.0.1:5432 for this test"
    );
    let server = Server::start(&[("DATABASE_URL", &url)]).await;
    let key = common::create_key(
        server.data_dir.path(),
        &[("DATABASE_URL", &url)],
        &unique_user("outage"),
        &[],
    );
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let put = |k: &str| {
        http.put(server.url(&format!("/api/v1/sync-storage/item/{k}")))
            .header("X-API-Key", &key)
            .json(&json!({"value": 1}))
    };

    assert_eq!(put("before").send().await.unwrap().status(), StatusCode::OK);
    let port = proxy.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;

    for k in ["during-1", "during-2"] {
        let r = put(k).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "SERVICE_UNAVAILABLE"
        );
    }
    let r = http.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        http.get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let _proxy = Proxy::start(port, upstream).await;
    let mut recovered = false;
    for _ in 0..40 {
        if put("after").send().await.unwrap().status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "writes succeed again once the database is back");
    assert_eq!(
        http.get(server.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
