//! OTLP trace export, configured by the standard `OTEL_*` variables.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and off otherwise: then no
//! OpenTelemetry layer is installed, the trace-only spans are disabled
//! callsites, and nothing is allocated or sent.
//!
//! The variables are read once, by [`TraceSettings::from_env`], which
//! refuses a value it cannot honour with one line naming the variable (the
//! SDK itself would fall back silently). The exporter speaks OTLP over
//! HTTP/protobuf (every collector's port 4318) through the reqwest client
//! the data plane already has, TLS included; gRPC would pull in a second
//! HTTP/2 stack for the same spans.

use std::{fmt, time::Duration};

use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    trace::{Sampler, SdkTracerProvider},
    Resource,
};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::{filter::filter_fn, registry::LookupSpan, Layer};

use super::context::TARGET;

/// A variable that cannot be used, with what is wrong; displays as one
/// line, like the data plane's other configuration errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct TraceConfigError {
    pub var: &'static str,
    pub problem: String,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`, `_ARG`), by the
/// specification's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// What the trace pipeline of one process is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// `service.name`: `OTEL_SERVICE_NAME`, else the one in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's default.
    pub service_name: String,
    /// `service.instance.id`: the pod.
    pub instance: String,
    pub sampler: SamplerChoice,
    /// One export request's timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`,
    /// else `OTEL_EXPORTER_OTLP_TIMEOUT`, in ms (10 s).
    pub export_timeout: Duration,
}

impl TraceSettings {
    /// Reads the `OTEL_*` variables through `var`. `Ok(None)` means export
    /// is off: no endpoint, `OTEL_TRACES_EXPORTER=none` or
    /// `OTEL_SDK_DISABLED=true`.
    pub fn from_env(
        default_service: &str,
        instance: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceConfigError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if !exporting(&set)? {
            return Ok(None);
        }
        let sampler = sampler(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?;
        let export_timeout = exporter_numbers(&set)?;
        headers(
            set("OTEL_EXPORTER_OTLP_TRACES_HEADERS").as_deref(),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        )?;
        headers(
            set("OTEL_EXPORTER_OTLP_HEADERS").as_deref(),
            "OTEL_EXPORTER_OTLP_HEADERS",
        )?;
        let service_name = set("OTEL_SERVICE_NAME")
            .or_else(|| {
                set("OTEL_RESOURCE_ATTRIBUTES")?
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k.trim() == "service.name")
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| default_service.to_owned());
        Ok(Some(Self {
            service_name,
            instance: instance.to_owned(),
            sampler,
            export_timeout,
        }))
    }
}

/// Whether traces are to be exported, by the variables `set` reads (each
/// trimmed, empty as unset): not switched off, and an endpoint that is an
/// HTTP URL, spoken to in the one protocol this build has.
fn exporting(set: &impl Fn(&str) -> Option<String>) -> Result<bool, TraceConfigError> {
    let err = |var: &'static str, problem: String| Err(TraceConfigError { var, problem });
    match set("OTEL_SDK_DISABLED")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("false") => {}
        Some("true") => return Ok(false),
        Some(v) => {
            return err(
                "OTEL_SDK_DISABLED",
                format!("invalid value '{v}': expected true or false"),
            )
        }
    }
    match set("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(v) => {
            return err(
                "OTEL_TRACES_EXPORTER",
                format!("invalid value '{v}': expected otlp or none"),
            )
        }
    }
    let endpoint_var = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| set(name).map(|v| (name, v)));
    let Some((name, endpoint)) = endpoint_var else {
        return Ok(false);
    };
    let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    if !scheme_ok || endpoint.parse::<http::Uri>().is_err() {
        // The value is not quoted: a URL may carry a collector's
        // credentials (https://user:token@…), and this line is printed
        // before the log redaction is set up.
        return err(
            name,
            "invalid value: expected an http:// or https:// URL, e.g. http://otel-collector:4318"
                .to_string(),
        );
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match set(name).as_deref() {
            None | Some("http/protobuf") => {}
            Some(v) => {
                return err(
                    name,
                    format!("'{v}' is not supported: syncstore exports OTLP as http/protobuf (the collector's port 4318)"),
                );
            }
        }
    }
    Ok(true)
}

