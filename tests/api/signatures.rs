//! ed25519 (`v1a`) signatures: generated or imported keys, the public key shown instead of the
//! signing key, deliveries that verify, and a rotation that switches scheme.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::helpers::{id_of, spawn_app, spawn_stepped_app_with};
use crate::receiver::{Receiver, Recorded};

const SOON: Duration = Duration::from_secs(15);

/// The Rust verify snippet of docs/receiving.md, compiled as written (`docs.rs` checks that the
/// docs show this very file).
mod docs_snippet {
    include!("../../docs/snippets/verify_v1a.rs");

    pub(super) fn verify(public_key: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
        verify_v1a(public_key, id, timestamp, signatures, body)
    }
}

/// Whether one `v1a,` entry of the request verifies with the `whpk_` key (the docs' snippet).
fn verifies_v1a(public_key: &str, request: &Recorded) -> bool {
    let header = |name: &str| request.header(name).unwrap_or_else(|| panic!("{name}")).to_owned();
    docs_snippet::verify(
        public_key,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &request.body,
    )
}

#[tokio::test]
async fn an_ed25519_endpoint_shows_its_public_key_never_its_signing_key_and_its_requests_verify() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/hook"), json!({"signature_scheme": "ed25519"})).await;
    assert_eq!(endpoint["signature_scheme"], json!("ed25519"));
    assert_eq!(endpoint["secret"], json!(null), "the signing key is never shown");
    let public_key = endpoint["public_key"].as_str().expect("public_key").to_owned();
    assert!(public_key.starts_with("whpk_"));
    let secret = app
        .get(&format!("/v1/tenants/{tenant}/endpoints/{}/secret", id_of(&endpoint)), &app.admin_token)
        .await;
    assert_eq!(secret.body["secret"], json!(null));
    assert_eq!(secret.body["public_key"], json!(public_key));
    assert_eq!(secret.body["signature_scheme"], json!("ed25519"));

    app.emit(&tenant, "order.created", &json!({"n": 1})).await;
    let request = app.received(&receiver, "/hook", 1, SOON).await.remove(0);
    let signature = request.header("webhook-signature").unwrap();
    assert!(signature.starts_with("v1a,") && !signature.contains(' '), "{signature}");
    assert!(verifies_v1a(&public_key, &request), "the request verifies with the public key");
}

#[tokio::test]
async fn an_imported_key_in_either_form_gives_its_public_key_and_bad_input_is_refused() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let path = format!("/v1/tenants/{tenant}/endpoints");
    let seed = "whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    let made = app
        .post(
            &path,
            &token,
            &json!({"url": "https://example.com/a", "signature_scheme": "ed25519", "secret": seed}),
        )
        .await;
    made.expect(201);
    assert_eq!(made.body["public_key"], json!("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="));
    let seed_bytes = STANDARD.decode(&seed[5..]).unwrap();
    let public = STANDARD.decode("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap();
    let long = format!("whsk_{}", STANDARD.encode([seed_bytes.as_slice(), public.as_slice()].concat()));
    let made = app
        .post(
            &path,
            &token,
            &json!({"url": "https://example.com/b", "signature_scheme": "ed25519", "secret": long}),
        )
        .await;
    assert_eq!(made.body["public_key"], json!("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="));
    for (body, field) in [
        (json!({"url": "https://example.com/c", "signature_scheme": "rsa"}), "signature_scheme"),
        (
            json!({"url": "https://example.com/c", "signature_scheme": "ed25519", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
            "secret",
        ),
        (json!({"url": "https://example.com/c", "secret": seed}), "secret"),
    ] {
        app.post(&path, &token, &body).await.expect_invalid(field);
    }
}

#[tokio::test]
async fn a_rotation_that_switches_to_ed25519_signs_with_both_keys_during_the_grace() {
    let app =
        spawn_stepped_app_with(|config| config.signing.hex_header = Some("X-Hex-Signature".into())).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let rotate = format!("/v1/tenants/{tenant}/endpoints/{}/secret/rotate", id_of(&endpoint));
    let rotated = app.post(&rotate, &app.admin_token, &json!({"signature_scheme": "ed25519"})).await;
    rotated.expect(200);
    assert_eq!(rotated.body["secret"], json!(null));
    let public_key = rotated.body["public_key"].as_str().expect("public_key").to_owned();
    let shown =
        app.get(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint)), &app.admin_token).await;
    assert_eq!(shown.body["signature_scheme"], json!("ed25519"));

    app.emit(&tenant, "order.created", &json!({"n": 1})).await;
    let request = app.received(&receiver, "/hook", 1, SOON).await.remove(0);
    let signature = request.header("webhook-signature").unwrap().to_owned();
    let entries: Vec<&str> = signature.split(' ').collect();
    assert!(
        entries.len() == 2 && entries[0].starts_with("v1a,") && entries[1].starts_with("v1,"),
        "{signature}"
    );
    assert!(verifies_v1a(&public_key, &request));
    standardwebhooks::Webhook::new(&old)
        .expect("the old secret")
        .verify(&request.body, &request.headers)
        .expect("the v1 entry verifies with the previous HMAC secret");
    assert!(request.header("x-hex-signature").is_some(), "the hex header keeps coming with the HMAC secret");
}

