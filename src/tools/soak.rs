//! `herald soak`: a chaos run that checks Herald loses nothing.
//!
//! It starts `herald serve` on a fresh database and a receiver that misbehaves on purpose (random
//! 500s, resets before the status line, hangs past the timeout, a delay on every answer), emits
//! events while SIGKILLing and restarting the server several times, waits until every delivery
//! has ended, and then checks, from the receiver's log and from the store:
//!
//! - every event reached every matching endpoint at least once (answered 2xx), or its delivery
//!   failed by the rules: every attempt of a full run recorded as a failure — anything else is
//!   **lost**;
//! - no delivery made more attempts than a run allows (1 + the retry schedule);
//! - every request the receiver saw has its attempt on record, and every attempt is finished;
//! - every signature verified.
//!
//! Producers retry every request that fails (the server may be dead) with the same idempotency
//! keys, so an event whose 202 was lost in a kill is neither dropped nor doubled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::bench::{Server, TOKEN, drop_database, fresh_database};
use super::receive::{Behaviour, Receiver};
use crate::config::Config;
use crate::domain::delivery::DeliveryStatus;

/// The retry schedule of the soak's server: short, so runs end in seconds.
const RETRY_SCHEDULE: [&str; 3] = ["200ms", "400ms", "800ms"];
/// Events per batch request.
const BATCH: usize = 25;

/// What to run (the `herald soak` flags).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Events to emit.
    #[arg(long, default_value_t = 2_000)]
    pub events: usize,
    /// Endpoints subscribed to every event.
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// Times the server is SIGKILLed and restarted mid-run.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Share of requests the receiver answers 500, 0.0–1.0.
    #[arg(long, default_value_t = 0.2)]
    pub fail_rate: f64,
    /// Share of requests whose connection the receiver resets, 0.0–1.0.
    #[arg(long, default_value_t = 0.05)]
    pub reset_rate: f64,
    /// Share of requests the receiver never answers (cut off by the 1 s timeout), 0.0–1.0.
    #[arg(long, default_value_t = 0.01)]
    pub hang_rate: f64,
    /// Delay before every answer, e.g. 5ms.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5ms")]
    pub delay: Duration,
    /// Run against this PostgreSQL server (a fresh database) instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Longest the run may take, e.g. 5m.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5m")]
    pub limit: Duration,
}

impl Options {
    /// Refuses rates outside [0, 1) and empty runs, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in
            [("fail-rate", self.fail_rate), ("reset-rate", self.reset_rate), ("hang-rate", self.hang_rate)]
        {
            if !(0.0..1.0).contains(&rate) {
                bail!("`--{name}` must be at least 0 and below 1");
            }
        }
        if self.endpoints == 0 || self.events == 0 {
            bail!("`--events` and `--endpoints` must be at least 1");
        }
        Ok(())
    }
}

/// What the soak found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Events accepted (each once, whatever the kills did to the answers).
    pub events: usize,
    /// Deliveries expected: events × endpoints.
    pub deliveries: usize,
    /// Times the server was SIGKILLed and restarted.
    pub kills: usize,
    /// Requests the receiver saw.
    pub requests: usize,
    /// Attempts on record.
    pub attempts: usize,
    /// Deliveries the receiver answered 2xx at least once.
    pub received: usize,
    /// Deliveries received more than once (kills and lost answers make these; at-least-once).
    pub received_twice: usize,
    /// Deliveries that failed by the rules: a full run of attempts, each recorded as a failure.
    pub exhausted: usize,
    /// Attempts closed as `interrupted` (their process was killed mid-request).
    pub interrupted: usize,
    /// Deliveries neither received nor failed by the rules. Must be 0.
    pub lost: usize,
    /// Deliveries with more attempts than a run allows. Must be 0.
    pub over_limit: usize,
    /// Deliveries the receiver saw more often than their attempts on record. Must be 0.
    pub unrecorded: usize,
    /// Attempts on record that never finished. Must be 0.
    pub unfinished: usize,
    /// Requests whose signature did not verify. Must be 0.
    pub invalid_signatures: usize,
    /// Seconds the run took.
    pub seconds: f64,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.over_limit == 0
            && self.unrecorded == 0
            && self.unfinished == 0
            && self.invalid_signatures == 0
    }
}

