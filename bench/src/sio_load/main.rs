//! A Socket.IO load client for `/sync`, speaking engine.io v4 / socket.io v5
//! over a raw WebSocket (tokio-tungstenite), so that the load generator is
//! cheap enough not to become what is measured (a Node client tops out near
//! 77k messages/s here).
//!
//! Modes:
//! - `idle`: hold N connections and report the server's RSS per connection;
//! - `latency`: N devices as pairs of one user (writer on `--url`, reader on
//!   `--url2` or the same), writes at a fixed rate, write-to-delivery p50/p99;
//! - `fanout`: one user with N devices, W writes, delivered messages/s.
//!
//! All devices connect with one admin key (which may act for any user).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::{stream::SplitSink, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

#[derive(Parser)]
struct Args {
    /// Base URL of a syncstore process (http://127.0.0.1:3000).
    #[arg(long)]
    url: String,
    /// A second process for readers (cross-process fan-out through Redis).
    #[arg(long)]
    url2: Option<String>,
    /// An admin-scoped API key (e.g. BOOTSTRAP_API_KEY).
    #[arg(long)]
    key: String,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// PID of the server whose RSS is measured.
        #[arg(long)]
        server_pid: u32,
    },
    Latency {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        writes_per_sec: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds to let connection setup (cursor and pending-updates
        /// queries) finish before measuring the steady state.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
    Fanout {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 200)]
        writes: usize,
    },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What every reader task reports into.
#[derive(Default)]
struct Stats {
    latency_us: Mutex<Option<Histogram<u64>>>,
    delivered: AtomicU64,
    /// Devices that got their `pending-updates` (their session is live).
    ready: AtomicU64,
    /// `error` events and other events, for the report.
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
    /// (sent, latency) pairs when SIO_TIMELINE is set, to find stalls.
    timeline: Mutex<Vec<(u64, u64)>>,
}

impl Stats {
    fn record(&self, sent_us: u64) {
        let lat = now_us().saturating_sub(sent_us).max(1);
        if std::env::var_os("SIO_TIMELINE").is_some() {
            self.timeline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((sent_us, lat));
        }
        let mut h = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = h.as_mut() {
            let _ = h.record(lat);
        }
    }
}

fn ws_url(base: &str, user: &str, instance: &str) -> String {
    let ws = base.replacen("http://", "ws://", 1);
    format!("{ws}/socket.io/?EIO=4&transport=websocket&userId={user}&instanceId={instance}")
}

/// Connects one device and spawns its reader; returns its write half.
async fn connect(
    base: &str,
    key: &str,
    user: &str,
    instance: &str,
    stats: Arc<Stats>,
) -> Result<Arc<tokio::sync::Mutex<Sink>>> {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(base, user, instance))
        .await
        .context("websocket")?;
    let (mut tx, mut rx) = ws.split();
    let open = rx
        .next()
        .await
        .ok_or_else(|| anyhow!("closed before open"))??;
    if !open.to_text().unwrap_or("").starts_with('0') {
        bail!("unexpected engine.io open: {open:?}");
    }
    tx.send(Message::text(format!("40/sync,{{\"apiKey\":\"{key}\"}}")))
        .await?;
    loop {
        let msg = rx
            .next()
            .await
            .ok_or_else(|| anyhow!("closed before connect"))??;
        let text = msg.to_text().unwrap_or("");
        if text == "2" {
            // engine.io v4 pings right after the handshake: answer it, or the
            // server closes the connection after its ping timeout.
            tx.send(Message::text("3")).await?;
        } else if text.starts_with("40/sync") {
            break;
        }
        if text.starts_with("44/sync") {
            bail!("refused: {text}");
        }
    }
    let tx = Arc::new(tokio::sync::Mutex::new(tx));
    let pong = tx.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    if std::env::var_os("SIO_DEBUG").is_some() {
                        eprintln!("read error: {e}");
                    }
                    break;
                }
            };
            if std::env::var_os("SIO_DEBUG").is_some()
                && !matches!(msg.to_text(), Ok(t) if t.starts_with("42"))
            {
                eprintln!("recv: {msg:?}");
            }
            let Ok(text) = msg.to_text() else { continue };
            if text == "2" {
                let _ = pong.lock().await.send(Message::text("3")).await;
            } else if let Some(rest) = text.strip_prefix("42/sync,") {
                // `["sync:update",{...,"value":{"t":...}}]`, maybe after an ack id.
                let body = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                let ack_id = &rest[..rest.len() - body.len()];
                if body.starts_with("[\"pending-updates\"") {
                    stats.ready.fetch_add(1, Ordering::Relaxed);
                }
                if !ack_id.is_empty() && body.starts_with("[\"pending-updates\"") {
                    // Acknowledge, as socket.io-client does when the handler calls back.
                    let _ = pong
                        .lock()
                        .await
                        .send(Message::text(format!("43/sync,{ack_id}[]")))
                        .await;
                }
                if body.starts_with("[\"error\"") || body.starts_with("[\"sync:resync\"") {
                    let code = serde_json::from_str::<serde_json::Value>(body)
                        .ok()
                        .and_then(|v| {
                            v.get(1)
                                .and_then(|p| p.get("code").or(p.get("reason")))
                                .map(|c| c.to_string())
                        })
                        .unwrap_or_else(|| "unknown".into());
                    *stats
                        .errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(code)
                        .or_default() += 1;
                } else if body.starts_with("[\"sync:update\"") {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Ok(serde_json::Value::Array(v)) =
                        serde_json::from_str::<serde_json::Value>(body)
                    {
                        if let Some(t) = v
                            .get(1)
                            .and_then(|p| p.get("value"))
                            .and_then(|v| v.get("t"))
                            .and_then(|t| t.as_u64())
                        {
                            stats.record(t);
                        }
                    }
                }
            }
        }
    });
    Ok(tx)
}

