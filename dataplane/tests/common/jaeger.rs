//! A real Jaeger v2 for trace tests: the binary `scripts/jaeger-bin.sh`
//! builds (its path in `TEST_JAEGER_BIN`), on loopback with in-memory
//! storage, and the spans of a trace as its query API returns them.
//! Included by path from the data plane's and the operator's `traces.rs`.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Jaeger v2 on loopback: OTLP/HTTP in, the query API out, nothing else
/// listening. Killed on drop.
pub struct Jaeger {
    child: Child,
    pub otlp_http: u16,
    query: u16,
    dir: std::path::PathBuf,
}

impl Jaeger {
    pub async fn start() -> Jaeger {
        let bin = std::env::var("TEST_JAEGER_BIN").unwrap_or_else(|_| {
            panic!("TEST_JAEGER_BIN is not set: scripts/jaeger-bin.sh builds Jaeger (the test command exports it)")
        });
        let dir = std::env::temp_dir().join(format!("jaeger-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("jaeger dir");
        let (otlp_grpc, otlp_http, query, query_grpc) =
            (free_port(), free_port(), free_port(), free_port());
        // The all-in-one defaults, cut to what the test reads, on free ports
        // (the defaults would also open 8888, 13133, 5778 and more).
        let config = format!(
            r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let path = dir.join("jaeger.yaml");
        std::fs::write(&path, config).expect("write config");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("jaeger.log")).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let jaeger = Jaeger {
            child,
            otlp_http,
            query,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(jaeger.url("/api/services"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return jaeger;
            }
            assert!(Instant::now() < deadline, "Jaeger did not start on {query}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query)
    }

    /// The trace as Jaeger's query API returns it, as text (for the secret
    /// check) and parsed; `None` until Jaeger knows it.
    pub async fn trace(&self, trace_id: &str) -> Option<(String, Value)> {
        let response = reqwest::get(self.url(&format!("/api/traces/{trace_id}")))
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let text = response.text().await.ok()?;
        let body: Value = serde_json::from_str(&text).ok()?;
        body["data"][0]
            .is_object()
            .then(|| (text, body["data"][0].clone()))
    }
}

impl Jaeger {
    /// The traces Jaeger has of `service` (the latest hundred).
    pub async fn traces_of(&self, service: &str) -> Vec<Value> {
        self.search(&format!("service={service}")).await
    }

    /// The traces of `service` that have a span named `operation`.
    pub async fn traces_with(&self, service: &str, operation: &str) -> Vec<Value> {
        let operation = operation.replace(' ', "%20").replace('/', "%2F");
        self.search(&format!("service={service}&operation={operation}"))
            .await
    }

    async fn search(&self, query: &str) -> Vec<Value> {
        let url = self.url(&format!("/api/traces?{query}&limit=100"));
        let Ok(response) = reqwest::get(url).await else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["data"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One span of a Jaeger trace, with what the checks need.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: String,
    pub name: String,
    /// The span it is a child of (`CHILD_OF`), in this trace or outside it.
    pub parent: Option<String>,
    /// Spans it follows from (OpenTelemetry links): (trace id, span id).
    pub links: Vec<(String, String)>,
    pub tags: HashMap<String, Value>,
    pub service: String,
    /// The process's `service.instance.id`: the pod.
    pub instance: String,
}

pub fn spans_of(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    let tags = |list: &Value| -> HashMap<String, Value> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or("").to_string(),
                    t["value"].clone(),
                )
            })
            .collect()
    };
    trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            let refs = s["references"].as_array().cloned().unwrap_or_default();
            let of = |kind: &str| {
                refs.iter()
                    .filter(|r| r["refType"] == kind)
                    .map(|r| {
                        (
                            r["traceID"].as_str().unwrap_or("").to_string(),
                            r["spanID"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let process = &processes[s["processID"].as_str().unwrap_or("")];
            let process_tags = tags(&process["tags"]);
            Span {
                id: s["spanID"].as_str().unwrap_or("").to_string(),
                name: s["operationName"].as_str().unwrap_or("").to_string(),
                parent: of("CHILD_OF").first().map(|(_, id)| id.clone()),
                links: of("FOLLOWS_FROM"),
                tags: tags(&s["tags"]),
                service: process["serviceName"].as_str().unwrap_or("").to_string(),
                instance: process_tags
                    .get("service.instance.id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }
        })
        .collect()
}

/// The one span named `name`, or a failure that lists what there is.
pub fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one span named {name:?} expected; the trace has {:#?}",
        spans
            .iter()
            .map(|s| (&s.name, &s.service, &s.instance))
            .collect::<Vec<_>>()
    );
    found[0]
}

pub fn tag<'a>(span: &'a Span, key: &str) -> &'a Value {
    span.tags.get(key).unwrap_or(&Value::Null)
}

/// The spans as an indented tree (children under their parent, with the
/// service and pod), for failure messages and `--nocapture` runs.
pub fn tree(spans: &[Span]) -> String {
    fn walk(spans: &[Span], parent: Option<&str>, depth: usize, out: &mut String) {
        for s in spans.iter().filter(|s| s.parent.as_deref() == parent) {
            out.push_str(&format!(
                "{}{} [{} {}]\n",
                "  ".repeat(depth),
                s.name,
                s.service,
                s.instance
            ));
            walk(spans, Some(&s.id), depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut out = String::new();
    // Roots: spans whose parent is outside the trace (or none).
    for root in spans
        .iter()
        .filter(|s| s.parent.as_deref().is_none_or(|p| !ids.contains(&p)))
    {
        out.push_str(&format!(
            "{} [{} {}]\n",
            root.name, root.service, root.instance
        ));
        walk(spans, Some(&root.id), 1, &mut out);
    }
    out
}