/// Runs the soak and prints what it found.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let postgres = options.postgres.as_deref();
    let (database_url, backend, dir) = fresh_database(postgres).await?;
    let result = soak(&options, &database_url, backend).await;
    drop(dir);
    drop_database(postgres, &database_url).await;
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!(
        "soak: {} events × {} endpoints, {} kills: received {}, exhausted by the rules {}, lost {}, over the attempt limit {}, unrecorded {}, unfinished {}, invalid signatures {}",
        report.events,
        options.endpoints,
        report.kills,
        report.received,
        report.exhausted,
        report.lost,
        report.over_limit,
        report.unrecorded,
        report.unfinished,
        report.invalid_signatures
    );
    Ok(report)
}

fn server_env() -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_DELIVERY__RETRY_SCHEDULE", RETRY_SCHEDULE.join(",")),
        ("HERALD_DELIVERY__TIMEOUT", "1s".into()),
        // A killed server's leases lapse quickly, so its attempts are closed and retried soon.
        ("HERALD_DELIVERY__LEASE", "6s".into()),
        ("HERALD_DELIVERY__SHUTDOWN_GRACE", "1s".into()),
    ]
}

async fn soak(options: &Options, database_url: &str, backend: String) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + options.limit;
    let secret = crate::domain::endpoint::generate_secret();
    let receiver = Receiver::start(
        "127.0.0.1:0".parse()?,
        Behaviour {
            secret: Some(secret.clone()),
            fail_rate: options.fail_rate,
            reset_rate: options.reset_rate,
            hang_rate: options.hang_rate,
            delay: options.delay,
            ..Behaviour::default()
        },
    )
    .await?;
    let env = server_env();
    let server = Server::start(database_url, "all", &env).await?;
    server.post("/v1/event-types", &json!({"name": "soak.event"})).await?;
    server.post("/v1/tenants", &json!({"name": "Soak", "external_id": "soak"})).await?;
    // endpoint id → the path its requests arrive on
    let mut paths: HashMap<String, String> = HashMap::new();
    for n in 0..options.endpoints {
        let path = format!("/hook/{n}");
        let created = server
            .post(
                "/v1/tenants/soak/endpoints",
                &json!({"url": format!("{}{path}", receiver.url()), "secret": secret}),
            )
            .await?;
        let id = created["id"].as_str().context("the endpoint has no id")?.to_owned();
        paths.insert(id, path);
    }

    let base = Arc::new(RwLock::new(server.base.clone()));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(base.clone(), produced.clone(), options.events, deadline));

    // Kill k happens once (k + 1) / (kills + 1) of the events are in, plus a little randomness.
    let mut server = server;
    let mut kills = 0;
    for k in 0..options.kills {
        let mark = (k + 1) * options.events / (options.kills + 1);
        while produced.load(Ordering::Relaxed) < mark && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..300))).await;
        server.child.start_kill().context("could not SIGKILL the server")?;
        let _ = server.child.wait().await;
        kills += 1;
        tracing::info!(kill = kills, "SIGKILLed the server; restarting it");
        server = Server::start(database_url, "all", &env).await?;
        *base.write().await = server.base.clone();
    }
    let accepted = producer.await.context("the producer panicked")??;

    // Wait until nothing is pending (in flight counts as pending).
    loop {
        let pending = server
            .client
            .get(format!("{}/v1/tenants/soak/deliveries?status=pending&limit=1", server.base))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json::<Value>()
            .await?;
        let idle = pending["data"].as_array().is_some_and(Vec::is_empty);
        if idle || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;

    let config = Config { database_url: database_url.to_owned(), ..Config::default() };
    let store = crate::storage::connect(&config).await?;
    let arrivals = receiver.counters.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    // (event id, path) → (requests seen, answered 2xx)
    let mut seen: HashMap<(String, String), (usize, usize)> = HashMap::new();
    for arrival in &arrivals {
        let entry = seen.entry((arrival.id.clone(), arrival.path.clone())).or_default();
        entry.0 += 1;
        entry.1 += usize::from(arrival.ok);
    }
    let max_attempts = RETRY_SCHEDULE.len() + 1;
    let mut report = Report {
        backend,
        events: accepted.len(),
        deliveries: accepted.len() * options.endpoints,
        kills,
        requests: arrivals.len(),
        invalid_signatures: receiver.counters.invalid.load(Ordering::Relaxed) as usize,
        ..Report::default()
    };
    for event_id in &accepted {
        let deliveries = store.list_event_deliveries(event_id).await?;
        let mut covered = HashSet::new();
        for delivery in deliveries {
            let Some(path) = paths.get(&delivery.endpoint_id) else { continue };
            covered.insert(path.clone());
            let attempts = store.list_attempts(&delivery.id).await?;
            report.attempts += attempts.len();
            let (requests, ok) = seen.get(&(event_id.clone(), path.clone())).copied().unwrap_or_default();
            report.unfinished += attempts.iter().filter(|a| a.duration_ms.is_none()).count();
            report.interrupted +=
                attempts.iter().filter(|a| a.error_kind.as_deref() == Some("interrupted")).count();
            if attempts.len() > max_attempts {
                report.over_limit += 1;
            }
            if requests > attempts.len() {
                report.unrecorded += 1;
            }
            let all_failed = attempts.iter().all(|a| !crate::domain::retry::is_success(a.status_code));
            if ok > 0 {
                report.received += 1;
                report.received_twice += usize::from(ok > 1);
            } else if delivery.status == DeliveryStatus::Failed
                && attempts.len() == max_attempts
                && all_failed
            {
                report.exhausted += 1;
            } else {
                report.lost += 1;
            }
        }
        // A matching endpoint with no delivery at all.
        report.lost += paths.values().filter(|p| !covered.contains(*p)).count();
    }
    // Events produced but never accepted are lost too (the producer retries until the limit).
    report.lost += (options.events - accepted.len().min(options.events)) * options.endpoints;
    store.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Emits `events` events in batches, each with idempotency keys, retrying every batch until it
/// is accepted; returns the event ids.
async fn produce(
    base: Arc<RwLock<String>>,
    produced: Arc<AtomicUsize>,
    events: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let mut ids = Vec::with_capacity(events);
    let mut n = 0;
    while n < events {
        let size = (events - n).min(BATCH);
        let batch: Vec<Value> = (n..n + size)
            .map(|i| json!({"event": "soak.event", "data": {"n": i}, "idempotency_key": format!("soak-{i}")}))
            .collect();
        loop {
            if Instant::now() >= deadline {
                bail!("the limit passed with {n} of {events} events accepted");
            }
            let url = format!("{}/v1/tenants/soak/events/batch", base.read().await);
            let answer = client.post(url).bearer_auth(TOKEN).json(&json!({"events": batch})).send().await;
            let body = match answer {
                Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
                _ => None,
            };
            let accepted: Option<Vec<String>> = body.and_then(|body| {
                body["data"]
                    .as_array()?
                    .iter()
                    .map(|item| item["id"].as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .filter(|items| items.len() == size)
            });
            match accepted {
                Some(accepted) => {
                    ids.extend(accepted);
                    break;
                }
                // The server is down or restarting: the same keys again shortly.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        n += size;
        produced.store(n, Ordering::Relaxed);
    }
    let unique: HashSet<&String> = ids.iter().collect();
    if unique.len() != ids.len() {
        bail!("the producer got {} ids for {} distinct events", ids.len(), unique.len());
    }
    Ok(ids)
}
