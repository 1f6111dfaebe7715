//! Several `herald serve` processes on one PostgreSQL database: every delivery is made once, a
//! SIGKILLed replica's attempts are taken over and nothing else is repeated, per-endpoint caps and
//! FIFO lanes hold across processes, and a worker is woken by NOTIFY. PostgreSQL only.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, POSTGRES_ENV, TestDatabase, eventually, id_of, ms};
use crate::receiver::{Receiver, Recorded, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// Each test runs two or three processes besides itself; side by side on a small machine they
/// would measure each other, not Herald.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh PostgreSQL database with the schema applied by `herald migrate` (so replicas started
/// next do not race on migrations).
async fn migrated_database(dir: &Path) -> TestDatabase {
    let url = std::env::var(POSTGRES_ENV).expect("the replica tests need HERALD_TEST_POSTGRES_URL");
    let db = TestDatabase::postgres(&url).await;
    eprintln!("backend: postgres");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        herald_command(dir, &db.url).arg("migrate").stdout(Stdio::null()).output(),
    )
    .await
    .expect("herald migrate finishes within 60 s")
    .expect("herald migrate runs");
    assert!(output.status.success(), "herald migrate failed: {}", String::from_utf8_lossy(&output.stderr));
    db
}

/// The binary with a clean `HERALD_*` environment, pointed at `database_url`.
fn herald_command(dir: &Path, database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).kill_on_drop(true).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            command.env_remove(key);
        }
    }
    command
        .env("NO_COLOR", "1")
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN);
    command
}

/// The header that tells which replica sent a request: each replica is configured with its own
/// classic signature header name, `X-Replica-<name>`.
fn replica_header(name: &str) -> String {
    format!("x-replica-{}", name.to_ascii_lowercase())
}

/// The replica that sent `request`, by its signature header.
fn sender_of<'a>(request: &Recorded, names: &[&'a str]) -> &'a str {
    names
        .iter()
        .find(|name| request.headers.contains_key(replica_header(name).as_str()))
        .copied()
        .expect("every request carries one replica's header")
}

/// A running `herald serve --dev`, killed when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    api: Api,
}

impl Replica {
    /// Starts `serve --dev --role ROLE` on a free port with short delivery timings; `env` adds
    /// or overrides settings.
    async fn start(
        dir: &Path,
        database_url: &str,
        name: &'static str,
        role: &str,
        env: &[(&str, &str)],
    ) -> Replica {
        let log_path = dir.join(format!("herald-{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = herald_command(dir, database_url);
        command
            .args(["serve", "--dev", "--role", role])
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DELIVERY__TIMEOUT", "1s")
            .env("HERALD_DELIVERY__LEASE", "6s")
            .env("HERALD_DELIVERY__RETRY_SCHEDULE", "100ms,100ms,100ms")
            .env("HERALD_SIGNING__HEX_HEADER", format!("X-Replica-{name}"))
            .stdout(Stdio::piped())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("herald serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let prefix = "Herald 0.1.0 listening on ";
        let find = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix(prefix) {
                    return url.trim().to_owned();
                }
            }
            panic!("replica {name} exited before listening; see {}", log_path.display());
        };
        let base_url = tokio::time::timeout(Duration::from_secs(30), find)
            .await
            .unwrap_or_else(|_| panic!("replica {name} listens within 30 s"));
        // Keep reading stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Replica { name, child, api: Api::new(&base_url) }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the replica");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a killed process exits at once")
            .expect("wait for the replica");
    }
}

/// Three `--role all` replicas named A, B and C.
async fn three_replicas(dir: &Path, database_url: &str, env: &[(&str, &str)]) -> [Replica; 3] {
    let (a, b, c) = tokio::join!(
        Replica::start(dir, database_url, "A", "all", env),
        Replica::start(dir, database_url, "B", "all", env),
        Replica::start(dir, database_url, "C", "all", env),
    );
    [a, b, c]
}

/// A minimal admin client for one replica's API.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base_url: String,
}

