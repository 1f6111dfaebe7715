//! Crash safety of the real binary: `herald serve` is killed with SIGKILL while deliveries are in
//! flight, started again on the same database, and every event still arrives; every request the
//! receiver saw has an attempt row, the cut-off ones closed as `interrupted`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, TestDatabase, announce_backend, eventually, id_of, ms};
use crate::receiver::{Receiver, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const EVENTS: usize = 50;

/// A running `herald serve --dev`, killed when dropped.
struct Herald {
    child: Child,
    base_url: String,
}

impl Herald {
    async fn start(dir: &Path, database_url: &str, run: usize) -> Herald {
        let mut command = Command::new(BIN);
        command.args(["serve", "--dev"]).current_dir(dir).kill_on_drop(true).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD_") {
                command.env_remove(key);
            }
        }
        let log = std::fs::File::create(dir.join(format!("herald-{run}.log"))).expect("log file");
        command
            .env("NO_COLOR", "1")
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATABASE_URL", database_url)
            .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HERALD_DELIVERY__TIMEOUT", "1s")
            .env("HERALD_DELIVERY__LEASE", "6s")
            .env("HERALD_DELIVERY__RETRY_SCHEDULE", "100ms,100ms,100ms")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().expect("herald serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let prefix = "Herald 0.1.0 listening on ";
        let find = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix(prefix) {
                    return url.trim().to_owned();
                }
            }
            panic!("herald exited before listening; see {}", dir.join(format!("herald-{run}.log")).display());
        };
        let base_url =
            tokio::time::timeout(Duration::from_secs(20), find).await.expect("herald listens within 20 s");
        // Keep reading stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Herald { child, base_url }
    }

    fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL herald");
    }

    async fn wait_for_exit(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a killed process exits at once")
            .expect("wait for herald");
    }
}

/// A minimal client for the binary's API.
struct Api {
    client: reqwest::Client,
    base_url: String,
}

impl Api {
    fn new(base_url: &str) -> Api {
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
        Api { client, base_url: base_url.to_owned() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            self.client.request(method, format!("{}{path}", self.base_url)).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: Value, want: u16) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, want, "POST {path}: {body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn all_deliveries(&self, tenant: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/v1/tenants/{tenant}/deliveries?limit=250");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={}", crate::helpers::encode_query(cursor)));
            }
            let page = self.get(&path).await;
            items.extend(page["data"].as_array().expect("data").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
        panic!("pagination does not end");
    }
}

/// What a crash-and-restart left behind.
struct Aftermath {
    events: Vec<String>,
    /// Every delivery with its attempts, once all are delivered.
    deliveries: Vec<Value>,
    /// Requests the receiver saw, by `webhook-id`.
    received: HashMap<String, usize>,
    seen_before_restart: usize,
}

/// Emits `EVENTS` events to a slow receiver, SIGKILLs the binary while requests are on the wire,
/// starts it again on the same database and waits (40 s at most) until every delivery is delivered.
async fn crash_and_restart() -> Aftermath {
    let db = TestDatabase::for_suite().await;
    announce_backend(db.backend);
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start().await;
    receiver.respond("/slow", Reply::ok().delayed(ms(400)));

    let mut first = Herald::start(dir.path(), &db.url, 1).await;
    let api = Api::new(&first.base_url);
    api.post("/v1/event-types", json!({"name": "order.created", "description": "an order"}), 201).await;
    let tenant = id_of(&api.post("/v1/tenants", json!({"name": "Crash"}), 201).await);
    // Five requests on the wire at most, so the window cannot grow to take every event before
    // the kill, however slowly a busy machine accepts them.
    let endpoint = json!({"url": receiver.url("/slow"), "max_in_flight": 5});
    api.post(&format!("/v1/tenants/{tenant}/endpoints"), endpoint, 201).await;
    let mut events = Vec::new();
    for n in 0..EVENTS {
        let body = json!({"event": "order.created", "data": {"n": n}});
        events.push(id_of(&api.post(&format!("/v1/tenants/{tenant}/events"), body, 202).await));
    }
    // Some attempts have finished and been recorded; others are on the wire.
    receiver.wait_for("/slow", 12, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(5), "requests in flight at the receiver", || async {
        (receiver.in_flight("/slow") > 0).then_some(())
    })
    .await;
    first.kill();
    first.wait_for_exit().await;
    let seen_before_restart = receiver.requests("/slow").len();
    assert!(seen_before_restart < EVENTS, "every event arrived before the kill; nothing was tested");

    let second = Herald::start(dir.path(), &db.url, 2).await;
    let api = Api::new(&second.base_url);
    let summaries = eventually(Duration::from_secs(40), "every delivery to be delivered", || async {
        let deliveries = api.all_deliveries(&tenant).await;
        let done = deliveries.len() == EVENTS && deliveries.iter().all(|d| d["status"] == json!("delivered"));
        done.then_some(deliveries)
    })
    .await;
    let mut deliveries = Vec::new();
    for summary in &summaries {
        deliveries.push(api.get(&format!("/v1/tenants/{tenant}/deliveries/{}", id_of(summary))).await);
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for request in receiver.requests("/slow") {
        *received.entry(request.header("webhook-id").expect("webhook-id").to_owned()).or_default() += 1;
    }
    Aftermath { events, deliveries, received, seen_before_restart }
}

fn attempts_of(delivery: &Value) -> &Vec<Value> {
    delivery["attempts"].as_array().expect("attempts")
}

#[tokio::test]
async fn a_killed_process_loses_no_delivery_and_every_request_seen_has_an_attempt_row() {
    let after = crash_and_restart().await;
    for event in &after.events {
        assert!(after.received.contains_key(event), "event {event} never reached the receiver");
    }
    for delivery in &after.deliveries {
        let attempts = attempts_of(delivery);
        let numbers: Vec<i64> = attempts.iter().map(|a| a["number"].as_i64().unwrap()).collect();
        assert_eq!(numbers, (1..=attempts.len() as i64).collect::<Vec<_>>(), "{delivery}");
        assert!(attempts.len() <= 4, "more than 1 + 3 attempts in one run: {delivery}");
        assert_eq!(delivery["attempt_count"], json!(attempts.len()), "{delivery}");
        assert_eq!(attempts.last().expect("an attempt")["status_code"], json!(200), "{delivery}");
        let event = delivery["event_id"].as_str().unwrap();
        let seen = after.received.get(event).copied().unwrap_or(0);
        assert!(
            seen <= attempts.len(),
            "the receiver saw {seen} requests of {event} but only {} attempts are recorded: {delivery}",
            attempts.len()
        );
    }
    eprintln!("{} requests reached the receiver before the kill", after.seen_before_restart);
}

#[tokio::test]
async fn every_attempt_cut_off_by_a_kill_is_closed_as_interrupted() {
    let after = crash_and_restart().await;
    let mut interrupted = 0;
    for delivery in &after.deliveries {
        let attempts = attempts_of(delivery);
        for attempt in &attempts[..attempts.len() - 1] {
            assert_eq!(attempt["error_kind"], json!("interrupted"), "only the kill fails here: {delivery}");
            assert!(attempt["duration_ms"].is_i64(), "an attempt was left open: {delivery}");
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "requests were in flight at the kill, so some attempt was interrupted");
    eprintln!("{interrupted} interrupted attempts recorded");
}
