//! Signatures against the reference Standard Webhooks libraries: the Rust crate (always) and the
//! Python package (when `HERALD_TEST_PYTHON` names a python that has it installed).

use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use herald::domain::signing::{secret_key, sign, signature_header};
use serde_json::json;
use standardwebhooks::Webhook;

use crate::helpers::{id_of, spawn_app};
use crate::receiver::{Receiver, Recorded};

/// A python interpreter with the `standardwebhooks` package installed.
const PYTHON_ENV: &str = "HERALD_TEST_PYTHON";

const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const VERIFY_SCRIPT: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
body = open(sys.argv[1], "rb").read()
headers = json.load(open(sys.argv[2]))
for secret in sys.argv[3:]:
    Webhook(secret).verify(body, headers)
print("verified")
"#;

fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_str(id).unwrap());
    headers.insert("webhook-timestamp", HeaderValue::from_str(&timestamp.to_string()).unwrap());
    headers.insert("webhook-signature", HeaderValue::from_str(signature).unwrap());
    headers
}

#[test]
fn the_spec_test_vector_signs_alike_with_the_rust_crate_and_with_herald() {
    let crate_signature =
        Webhook::new(VECTOR_SECRET).unwrap().sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY).unwrap();
    assert_eq!(crate_signature, VECTOR_SIGNATURE);
    let ours = sign(&secret_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
    assert_eq!(ours, VECTOR_SIGNATURE);
    // `verify` refuses timestamps older than five minutes, so the vector is re-signed at now.
    let now = chrono::Utc::now().timestamp();
    let header = signature_header(&[VECTOR_SECRET], VECTOR_ID, now, VECTOR_BODY);
    Webhook::new(VECTOR_SECRET)
        .unwrap()
        .verify(VECTOR_BODY, &headers(VECTOR_ID, now, &header))
        .expect("verifies");
    let stale = headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE);
    assert!(
        Webhook::new(VECTOR_SECRET).unwrap().verify(VECTOR_BODY, &stale).is_err(),
        "a 2021 timestamp is too old"
    );
}

#[test]
fn a_two_secret_header_verifies_with_either_secret_and_not_with_a_third() {
    let other = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let third = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let now = chrono::Utc::now().timestamp();
    let header = signature_header(&[VECTOR_SECRET, other], VECTOR_ID, now, VECTOR_BODY);
    assert_eq!(header.matches(' ').count(), 1, "one space between entries: {header:?}");
    let map = headers(VECTOR_ID, now, &header);
    for secret in [VECTOR_SECRET, other] {
        Webhook::new(secret).unwrap().verify(VECTOR_BODY, &map).expect("verifies with either secret");
    }
    assert!(Webhook::new(third).unwrap().verify(VECTOR_BODY, &map).is_err());
}

/// Runs the Python verifier over `request` with `secrets`; true when every secret verifies.
async fn python_verifies(python: &str, dir: &Path, name: &str, request: &Recorded, secrets: &[&str]) -> bool {
    let body = dir.join(format!("{name}.body"));
    let header_file = dir.join(format!("{name}.headers.json"));
    std::fs::write(&body, &request.body).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), json!(value.to_str().unwrap())))
        .collect();
    std::fs::write(&header_file, serde_json::to_vec(&map).unwrap()).unwrap();
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg(VERIFY_SCRIPT)
        .arg(&body)
        .arg(&header_file)
        .args(secrets)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("python finishes within 30 s")
        .expect("python runs");
    let ok = output.status.success() && String::from_utf8_lossy(&output.stdout).contains("verified");
    if !ok {
        eprintln!("python refused {name}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    ok
}

#[tokio::test]
#[cfg_attr(
    not(herald_test_python),
    ignore = "needs a Python with `standardwebhooks`: set HERALD_TEST_PYTHON"
)]
async fn real_deliveries_verify_with_the_python_library_before_and_during_a_rotation() {
    let python = std::env::var(PYTHON_ENV).expect("HERALD_TEST_PYTHON");
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();

    app.emit(&tenant, "order.created", &json!({"n": 1, "s": "é ü"})).await;
    let single = receiver.wait_for("/hook", 1, Duration::from_secs(10)).await.remove(0);
    assert!(python_verifies(&python, dir.path(), "single", &single, &[&old]).await, "one secret");

    let path = format!("/v1/tenants/{tenant}/endpoints/{}/secret/rotate", id_of(&endpoint));
    let rotated = app.post(&path, &app.admin_token, &json!({"grace_period_seconds": 600})).await;
    rotated.expect(200);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    app.emit(&tenant, "order.created", &json!({"n": 2})).await;
    let rotating = receiver.wait_for("/hook", 2, Duration::from_secs(10)).await.remove(1);
    assert_eq!(rotating.header("webhook-signature").unwrap().split(' ').count(), 2);
    assert!(python_verifies(&python, dir.path(), "rotating", &rotating, &[&new, &old]).await, "both secrets");

    let stranger = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    assert!(
        !python_verifies(&python, dir.path(), "stranger", &rotating, &[stranger]).await,
        "a wrong secret fails"
    );
    assert!(
        !python_verifies(&python, dir.path(), "too-new", &single, &[&new]).await,
        "the new secret did not sign the first"
    );
}

/// A directory holding `request`'s body (`body`) and its headers as a JSON object
/// (`headers.json`), for a script to verify.
fn saved(request: &Recorded) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body"), &request.body).unwrap();
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), json!(value.to_str().unwrap())))
        .collect();
    std::fs::write(dir.path().join("headers.json"), serde_json::to_vec(&headers).unwrap()).unwrap();
    dir
}

