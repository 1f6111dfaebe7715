//! W3C Trace Context through a real delivery (DESIGN §16): a `traceparent` and `tracestate` sent
//! with an ingest request reach every attempt of the event's deliveries, in the producer's trace
//! with a fresh span id per attempt; invalid or absent headers add nothing.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{fast_retries, id_of, spawn_stepped_app_with};
use crate::receiver::{Receiver, Reply};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// The (trace id, span id, flags) of a `traceparent`.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

#[tokio::test]
async fn the_producers_trace_reaches_every_attempt_with_a_fresh_span() {
    let receiver = Receiver::start().await;
    receiver.respond_sequence("/traced", vec![Reply::status(500), Reply::ok()]);
    let app = spawn_stepped_app_with(fast_retries).await;
    app.create_event_type("order.paid").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/traced"), json!({})).await;
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    let headers = [("traceparent", traceparent.as_str()), ("tracestate", "rojo=00f067aa0ba902b7")];
    let body = json!({"event": "order.paid", "data": {"n": 1}});
    app.post_with_headers(&format!("/v1/tenants/{tenant}/events"), &app.admin_token, &headers, &body)
        .await
        .expect(202);
    let requests = app.received(&receiver, "/traced", 2, Duration::from_secs(20)).await;
    let mut spans = Vec::new();
    for request in &requests {
        let (trace_id, span_id, flags) = fields(request.header("traceparent").expect("a traceparent"));
        assert_eq!(trace_id, TRACE_ID, "the producer's trace");
        assert_eq!(flags, "01", "the producer's sampled flag");
        assert_ne!(span_id, PRODUCER_SPAN, "a span of Herald's own");
        assert_eq!(request.header("tracestate"), Some("rojo=00f067aa0ba902b7"));
        spans.push(span_id);
    }
    assert_ne!(spans[0], spans[1], "a fresh span per attempt");

    // Batch ingest carries the request's context to each event; none or a broken one adds nothing.
    let batch = json!({"events": [{"event": "order.paid", "data": {"n": 2}}]});
    let unsampled = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-00");
    app.post_with_headers(
        &format!("/v1/tenants/{tenant}/events/batch"),
        &app.admin_token,
        &[("traceparent", unsampled.as_str())],
        &batch,
    )
    .await
    .expect(202);
    let requests = app.received(&receiver, "/traced", 3, Duration::from_secs(20)).await;
    let (trace_id, _, flags) = fields(requests[2].header("traceparent").expect("a traceparent"));
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE_ID, "00"));
    assert_eq!(requests[2].header("tracestate"), None);
    let broken = json!({"event": "order.paid", "data": {"n": 3}});
    let answer = app
        .post_with_headers(
            &format!("/v1/tenants/{tenant}/events"),
            &app.admin_token,
            &[("traceparent", "00-zz")],
            &broken,
        )
        .await;
    answer.expect(202);
    let plain = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 4})).await);
    let requests = app.received(&receiver, "/traced", 5, Duration::from_secs(20)).await;
    assert!(requests[3..].iter().all(|r| r.header("traceparent").is_none()), "no context, no header");
    assert!(requests.iter().any(|r| r.header("webhook-id") == Some(plain.as_str())));
    app.stop().await.unwrap();
}

/// One span a collector received.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: std::collections::HashMap<String, String>,
}

