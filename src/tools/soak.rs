//! `herald soak`: a chaos run that checks Herald loses nothing.
//!
//! It starts `--replicas` `herald serve` processes on a fresh database, a receiver that
//! misbehaves on purpose (random 500s, resets before the status line, hangs past the timeout, a
//! delay on every answer; the first of its endpoints receives batches of up to 25 events) and one
//! more endpoint whose receiver goes down for a stretch mid-run (503 to everything once every
//! event is in: the outage that trips a circuit breaker). It emits
//! events and SIGKILLs a server `--kills` times, the replicas in turn, each restarted at once while
//! the others keep delivering: the first half of the kills aimed at the emission, the rest while
//! the retries, the outage's backlog and the drain run. Once every kill is made it waits until
//! every delivery has ended, and then checks, from the receivers' logs and from the store:
//!
//! - every event reached every matching endpoint at least once (answered 2xx), or its delivery
//!   failed by the rules: every attempt of a full run recorded as a failure — anything else is
//!   **lost**;
//! - no delivery made more attempts than a run allows (1 + the retry schedule);
//! - every request the receivers saw has its attempt on record, and every attempt is finished;
//! - every signature verified;
//! - every kill asked for was made.
//!
//! Producers send to any live replica and retry every request that fails (its server may be
//! dead) with the same idempotency keys, so an event whose 202 was lost in a kill is neither
//! dropped nor doubled.

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
/// How long the outage endpoint's receiver stays down, from the first request it refuses. It
/// goes down once every event is in, so its backlog drains while the drain's kills go on.
const OUTAGE: Duration = Duration::from_secs(2);
/// Longest the down receiver waits for its first request: after a kill nothing may reach it until
/// the killed process's leases lapse.
const OUTAGE_WAIT: Duration = Duration::from_secs(10);
/// The path the outage endpoint's requests arrive on.
const OUTAGE_PATH: &str = "/outage";
/// Most replicas `--replicas` accepts.
const MAX_REPLICAS: usize = 16;
/// Longest a kill during the drain waits for the receivers to see a request after the previous
/// restart, so that it cuts attempts off rather than hitting a stalled process. Longer than the
/// lease: after a kill an endpoint may get nothing until the killed process's leases lapse.
const DRAIN_KILL_WAIT: Duration = Duration::from_secs(10);

/// The circuit breaker's settings for the soak's servers (DESIGN §14): short, so that the outage
/// endpoint's circuit opens, probes and closes within the run.
const BREAKER_ENV: [(&str, &str); 3] = [
    ("HERALD_DELIVERY__BREAKER_FAILURES", "5"),
    ("HERALD_DELIVERY__BREAKER_COOLDOWN", "300ms"),
    ("HERALD_DELIVERY__BREAKER_COOLDOWN_MAX", "1s"),
];

/// What to run (the `herald soak` flags).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Events to emit.
    #[arg(long, default_value_t = 2_000)]
    pub events: usize,
    /// Endpoints on the misbehaving receiver, subscribed to every event (one more, the outage
    /// endpoint, goes down mid-run).
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// Times a server is SIGKILLed and restarted, spread over emission, retries and drain.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// `herald serve` processes on the one database, killed in turn (above 1 needs `--postgres`).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
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
    /// Refuses rates outside [0, 1), empty runs and replica counts it cannot run, naming the flag.
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
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            bail!("`--replicas` must be between 1 and {MAX_REPLICAS}");
        }
        if self.replicas > 1 && self.postgres.is_none() {
            bail!("`--replicas` above 1 needs `--postgres`: SQLite serves one process");
        }
        Ok(())
    }
}

