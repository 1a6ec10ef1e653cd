//! OpenTelemetry traces through every hop of a write, checked in a real
//! collector: Jaeger v2 (built by `scripts/jaeger-bin.sh`, path in
//! `TEST_JAEGER_BIN`) on loopback with in-memory storage. Two `syncstore
//! serve` pods share PostgreSQL, a private Redis and Kafka, and a `syncstore
//! analytics` consumer reads the same topic; one REST PUT on pod A must
//! become one trace that reaches pod B's delivery to its socket and the
//! consumer, read back through Jaeger's query API.

mod common;
// Shared with the operator's trace test.
#[path = "common/jaeger.rs"]
mod jaeger;

use std::time::{Duration, Instant};

use common::{create_key, postgres_url, unique_user, ws, Server};
use jaeger::{one, spans_of, tag, tree, Jaeger, Span};
use serde_json::{json, Value};

/// Kafka started by `scripts/kafka-up.sh` (the test command exports it).
fn kafka() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("TEST_KAFKA_BROKERS is not set: run scripts/kafka-up.sh (the test command does)")
    })
}

/// Waits until Jaeger has the trace with every span in `names` (each
/// process exports on its own schedule).
async fn complete_trace(
    jaeger: &Jaeger,
    trace_id: &str,
    names: &[&str],
    logs: &[&Server],
) -> (String, Vec<Span>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        if let Some((text, trace)) = jaeger.trace(trace_id).await {
            let found = spans_of(&trace);
            if names.iter().all(|n| found.iter().any(|s| s.name == *n)) {
                return (text, found);
            }
            seen = found.iter().map(|s| s.name.clone()).collect();
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = logs.iter().map(|s| s.log()).collect();
            panic!(
                "trace {trace_id} still lacks some of {names:?}; it has {seen:?}\nlogs:\n{}",
                tails.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The trace once Jaeger has it (each process exports on its own
/// schedule), or a failure after 30 s.
async fn wait_trace(jaeger: &Jaeger, trace_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, trace)) = jaeger.trace(trace_id).await {
            return trace;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} never reached Jaeger"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// 32 and 16 random hex digits: a trace the test's caller "started".
fn random_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (trace, span)
}

#[tokio::test]
async fn one_rest_write_is_one_trace_across_both_pods_and_the_consumer() {
    let jaeger = Jaeger::start().await;
    let redis = common::redis::PrivateRedis::start();
    let brokers = kafka();
    let store = unique_user("traces");
    let topic = format!("analytics-{store}");
    let db = postgres_url();
    let redis_url = redis.url();
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_http);
    let shared = [
        ("DATABASE_URL", db.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("SYNCSTORE_STORE", store.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export every 200 ms rather than 5 s, so the test waits less.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "debug"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = shared.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let pod_a = Server::start(&with(&[("POD_NAME", "pod-a")])).await;
    let pod_b = Server::start(&with(&[("POD_NAME", "pod-b")])).await;
    let consumer = Server::start_command(
        "analytics",
        tempfile::tempdir().expect("dir"),
        &with(&[("POD_NAME", "consumer")]),
    )
    .await;
    let user = unique_user("u");
    let key = create_key(pod_a.data_dir.path(), &shared, &user, &[]);

    // A device on pod B, connected inside a trace of its own (the
    // handshake's `auth.traceparent`, as browsers must send it).
    let (connect_trace, connect_parent) = random_ids();
    let auth = json!({
        "apiKey": key,
        "traceparent": format!("00-{connect_trace}-{connect_parent}-01"),
    });
    let query = format!("userId={user}&instanceId=phone");
    let mut device = ws::connect(pod_b.port, &query, &auth)
        .await
        .unwrap_or_else(|e| panic!("socket refused: {e}"));
    // Pod B hosts the user's channel once `pending-updates` has gone out.
    loop {
        let frame = ws::next_text(&mut device, Duration::from_secs(10))
            .await
            .expect("pending-updates");
        if frame.contains("[\"pending-updates\"") {
            break;
        }
    }

    let (trace_id, caller_span) = random_ids();
    let response = reqwest::Client::new()
        .put(pod_a.url("/api/v1/sync-storage/item/traced"))
        .header("X-API-Key", &key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("tracestate", "caller=test")
        .json(&json!({ "value": { "n": 1 } }))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    // The device on pod B got the change through Redis.
    loop {
        let frame = ws::next_text(&mut device, Duration::from_secs(10))
            .await
            .expect("the change reaches pod B's device");
        if frame.contains("[\"sync:update\"") {
            assert!(frame.contains("\"traced\""), "{frame}");
            break;
        }
    }

    let server = "PUT /api/v1/sync-storage/item/{*key}";
    let publish = "publish ss:{store}:u:{userId}";
    let receive = "receive ss:{store}:u:{userId}";
    let process = format!("process {topic}");
    let names = [
        server,
        "write set",
        "transaction",
        "conflict decision",
        publish,
        receive,
        "sync:update /sync",
        process.as_str(),
    ];
    let (text, spans) =
        complete_trace(&jaeger, &trace_id, &names, &[&pod_a, &pod_b, &consumer]).await;

    eprintln!("the trace of one PUT:\n{}", tree(&spans));

    // Pod A: the server span continues the caller's trace, by the HTTP
    // conventions, and the write is its child, with the transaction and
    // the conflict decision inside.
    let put = one(&spans, server);
    assert_eq!(put.parent.as_deref(), Some(caller_span.as_str()));
    assert_eq!(
        (put.service.as_str(), put.instance.as_str()),
        ("syncstore", "pod-a")
    );
    assert_eq!(tag(put, "span.kind"), "server");
    assert_eq!(tag(put, "http.request.method"), "PUT");
    assert_eq!(tag(put, "http.route"), "/api/v1/sync-storage/item/{*key}");
    assert_eq!(tag(put, "url.path"), "/api/v1/sync-storage/item/traced");
    assert_eq!(
        tag(put, "http.response.status_code")
            .to_string()
            .trim_matches('"'),
        "200"
    );
    let write = one(&spans, "write set");
    assert_eq!(write.parent.as_ref(), Some(&put.id));
    let tx = one(&spans, "transaction");
    assert_eq!(tx.parent.as_ref(), Some(&write.id));
    assert_eq!(tag(tx, "db.system.name"), "postgresql");
    let decision = one(&spans, "conflict decision");
    assert_eq!(decision.parent.as_ref(), Some(&tx.id));
    assert_eq!(tag(decision, "syncstore.write.status"), "applied");

    // Redis: the publish on pod A, the receipt and the delivery to the
    // socket on pod B, each the child of the one before.
    let published = one(&spans, publish);
    assert_eq!(published.parent.as_ref(), Some(&write.id));
    assert_eq!(
        (published.instance.as_str(), tag(published, "span.kind")),
        ("pod-a", &json!("producer"))
    );
    let received = one(&spans, receive);
    assert_eq!(received.parent.as_ref(), Some(&published.id));
    assert_eq!(
        (received.instance.as_str(), tag(received, "span.kind")),
        ("pod-b", &json!("consumer"))
    );
    let delivered = one(&spans, "sync:update /sync");
    assert_eq!(delivered.parent.as_ref(), Some(&received.id));
    assert_eq!(delivered.instance, "pod-b");
    assert_eq!(tag(delivered, "messaging.system"), "socket.io");

    // Kafka: the consumer's span for the PUT's event is in the PUT's trace,
    // and follows from the batch, which links back to the PUT.
    let record = one(&spans, &process);
    assert_eq!(record.parent.as_ref(), Some(&put.id));
    assert_eq!(record.service, "syncstore-analytics");
    assert_eq!(tag(record, "messaging.system"), "kafka");
    let (batch_trace, batch_id) = record
        .links
        .iter()
        .find(|(t, _)| *t != trace_id)
        .cloned()
        .unwrap_or_else(|| panic!("the record span links to its batch: {record:#?}"));
    let batch_spans = spans_of(&wait_trace(&jaeger, &batch_trace).await);
    let batch = batch_spans
        .iter()
        .find(|s| s.id == batch_id)
        .expect("the batch span");
    assert!(
        batch.links.contains(&(trace_id.clone(), put.id.clone())),
        "the batch links to the request it aggregates: {batch:#?}"
    );

    // No credential reaches the collector, in any span of the trace.
    assert!(!text.contains(&key), "the API key is in the trace");
    assert!(!text.contains("sk_live_"), "a key prefix is in the trace");
    assert!(
        !text.to_ascii_lowercase().contains("x-api-key"),
        "a header is in the trace"
    );

    // Logs: pod A's JSON lines of the request carry its trace and span ids
    // beside its request id.
    let request_id = tag(put, "request_id")
        .as_str()
        .expect("request_id")
        .to_string();
    let log = pod_a.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["span"]["request_id"] == request_id.as_str() && l["message"] == "request done")
        .unwrap_or_else(|| panic!("no 'request done' line for {request_id} in:\n{log}"));
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    assert_eq!(line["span_id"], put.id.as_str(), "{line}");

    // The handshake continued the device's own trace.
    let connect = spans_of(&wait_trace(&jaeger, &connect_trace).await);
    let handshake = one(&connect, "connect /sync");
    assert_eq!(handshake.parent.as_deref(), Some(connect_parent.as_str()));
    assert_eq!(handshake.instance, "pod-b");

    // A socket event is a messaging span, the root of a trace of its own
    // linked to the handshake, with the write under it.
    let ack = ws::call(
        &mut device,
        "sync:set",
        r#"{"key":"from-socket","value":2}"#,
    )
    .await;
    assert_eq!(ack["status"], "applied", "{ack}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let found = jaeger
            .traces_with("syncstore", "sync:set /sync")
            .await
            .iter()
            .map(spans_of)
            .find(|spans| spans.iter().any(|s| s.name == "write set"));
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no trace of the sync:set event");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let set = one(&event, "sync:set /sync");
    assert_eq!(set.parent, None);
    assert_eq!(
        (tag(set, "span.kind"), tag(set, "messaging.system")),
        (&json!("consumer"), &json!("socket.io"))
    );
    assert!(
        set.links
            .contains(&(connect_trace.clone(), handshake.id.clone())),
        "{set:#?}"
    );
    assert_eq!(one(&event, "write set").parent.as_ref(), Some(&set.id));
}
