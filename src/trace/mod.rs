//! OpenTelemetry traces: one span per attempt, a child of the trace its
//! producer was in, exported over OTLP/HTTP.
//!
//! **Off unless configured**, through the standard environment variables
//! only: tracing is on when `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, and off when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
//! The SDK reads the rest itself: `OTEL_SERVICE_NAME` (`mongoq` when unset),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` (and `_ARG`; the
//! default, `parentbased_always_on`, follows the producer's sampled flag),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `http/json`), headers,
//! timeout, `OTEL_BSP_*` for the batch processor.
//!
//! **The producer's side** is a `traceparent` field on the job (W3C Trace
//! Context, `00-<trace id>-<span id>-<flags>`): `enqueue --traceparent`, a
//! plain field from `mongosh`, or [`crate::EnqueueOptions::traceparent`]
//! (which the Rust API fills from the current OpenTelemetry context when
//! left empty). A field that is not a valid `traceparent` is ignored: the
//! attempt starts a trace of its own.
//!
//! **The worker's side**: the runner starts an attempt's span (kind
//! consumer, `process <queue>`) as its handler starts, with the queue, the
//! job's id, the attempt and its wait, and ends it with the outcome; the
//! handler sees the span's own `traceparent` ([`crate::Job::traceparent`],
//! `TRACEPARENT` for `--exec`, a `traceparent` field on `--pipe`'s job
//! line), so its spans nest under the attempt.
//!
//! **No async runtime on our threads.** The SDK's `BatchSpanProcessor`
//! exports from a thread of its own, and the OTLP/HTTP exporter sends with
//! reqwest's blocking client, whose runtime lives on a thread of its own
//! too: a handler thread only hands a finished span to the processor's
//! channel. Were the collector slow or gone, spans are dropped when that
//! channel is full (`OTEL_BSP_MAX_QUEUE_SIZE`), never waited for.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::error::Error;

/// The attempt spans' exporter, when tracing is configured.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

/// Whether the environment asks for traces (see the module docs).
pub fn configured() -> bool {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    match var("OTEL_TRACES_EXPORTER") {
        Some(exporter) if exporter.eq_ignore_ascii_case("none") => false,
        Some(exporter) if exporter.eq_ignore_ascii_case("otlp") => true,
        _ => {
            var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        }
    }
}

impl Tracing {
    /// The exporter the environment configures, or `None` when it asks
    /// for no traces. An exporter that cannot be built (a bad endpoint, an
    /// unsupported protocol) is an error naming the variable to fix.
    pub fn from_env() -> Result<Option<Tracing>, Error> {
        if !configured() {
            return Ok(None);
        }
        if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p.trim() == "grpc") {
            return Err(Error::config(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "mongoq exports traces over OTLP/HTTP: set it to http/protobuf (the default) or http/json, and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)",
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| {
                Error::config(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("cannot build the OTLP/HTTP trace exporter: {e}"),
                )
            })?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|n| !n.trim().is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name"));
        if !named {
            resource = resource.with_service_name("mongoq");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("mongoq");
        Ok(Some(Tracing { provider, tracer }))
    }

    /// An exporter to `endpoint` (the full URL, e.g.
    /// `http://collector:4318/v1/traces`), sampling every attempt: for a
    /// program that configures tracing itself (the bench does).
    pub fn to_endpoint(endpoint: &str) -> Result<Tracing, Error> {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| {
                Error::config(
                    "endpoint",
                    format!("cannot build the OTLP/HTTP trace exporter: {e}"),
                )
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name("mongoq")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("mongoq");
        Ok(Tracing { provider, tracer })
    }

    /// Starts the span of an attempt of `job` (of `queue`) starting now,
    /// a child of `parent` (the producer's `traceparent`) when that is valid.
    pub fn start_attempt(
        &self,
        queue: &str,
        job_id: &str,
        attempt: u32,
        wait: Option<Duration>,
        parent: Option<&str>,
    ) -> Attempt {
        let parent = parent.map_or_else(Context::new, extract);
        let mut attributes = vec![
            KeyValue::new("messaging.system", "mongoq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", queue.to_string()),
            KeyValue::new("messaging.message.id", job_id.to_string()),
            KeyValue::new("mongoq.attempt", i64::from(attempt)),
        ];
        if let Some(wait) = wait {
            attributes.push(KeyValue::new(
                "mongoq.wait_ms",
                i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
            ));
        }
        let span = self
            .tracer
            .span_builder(format!("process {queue}"))
            .with_kind(SpanKind::Consumer)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let context = parent.with_span(span);
        let traceparent = inject(&context);
        Attempt {
            context,
            traceparent,
        }
    }

    /// Exports what is left (at most the exporter's timeout): the worker
    /// calls it as it stops.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            log::warn!("could not export the last trace spans: {error}");
        }
    }
}

/// An attempt's span, ended by [`Attempt::end`].
pub struct Attempt {
    context: Context,
    /// The span's own `traceparent`, for the handler.
    pub traceparent: Option<String>,
}

impl Attempt {
    /// Ends the span with what became of the attempt (`completed`,
    /// `retried`, `failed`, `snoozed`, `handed back`), and the error if it
    /// failed.
    pub fn end(self, outcome: &str, error: Option<&str>) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new("mongoq.outcome", outcome.to_string()));
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// The context a `traceparent` names (empty when it is not valid).
fn extract(traceparent: &str) -> Context {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.trim().to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of `context`'s span, if it has a valid one.
fn inject(context: &Context) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove("traceparent")
}

/// Whether `text` is a W3C `traceparent` with a valid trace and span id.
pub fn is_traceparent(text: &str) -> bool {
    extract(text).span().span_context().is_valid()
}

/// The `traceparent` of the current OpenTelemetry context, if a valid span
/// is active: what the Rust API stores on a job enqueued without one.
pub fn current_traceparent() -> Option<String> {
    let context = Context::current();
    context
        .span()
        .span_context()
        .is_valid()
        .then(|| inject(&context))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_goes_in_and_comes_out_the_same() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(text));
        assert_eq!(inject(&extract(text)).as_deref(), Some(text));
        for bad in [
            "",
            "nonsense",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
        assert_eq!(current_traceparent(), None, "no span is active here");
    }
}
