//! A real-time load client for `/sync` and its peers (`bench/sio.sh`,
//! `bench/peers.sh`): the same modes against syncstore, the Node socket.io
//! stand-in for the seed's service, and Centrifugo ([`wire`] has the two
//! protocols).
//!
//! Modes:
//! - `idle`: hold N connections and report the server's RSS per connection;
//!   with `--rounds`, connect and disconnect N devices that many times and
//!   report RSS after each round (memory returned after disconnects);
//! - `latency`: N devices as pairs of one user (writer on `--url`, reader on
//!   `--url2` or the same), writes at a fixed rate, write-to-delivery p50/p99;
//! - `fanout`: one user with N devices, W acked writes, delivered messages/s.
//!
//! With `--server-pid` (and `--db-comm`, the process name of the database's
//! backends, e.g. `postgres`) the latency and fan-out modes report the CPU
//! those processes used per 1,000 deliveries over the measured window.
//!
//! Socket.IO devices connect with one admin key (which may act for any
//! user); Centrifugo runs with `client.insecure` (bench/peers/centrifugo.json).

mod wire;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use wire::{Device, Protocol, Role};

#[derive(Parser)]
struct Args {
    /// Base URL of the server (http://127.0.0.1:3000).
    #[arg(long)]
    url: String,
    /// A second process for readers (cross-process fan-out through Redis).
    #[arg(long)]
    url2: Option<String>,
    /// An admin-scoped API key (e.g. BOOTSTRAP_API_KEY); unused by Centrifugo.
    #[arg(long, default_value = "")]
    key: String,
    #[arg(long, value_enum, default_value_t = Protocol::Socketio)]
    protocol: Protocol,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// PID of the server whose RSS (idle) or CPU (latency, fan-out) is read.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Process name of the database's processes whose CPU is reported
    /// beside the server's (`postgres`).
    #[arg(long)]
    db_comm: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connect and disconnect this many times, RSS after each.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
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
    /// When the latest delivery came (µs since the epoch).
    last_delivery_us: AtomicU64,
    /// Writes the server acknowledged.
    acked: AtomicU64,
    /// Devices that are live (Socket.IO: got their `pending-updates`;
    /// Centrifugo: connected, and subscribed if a reader).
    ready: AtomicU64,
    /// `error` events and other refusals, by code, for the report.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Whether SIO_TIMELINE is set, read once: deliveries are the hot path.
    keep_timeline: bool,
    /// (sent, latency) pairs when SIO_TIMELINE is set, to find stalls.
    timeline: Mutex<Vec<(u64, u64)>>,
}

impl Stats {
    /// A delivered change; `sent_us` is the writer's timestamp in it.
    fn delivered(&self, sent_us: Option<u64>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.store(now_us(), Ordering::Relaxed);
        let Some(sent_us) = sent_us else { return };
        let lat = now_us().saturating_sub(sent_us).max(1);
        if self.keep_timeline {
            lock(&self.timeline).push((sent_us, lat));
        }
        if let Some(h) = lock(&self.latency_us).as_mut() {
            let _ = h.record(lat);
        }
    }

    fn error(&self, code: Option<&serde_json::Value>) {
        let code = match code {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(c) => c.to_string(),
            None => "unknown".into(),
        };
        *lock(&self.errors).entry(code).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One device to connect: (base URL, user, instance, role).
type Plan = Vec<(String, String, String, Role)>;

async fn connect_many(args: &Args, plan: Plan, stats: Arc<Stats>) -> Result<Vec<Arc<Device>>> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for (base, user, instance, role) in plan {
        let (gate, key, stats, protocol) =
            (gate.clone(), args.key.clone(), stats.clone(), args.protocol);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            wire::connect(protocol, &base, &key, &user, &instance, role, stats).await
        }));
    }
    let mut devices = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(d) => devices.push(d),
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
        devices.len(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        print!("connect_failed={failed} ");
    }
    Ok(devices)
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

/// User plus system CPU of one process, in ms (`/proc/<pid>/stat` fields
/// 14 and 15, in clock ticks of 10 ms: USER_HZ is 100 on Linux), plus with
/// `children` that of its children that exited and were waited for
/// (fields 16 and 17: a database's finished backends and workers).
fn cpu_ms(pid: &str, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which may hold spaces: state is 3rd.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let waited = if children { tick(13) + tick(14) } else { 0 };
    (tick(11) + tick(12) + waited) * 10
}