/// A real OTLP/HTTP collector: decodes each protobuf `ExportTraceServiceRequest` it is sent.
struct Collector {
    url: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        use prost::Message;
        let spans: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let kept = spans.clone();
        let router = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                    let mut kept = kept.lock().unwrap();
                    for span in
                        request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans)
                    {
                        let attributes = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(Any::StringValue(text)) => text.clone(),
                                    Some(Any::IntValue(n)) => n.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), value)
                            })
                            .collect();
                        kept.push(Received {
                            name: span.name.clone(),
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            attributes,
                        });
                    }
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Collector { url, spans }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn ingest_and_every_attempt_reach_an_otlp_collector_in_the_producers_trace() {
    let collector = Collector::start().await;
    let receiver = Receiver::start().await;
    receiver.respond("/traced", Reply::ok());
    let endpoint = collector.url.clone();
    let app = spawn_stepped_app_with(move |c| {
        fast_retries(c);
        c.telemetry.otlp_endpoint = Some(endpoint);
    })
    .await;
    app.create_event_type("order.paid").await;
    let (tenant, created) = app.tenant_with_endpoint(&receiver.url("/traced"), json!({})).await;
    // An unsampled trace first: its context is carried, but none of its spans is exported.
    const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = format!("00-{UNSAMPLED}-b7ad6b7169203331-00");
    let path = format!("/v1/tenants/{tenant}/events");
    let body = json!({"event": "order.paid", "data": {"n": 0}});
    let first =
        app.post_with_headers(&path, &app.admin_token, &[("traceparent", unsampled.as_str())], &body).await;
    first.expect(202);
    let first = app.only_delivery(&tenant, first.body["id"].as_str().unwrap()).await;
    app.settled(&tenant, first["id"].as_str().unwrap(), "delivered", Duration::from_secs(20)).await;
    receiver.respond_sequence("/traced", vec![Reply::status(500), Reply::ok()]);
    let sampled = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    let event = app
        .post_with_headers(
            &path,
            &app.admin_token,
            &[("traceparent", sampled.as_str())],
            &json!({"event": "order.paid", "data": {"n": 1}}),
        )
        .await;
    event.expect(202);
    let event_id = event.body["id"].as_str().unwrap().to_owned();
    let requests = app.received(&receiver, "/traced", 3, Duration::from_secs(20)).await;

    let spans = crate::helpers::eventually(
        Duration::from_secs(15),
        "the ingest span and two attempt spans",
        || async {
            let spans: Vec<Received> =
                collector.spans().into_iter().filter(|s| s.trace_id == TRACE_ID).collect();
            (spans.iter().filter(|s| s.name == "deliver").count() >= 2
                && spans.iter().any(|s| s.name == "ingest"))
            .then_some(spans)
        },
    )
    .await;
    let ingest = spans.iter().find(|s| s.name == "ingest").unwrap();
    assert_eq!(ingest.parent_span_id, PRODUCER_SPAN, "ingest is a child of the producer's span");
    assert_eq!(ingest.attributes["herald.tenant_id"], tenant);
    let mut attempts: Vec<&Received> = spans.iter().filter(|s| s.name == "deliver").collect();
    attempts.sort_by_key(|s| s.attributes["herald.attempt_number"].clone());
    for (span, (number, status)) in attempts.iter().zip([("1", "500"), ("2", "200")]) {
        assert_eq!(span.parent_span_id, ingest.span_id, "each attempt is a child of the ingest span");
        assert_eq!(span.attributes["herald.event_id"], event_id);
        assert_eq!(span.attributes["herald.endpoint_id"], id_of(&created));
        assert_eq!(span.attributes["herald.attempt_number"], number);
        assert_eq!(span.attributes["http.response.status_code"], status);
        assert!(span.attributes.contains_key("herald.outcome"));
        assert!(!span.attributes.values().any(|v| v.contains("\"n\"")), "no payload in attributes");
    }
    // The customer's handler joins the trace under each attempt's own span.
    let sent: Vec<String> =
        requests[1..].iter().map(|r| fields(r.header("traceparent").unwrap()).1).collect();
    let exported: Vec<String> = attempts.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(sent, exported);
    assert!(
        collector.spans().iter().all(|s| s.trace_id != UNSAMPLED),
        "the unsampled trace was not exported"
    );
    let (trace_id, _, flags) = fields(requests[0].header("traceparent").unwrap());
    assert_eq!((trace_id.as_str(), flags.as_str()), (UNSAMPLED, "00"), "but carried");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_collector_costs_delivery_nothing_but_a_counter() {
    let receiver = Receiver::start().await;
    receiver.respond("/traced", Reply::ok());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = crate::helpers::spawn_app_with(move |c| {
        c.telemetry.otlp_endpoint = Some(format!("http://{closed}/v1/traces"));
    })
    .await;
    app.create_event_type("order.paid").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/traced"), json!({})).await;
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    for n in 0..3 {
        let body = json!({"event": "order.paid", "data": {"n": n}});
        app.post_with_headers(
            &format!("/v1/tenants/{tenant}/events"),
            &app.admin_token,
            &[("traceparent", traceparent.as_str())],
            &body,
        )
        .await
        .expect(202);
    }
    app.received(&receiver, "/traced", 3, Duration::from_secs(20)).await;
    crate::helpers::eventually(Duration::from_secs(20), "a failed export counted", || async {
        let metrics = app.client.get(app.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let failures: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("herald_trace_export_failures_total "))
            .and_then(|value| value.trim().parse().ok())?;
        (failures >= 1.0).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}
