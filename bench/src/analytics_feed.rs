//! Fills a Kafka topic with synthetic analytics events, for measuring the
//! consumer (`syncstore analytics`) in isolation: `bench/analytics.sh`.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::{
    config::ClientConfig,
    producer::{BaseRecord, Producer, ThreadedProducer},
};
use syncstore::analytics::Event;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Event timestamps spread over this many seconds before now (a live
    /// stream spans the last minute or so).
    #[arg(long, default_value_t = 60)]
    spread_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let routes = [
        "PUT /api/v1/sync-storage/item/{*key}",
        "GET /api/v1/sync-storage/item/{*key}",
        "socket:sync:set",
        "socket:sync:get",
        "GET /api/v1/sync-storage/items",
    ];
    let now = syncstore::storage::now_ms();
    let started = Instant::now();
    for i in 0..args.events {
        let user = format!("user-{}", i % args.users);
        let e = Event {
            id: format!("bench-{i}"),
            ts: now - ((i % args.spread_secs.max(1)) * 1000) as i64,
            store: args.topic.clone(),
            pod: "bench".into(),
            kind: "rest".into(),
            route_or_event: routes[(i % routes.len() as u64) as usize].into(),
            user_id: Some(user.clone()),
            instance_id: Some(format!("device-{}", i % (args.users * 2))),
            api_key_id: Some(format!("key-{}", i % args.users)),
            status: if i % 50 == 0 { 403 } else { 200 },
            latency_us: 200 + (i * 7919) % 20_000,
            bytes_in: 120,
            bytes_out: 300,
            country: Some("DE".into()),
            ua_family: Some("Chrome".into()),
            ip: Some("10.0.0.1".into()),
            error_code: (i % 50 == 0).then(|| "IP_NOT_ALLOWED".into()),
            item_key: Some(format!("notes/{}", i % 100)),
            trace: None,
        };
        let payload = serde_json::to_vec(&e)?;
        loop {
            match producer.send(BaseRecord::to(&args.topic).key(&user).payload(&payload)) {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    eprintln!(
        "produced {} events in {:.1?}",
        args.events,
        started.elapsed()
    );
    Ok(())
}