/// CPU ms of every process named `comm` (a database's postmaster and
/// backends), with their exited children's: a backend that ends inside the
/// window is counted in its parent's.
fn cpu_ms_of_comm(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(|pid| cpu_ms(&pid, true))
        .sum()
}

/// CPU of the server and the database over a measured window.
struct CpuWindow {
    server: u64,
    db: u64,
}

impl CpuWindow {
    fn read(args: &Args) -> Self {
        Self {
            server: args.server_pid.map_or(0, |p| cpu_ms(&p.to_string(), false)),
            db: args.db_comm.as_deref().map_or(0, cpu_ms_of_comm),
        }
    }

    /// `server_cpu_ms_per_1k=… db_cpu_ms_per_1k=…` since `self`.
    fn report(&self, args: &Args, deliveries: u64) {
        let now = Self::read(args);
        let per_1k = |ms: u64| ms as f64 * 1000.0 / deliveries.max(1) as f64;
        if args.server_pid.is_some() {
            print!(
                "server_cpu_ms_per_1k={:.0} ",
                per_1k(now.server - self.server)
            );
        }
        if args.db_comm.is_some() {
            print!(
                "db_cpu_ms_per_1k={:.0} ",
                per_1k(now.db.saturating_sub(self.db))
            );
        }
        println!();
    }
}

fn report(stats: &Stats) {
    let timeline = lock(&stats.timeline);
    if let Some(start) = timeline.iter().map(|t| t.0).min() {
        let mut worst = BTreeMap::<u64, u64>::new();
        for (sent, lat) in timeline.iter() {
            let w = worst.entry((sent - start) / 1_000_000).or_default();
            *w = (*w).max(*lat);
        }
        eprintln!(
            "worst latency per second (ms): {:?}",
            worst.values().map(|v| v / 1000).collect::<Vec<_>>()
        );
    }
    let errors = lock(&stats.errors);
    if !errors.is_empty() {
        println!("errors={errors:?}");
    }
    if let Some(h) = lock(&stats.latency_us).as_ref() {
        println!(
            "deliveries={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
}

/// Waits until `n` more devices than `before` are live, for at most 60 s.
async fn wait_ready(stats: &Stats, before: u64, n: usize) {
    let started = Instant::now();
    while stats.ready.load(Ordering::Relaxed) - before < n as u64
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn idle(
    args: &Args,
    stats: Arc<Stats>,
    run: &str,
    connections: usize,
    rounds: usize,
) -> Result<()> {
    let pid = args
        .server_pid
        .ok_or_else(|| anyhow!("idle needs --server-pid"))?;
    let before = rss_kb(pid)?;
    println!("rss_before={}MB", before / 1024);
    for round in 1..=rounds {
        let plan = (0..connections)
            .map(|i| {
                let user = format!("idle-{run}-{round}-{}", i / 2);
                (args.url.clone(), user, format!("d{i}"), Role::Reader)
            })
            .collect();
        let devices = connect_many(args, plan, stats.clone()).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = rss_kb(pid)?;
        print!(
            "round={round} connections={} rss={}MB per_connection={:.1}KB",
            devices.len(),
            after / 1024,
            after.saturating_sub(before) as f64 / devices.len().max(1) as f64
        );
        if rounds > 1 {
            futures_util::future::join_all(devices.iter().map(|d| d.close())).await;
            drop(devices);
            tokio::time::sleep(Duration::from_secs(5)).await;
            print!(" rss_after_disconnect={}MB", rss_kb(pid)? / 1024);
        }
        println!();
    }
    Ok(())
}

async fn latency(
    args: &Args,
    stats: Arc<Stats>,
    run: &str,
    connections: usize,
    writes_per_sec: u64,
    seconds: u64,
    settle: u64,
) -> Result<()> {
    let reader_url = args.url2.clone().unwrap_or_else(|| args.url.clone());
    let mut plan = Vec::with_capacity(connections);
    for u in 0..connections / 2 {
        let user = format!("lat-{run}-{u}");
        plan.push((
            args.url.clone(),
            user.clone(),
            "writer".into(),
            Role::Writer,
        ));
        plan.push((reader_url.clone(), user, "reader".into(), Role::Reader));
    }
    let connecting = Instant::now();
    let devices = connect_many(args, plan, stats.clone()).await?;
    let writers: Vec<_> = devices
        .iter()
        .filter(|d| d.role == Role::Writer)
        .cloned()
        .collect();
    wait_ready(&stats, 0, devices.len()).await;
    print!("live_after={:.1}s ", connecting.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(settle)).await;
    *lock(&stats.latency_us) = Some(Histogram::new(3)?);
    let (delivered, cpu) = (
        stats.delivered.load(Ordering::Relaxed),
        CpuWindow::read(args),
    );
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / writes_per_sec.max(1)));
    let total = writes_per_sec * seconds;
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let w = writers[(i as usize * 7919) % writers.len()].clone();
        tokio::spawn(async move {
            let _ = w.set("k").await;
        });
    }
    let sent_in = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "writes={total} in {sent_in:.1}s ({:.0}/s)",
        total as f64 / sent_in
    );
    report(&stats);
    cpu.report(args, stats.delivered.load(Ordering::Relaxed) - delivered);
    Ok(())
}