/// The code block in `language` of the ed25519 section of docs/receiving.md, as written there.
fn docs_v1a_snippet(language: &str) -> String {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/receiving.md")).unwrap();
    let section = docs.split("## ed25519 signatures").nth(1).expect("the ed25519 section");
    let block = section.split(&format!("```{language}\n")).nth(1).expect("the block");
    block.split("```").next().expect("its end").to_owned()
}

/// Makes a real ed25519 delivery and runs `interpreter flag script body headers.json key other`,
/// where `script` verifies with `key`, with `other` and with a changed body and prints the three
/// answers; returns what it printed.
async fn run_v1a_snippet(interpreter: &str, flag: &str, script: &str) -> String {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/hook"), json!({"signature_scheme": "ed25519"})).await;
    let public_key = endpoint["public_key"].as_str().unwrap().to_owned();
    app.emit(&tenant, "order.created", &json!({"n": 1})).await;
    let request = receiver.wait_for("/hook", 1, Duration::from_secs(15)).await.remove(0);
    let dir = saved(&request);
    let run = tokio::process::Command::new(interpreter)
        .arg(flag)
        .arg(script)
        .arg(dir.path().join("body"))
        .arg(dir.path().join("headers.json"))
        .arg(&public_key)
        .arg("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("it finishes").expect("it runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The docs' Python verifier accepts a real ed25519 delivery with the endpoint's public key, and
/// refuses it with another key or a changed body.
#[tokio::test]
#[cfg_attr(not(herald_test_python), ignore = "needs a Python with `cryptography`: set HERALD_TEST_PYTHON")]
async fn the_docs_python_snippet_verifies_a_real_ed25519_delivery() {
    let python = std::env::var(PYTHON_ENV).expect("HERALD_TEST_PYTHON");
    let script = format!(
        "{}\nimport json, sys\nheaders = json.load(open(sys.argv[2]))\nbody = open(sys.argv[1], 'rb').read()\n\
         print(verify_v1a(sys.argv[3], headers, body), verify_v1a(sys.argv[4], headers, body), \
         verify_v1a(sys.argv[3], headers, body + b' '))\n",
        docs_v1a_snippet("python")
    );
    assert_eq!(
        run_v1a_snippet(&python, "-c", &script).await,
        "True False False",
        "right key, other key, changed body"
    );
}

/// The docs' Node verifier does the same.
#[tokio::test]
#[cfg_attr(not(herald_test_node), ignore = "needs Node: set HERALD_TEST_NODE")]
async fn the_docs_node_snippet_verifies_a_real_ed25519_delivery() {
    let node = std::env::var("HERALD_TEST_NODE").expect("HERALD_TEST_NODE");
    let script = format!(
        "{}\nconst fs = require('node:fs');\nconst [body, headerFile, key, other] = process.argv.slice(1);\n\
         const headers = JSON.parse(fs.readFileSync(headerFile));\nconst bytes = fs.readFileSync(body);\n\
         console.log(verifyV1a(key, headers, bytes), verifyV1a(other, headers, bytes), \
         verifyV1a(key, headers, Buffer.concat([bytes, Buffer.from(' ')])));\n",
        docs_v1a_snippet("js")
    );
    assert_eq!(
        run_v1a_snippet(&node, "-e", &script).await,
        "true false false",
        "right key, other key, changed body"
    );
}

/// The docs' Python batch handler verifies a real batch request and keeps each event once: the
/// same request again yields nothing new, and a changed body is refused.
#[tokio::test]
#[cfg_attr(
    not(herald_test_python),
    ignore = "needs a Python with `standardwebhooks`: set HERALD_TEST_PYTHON"
)]
async fn the_docs_python_batch_handler_verifies_a_real_batch_and_dedupes_by_event_id() {
    let python = std::env::var(PYTHON_ENV).expect("HERALD_TEST_PYTHON");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/receiving.md")).unwrap();
    let section = docs.split("## Batches").nth(1).expect("the batches section");
    let handler = section.split("```python\n").nth(1).and_then(|b| b.split("```").next()).expect("the block");
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app
        .tenant_with_endpoint(
            &receiver.url("/batch"),
            json!({"batch": {"max_events": 10, "max_wait": "200ms"}}),
        )
        .await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let events: Vec<serde_json::Value> =
        (0..3).map(|n| json!({"event": "order.created", "data": {"n": n}})).collect();
    app.post(&format!("/v1/tenants/{tenant}/events/batch"), &app.admin_token, &json!({"events": events}))
        .await
        .expect(202);
    let request = receiver.wait_for("/batch", 1, Duration::from_secs(15)).await.remove(0);
    let dir = saved(&request);
    let script = format!(
        "{handler}\nimport json, sys\nheaders = json.load(open(sys.argv[2]))\nbody = open(sys.argv[1], 'rb').read()\n\
         first = handle(sys.argv[3], headers, body)\nagain = handle(sys.argv[3], headers, body)\n\
         try:\n    handle(sys.argv[3], headers, body + b' ')\n    changed = 'accepted'\nexcept Exception:\n    changed = 'refused'\n\
         print(len(first), len(again), changed)\n"
    );
    let run = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(&script)
        .arg(dir.path().join("body"))
        .arg(dir.path().join("headers.json"))
        .arg(&secret)
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("it finishes").expect("it runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "3 0 refused",
        "three new, none again, a changed body refused"
    );
}