/// The exporter's and batch processor's numeric variables, which the SDK
/// would otherwise ignore silently when malformed: each an unsigned
/// integer (sizes above 0). Returns the export request timeout.
fn exporter_numbers(set: &impl Fn(&str) -> Option<String>) -> Result<Duration, TraceConfigError> {
    let number = |var: &'static str, least: u64| -> Result<Option<u64>, TraceConfigError> {
        let Some(v) = set(var) else { return Ok(None) };
        match v.parse::<u64>() {
            Ok(n) if n >= least => Ok(Some(n)),
            _ => Err(TraceConfigError {
                var,
                problem: format!("invalid value '{v}': expected an integer of at least {least}"),
            }),
        }
    };
    for (var, least) in [
        ("OTEL_BSP_SCHEDULE_DELAY", 0),
        ("OTEL_BSP_EXPORT_TIMEOUT", 0),
        ("OTEL_BSP_MAX_QUEUE_SIZE", 1),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1),
        ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", 1),
    ] {
        number(var, least)?;
    }
    let general = number("OTEL_EXPORTER_OTLP_TIMEOUT", 1)?;
    let traces = number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 1)?;
    Ok(traces
        .or(general)
        .map_or(Duration::from_secs(10), Duration::from_millis))
}

/// `OTEL_EXPORTER_OTLP_HEADERS` (or its traces form): `key=value` pairs
/// separated by commas. A malformed list is refused without quoting it,
/// since its values are usually the collector's credentials.
fn headers(value: Option<&str>, var: &'static str) -> Result<(), TraceConfigError> {
    let Some(value) = value else { return Ok(()) };
    let well_formed = value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .all(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, _)| !k.trim().is_empty())
        });
    if well_formed {
        Ok(())
    } else {
        Err(TraceConfigError {
            var,
            problem: "invalid value (not shown: it may hold credentials): expected key=value pairs separated by commas".into(),
        })
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument; the default is the
/// specification's `parentbased_always_on`.
fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerChoice, TraceConfigError> {
    let ratio = || -> Result<f64, TraceConfigError> {
        let Some(arg) = &arg else { return Ok(1.0) };
        match arg.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(TraceConfigError {
                var: "OTEL_TRACES_SAMPLER_ARG",
                problem: format!("invalid value '{arg}': expected a ratio from 0 to 1"),
            }),
        }
    };
    Ok(match name.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
        Some("always_on") => SamplerChoice::AlwaysOn,
        Some("always_off") => SamplerChoice::AlwaysOff,
        Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
        Some(v) => {
            return Err(TraceConfigError {
                var: "OTEL_TRACES_SAMPLER",
                problem: format!(
                    "invalid value '{v}': expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            })
        }
    })
}

/// Whether the trace layer wants a callsite: our trace-only spans, and no
/// events (a log line can carry what the redaction of [`super::Redacting`]
/// exists for; spans carry only the attributes set on purpose).
pub fn wanted(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == TARGET
}

/// The running trace pipeline: flush it with [`Exporting::shutdown`]
/// before the process exits, or the last batch is lost.
#[derive(Debug, Clone)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Exports what is still buffered and stops the exporter. Blocks on
    /// the export, so it runs on a blocking thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "traces not flushed at shutdown");
        }
    }
}

/// A failure to build the pipeline (a variable the exporter rejects).
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace exporter: {0}")]
pub struct PipelineError(String);