async fn fanout(
    args: &Args,
    stats: Arc<Stats>,
    run: &str,
    devices: usize,
    writes: usize,
) -> Result<()> {
    let user = format!("fan-{run}");
    let mut plan: Plan = (0..devices)
        .map(|i| {
            (
                args.url.clone(),
                user.clone(),
                format!("d{i}"),
                Role::Reader,
            )
        })
        .collect();
    plan.insert(
        0,
        (
            args.url.clone(),
            user.clone(),
            "writer".into(),
            Role::Writer,
        ),
    );
    let ready_before = stats.ready.load(Ordering::Relaxed);
    let connecting = Instant::now();
    let connected = connect_many(args, plan, stats.clone()).await?;
    // Every device live before the first write: a write made earlier
    // reaches a Socket.IO device in its `pending-updates`, not as the
    // `sync:update` counted here.
    wait_ready(&stats, ready_before, connected.len()).await;
    println!(
        "devices live {:.2}s after connecting",
        connecting.elapsed().as_secs_f64()
    );
    let readers = connected.iter().filter(|d| d.role == Role::Reader).count();
    let Some(writer) = connected.iter().find(|d| d.role == Role::Writer) else {
        return Err(anyhow!("the writer did not connect"));
    };
    let expected = (writes * readers) as u64;
    let (before, acked) = (
        stats.delivered.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed),
    );
    let cpu = CpuWindow::read(args);
    let started_us = now_us();
    // One key per write: a device that fell behind and is caught up from
    // the database is sent each key's latest value, so distinct keys keep
    // every write countable.
    for i in 0..writes {
        writer.set(&format!("k{i}")).await?;
    }
    // Until everything came, or nothing more came for 2 s.
    let last = || {
        stats
            .last_delivery_us
            .load(Ordering::Relaxed)
            .max(started_us)
    };
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done = stats.delivered.load(Ordering::Relaxed) - before >= expected
            && stats.acked.load(Ordering::Relaxed) - acked >= writes as u64;
        if done || now_us().saturating_sub(last()) > 2_000_000 {
            break;
        }
    }
    let got = stats.delivered.load(Ordering::Relaxed) - before;
    // Up to the last delivery, not the end of the wait.
    let secs = (last() - started_us) as f64 / 1e6;
    println!(
        "delivered={got}/{expected} acked={}/{writes} in {secs:.2}s rate={:.0} msg/s",
        stats.acked.load(Ordering::Relaxed) - acked,
        got as f64 / secs
    );
    report(&stats);
    cpu.report(args, got);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stats = Arc::new(Stats {
        latency_us: Mutex::new(Some(Histogram::new(3)?)),
        keep_timeline: std::env::var_os("SIO_TIMELINE").is_some(),
        ..Default::default()
    });
    let run = format!("{}", now_us() % 1_000_000_000);
    match args.mode {
        Mode::Idle {
            connections,
            rounds,
        } => idle(&args, stats, &run, connections, rounds).await,
        Mode::Latency {
            connections,
            writes_per_sec,
            seconds,
            settle,
        } => {
            latency(
                &args,
                stats,
                &run,
                connections,
                writes_per_sec,
                seconds,
                settle,
            )
            .await
        }
        Mode::Fanout { devices, writes } => fanout(&args, stats, &run, devices, writes).await,
    }
}