impl Api {
    fn new(base_url: &str) -> Api {
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
        Api { client, base_url: base_url.to_owned() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request =
            self.client.request(method, format!("{}{path}", self.base_url)).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: Value, want: u16) -> Value {
        let (status, answer) = self.call(reqwest::Method::POST, path, Some(&body)).await;
        assert_eq!(status, want, "POST {}{path}: {answer}", self.base_url);
        answer
    }

    async fn status(&self, path: &str) -> u16 {
        self.call(reqwest::Method::GET, path, None).await.0
    }

    /// Emits `events` (each `{event, data}`) in one batch; returns the event ids in order.
    async fn emit_batch(&self, tenant: &str, events: Vec<Value>) -> Vec<String> {
        let answer =
            self.post(&format!("/v1/tenants/{tenant}/events/batch"), json!({"events": events}), 202).await;
        let items = answer["data"].as_array().expect("batch results");
        items
            .iter()
            .map(|item| {
                assert_eq!(item["status"], json!(202), "a batch item was refused: {item}");
                item["id"].as_str().expect("event id").to_owned()
            })
            .collect()
    }

    async fn create_tenant(&self, name: &str) -> String {
        id_of(&self.post("/v1/tenants", json!({"name": name}), 201).await)
    }

    async fn create_endpoint(&self, tenant: &str, body: Value) -> String {
        id_of(&self.post(&format!("/v1/tenants/{tenant}/endpoints"), body, 201).await)
    }

    async fn create_event_type(&self, name: &str) {
        self.post("/v1/event-types", json!({"name": name, "description": "replica test"}), 201).await;
    }
}

/// A small pool on the test database, to read what the replicas stored.
async fn store_pool(db: &TestDatabase) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(&db.url).await.expect("connect to the test database")
}

/// Waits (bounded by `timeout`) until `expected` deliveries exist and none is pending; returns
/// how long that took (for the report, not for an assertion).
async fn wait_until_settled(pool: &PgPool, expected: i64, timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually(timeout, &format!("{expected} deliveries, none pending"), || async {
        let (total, pending): (i64, i64) =
            sqlx::query_as("select count(*), count(*) filter (where status = 'pending') from deliveries")
                .fetch_one(pool)
                .await
                .expect("count deliveries");
        (total == expected && pending == 0).then_some(())
    })
    .await;
    started.elapsed()
}

/// `(status, attempt_count, deliveries)` groups of the store.
async fn delivery_states(pool: &PgPool) -> Vec<(String, i32, i64)> {
    sqlx::query_as(
        r#"select status, attempt_count, count(*)
        from deliveries
        group by status, attempt_count
        order by status, attempt_count"#,
    )
    .fetch_all(pool)
    .await
    .expect("group deliveries")
}

/// Requests per `webhook-id`.
fn count_by_webhook_id(requests: &[Recorded]) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for request in requests {
        *seen.entry(request.header("webhook-id").expect("webhook-id").to_owned()).or_default() += 1;
    }
    seen
}

fn event(n: usize) -> Value {
    json!({"event": "load.tick", "data": {"n": n}})
}

const LOAD_EVENTS: usize = 20_000;
const LOAD_BATCH: usize = 1_000;
const LOAD_ENDPOINTS: usize = 10;

