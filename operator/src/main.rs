//! `syncstore-operator`: `run` (the default) reconciles SyncStore and
//! ApiKey resources; `crds` prints their CustomResourceDefinitions.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use futures_util::FutureExt;
use kube_lease_manager::LeaseManagerBuilder;
use syncstore::telemetry::{self, Exporting, TraceSettings, WithTraceIds};
use syncstore_operator::{
    context::{Context, Settings},
    controller,
    health::Health,
    metrics::Metrics,
    server,
};
use tracing_subscriber::{
    filter::{filter_fn, FilterExt},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
    Layer,
};

#[derive(Parser)]
#[command(name = "syncstore-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile SyncStore and ApiKey resources (the default).
    Run,
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics and /health.
    #[arg(long, env = "OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (default: the namespace of
    /// the pod's service account; required outside a cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "syncstore-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a rotated-out API key stays valid.
    #[arg(long, env = "KEY_ROTATION_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    key_rotation_grace: Duration,
    /// How often ApiKey usage is copied into status.
    #[arg(long, env = "USAGE_SYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    usage_sync_interval: Duration,
    /// Prefix of generated API keys; must match the data plane's API_KEY_TOKEN_PREFIX.
    #[arg(long, env = "API_KEY_TOKEN_PREFIX", default_value = "sk_live_")]
    key_prefix: String,
    /// How long a controller's watch may fail before /health answers 503.
    #[arg(long, env = "HEALTH_WATCH_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    health_watch_grace: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crds => {
            print!("{}", syncstore_crds::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Run => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let exporting = match init_logging(&args.key_prefix, &identity) {
        Ok(exporting) => exporting,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = operate(args, identity).await;
    // The last reconciles' spans leave before the runtime goes.
    if let Some(exporting) = exporting {
        exporting.shutdown().await;
    }
    code
}

/// Leads (or waits to) and reconciles until told to stop.
async fn operate(args: RunArgs, identity: String) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client configuration");
            return ExitCode::from(2);
        }
    };
    let Some(lease_namespace) = lease_namespace(args.lease_namespace.as_deref()) else {
        tracing::error!(
            "no namespace for the leader-election Lease: set POD_NAMESPACE (or --lease-namespace) to the namespace the operator runs in; outside a cluster there is no safe default, since two operators leading in different namespaces both reconcile"
        );
        return ExitCode::from(2);
    };
    let metrics = Metrics::default();

    let health = Health::new(args.health_watch_grace);
    if let Err(code) = serve_probes(args.http_addr, &metrics, &health).await {
        return code;
    }
    let terminate_rx = on_signal();

    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await;
    let lease = match lease {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "leader election unavailable");
            return ExitCode::from(2);
        }
    };
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(identity = %identity, lease = %args.lease_name, namespace = %lease_namespace, "waiting for leadership");
    let mut stop = terminate_rx.clone();
    tokio::select! {
        got = leader.wait_for(|held| *held) => if got.is_err() { return ExitCode::FAILURE },
        _ = stop.wait_for(|t| *t) => return ExitCode::SUCCESS,
    }
    tracing::info!(identity = %identity, "leading");

    let fenced = fence(
        client.clone(),
        lease_namespace.clone(),
        args.lease_name.clone(),
        identity.clone(),
    );
    let shutdown = stop_when(leader.clone(), terminate_rx.clone(), fenced);

    let settings = Settings {
        rotation_grace: args.key_rotation_grace,
        usage_interval: args.usage_sync_interval,
        key_prefix: args.key_prefix.clone(),
        ..Settings::default()
    };
    let ctx = Context::new(client, metrics, settings, identity);
    controller::run(ctx, args.watch_namespace.clone(), health, shutdown).await;

    let still_leader = *leader.borrow();
    drop(leader);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    if still_leader || *terminate_rx.borrow() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// JSON lines on stderr, with credentials masked in every line (API keys