/// Builds the exporter, the batch processor and the `tracing` layer that
/// feeds it; must run inside the Tokio runtime, which carries the
/// exporter's requests.
pub fn pipeline<S>(
    settings: &TraceSettings,
) -> Result<(impl Layer<S> + Send + Sync, Exporting), PipelineError>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let client = ExportClient::new(settings.export_timeout).map_err(PipelineError)?;
    // The endpoint, headers and timeout come from the standard variables,
    // read by the exporter as the specification says (a traces endpoint
    // as given, the general one with /v1/traces appended).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .build()
        .map_err(|e| PipelineError(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", settings.instance.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("syncstore");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Code locations and thread names say nothing a span name does not,
        // and cost four attributes a span.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        // Busy and idle time per span: a clock read on every poll.
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(wanted));
    Ok((layer, Exporting { provider }))
}

/// The exporter's HTTP client: the data plane's reqwest, driven on the
/// Tokio runtime. The SDK's batch processor exports from a thread of its
/// own and waits there for each request.
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportClient")
    }
}

impl ExportClient {
    fn new(timeout: Duration) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "trace export needs the Tokio runtime".to_string())?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let response = http.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, TraceConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::from_env("syncstore", "pod-a", |k| vars.get(k).cloned())
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(read(&on).unwrap().is_some());
        for off in [
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_SDK_DISABLED", "true"),
        ] {
            assert_eq!(read(&[on[0], off]), Ok(None), "{off:?}");
        }
    }

    #[test]
    fn the_service_name_comes_from_the_standard_variables_in_their_order() {
        let endpoint = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://c:4318/v1/traces",
        );
        let name = |vars: &[(&str, &str)]| read(vars).unwrap().unwrap().service_name;
        assert_eq!(name(&[endpoint]), "syncstore");
        let attrs = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name=edge",
        );
        assert_eq!(name(&[endpoint, attrs]), "edge");
        assert_eq!(
            name(&[endpoint, attrs, ("OTEL_SERVICE_NAME", "mine")]),
            "mine"
        );
    }

    #[test]
    fn samplers_follow_the_specification_names() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let sampler = |vars: &[(&str, &str)]| {
            let mut all = vec![endpoint];
            all.extend_from_slice(vars);
            read(&all).map(|s| s.unwrap().sampler)
        };
        assert_eq!(sampler(&[]), Ok(SamplerChoice::ParentBasedAlwaysOn));
        assert_eq!(
            sampler(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ]),
            Ok(SamplerChoice::ParentBasedTraceIdRatio(0.25))
        );
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]),
            Ok(SamplerChoice::AlwaysOff)
        );
        let bad = sampler(&[("OTEL_TRACES_SAMPLER", "sometimes")]).unwrap_err();
        assert_eq!(bad.var, "OTEL_TRACES_SAMPLER");
        let bad = sampler(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        assert_eq!(bad.var, "OTEL_TRACES_SAMPLER_ARG");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let cases = [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_TRACES_EXPORTER", "zipkin"),
                ],
                "OTEL_TRACES_EXPORTER",
            ),
        ];
        for (vars, var) in cases {
            let e = read(&vars).unwrap_err();
            assert_eq!(e.var, var, "{vars:?}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn a_refused_endpoint_or_header_list_is_not_quoted() {
        for (var, value) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "grpc://user:Hunter2Secret@c:4318",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://u:Hunter2Secret@[bad",
            ),
        ] {
            let e = read(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(!e.to_string().contains("Hunter2Secret"), "{e}");
        }
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let e = read(&[endpoint, (var, "Hunter2Secret")]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(!e.to_string().contains("Hunter2Secret"), "{e}");
        }
        let fine = read(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=x, team=y,"),
        ]);
        assert!(fine.unwrap().is_some());
    }

    #[test]
    fn malformed_exporter_numbers_stop_startup_by_name() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-5"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "1s"),
        ] {
            let e = read(&[endpoint, (var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
        let timeout = |vars: &[(&str, &str)]| {
            let mut all = vec![endpoint];
            all.extend_from_slice(vars);
            read(&all).unwrap().unwrap().export_timeout
        };
        assert_eq!(timeout(&[]), Duration::from_secs(10));
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]),
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ]),
            Duration::from_millis(700)
        );
    }
}