/// 20,000 events through the batch API (batches of 1,000 spread over three replicas, ten
/// tenants with one endpoint each, `max_in_flight` 50): the receiver sees every `webhook-id`
/// once, every replica delivers a share, and the store shows every delivery `delivered` after
/// one attempt. An endpoint busy on one replica tends to stay there (the replica that records its
/// answers claims the slots they free in the same transaction), so the work spreads over the
/// replicas by endpoint: ten endpoints give each replica its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn three_replicas_deliver_twenty_thousand_events_each_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = migrated_database(dir.path()).await;
    let receiver = Receiver::start().await;
    // Each endpoint's window starts at its cap of 50, so the three replicas compete for the same
    // slots from the first claim (a window growing from 10 is filled by whichever replica records
    // the answers that grow it; the adaptive window has its own tests in `stress`).
    let replicas = three_replicas(dir.path(), &db.url, &[("HERALD_DELIVERY__INITIAL_IN_FLIGHT", "50")]).await;
    let names: Vec<&str> = replicas.iter().map(|r| r.name).collect();
    let api = &replicas[0].api;
    api.create_event_type("load.tick").await;
    let mut tenants = Vec::new();
    for i in 0..LOAD_ENDPOINTS {
        let tenant = api.create_tenant(&format!("Load {i}")).await;
        api.create_endpoint(
            &tenant,
            json!({"url": receiver.url(&format!("/load/{i}")), "max_in_flight": 50}),
        )
        .await;
        tenants.push(tenant);
    }

    let started = Instant::now();
    // One producer per replica, each sending its share of the batches in turn.
    let mut producers = tokio::task::JoinSet::new();
    for (r, replica) in replicas.iter().enumerate() {
        let (api, tenants) = (replica.api.clone(), tenants.clone());
        producers.spawn(async move {
            let mut accepted: Vec<(usize, String)> = Vec::new();
            for batch in (r..LOAD_EVENTS / LOAD_BATCH).step_by(3) {
                let endpoint = batch % LOAD_ENDPOINTS;
                let events = (batch * LOAD_BATCH..(batch + 1) * LOAD_BATCH).map(event).collect();
                let ids = api.emit_batch(&tenants[endpoint], events).await;
                accepted.extend(ids.into_iter().map(|id| (endpoint, id)));
            }
            accepted
        });
    }
    let mut expected: Vec<HashSet<String>> = vec![HashSet::new(); LOAD_ENDPOINTS];
    while let Some(accepted) = producers.join_next().await {
        for (endpoint, id) in accepted.expect("a producer finished") {
            expected[endpoint].insert(id);
        }
    }
    let ingested = started.elapsed();
    assert_eq!(expected.iter().map(HashSet::len).sum::<usize>(), LOAD_EVENTS);

    let pool = store_pool(&db).await;
    wait_until_settled(&pool, LOAD_EVENTS as i64, Duration::from_secs(170)).await;
    let elapsed = started.elapsed();

    let mut by_replica: HashMap<&str, usize> = HashMap::new();
    for (endpoint, ids) in expected.iter().enumerate() {
        let requests = receiver.requests(&format!("/load/{endpoint}"));
        for request in &requests {
            *by_replica.entry(sender_of(request, &names)).or_default() += 1;
        }
        let seen = count_by_webhook_id(&requests);
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "endpoint {endpoint} received some webhook-ids more than once: {twice:?}");
        let seen: HashSet<String> = seen.into_keys().collect();
        assert_eq!(&seen, ids, "endpoint {endpoint} did not receive exactly the events accepted for it");
    }
    assert_eq!(delivery_states(&pool).await, vec![("delivered".to_owned(), 1, LOAD_EVENTS as i64)]);
    let (attempts, succeeded): (i64, i64) = sqlx::query_as(
        r#"select count(*), count(*) filter (where status_code = 200 and finished_at is not null)
        from attempts"#,
    )
    .fetch_one(&pool)
    .await
    .expect("count attempts");
    assert_eq!((attempts, succeeded), (LOAD_EVENTS as i64, LOAD_EVENTS as i64));
    for name in &names {
        assert!(
            by_replica.get(name).copied().unwrap_or(0) > 0,
            "replica {name} delivered nothing: {by_replica:?}"
        );
    }
    eprintln!(
        "{LOAD_EVENTS} events: ingested in {ingested:.1?}, all delivered after {elapsed:.1?} \
         ({:.0} deliveries/s); requests per replica: {by_replica:?}",
        LOAD_EVENTS as f64 / elapsed.as_secs_f64()
    );
}