async fn connect_many(
    args: &Args,
    plan: Vec<(String, String, String)>, // (base, user, instance)
    stats: Arc<Stats>,
) -> Result<Vec<Arc<tokio::sync::Mutex<Sink>>>> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for (base, user, instance) in plan {
        let (gate, key, stats) = (gate.clone(), args.key.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            connect(&base, &key, &user, &instance, stats).await
        }));
    }
    let mut sinks = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(s) => sinks.push(s),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("connect failed: {e:#}");
                }
            }
        }
    }
    eprintln!(
        "connected {} devices ({failed} failed) in {:.1}s",
        sinks.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sinks)
}

fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))
}

async fn set(sink: &tokio::sync::Mutex<Sink>, key: &str) -> Result<()> {
    let payload = format!(
        "42/sync,[\"sync:set\",{{\"key\":\"{key}\",\"value\":{{\"t\":{}}}}}]",
        now_us()
    );
    sink.lock().await.send(Message::text(payload)).await?;
    Ok(())
}

fn report(stats: &Stats) {
    let timeline = stats.timeline.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(start) = timeline.iter().map(|t| t.0).min() {
        let mut worst = std::collections::BTreeMap::<u64, u64>::new();
        for (sent, lat) in timeline.iter() {
            let w = worst.entry((sent - start) / 1_000_000).or_default();
            *w = (*w).max(*lat);
        }
        eprintln!(
            "worst latency per second (ms): {:?}",
            worst.values().map(|v| v / 1000).collect::<Vec<_>>()
        );
    }
    let errors = stats.errors.lock().unwrap_or_else(|p| p.into_inner());
    if !errors.is_empty() {
        println!("errors={errors:?}");
    }
    let h = stats.latency_us.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = h.as_ref() {
        println!(
            "deliveries={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stats = Arc::new(Stats {
        latency_us: Mutex::new(Some(Histogram::new(3)?)),
        ..Default::default()
    });
    let run = format!("{}", now_us() % 1_000_000_000);
    match args.mode {
        Mode::Idle {
            connections,
            server_pid,
        } => {
            let before = rss_kb(server_pid)?;
            let plan = (0..connections)
                .map(|i| {
                    (
                        args.url.clone(),
                        format!("idle-{run}-{}", i / 2),
                        format!("d{i}"),
                    )
                })
                .collect();
            let sinks = connect_many(&args, plan, stats.clone()).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let after = rss_kb(server_pid)?;
            println!(
                "connections={} rss_before={}MB rss_after={}MB per_connection={:.1}KB",
                sinks.len(),
                before / 1024,
                after / 1024,
                (after.saturating_sub(before)) as f64 / sinks.len().max(1) as f64
            );
        }
        Mode::Latency {
            connections,
            writes_per_sec,
            seconds,
            settle,
        } => {
            let users = connections / 2;
            let reader_url = args.url2.clone().unwrap_or_else(|| args.url.clone());
            let mut plan = Vec::with_capacity(connections);
            for u in 0..users {
                plan.push((
                    args.url.clone(),
                    format!("lat-{run}-{u}"),
                    "writer".to_string(),
                ));
                plan.push((
                    reader_url.clone(),
                    format!("lat-{run}-{u}"),
                    "reader".to_string(),
                ));
            }
            let sinks = connect_many(&args, plan, stats.clone()).await?;
            // Writers are the even entries (connect order is kept).
            let writers: Vec<_> = sinks.iter().step_by(2).cloned().collect();
            tokio::time::sleep(Duration::from_secs(settle)).await;
            *stats.latency_us.lock().unwrap_or_else(|p| p.into_inner()) = Some(Histogram::new(3)?);
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / writes_per_sec.max(1)));
            let total = writes_per_sec * seconds;
            let started = Instant::now();
            for i in 0..total {
                tick.tick().await;
                let w = writers[(i as usize * 7919) % writers.len()].clone();
                tokio::spawn(async move {
                    let _ = set(&w, "k").await;
                });
            }
            let sent_in = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            println!(
                "writes={total} in {sent_in:.1}s ({:.0}/s)",
                total as f64 / sent_in
            );
            report(&stats);
        }
        Mode::Fanout { devices, writes } => {
            let user = format!("fan-{run}");
            let mut plan: Vec<_> = (0..devices)
                .map(|i| (args.url.clone(), user.clone(), format!("d{i}")))
                .collect();
            plan.insert(0, (args.url.clone(), user.clone(), "writer".to_string()));
            let ready_before = stats.ready.load(Ordering::Relaxed);
            let connecting = Instant::now();
            let sinks = connect_many(&args, plan, stats.clone()).await?;
            let writer = sinks[0].clone();
            // Every device live (its `pending-updates` received) before the
            // first write: a write made earlier reaches a device in its
            // `pending-updates`, not as the `sync:update` counted here.
            while stats.ready.load(Ordering::Relaxed) - ready_before < sinks.len() as u64
                && connecting.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!(
                "devices live (pending-updates received) {:.2}s after connecting",
                connecting.elapsed().as_secs_f64()
            );
            let expected = (writes * (sinks.len() - 1)) as u64;
            let before = stats.delivered.load(Ordering::Relaxed);
            let started = Instant::now();
            for i in 0..writes {
                set(&writer, &format!("k{}", i % 50)).await?;
            }
            while stats.delivered.load(Ordering::Relaxed) - before < expected
                && started.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let got = stats.delivered.load(Ordering::Relaxed) - before;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "delivered={got}/{expected} in {secs:.2}s rate={:.0} msg/s",
                got as f64 / secs
            );
            report(&stats);
        }
    }
    Ok(())
}