/// What the soak found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// `herald serve` processes on the database.
    pub replicas: usize,
    /// Events accepted (each once, whatever the kills did to the answers).
    pub events: usize,
    /// Deliveries expected: events × (endpoints + the outage endpoint).
    pub deliveries: usize,
    /// Times a server was SIGKILLed and restarted. Must be `--kills`.
    pub kills: usize,
    /// Kills made while events were still going in.
    pub kills_while_emitting: usize,
    /// Kills made after every event was in, while retries and the drain ran.
    pub kills_while_draining: usize,
    /// Requests the receivers saw.
    pub requests: usize,
    /// Attempts on record.
    pub attempts: usize,
    /// Deliveries the receivers answered 2xx at least once.
    pub received: usize,
    /// Deliveries received more than once (kills and lost answers make these; at-least-once).
    pub received_twice: usize,
    /// Deliveries that failed by the rules: a full run of attempts, each recorded as a failure.
    pub exhausted: usize,
    /// Attempts closed as `interrupted` (their process was killed mid-request).
    pub interrupted: usize,
    /// Requests the outage endpoint's receiver answered 503 while it was down.
    pub outage_refused: usize,
    /// The outage endpoint's deliveries that failed by the rules (included in `exhausted`).
    pub outage_exhausted: usize,
    /// Circuit probes among the attempts (a failed one does not count toward its run).
    pub probes: usize,
    /// Deliveries neither received nor failed by the rules. Must be 0.
    pub lost: usize,
    /// Deliveries with more attempts than a run allows. Must be 0.
    pub over_limit: usize,
    /// Deliveries the receivers saw more often than their attempts on record. Must be 0.
    pub unrecorded: usize,
    /// Attempts on record that never finished. Must be 0.
    pub unfinished: usize,
    /// Requests whose signature did not verify. Must be 0.
    pub invalid_signatures: usize,
    /// Seconds the run took.
    pub seconds: f64,
}

impl Report {
    /// Whether every check on the deliveries passed (the kill count is checked by [`run`]).
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.over_limit == 0
            && self.unrecorded == 0
            && self.unfinished == 0
            && self.invalid_signatures == 0
    }
}

/// Runs the soak and prints what it found; fails when `--limit` passed before every kill was made.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let postgres = options.postgres.as_deref();
    let (database_url, backend, dir) = fresh_database(postgres).await?;
    let result = soak(&options, &database_url, backend).await;
    drop(dir);
    drop_database(postgres, &database_url).await;
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!(
        "soak: {} events × {} endpoints + 1 outage endpoint, {} replica(s), {} kills ({} while emitting, {} while draining): received {}, exhausted by the rules {}, lost {}, over the attempt limit {}, unrecorded {}, unfinished {}, invalid signatures {}",
        report.events,
        options.endpoints,
        report.replicas,
        report.kills,
        report.kills_while_emitting,
        report.kills_while_draining,
        report.received,
        report.exhausted,
        report.lost,
        report.over_limit,
        report.unrecorded,
        report.unfinished,
        report.invalid_signatures
    );
    if report.kills < options.kills {
        bail!("only {} of the {} kills were made before `--limit` passed", report.kills, options.kills);
    }
    Ok(report)
}

fn server_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HERALD_DELIVERY__RETRY_SCHEDULE", RETRY_SCHEDULE.join(",")),
        ("HERALD_DELIVERY__TIMEOUT", "1s".into()),
        // A killed server's leases lapse quickly, so its attempts are closed and retried soon.
        ("HERALD_DELIVERY__LEASE", "6s".into()),
        ("HERALD_DELIVERY__SHUTDOWN_GRACE", "1s".into()),
    ];
    env.extend(BREAKER_ENV.iter().map(|&(key, value)| (key, value.to_owned())));
    env
}

/// The replicas' base URLs, `None` while that replica is down (killed, not yet restarted).
type Bases = Arc<RwLock<Vec<Option<String>>>>;

