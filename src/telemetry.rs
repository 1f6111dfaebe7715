//! The tracing subscriber: human-readable or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,tokio_cron_scheduler=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// OpenTelemetry traces (DESIGN §16): with an OTLP/HTTP endpoint configured, an `ingest` span per
/// ingest request and a `deliver` span per delivery attempt are exported in batches from a
/// thread of their own, so a slow or dead collector never holds up ingest or delivery (spans
/// over the queue's bound are dropped, and failed exports counted in
/// `herald_trace_export_failures_total`). Sampling is the SDK's: parent-based by default, so a
/// producer's sampled flag decides, and `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose
/// another. Without an endpoint nothing is exported, and a producer's `traceparent` is still
/// carried to the receivers with a fresh span id per attempt.
pub mod traces {
    use std::str::FromStr;
    use std::time::Duration;

    use opentelemetry::trace::{
        Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    };

    use crate::domain::trace::{TraceContext, TraceParent, new_span_id};

    /// Failed span exports (the collector is down or refused them).
    pub const EXPORT_FAILURES: &str = "herald_trace_export_failures_total";

    /// How often the batch processor sends what it holds.
    const EXPORT_DELAY: Duration = Duration::from_millis(500);

    /// The process's tracer; [`Traces::off`] when no endpoint is configured.
    #[derive(Clone, Debug)]
    pub struct Traces {
        exporting: Option<(SdkTracerProvider, SdkTracer)>,
    }

    /// An exporter that counts its failures.
    #[derive(Debug)]
    struct Counted<E>(E);

    impl<E: SpanExporter> SpanExporter for Counted<E> {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let result = self.0.export(batch).await;
            if result.is_err() {
                metrics::counter!(EXPORT_FAILURES).increment(1);
            }
            result
        }

        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.0.shutdown_with_timeout(timeout)
        }

        fn force_flush(&self) -> OTelSdkResult {
            self.0.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.0.set_resource(resource);
        }
    }

    impl Traces {
        /// No export.
        pub fn off() -> Traces {
            Traces { exporting: None }
        }

        /// Exports to `endpoint` (an OTLP/HTTP traces URL), or nothing when `None`.
        pub fn start(endpoint: Option<&str>) -> anyhow::Result<Traces> {
            let Some(endpoint) = endpoint else { return Ok(Traces::off()) };
            metrics::describe_counter!(
                EXPORT_FAILURES,
                "Span exports that failed (the collector is down or refused them)."
            );
            metrics::counter!(EXPORT_FAILURES).absolute(0);
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()?;
            let config = BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
            let processor = BatchSpanProcessor::builder(Counted(exporter)).with_batch_config(config).build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(Resource::builder().with_service_name("herald").build())
                .build();
            let tracer = provider.tracer("herald");
            tracing::info!(endpoint, "exporting OpenTelemetry traces");
            Ok(Traces { exporting: Some((provider, tracer)) })
        }

        /// Sends what is left and stops.
        pub fn shutdown(&self) {
            if let Some((provider, _)) = &self.exporting
                && let Err(error) = provider.shutdown()
            {
                tracing::warn!(%error, "could not flush the last spans");
            }
        }

        /// Starts a span of `kind` named `name` under `parent` (a producer's, or one Herald
        /// stored); `None` when nothing is exported.
        fn span(
            &self,
            name: &'static str,
            kind: SpanKind,
            parent: Option<&TraceContext>,
            attributes: Vec<KeyValue>,
        ) -> Option<Span> {
            let (_, tracer) = self.exporting.as_ref()?;
            let context = parent.map_or_else(Context::new, remote);
            let span = tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attributes)
                .start_with_context(tracer, &context);
            Some(Span(span))
        }

        /// The span of one ingest request under the producer's `traceparent`, if any.
        pub fn ingest(&self, parent: Option<&TraceContext>, tenant_id: &str, events: usize) -> Option<Span> {
            let attributes = vec![
                KeyValue::new("herald.tenant_id", tenant_id.to_owned()),
                KeyValue::new("herald.events", events as i64),
            ];
            self.span("ingest", SpanKind::Server, parent, attributes)
        }

        /// The span of one delivery attempt under its event's stored context; a batch request's
        /// span is in its first member's trace, linked to the other members' (`linked`).
        pub fn attempt(
            &self,
            parent: &TraceContext,
            linked: &[&TraceContext],
            event_id: &str,
            endpoint_id: &str,
            attempt: i32,
        ) -> Option<Span> {
            let (_, tracer) = self.exporting.as_ref()?;
            let attributes = vec![
                KeyValue::new("herald.event_id", event_id.to_owned()),
                KeyValue::new("herald.endpoint_id", endpoint_id.to_owned()),
                KeyValue::new("herald.attempt_number", i64::from(attempt)),
            ];
            let links = linked
                .iter()
                .map(|trace| Link::with_context(remote(trace).span().span_context().clone()))
                .collect();
            let span = tracer
                .span_builder("deliver")
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .with_links(links)
                .start_with_context(tracer, &remote(parent));
            Some(Span(span))
        }
    }

    /// An exported span in progress.
    pub struct Span(opentelemetry_sdk::trace::Span);

    impl Span {
        /// The context to carry on: this span as the parent, in the same trace, with its flags.
        pub fn context(&self, state: Option<&str>) -> Option<TraceContext> {
            let context = self.0.span_context();
            context.is_valid().then(|| TraceContext {
                parent: TraceParent {
                    trace_id: context.trace_id().to_string(),
                    parent_id: context.span_id().to_string(),
                    flags: context.trace_flags().to_u8(),
                },
                state: state.map(str::to_owned),
            })
        }

        /// Ends an attempt's span with what happened on the wire.
        pub fn end_attempt(mut self, status_code: Option<u16>, outcome: &'static str, error: Option<&str>) {
            if let Some(status) = status_code {
                self.0.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            }
            self.0.set_attribute(KeyValue::new("herald.outcome", outcome));
            if let Some(error) = error {
                self.0.set_status(Status::error(error.to_owned()));
            }
            self.0.end();
        }

        /// Ends an ingest span with the answer's status.
        pub fn end_ingest(mut self, status_code: u16) {
            self.0.set_attribute(KeyValue::new("http.response.status_code", i64::from(status_code)));
            self.0.end();
        }
    }

    /// The remote parent `trace` names.
    fn remote(trace: &TraceContext) -> Context {
        let parent = &trace.parent;
        let span = SpanContext::new(
            TraceId::from_hex(&parent.trace_id).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&parent.parent_id).unwrap_or(SpanId::INVALID),
            TraceFlags::new(parent.flags),
            true,
            trace.state.as_deref().and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default(),
        );
        Context::new().with_remote_span_context(span)
    }

    /// The `traceparent` an attempt carries: its exported span's, or without export a fresh span
    /// id in the stored trace.
    pub fn attempt_traceparent(stored: &TraceContext, span: Option<&Span>) -> String {
        span.and_then(|span| span.context(None))
            .map(|context| context.parent.to_header())
            .unwrap_or_else(|| stored.parent.child(&new_span_id()))
    }
}