/// Three subscriptions that say exactly what they want — a filtered `workflow.*` endpoint, a
/// JSONPath one, and one with its own timeout, retry schedule and ed25519 signatures — each get
/// exactly what they asked for, retried as asked and verifiable with the public key.
#[tokio::test]
async fn three_endpoints_each_receive_exactly_what_they_asked_for() {
    use crate::receiver::Reply;
    let app = spawn_stepped_app_with(|config| config.delivery.retry_min = Duration::from_millis(1)).await;
    let receiver = Receiver::start().await;
    for name in ["workflow.completed", "workflow.failed", "invoice.paid"] {
        app.create_event_type(name).await;
    }
    let (tenant, urgent) = app
        .tenant_with_endpoint(
            &receiver.url("/urgent"),
            json!({"event_types": ["workflow.*"], "filter": {"data.priority": {"$in": ["high", "critical"]}}}),
        )
        .await;
    let steps = app
        .add_endpoint(
            &tenant,
            &receiver.url("/steps"),
            json!({"filter": {"$jsonpath": "$.data.steps[?@.status == 'failed']"}}),
        )
        .await;
    // Fails twice, then answers: its own two-step schedule gets it there in three attempts.
    receiver.respond_sequence("/strict", vec![Reply::status(500), Reply::status(502), Reply::ok()]);
    let strict = app
        .add_endpoint(
            &tenant,
            &receiver.url("/strict"),
            json!({"event_types": ["invoice.paid"], "signature_scheme": "ed25519",
                   "delivery": {"timeout": "2s", "retry_schedule": ["5ms", "5ms"]}}),
        )
        .await;
    let events = [
        ("workflow.completed", json!({"priority": "high", "steps": [{"status": "ok"}]})),
        ("workflow.failed", json!({"priority": "low", "steps": [{"status": "failed"}]})),
        ("workflow.completed", json!({"priority": "critical", "steps": []})),
        ("invoice.paid", json!({"priority": "high", "amount": 10})),
    ];
    let mut ids = Vec::new();
    for (event, data) in &events {
        ids.push(id_of(&app.emit(&tenant, event, data).await));
    }
    let got = |path: &'static str, n: usize| {
        let app = &app;
        let receiver = &receiver;
        async move {
            app.received(receiver, path, n, SOON)
                .await
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        got("/urgent", 2).await,
        vec![ids[0].clone(), ids[2].clone()],
        "workflow.* with high or critical"
    );
    assert_eq!(got("/steps", 1).await, vec![ids[1].clone()], "a failed step");
    let strict_requests = app.received(&receiver, "/strict", 3, SOON).await;
    assert!(
        strict_requests.iter().all(|r| r.json()["id"] == json!(ids[3])),
        "only invoice.paid, three attempts"
    );
    let public_key = strict["public_key"].as_str().unwrap();
    assert!(strict_requests.iter().all(|r| verifies_v1a(public_key, r)), "every request verifies");
    let delivery = app.only_delivery(&tenant, &ids[3]).await;
    let delivery = app.delivery(&tenant, &id_of(&delivery)).await;
    assert_eq!(delivery["status"], json!("delivered"));
    assert!(delivery["attempts"].as_array().unwrap().iter().all(|a| a["timeout_ms"] == json!(2000)));
    for (response, ep) in [(&urgent, "urgent"), (&steps, "steps")] {
        assert_eq!(response["signature_scheme"], json!("hmac-sha256"), "{ep}");
    }
}
