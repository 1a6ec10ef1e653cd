//! A real control plane for the operator's integration tests, the way
//! controller-runtime's envtest does it: `scripts/kube-up.sh` starts etcd
//! and kube-apiserver (built from their Go modules) and writes an admin
//! kubeconfig, whose path arrives in TEST_KUBECONFIG. Each test works in a
//! namespace of its own with an operator process of its own, watching only
//! that namespace, so the tests run in parallel without seeing each other.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn kubeconfig() -> String {
    std::env::var("TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!("TEST_KUBECONFIG is not set: run `scripts/kube-up.sh` (the test command does) and export its output")
    })
}

pub fn kubectl_bin() -> String {
    std::env::var("TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn postgres_admin() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://syncstore:syncstore@127.0.0.1:5432/syncstore".into())
}

pub fn mysql_admin() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://syncstore:syncstore@127.0.0.1:3306/mysql".into())
}

/// A namespace for one test, deleted (best effort) when dropped.
pub struct Cluster {
    pub ns: String,
    operators: Vec<Operator>,
    kubelet: Option<Kubelet>,
}

/// Stands in for the kubelet and the Deployment controller, which this
/// control plane does not run: every second it marks each Deployment of
/// the namespace as fully rolled out (all replicas updated, ready and
/// available), so a store can become Ready. Tests of the serving status
/// run without it and patch the Deployment status themselves.
struct Kubelet {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The status patch that makes Deployment `d` fully available, if needed.
fn rolled_out(d: &Value) -> Option<String> {
    let generation = d["metadata"]["generation"].as_i64()?;
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let s = &d["status"];
    let done = s["observedGeneration"].as_i64() == Some(generation)
        && s["availableReplicas"].as_i64().unwrap_or(0) == replicas
        && s["updatedReplicas"].as_i64().unwrap_or(0) == replicas
        && s["replicas"].as_i64().unwrap_or(0) == replicas;
    (!done).then(|| {
        serde_json::json!({"status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }})
        .to_string()
    })
}

fn kubelet(ns: String) -> Kubelet {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(list) = run_kubectl(&["get", "deployments", "-o", "json"], Some(&ns)) {
                let list: Value = serde_json::from_str(&list).unwrap_or_default();
                for d in list["items"].as_array().into_iter().flatten() {
                    let (Some(name), Some(patch)) = (d["metadata"]["name"].as_str(), rolled_out(d))
                    else {
                        continue;
                    };
                    let _ = run_kubectl(
                        &[
                            "patch",
                            "deployment",
                            name,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            &patch,
                        ],
                        Some(&ns),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    Kubelet {
        stop,
        thread: Some(thread),
    }
}

pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub http: u16,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    /// SIGKILL, as a crashed pod.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Cluster {
    /// Installs the CRDs (idempotent) and makes a fresh namespace.
    pub fn new(prefix: &str) -> Self {
        Self::with_namespace(format!("{prefix}-{}", &uuid_like()[..8]))
    }

    /// Like [`Cluster::new`], but no stand-in kubelet marks Deployments
    /// available: the test patches their status itself.
    pub fn without_kubelet(prefix: &str) -> Self {
        let mut c = Self::new(prefix);
        c.kubelet = None;
        c
    }

    /// Stops the stand-in kubelet, so that a Deployment status the test
    /// patches stays as patched (the stand-in would mark it rolled out
    /// again within a second).
    pub fn stop_kubelet(&mut self) {
        self.kubelet = None;
    }

    /// Like [`Cluster::new`], in namespace `ns` (which must be unused).
    pub fn with_namespace(ns: String) -> Self {
        let mut c = Self {
            ns,
            operators: Vec::new(),
            kubelet: None,
        };
        c.kubectl_global(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &repo().join("crds/syncstore.dev.yaml").to_string_lossy(),
        ]);
        c.kubectl_global(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/syncstores.syncstore.dev",
            "crd/apikeys.syncstore.dev",
        ]);
        // kubectl caches discovery on disk; one taken before the CRDs were
        // established (the first apply on a fresh apiserver) would make
        // `kubectl explain syncstore` fail for minutes. `api-resources`
        // refreshes it.
        c.kubectl_global(&["api-resources", "--api-group=syncstore.dev"]);
        c.kubectl_global(&["create", "namespace", &c.ns]);
        c.kubelet = Some(kubelet(c.ns.clone()));
        c
    }

    /// Starts an operator watching this namespace, with its Lease here too.
    pub fn start_operator(&mut self, identity: &str) -> usize {
        self.start_operator_as(identity, &kubeconfig())
    }

    /// A kubeconfig that authenticates as service account `sa` of this
    /// namespace, with a token from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, sa: &str) -> String {
        let token = self
            .kubectl(&["create", "token", sa, "--duration=1h"])
            .trim()
            .to_string();
        let admin = std::fs::read_to_string(kubeconfig()).expect("kubeconfig");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("yaml");
        config["users"][0]["user"] =
            serde_yaml::from_str(&format!("token: {token}")).expect("yaml");
        let path = std::env::temp_dir().join(format!("kubeconfig-{}-{sa}", self.ns));
        std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write");
        path.to_string_lossy().into_owned()
    }

    pub fn start_operator_as(&mut self, identity: &str, kubeconfig: &str) -> usize {
        self.start_operator_with(identity, kubeconfig, &[])
    }

    /// Starts an operator with extra environment (which overrides the
    /// defaults below, e.g. `LOG_LEVEL`).
    pub fn start_operator_with(
        &mut self,
        identity: &str,
        kubeconfig: &str,
        env: &[(&str, &str)],
    ) -> usize {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("operator-{}-{identity}.log", self.ns));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_syncstore-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("WATCH_NAMESPACE", &self.ns)
            .env("POD_NAMESPACE", &self.ns)
            .env("POD_NAME", identity)
            .env("OPERATOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("USAGE_SYNC_INTERVAL", "2s")
            .env("KEY_ROTATION_GRACE", "1h")
            .env("LOG_LEVEL", "info,kube=warn,sqlx=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("operator starts");
        self.operators.push(Operator {
            child,
            log,
            http: port,
        });
        self.operators.len() - 1
    }

    pub fn operator(&mut self, i: usize) -> &mut Operator {
        &mut self.operators[i]
    }

    pub fn log_of(&self, i: usize) -> String {
        self.operators[i].log_text()
    }

    pub fn operator_logs(&self) -> String {
        self.operators
            .iter()
            .map(Operator::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kubectl_global(&self, args: &[&str]) -> String {
        run_kubectl(args, None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// kubectl in this namespace; panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        run_kubectl(args, Some(&self.ns))
    }

    /// (type, reason, message) of this namespace's events that match a
    /// field selector such as `involvedObject.name=chat,type=Warning`.
    pub fn events(&self, selector: &str) -> Vec<(String, String, String)> {
        let args = ["get", "events", "-o", "json", "--field-selector", selector];
        let list: Value = serde_json::from_str(&self.kubectl(&args)).expect("events JSON");
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("type"), s("reason"), s("message"))
            })
            .collect()
    }

    /// [`Cluster::events`] about the `SyncStore` or `ApiKey` named `name`
    /// (not its same-named children: the apiserver's own repair loop
    /// reports on the store's Service, e.g. `ClusterIPNotAllocated`).
    pub fn events_of(&self, name: &str) -> Vec<(String, String, String)> {
        self.events(&format!(
            "involvedObject.name={name},involvedObject.apiVersion=syncstore.dev/v1alpha1"
        ))
    }

    pub fn apply_example(&self, file: &str) {
        self.kubectl(&[
            "apply",
            "-f",
            &repo().join("examples").join(file).to_string_lossy(),
        ]);
    }

    pub fn secret(&self, name: &str, pairs: &[(&str, &str)]) {
        let mut args = vec![
            "create".to_string(),
            "secret".into(),
            "generic".into(),
            name.into(),
        ];
        args.extend(pairs.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kubectl(&refs);
    }

    /// The object as JSON, or None when it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.try_kubectl(&["get", kind, name, "-o", "json", "--show-managed-fields"])
            .ok()
            .map(|s| serde_json::from_str(&s).expect("json"))
    }

    pub fn must_get(&self, kind: &str, name: &str) -> Value {
        self.get(kind, name)
            .unwrap_or_else(|| panic!("{kind}/{name} exists"))
    }

    /// Decoded value of a Secret key.
    pub fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        use base64::Engine;
        let s = self.get("secret", name)?;
        let b64 = s["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        String::from_utf8(bytes).ok()
    }

    /// `kubectl wait --for=condition=…`.
    pub fn wait_condition(&self, target: &str, condition: &str, secs: u64) {
        let timeout = format!("--timeout={secs}s");
        let cond = format!("--for=condition={condition}");
        if let Err(e) = self.try_kubectl(&["wait", &cond, &timeout, target]) {
            let dump = self
                .try_kubectl(&["get", target, "-o", "yaml"])
                .unwrap_or_default();
            panic!(
                "{target} never got {condition}: {e}\n{dump}\noperator log:\n{}",
                tail(&self.operator_logs(), 40)
            );
        }
    }

    /// Polls `check` until it returns Some, or panics after `secs`.
    pub fn eventually<T>(&self, what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\noperator log:\n{}",
                    tail(&self.operator_logs(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.operators.clear();
        self.kubelet = None;
        // Finalizers would hold the namespace without an operator; remove them.
        for kind in ["apikeys", "syncstores"] {
            if let Ok(names) = self.try_kubectl(&["get", kind, "-o", "name"]) {
                for n in names.lines() {
                    let _ = self.try_kubectl(&[
                        "patch",
                        n,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ]);
                }
            }
        }
        let _ = run_kubectl(&["delete", "namespace", &self.ns, "--wait=false"], None);
    }
}

fn run_kubectl(args: &[&str], ns: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig());
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("kubectl not runnable: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
        .collect()
}

/// The value of condition `type_` in an object's status.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}
