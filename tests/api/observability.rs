//! Observability: `/metrics` counts exactly what happened (checked against a real `herald serve`
//! process, whose counters no other test touches), and the stats API's failure rates and
//! latency percentiles equal those computed from the recorded attempts, per tenant and window.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{ADMIN_TOKEN, TestApp, TestDatabase, eventually, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// Nearest-rank percentile over whole milliseconds, as the stats API defines it.
fn nearest_rank(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank - 1])
}

/// Waits until no delivery of `tenant` is pending, then returns every delivery with attempts.
async fn settled_deliveries(app: &TestApp, tenant: &str) -> Vec<Value> {
    let list = eventually(Duration::from_secs(20), "every delivery to finish", || async {
        let response = app.get(&format!("/v1/tenants/{tenant}/deliveries?limit=250"), &app.admin_token).await;
        response.expect(200);
        let data = response.data().clone();
        data.iter().all(|d| d["status"] != "pending").then_some(data)
    })
    .await;
    let mut full = Vec::new();
    for delivery in list {
        let path = format!("/v1/tenants/{tenant}/deliveries/{}", delivery["id"].as_str().unwrap());
        full.push(app.get(&path, &app.admin_token).await.body);
    }
    full
}

#[tokio::test]
async fn stats_equal_what_the_recorded_attempts_say_and_stay_within_the_tenant() {
    let receiver = Receiver::start().await;
    receiver.respond("/ok", Reply::ok().delayed(Duration::from_millis(3)));
    receiver.respond_statuses("/flaky", &[500, 200]);
    receiver.respond("/down", Reply::status(503));
    // The breaker off: /down's deliveries run their whole schedule, which the stats count.
    let app = spawn_app_with(|c| {
        c.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
        c.delivery.breaker_failures = 0;
    })
    .await;
    app.create_event_type("order.paid").await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let (other, other_token) = app.create_tenant_and_token().await;
    let mut endpoints = HashMap::new();
    for path in ["/ok", "/flaky", "/down"] {
        let endpoint = app.create_endpoint(&tenant, &token, &json!({"url": receiver.url(path)})).await;
        endpoints.insert(path, endpoint["id"].as_str().unwrap().to_owned());
    }
    let theirs = app.create_endpoint(&other, &other_token, &json!({"url": receiver.url("/ok")})).await;
    for n in 0..6 {
        app.post(
            &format!("/v1/tenants/{tenant}/events"),
            ADMIN_TOKEN,
            &json!({"event": "order.paid", "data": {"n": n}}),
        )
        .await
        .expect(202);
    }
    let deliveries = settled_deliveries(&app, &tenant).await;
    assert_eq!(deliveries.len(), 18);

    for (path, endpoint) in &endpoints {
        let attempts: Vec<&Value> = deliveries
            .iter()
            .filter(|d| d["endpoint_id"] == endpoint.as_str())
            .flat_map(|d| d["attempts"].as_array().unwrap())
            .collect();
        let successes = attempts
            .iter()
            .filter(|a| a["status_code"].as_i64().is_some_and(|s| (200..300).contains(&s)))
            .count();
        let mut durations: Vec<i64> = attempts.iter().map(|a| a["duration_ms"].as_i64().unwrap()).collect();
        durations.sort_unstable();

        let stats =
            app.get(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}/stats?window=1h"), &token).await;
        stats.expect(200);
        let s = &stats.body;
        assert_eq!(s["attempts"], attempts.len() as i64, "{path}: {s}");
        assert_eq!(s["successes"], successes as i64, "{path}: {s}");
        assert_eq!(s["failures"], (attempts.len() - successes) as i64, "{path}: {s}");
        let rate = (attempts.len() - successes) as f64 / attempts.len() as f64;
        assert!((s["failure_rate"].as_f64().unwrap() - rate).abs() < 1e-9, "{path}: {s}");
        for (key, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
            assert_eq!(s["latency_ms"][key].as_i64(), nearest_rank(&durations, p), "{path} {key}: {s}");
        }
        assert_eq!(s["window"], "1h");
        assert_eq!(s["pending"], 0);
    }
    // /down: 6 deliveries × 4 attempts, all failed; /flaky: 500 then 200 for the first only.
    let down = &endpoints["/down"];
    let stats = app.get(&format!("/v1/tenants/{tenant}/endpoints/{down}/stats"), &token).await;
    assert_eq!(stats.body["attempts"], 24);
    assert_eq!(stats.body["failure_rate"], 1.0);
    assert_eq!(stats.body["last_error"], "HTTP 503");

    // The ranked views: the dead endpoint first; a tenant sees only its own endpoints.
    let ranked = app.get("/v1/stats/endpoints?window=1h&sort=failure_rate", ADMIN_TOKEN).await;
    ranked.expect(200);
    assert_eq!(ranked.body["data"][0]["endpoint_id"], down.as_str(), "{}", ranked.text);
    assert_eq!(ranked.body["totals"]["endpoints"], 4);
    let mine = app.get(&format!("/v1/tenants/{tenant}/stats/endpoints?sort=failures"), &token).await;
    mine.expect(200);
    let ids: Vec<&str> = mine.data().iter().map(|e| e["endpoint_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], down.as_str());
    assert!(!ids.contains(&theirs["id"].as_str().unwrap()));

    // Scoping: another tenant's endpoint is unknown; the cross-tenant view is admin-only.
    app.get(&format!("/v1/tenants/{tenant}/endpoints/{down}/stats"), &other_token).await.expect_problem(404);
    app.get(&format!("/v1/tenants/{other}/endpoints/{down}/stats"), &other_token).await.expect_problem(404);
    app.get("/v1/stats/endpoints", &token).await.expect_problem(403);
    app.get(&format!("/v1/tenants/{tenant}/endpoints/{down}/stats?window=2h"), &token)
        .await
        .expect_invalid("window");
    app.get("/v1/stats/endpoints?sort=best", ADMIN_TOKEN).await.expect_invalid("sort");
    app.get("/v1/stats/endpoints?limit=0", ADMIN_TOKEN).await.expect_invalid("limit");
}

#[tokio::test]
async fn stats_windows_leave_out_attempts_older_than_the_window() {
    use herald::domain::retry::Outcome;
    use herald::domain::time::now_micros;
    use herald::storage::AttemptRecord;

    // No dispatcher: the test records attempts itself, some of them two hours ago.
    let app = spawn_app_with(|c| c.dispatcher_enabled = false).await;
    app.create_event_type("order.paid").await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let endpoint = app.create_endpoint(&tenant, &token, &json!({"url": "http://127.0.0.1:9/never"})).await;
    let endpoint = endpoint["id"].as_str().unwrap().to_owned();
    for n in 0..4 {
        app.post(
            &format!("/v1/tenants/{tenant}/events"),
            ADMIN_TOKEN,
            &json!({"event": "order.paid", "data": {"n": n}}),
        )
        .await
        .expect(202);
    }
    let mut config = herald::config::Config { database_url: app.db.url.clone(), ..Default::default() };
    config.store.max_connections = 2;
    let store = herald::storage::connect(&config).await.unwrap();
    let claimed = store.claim_due(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let now = now_micros();
    let records: Vec<AttemptRecord> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| AttemptRecord {
            delivery_id: c.delivery_id.clone(),
            attempt_id: c.attempt_id.clone(),
            endpoint_id: c.endpoint_id.clone(),
            tenant_id: c.tenant_id.clone(),
            lease_token: c.lease_token.clone(),
            started_at: None,
            // Two attempts two hours ago (one failed), two now (both delivered).
            finished_at: if i < 2 { now - 2 * 3_600_000_000 } else { now },
            duration_ms: 10 * (i as i64 + 1),
            status_code: Some(if i == 0 { 500 } else { 200 }),
            error_kind: (i == 0).then_some(herald::domain::retry::ErrorKind::HttpStatus),
            error: (i == 0).then(|| "HTTP 500".to_owned()),
            response_body: None,
            outcome: if i == 0 { Outcome::GiveUp { disable_endpoint: false } } else { Outcome::Delivered },
            timeout_ms: None,
            last_error: (i == 0).then(|| "HTTP 500".to_owned()),
            probe: false,
            batch_id: None,
        })
        .collect();
    assert_eq!(store.record_attempts(&records).await.unwrap(), 0);
    store.close().await;

    let hour = app.get(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}/stats?window=1h"), &token).await;
    assert_eq!(hour.body["attempts"], 2, "{}", hour.text);
    assert_eq!(hour.body["failures"], 0);
    assert_eq!(hour.body["latency_ms"]["p50"], 30);
    assert_eq!(hour.body["latency_ms"]["p99"], 40);
    let day = app.get(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}/stats?window=24h"), &token).await;
    assert_eq!(day.body["attempts"], 4, "{}", day.text);
    assert_eq!(day.body["failures"], 1);
    assert_eq!(day.body["failure_rate"], 0.25);
    assert_eq!(day.body["latency_ms"]["p50"], 20);
    assert_eq!(day.body["latency_ms"]["p95"], 40);
}

/// Parses Prometheus text into `name{labels}` → value, checking every sample line's shape.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line}");
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_count_exactly_the_attempts_that_happened() {
    let receiver = Receiver::start().await;
    receiver.respond("/ok", Reply::ok());
    receiver.respond("/fail", Reply::status(500));
    receiver.respond("/slow", Reply::hang());
    let db = TestDatabase::for_suite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(["serve", "--dev"]).current_dir(dir.path()).kill_on_drop(true).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            command.env_remove(key);
        }
    }
    command
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATABASE_URL", &db.url)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HERALD_DELIVERY__TIMEOUT", "300ms")
        .env("HERALD_DELIVERY__LEASE", "6s")
        .env("HERALD_DELIVERY__RETRY_SCHEDULE", "20ms,20ms,20ms")
        // The breaker off: every run goes to its end, and the counts below are exact.
        .env("HERALD_DELIVERY__BREAKER_FAILURES", "0")
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                return rest.trim().parse::<u16>().unwrap();
            }
        }
        panic!("herald exited before listening");
    })
    .await
    .expect("herald listens within 60 s");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |path: String, body: Value| {
        let request = client.post(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{path}: {}", response.status());
            response.json::<Value>().await.unwrap()
        }
    };
    post("/v1/event-types".into(), json!({"name": "order.paid"})).await;
    let tenant =
        post("/v1/tenants".into(), json!({"name": "Metrics"})).await["id"].as_str().unwrap().to_owned();
    for path in ["/ok", "/fail", "/slow"] {
        post(format!("/v1/tenants/{tenant}/endpoints"), json!({"url": receiver.url(path)})).await;
    }
    for n in 0..3 {
        post(format!("/v1/tenants/{tenant}/events"), json!({"event": "order.paid", "data": {"n": n}})).await;
    }
    // 3 events × 3 endpoints: /ok 3 successes; /fail 3 × 4 HTTP errors; /slow 3 × 4 timeouts.
    let metrics = eventually(Duration::from_secs(30), "every delivery to finish", || {
        let client = client.clone();
        let base = base.clone();
        async move {
            let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
            let samples = parse_prometheus(&text);
            let done = samples
                .get("herald_deliveries_completed_total{result=\"delivered\"}")
                .copied()
                .unwrap_or(0.0)
                + samples.get("herald_deliveries_completed_total{result=\"failed\"}").copied().unwrap_or(0.0);
            // The store gauges are recomputed at most every 2 s: wait for them too.
            let drained = samples.get("herald_deliveries_pending") == Some(&0.0);
            (done == 9.0 && drained).then_some(samples)
        }
    })
    .await;
    let get =
        |series: &str| metrics.get(series).copied().unwrap_or_else(|| panic!("no {series} in /metrics"));
    assert_eq!(get("herald_events_ingested_total{event_type=\"order.paid\"}"), 3.0);
    assert_eq!(get("herald_deliveries_created_total"), 9.0);
    // Group commits claim first attempts and hand them over. Not necessarily all of them: a
    // dispatcher cycle that runs at the moment of a group commit (an idle poll, a wake-up) holds
    // the free slots for its transaction, and then the group claims none and the dispatcher
    // does; failures narrow /fail's and /slow's windows, and a retry in flight may leave no room.
    let handed = get("herald_handoff_requests_total");
    assert!(handed >= 1.0, "first attempts claimed at ingest: {handed}");
    assert_eq!(get("herald_delivery_attempts_total{outcome=\"success\"}"), 3.0);
    assert_eq!(get("herald_delivery_attempts_total{outcome=\"http_error\"}"), 12.0);
    assert_eq!(get("herald_delivery_attempts_total{outcome=\"timeout\"}"), 12.0);
    assert_eq!(get("herald_delivery_attempts_total{outcome=\"connect_error\"}"), 0.0);
    assert_eq!(get("herald_deliveries_completed_total{result=\"delivered\"}"), 3.0);
    assert_eq!(get("herald_deliveries_completed_total{result=\"failed\"}"), 6.0);
    assert_eq!(get("herald_delivery_attempt_duration_seconds_count"), 27.0);
    assert_eq!(get("herald_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"}"), 27.0);
    // Every timeout took at least the 300 ms timeout: 12 attempts above the 0.25 s bucket.
    assert!(get("herald_delivery_attempt_duration_seconds_bucket{le=\"0.25\"}") <= 15.0);
    assert_eq!(get("herald_dispatcher_up"), 1.0);
    assert_eq!(get("herald_deliveries_pending"), 0.0);
    assert_eq!(get("herald_delivery_lag_seconds"), 0.0);
    assert!(
        get(
            "herald_http_requests_total{route=\"/v1/tenants/{tenant}/events\",method=\"POST\",status_class=\"2xx\"}"
        ) >= 3.0
    );
    let _ = child.kill().await;
}