/// Polls `ready` every 10 ms until it holds or `until` passes; returns whether it held.
async fn wait_until(until: Instant, mut ready: impl FnMut() -> bool) -> bool {
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests seen by both receivers so far.
fn requests_seen(receivers: &[&Receiver]) -> u64 {
    receivers.iter().map(|r| r.counters.requests.load(Ordering::Relaxed)).sum()
}

async fn soak(options: &Options, database_url: &str, backend: String) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + options.limit;
    let secret = crate::domain::endpoint::generate_secret();
    let behaviour = Behaviour {
        secret: Some(secret.clone()),
        fail_rate: options.fail_rate,
        reset_rate: options.reset_rate,
        hang_rate: options.hang_rate,
        delay: options.delay,
        ..Behaviour::default()
    };
    let receiver = Receiver::start("127.0.0.1:0".parse()?, behaviour.clone()).await?;
    let outage = Arc::new(Receiver::start("127.0.0.1:0".parse()?, behaviour).await?);
    let env = server_env();
    let mut servers = Vec::with_capacity(options.replicas);
    for _ in 0..options.replicas {
        servers.push(Server::start(database_url, "all", &env).await?);
    }
    let first = &servers[0];
    first.post("/v1/event-types", &json!({"name": "soak.event"})).await?;
    first.post("/v1/tenants", &json!({"name": "Soak", "external_id": "soak"})).await?;
    // endpoint id → the path its requests arrive on
    let mut paths: HashMap<String, String> = HashMap::new();
    let targets = (0..options.endpoints)
        .map(|n| (receiver.url(), format!("/hook/{n}")))
        .chain(std::iter::once((outage.url(), OUTAGE_PATH.to_owned())));
    for (url, path) in targets {
        let mut endpoint = json!({"url": format!("{url}{path}"), "secret": secret});
        // The first endpoint receives batches: a kill mid-batch must lose none of its members.
        if path == "/hook/0" {
            endpoint["batch"] = json!({"max_events": 25, "max_wait": "20ms"});
        }
        let created = first.post("/v1/tenants/soak/endpoints", &endpoint).await?;
        let id = created["id"].as_str().context("the endpoint has no id")?.to_owned();
        paths.insert(id, path);
    }

    let bases: Bases = Arc::new(RwLock::new(servers.iter().map(|s| Some(s.base.clone())).collect()));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(bases.clone(), produced.clone(), options.events, deadline));

    // The outage: down once every event is in, up again `OUTAGE` after the first request it
    // refuses.
    let outage_task = {
        let (outage, produced, events) = (outage.clone(), produced.clone(), options.events);
        tokio::spawn(async move {
            let counters = outage.counters.clone();
            wait_until(deadline, || produced.load(Ordering::Relaxed) >= events).await;
            outage.set_down(true);
            tracing::info!("the outage endpoint's receiver is down");
            let first = deadline.min(Instant::now() + OUTAGE_WAIT);
            wait_until(first, || counters.refused.load(Ordering::Relaxed) > 0).await;
            tokio::time::sleep(OUTAGE.min(deadline.saturating_duration_since(Instant::now()))).await;
            outage.set_down(false);
            let refused = counters.refused.load(Ordering::Relaxed);
            tracing::info!(refused, "the outage endpoint's receiver is back");
        })
    };

    let mut report = Report { backend, replicas: options.replicas, ..Report::default() };
    // The first half of the kills aim at the emission: kill k once (k + 1) / (half + 1) of
    // them are in, plus a little randomness. The rest land after the last event, while retries,
    // interrupted attempts and the outage's backlog drain: each once the receivers have seen a
    // request since the previous restart (bounded by `DRAIN_KILL_WAIT`), plus a little randomness.
    let while_emitting = options.kills.div_ceil(2);
    let mut seen_at_restart = 0;
    for k in 0..options.kills {
        if Instant::now() >= deadline {
            break;
        }
        if k < while_emitting {
            let mark = (k + 1) * options.events / (while_emitting + 1);
            wait_until(deadline, || produced.load(Ordering::Relaxed) >= mark || producer.is_finished()).await;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..100))).await;
        } else {
            wait_until(deadline, || producer.is_finished()).await;
            let until = deadline.min(Instant::now() + DRAIN_KILL_WAIT);
            wait_until(until, || requests_seen(&[&receiver, &outage]) > seen_at_restart).await;
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..500))).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let emitting = !producer.is_finished();
        let replica = k % options.replicas;
        bases.write().await[replica] = None;
        let server = &mut servers[replica];
        server.child.start_kill().context("could not SIGKILL the server")?;
        let _ = server.child.wait().await;
        report.kills += 1;
        if emitting {
            report.kills_while_emitting += 1;
        } else {
            report.kills_while_draining += 1;
        }
        tracing::info!(kill = report.kills, replica, emitting, "SIGKILLed a server; restarting it");
        *server = Server::start(database_url, "all", &env).await?;
        bases.write().await[replica] = Some(server.base.clone());
        seen_at_restart = requests_seen(&[&receiver, &outage]);
    }
    let accepted = producer.await.context("the producer panicked")??;
    outage_task.await.context("the outage task panicked")?;

    // Wait until nothing is pending (in flight counts as pending), all replicas up.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    loop {
        let pending = client
            .get(format!("{}/v1/tenants/soak/deliveries?status=pending&limit=1", servers[0].base))
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
    for server in servers {
        server.stop().await;
    }

    let config = Config { database_url: database_url.to_owned(), ..Config::default() };
    let store = crate::storage::connect(&config).await?;
    let mut arrivals = receiver.counters.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    arrivals.extend(outage.counters.arrivals.lock().map(|a| a.clone()).unwrap_or_default());
    // (event id, path) → (requests seen, answered 2xx)
    let mut seen: HashMap<(String, String), (usize, usize)> = HashMap::new();
    for arrival in &arrivals {
        let entry = seen.entry((arrival.id.clone(), arrival.path.clone())).or_default();
        entry.0 += 1;
        entry.1 += usize::from(arrival.ok);
    }
    // A circuit probe that failed does not count toward its delivery's run (DESIGN §14): this
    // limit and the exhausted check below count the attempts that do (`counts_toward_run`).
    let max_attempts = RETRY_SCHEDULE.len() + 1;
    report.events = accepted.len();
    report.deliveries = accepted.len() * paths.len();
    report.requests = arrivals.len();
    report.outage_refused = outage.counters.refused.load(Ordering::Relaxed) as usize;
    report.invalid_signatures = (receiver.counters.invalid.load(Ordering::Relaxed)
        + outage.counters.invalid.load(Ordering::Relaxed)) as usize;
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
            let run_attempts = attempts.iter().filter(|a| a.counts_toward_run()).count();
            report.probes += attempts.iter().filter(|a| a.probe).count();
            if run_attempts > max_attempts {
                report.over_limit += 1;
            }
            if requests > attempts.len() {
                report.unrecorded += 1;
            }
            let all_failed = attempts.iter().all(|a| !crate::domain::retry::is_success(a.status_code));
            if ok > 0 {
                report.received += 1;
                report.received_twice += usize::from(ok > 1);
            } else if delivery.status == DeliveryStatus::Failed && run_attempts == max_attempts && all_failed
            {
                report.exhausted += 1;
                report.outage_exhausted += usize::from(path == OUTAGE_PATH);
            } else {
                report.lost += 1;
            }
        }
        // A matching endpoint with no delivery at all.
        report.lost += paths.values().filter(|p| !covered.contains(*p)).count();
    }
    // Events produced but never accepted are lost too (the producer retries until the limit).
    report.lost += (options.events - accepted.len().min(options.events)) * paths.len();
    store.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Emits `events` events in batches, each with idempotency keys, to any live replica, retrying
/// every batch until it is accepted; returns the event ids.
async fn produce(
    bases: Bases,
    produced: Arc<AtomicUsize>,
    events: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let mut ids = Vec::with_capacity(events);
    let mut n = 0;
    let mut sent = 0usize;
    while n < events {
        let size = (events - n).min(BATCH);
        let batch: Vec<Value> = (n..n + size)
            .map(|i| json!({"event": "soak.event", "data": {"n": i}, "idempotency_key": format!("soak-{i}")}))
            .collect();
        loop {
            if Instant::now() >= deadline {
                bail!("the limit passed with {n} of {events} events accepted");
            }
            // The replicas take turns; one that is down is skipped.
            let live: Vec<String> = bases.read().await.iter().flatten().cloned().collect();
            let Some(base) = live.get(sent % live.len().max(1)) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            sent += 1;
            let url = format!("{base}/v1/tenants/soak/events/batch");
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
