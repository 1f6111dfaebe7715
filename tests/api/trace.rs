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