const KILL_EVENTS: usize = 300;
const KILL_DELAY: Duration = Duration::from_millis(200);

/// One stored attempt with its delivery's state.
#[derive(Debug, sqlx::FromRow)]
struct AttemptRow {
    event_id: String,
    status: String,
    attempt_count: i32,
    number: i32,
    error_kind: Option<String>,
    status_code: Option<i32>,
}

/// One of three replicas is SIGKILLed while its requests are on the wire (the receiver answers
/// after 200 ms; each replica runs at most 10 of the endpoint's 30 attempts, so all three
/// deliver). Every event is still
/// delivered; a delivery was attempted twice only when its first attempt was the killed
/// replica's, cut off by the kill and closed as `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn a_killed_replica_repeats_only_its_own_attempts_in_flight() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = migrated_database(dir.path()).await;
    let receiver = Receiver::start().await;
    receiver.respond("/slow", Reply::ok().delayed(KILL_DELAY));
    let mut replicas = three_replicas(
        dir.path(),
        &db.url,
        &[
            // Ten attempts per process against an endpoint cap of 30: all three replicas deliver.
            ("HERALD_DELIVERY__MAX_IN_FLIGHT", "10"),
            ("HERALD_DELIVERY__POLL_INTERVAL", "50ms"),
        ],
    )
    .await;
    let names: Vec<&'static str> = replicas.iter().map(|r| r.name).collect();
    let api = replicas[0].api.clone();
    api.create_event_type("load.tick").await;
    let tenant = api.create_tenant("Kill").await;
    api.create_endpoint(&tenant, json!({"url": receiver.url("/slow"), "max_in_flight": 30})).await;
    let mut accepted = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let per = KILL_EVENTS / 3;
        accepted.extend(replica.api.emit_batch(&tenant, (i * per..(i + 1) * per).map(event).collect()).await);
    }

    // Once some requests have been answered, kill the replica that sent the latest one.
    let victim = eventually(Duration::from_secs(20), "a replica with a request on the wire", || async {
        let requests = receiver.requests("/slow");
        let latest = requests.last().filter(|r| r.at.elapsed() < KILL_DELAY / 2)?;
        (requests.len() >= 60).then(|| sender_of(latest, &names))
    })
    .await;
    let killed_at = Instant::now();
    let index = names.iter().position(|name| *name == victim).unwrap();
    replicas[index].kill().await;
    let before_kill = receiver.requests("/slow");
    assert!(before_kill.len() < KILL_EVENTS, "every event arrived before the kill; nothing was tested");
    let mut senders_before: HashMap<&str, usize> = HashMap::new();
    for request in &before_kill {
        *senders_before.entry(sender_of(request, &names)).or_default() += 1;
    }

    let pool = store_pool(&db).await;
    let settled = wait_until_settled(&pool, KILL_EVENTS as i64, Duration::from_secs(60)).await;

    let rows: Vec<AttemptRow> = sqlx::query_as(
        r#"select d.event_id, d.status, d.attempt_count, a.number, a.error_kind, a.status_code
        from deliveries d
        join attempts a on a.delivery_id = d.id
        order by d.event_id, a.number"#,
    )
    .fetch_all(&pool)
    .await
    .expect("read attempts");
    let mut attempts: HashMap<String, Vec<AttemptRow>> = HashMap::new();
    for row in rows {
        assert_eq!(row.status, "delivered", "event {} was not delivered", row.event_id);
        let list = attempts.entry(row.event_id.clone()).or_default();
        assert_eq!(row.number as usize, list.len() + 1, "attempt numbers have a gap: {row:?}");
        list.push(row);
    }
    for list in attempts.values() {
        assert_eq!(
            list.len(),
            list[0].attempt_count as usize,
            "attempt rows and attempt_count differ: {list:?}"
        );
    }
    assert_eq!(attempts.len(), KILL_EVENTS, "every delivery has attempts");

    let requests = receiver.requests("/slow");
    let mut by_event: HashMap<String, Vec<&Recorded>> = HashMap::new();
    for request in &requests {
        by_event
            .entry(request.header("webhook-id").expect("webhook-id").to_owned())
            .or_default()
            .push(request);
    }
    let mut repeated = 0;
    for event_id in &accepted {
        let list = &attempts[event_id];
        let seen = by_event.get(event_id).map_or(&[][..], Vec::as_slice);
        assert!(!seen.is_empty(), "event {event_id} never reached the receiver");
        assert!(
            seen.len() <= list.len(),
            "the receiver saw {event_id} more often than attempts were recorded"
        );
        assert_eq!(
            list.last().unwrap().status_code,
            Some(200),
            "the last attempt of {event_id} failed: {list:?}"
        );
        match list.len() {
            1 => {}
            2 => {
                repeated += 1;
                assert_eq!(list[0].error_kind.as_deref(), Some("interrupted"), "{event_id}: {list:?}");
            }
            n => panic!("{event_id} took {n} attempts; only a kill should have cost one: {list:?}"),
        }
        if seen.len() == 2 {
            assert_eq!(sender_of(seen[0], &names), victim, "{event_id} was repeated, but not after {victim}");
            assert!(
                seen[0].at <= killed_at + ms(50),
                "{event_id}: {victim}'s request arrived after the kill"
            );
            assert_ne!(sender_of(seen[1], &names), victim, "{event_id}: a dead replica sent again");
        }
    }
    // What the victim had on the wire for certain (arrived less than the reply delay before the
    // kill) was cut off, so it was attempted again.
    let cut_off: Vec<&Recorded> = requests
        .iter()
        .filter(|r| sender_of(r, &names) == victim)
        .filter(|r| r.at + KILL_DELAY > killed_at + ms(50) && r.at <= killed_at)
        .collect();
    assert!(!cut_off.is_empty(), "{victim} had requests on the wire at the kill");
    for request in &cut_off {
        let event_id = request.header("webhook-id").unwrap();
        assert_eq!(
            attempts[event_id].len(),
            2,
            "{victim}'s cut-off request of {event_id} was not attempted again"
        );
    }
    assert!(senders_before.len() >= 2, "only one replica was delivering before the kill: {senders_before:?}");
    eprintln!(
        "killed {victim} after {} requests ({senders_before:?}); {} of its requests cut off, \
         {repeated} deliveries repeated after an interrupted attempt; all {KILL_EVENTS} delivered \
         {settled:.1?} after the kill",
        before_kill.len(),
        cut_off.len()
    );
}