/// by the prefix the operator generates them with, passwords in SQL and
/// URLs, tokens), carrying their trace's ids when traced; and OTLP traces
/// of the reconciles when the `OTEL_*` variables ask for them (the
/// pipeline returned must be shut down before exit).
fn init_logging(key_prefix: &str, identity: &str) -> Result<Option<Exporting>, String> {
    let traces = TraceSettings::from_env("syncstore-operator", identity, |k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    let redactor = syncstore::telemetry::Redactor::new(key_prefix, []);
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .unwrap_or_else(|_| "info,kube=warn,sqlx=warn".into())
        .and(filter_fn(telemetry::for_logs));
    let logs = fmt::layer()
        .json()
        .event_format(WithTraceIds(fmt::format().json()))
        .with_writer(telemetry::Redacting::new(std::io::stderr, redactor))
        .with_filter(filter);
    let (spans, exporting) = match traces {
        Some(settings) => {
            let (layer, exporting) =
                telemetry::traces::pipeline(&settings).map_err(|e| e.to_string())?;
            (Some(layer), Some(exporting))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(exporting)
}

/// `/healthz`, `/readyz` and `/metrics`, served by standby replicas too, so
/// their liveness probe passes.
async fn serve_probes(
    addr: SocketAddr,
    metrics: &Metrics,
    health: &Health,
) -> Result<(), ExitCode> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %addr, "cannot listen");
            return Err(ExitCode::from(2));
        }
    };
    let router = server::router(metrics.clone(), health.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(())
}

/// Turns true on SIGTERM or Ctrl-C.
fn on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (terminate_tx, terminate_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = terminate_tx.send(true);
    });
    terminate_rx
}

/// Stops the controllers on a signal, or when leadership is lost (then the
/// process exits non-zero and restarts as a standby); exits at once when
/// the Lease could not be confirmed in time.
fn stop_when(
    mut lost: tokio::sync::watch::Receiver<bool>,
    mut term: tokio::sync::watch::Receiver<bool>,
    fenced: impl std::future::Future<Output = ()> + Send + 'static,
) -> futures_util::future::Shared<futures_util::future::BoxFuture<'static, ()>> {
    async move {
        tokio::select! {
            _ = lost.wait_for(|held| !*held) => tracing::error!("lost leadership"),
            _ = term.wait_for(|t| *t) => {}
            () = fenced => {
                // Another replica may lead in a few seconds: stop writing at
                // once, without waiting for reconciles in flight.
                tracing::error!("leadership not confirmed for {} s; exiting", FENCE.as_secs());
                std::process::exit(1);
            }
        }
    }
    .boxed()
    .shared()
}

/// How long a leader may go without confirming that it holds the Lease:
/// less than the Lease's 15 s duration, so it stops before another replica
/// can take over.
const FENCE: Duration = Duration::from_secs(10);

/// Resolves when leadership can no longer be confirmed: the Lease names
/// another holder, or it could not be read for [`FENCE`]. kube-lease-manager
/// reports a lost lease only once it reaches the apiserver again, so a
/// leader cut off from it (a network partition) went on writing to the
/// stores' databases after another replica had taken over.
async fn fence(client: kube::Client, namespace: String, name: String, identity: String) {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client, &namespace);
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let read = tokio::time::timeout(Duration::from_secs(2), leases.get(&name)).await;
        match read {
            Ok(Ok(lease)) => {
                let holder = lease.spec.and_then(|s| s.holder_identity);
                if holder.as_deref() != Some(identity.as_str()) {
                    return;
                }
                confirmed = tokio::time::Instant::now();
            }
            _ if confirmed.elapsed() >= FENCE => return,
            _ => {}
        }
    }
}

/// Where the Lease lives: the flag or POD_NAMESPACE, else the namespace of
/// the service account Kubernetes mounts into every pod. Never a guess
/// such as `default` or the kubeconfig's context: an operator started by
/// hand next to the chart's would then lead in another namespace while the
/// chart's leads in its own, and both would reconcile.
fn lease_namespace(configured: Option<&str>) -> Option<String> {
    const IN_CLUSTER: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
    configured
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string(IN_CLUSTER).ok())
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