const ORDER_EVENTS: usize = 60;

/// Three replicas, each running one attempt at a time and looking for work every 20 ms: a FIFO
/// endpoint receives its events in acceptance order one at a time, and an endpoint with
/// `max_in_flight: 2` has two requests open at once (from two replicas) but never three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn fifo_order_and_max_in_flight_hold_across_three_replicas() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = migrated_database(dir.path()).await;
    let receiver = Receiver::start().await;
    receiver.respond("/fifo", Reply::ok().delayed(ms(10)));
    receiver.respond("/capped", Reply::ok().delayed(ms(100)));
    let replicas = three_replicas(
        dir.path(),
        &db.url,
        &[
            // One attempt per process: two requests open at once on the capped endpoint come from
            // two replicas, so the cap is held across processes, not within one.
            ("HERALD_DELIVERY__MAX_IN_FLIGHT", "1"),
            ("HERALD_DELIVERY__POLL_INTERVAL", "20ms"),
        ],
    )
    .await;
    let names: Vec<&str> = replicas.iter().map(|r| r.name).collect();
    let api = &replicas[0].api;
    api.create_event_type("load.tick").await;
    let tenant = api.create_tenant("Order").await;
    api.create_endpoint(&tenant, json!({"url": receiver.url("/fifo"), "fifo": true})).await;
    api.create_endpoint(&tenant, json!({"url": receiver.url("/capped"), "max_in_flight": 2})).await;

    // Acceptance order: three batches of ten, then single events, each request to the next
    // replica and only after the previous one was answered.
    let mut accepted = Vec::new();
    for n in 0..3 {
        let events = (n * 10..(n + 1) * 10).map(event).collect();
        accepted.extend(replicas[n % 3].api.emit_batch(&tenant, events).await);
    }
    for n in 30..ORDER_EVENTS {
        let answer = replicas[n % 3].api.post(&format!("/v1/tenants/{tenant}/events"), event(n), 202).await;
        accepted.push(id_of(&answer));
    }

    let pool = store_pool(&db).await;
    wait_until_settled(&pool, 2 * ORDER_EVENTS as i64, Duration::from_secs(60)).await;
    assert_eq!(delivery_states(&pool).await, vec![("delivered".to_owned(), 1, 2 * ORDER_EVENTS as i64)]);

    let fifo = receiver.requests("/fifo");
    let order: Vec<&str> = fifo.iter().map(|r| r.header("webhook-id").unwrap()).collect();
    assert_eq!(order, accepted, "the FIFO endpoint received events out of acceptance order");
    assert_eq!(receiver.max_in_flight("/fifo"), 1, "a FIFO endpoint had more than one request open");
    let capped = receiver.requests("/capped");
    assert_eq!(capped.len(), ORDER_EVENTS);
    assert_eq!(receiver.max_in_flight("/capped"), 2, "max_in_flight 2 was exceeded or never reached");
    let senders = |requests: &[Recorded]| {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for request in requests {
            *counts.entry(sender_of(request, &names)).or_default() += 1;
        }
        counts
    };
    let (fifo_senders, capped_senders) = (senders(&fifo), senders(&capped));
    assert!(capped_senders.len() >= 2, "one replica sent every capped request: {capped_senders:?}");
    eprintln!("FIFO requests per replica: {fifo_senders:?}; capped: {capped_senders:?}");
}

/// Replica A runs only the API, replica B only delivers and polls once a minute (the longest
/// poll allowed): each event arrives well inside that minute, so B heard of it through NOTIFY.
/// (How fast is `herald bench`'s business: its latency scenario measures 202 → arrival.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn a_worker_delivers_what_an_api_replica_accepts_when_notified() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = migrated_database(dir.path()).await;
    let receiver = Receiver::start().await;
    let (api_replica, worker) = tokio::join!(
        Replica::start(dir.path(), &db.url, "A", "api", &[]),
        Replica::start(dir.path(), &db.url, "B", "worker", &[("HERALD_DELIVERY__POLL_INTERVAL", "60s")]),
    );
    assert_eq!(worker.api.status("/v1/event-types").await, 404, "a worker serves no management API");
    assert_eq!(worker.api.status("/readyz").await, 200);
    let api = &api_replica.api;
    api.create_event_type("load.tick").await;
    let tenant = api.create_tenant("Latency").await;
    api.create_endpoint(&tenant, json!({"url": receiver.url("/fast")})).await;
    let path = format!("/v1/tenants/{tenant}/events");

    // Warm-up: connections, prepared statements, the worker's LISTEN.
    api.post(&path, event(0), 202).await;
    receiver.wait_for("/fast", 1, Duration::from_secs(10)).await;

    let mut latencies = Vec::new();
    for n in 1..=5 {
        let before = receiver.requests("/fast").len();
        let id = id_of(&api.post(&path, event(n), 202).await);
        let accepted = Instant::now();
        let arrived = receiver.wait_for("/fast", before + 1, Duration::from_secs(30)).await;
        let request = &arrived[before];
        assert_eq!(request.header("webhook-id"), Some(id.as_str()));
        assert_eq!(sender_of(request, &["A", "B"]), "B", "only the worker delivers");
        latencies.push(request.at.saturating_duration_since(accepted));
    }
    eprintln!("202 → received, five tries: {latencies:?}");
}
