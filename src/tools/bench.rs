//! `herald bench`: starts a Herald server process on a fresh database and a built-in receiver,
//! all on loopback, runs the chosen scenarios, and reports ingest rate, delivery rate,
//! end-to-end latency (202 received by the producer → request received by the endpoint) and the
//! server's peak RSS, as a table and as JSON. Counts and durations are bounded by flags.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::receive::{Behaviour, Receiver};
use crate::domain::time::now_micros;

pub(crate) const TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// The scenarios `herald bench` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// One endpoint, one API request per event.
    Single,
    /// One endpoint, events through the batch API.
    Batch,
    /// Ten endpoints, batch API.
    Fanout10,
    /// 1,000 endpoints, batch API (events ÷ 100).
    Fanout1000,
    /// 1,000 endpoints with payload filters, each event matching 10 of them (as many deliveries
    /// per event as fanout10), batch API: what filtering costs ingest.
    Filtered1000,
    /// 1,000 endpoints each subscribed to one of 100 event types, each event reaching 10 of them:
    /// filtered1000's fan-out without filters, to tell the filters' cost from the endpoints'.
    Typed1000,
    /// Ten endpoints, one of which hangs until the timeout.
    Isolation,
    /// `--rate` events a second (1,000 by default), one request each: latency under a steady load.
    Latency,
    /// A backlog ingested with the dispatcher off, then drained; RSS sampled throughout.
    Backlog,
    /// One endpoint that receives batches of up to 50 events (`max_wait` 10ms), batch API:
    /// deliveries and requests a second.
    Batched,
}

/// What to run (the `herald bench` flags).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Scenarios to run, in order.
    #[arg(long = "scenario", value_enum, value_delimiter = ',', default_values_t = [
        Scenario::Single, Scenario::Batch, Scenario::Fanout10, Scenario::Isolation, Scenario::Latency,
    ])]
    pub scenarios: Vec<Scenario>,
    /// Events per scenario (fanout1000 uses a hundredth).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Deliveries in the backlog scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: usize,
    /// Concurrent producer requests in the single-request scenario.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Events a second the latency scenario sends, one request each, at a steady pace.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Run against this PostgreSQL server (a fresh database per scenario) instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Herald processes sharing the database, e.g. `1,3` to run every scenario with one, then
    /// with three (above 1 needs `--postgres`). Producers talk to the first; every replica delivers.
    #[arg(long, value_delimiter = ',', default_values_t = [1])]
    pub replicas: Vec<usize>,
    /// The receiver waits this long before answering, e.g. 200ms: a slow customer endpoint.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "0ms")]
    pub receiver_delay: Duration,
    /// Longest one scenario may run, e.g. 5m.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5m")]
    pub limit: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Options {
    /// Refuses replica counts SQLite cannot serve or this machine should not start, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.replicas.iter().any(|&n| !(1..=MAX_REPLICAS).contains(&n)) {
            bail!("`--replicas` must be between 1 and {MAX_REPLICAS}");
        }
        if self.replicas.iter().any(|&n| n > 1) && self.postgres.is_none() {
            bail!("`--replicas` above 1 needs `--postgres`: SQLite serves one process");
        }
        if self.events == 0 || self.concurrency == 0 {
            bail!("`--events` and `--concurrency` must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.rate) {
            bail!("`--rate` must be between 1 and 1000000 events a second");
        }
        Ok(())
    }
}

/// Most server processes one bench starts.
const MAX_REPLICAS: usize = 16;

/// One scenario's figures.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Which one.
    pub scenario: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Server processes.
    pub replicas: usize,
    /// How long the receiver waited before answering, milliseconds.
    pub receiver_delay_ms: u64,
    /// Events accepted.
    pub events: usize,
    /// Deliveries expected.
    pub deliveries: usize,
    /// Events accepted per second.
    pub ingest_per_second: f64,
    /// Deliveries received per second, from the first accept to the last arrival.
    pub deliveries_per_second: f64,
    /// Requests the receiver got per second over the same span (below the deliveries for an
    /// endpoint that receives batches).
    pub requests_per_second: f64,
    /// Accepted (the producer has its 202) → received, milliseconds.
    pub latency_ms: Latencies,
    /// Sent (the producer starts its request) → received, milliseconds: the 202's own wait
    /// included.
    pub send_latency_ms: Latencies,
    /// Highest resident memory of the server process, MiB.
    pub server_peak_rss_mib: f64,
    /// Where the machine's CPU went between the first request and the last arrival.
    pub cpu_seconds: CpuSeconds,
    /// That CPU per delivery received, milliseconds: Herald's processes, and the PostgreSQL
    /// server's.
    pub cpu_ms_per_delivery: CpuPerDelivery,
    /// Cores Herald's processes kept busy on average (their CPU seconds ÷ wall seconds).
    pub herald_cores_busy: f64,
    /// With `--receiver-delay`: how the endpoint's adaptive window ramped (`null` otherwise).
    pub ramp: Option<Ramp>,
    /// Deliveries received more than once (0 without crashes).
    pub duplicates: usize,
    /// Deliveries never received within the limit.
    pub missing: usize,
    /// Notes (caps raised, scaled counts).
    pub notes: Vec<String>,
}

/// How fast deliveries ramped up to their steady rate: the arrivals counted in 250 ms buckets
/// from the first one; ramped once a bucket reaches 80 % of the busiest bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ramp {
    /// Seconds from the first arrival to the first ramped bucket.
    pub seconds: f64,
    /// Deliveries a second from the first ramped bucket to the last one.
    pub ramped_per_second: f64,
}

/// Bucket width of [`Ramp`], µs.
const RAMP_BUCKET: i64 = 250_000;

impl Ramp {
    /// The ramp of these arrival times (Unix µs, any order); `None` without arrivals.
    pub fn of(arrivals: &[i64]) -> Option<Ramp> {
        let first = *arrivals.iter().min()?;
        let mut buckets = vec![0usize; 1];
        for at in arrivals {
            let index = ((at - first) / RAMP_BUCKET) as usize;
            if index >= buckets.len() {
                buckets.resize(index + 1, 0);
            }
            buckets[index] += 1;
        }
        let peak = *buckets.iter().max()?;
        let ramped = |n: &usize| *n * 5 >= peak * 4;
        let start = buckets.iter().position(ramped)?;
        let end = buckets.iter().rposition(ramped)?;
        let delivered: usize = buckets[start..=end].iter().sum();
        let span = (end - start + 1) as f64 * RAMP_BUCKET as f64 / 1e6;
        Some(Ramp {
            seconds: start as f64 * RAMP_BUCKET as f64 / 1e6,
            ramped_per_second: delivered as f64 / span,
        })
    }
}

/// CPU time (user + system), seconds, over one scenario's measured span.
#[derive(Debug, Default, Serialize)]
pub struct CpuSeconds {
    /// Every `herald serve` replica together.
    pub herald: f64,
    /// The PostgreSQL server's processes, when it runs on this machine (0 on SQLite).
    pub postgres: f64,
    /// The bench process itself: producers and receiver.
    pub bench: f64,
    /// Wall-clock seconds of the span; (herald + postgres + bench) ÷ wall is the cores in use.
    pub wall: f64,
}

/// CPU milliseconds per delivery.
#[derive(Debug, Default, Serialize)]
pub struct CpuPerDelivery {
    /// Every `herald serve` replica together.
    pub herald: f64,
    /// The PostgreSQL server (0 on SQLite).
    pub postgres: f64,
}

impl Report {
    /// Fills the figures derived from the CPU seconds: per delivery received, and cores busy.
    fn derive_cpu(&mut self, received: usize) {
        let per = |seconds: f64| if received == 0 { 0.0 } else { seconds * 1000.0 / received as f64 };
        self.cpu_ms_per_delivery =
            CpuPerDelivery { herald: per(self.cpu_seconds.herald), postgres: per(self.cpu_seconds.postgres) };
        self.herald_cores_busy =
            if self.cpu_seconds.wall > 0.0 { self.cpu_seconds.herald / self.cpu_seconds.wall } else { 0.0 };
    }
}

/// CPU counters at the start of a span: per process id, seconds used so far.
struct CpuMark {
    at: Instant,
    herald: Vec<(u32, f64)>,
    postgres: HashMap<u32, f64>,
    bench: f64,
}

impl CpuMark {
    /// Marks the replicas, this process, and with `postgres` the local PostgreSQL server.
    fn take(servers: &[&Server], postgres: bool) -> CpuMark {
        let herald = servers.iter().filter_map(|s| s.child.id()).map(|pid| (pid, process_cpu(pid))).collect();
        let postgres = if postgres { postgres_cpu() } else { HashMap::new() };
        CpuMark { at: Instant::now(), herald, postgres, bench: process_cpu(std::process::id()) }
    }

    /// CPU used since the mark. PostgreSQL processes started during the span count in full.
    fn since(&self) -> CpuSeconds {
        let herald = self.herald.iter().map(|(pid, before)| process_cpu(*pid) - before).sum();
        let postgres = if self.postgres.is_empty() {
            0.0
        } else {
            postgres_cpu().iter().map(|(pid, now)| now - self.postgres.get(pid).copied().unwrap_or(0.0)).sum()
        };
        CpuSeconds {
            herald,
            postgres,
            bench: process_cpu(std::process::id()) - self.bench,
            wall: self.at.elapsed().as_secs_f64(),
        }
    }
}

/// User + system CPU seconds of a process from `/proc/<pid>/stat` (0 where unreadable). Linux
/// reports them in USER_HZ, which the kernel ABI fixes at 100.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process named `postgres` on this machine, by process id.
fn postgres_cpu() -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| (pid, process_cpu(pid)))
        .collect()
}

/// Latency percentiles.
#[derive(Debug, Default, Serialize)]
pub struct Latencies {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latencies {
    /// The percentiles of `samples` (milliseconds).
    fn of(mut samples: Vec<f64>) -> Latencies {
        samples.sort_by(f64::total_cmp);
        Latencies {
            p50: percentile(&samples, 50.0),
            p95: percentile(&samples, 95.0),
            p99: percentile(&samples, 99.0),
        }
    }
}

/// When an event's request left the producer and when its 202 came back (Unix µs).
#[derive(Clone, Copy, Debug)]
struct Accepted {
    sent: i64,
    at: i64,
}

/// A `herald serve` child process.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `herald serve --dev --role <role>` on `database_url` with extra environment.
    pub(crate) async fn start(
        database_url: &str,
        role: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--dev", "--role", role])
            .current_dir(dir.path())
            .kill_on_drop(true)
            .stdin(Stdio::null());
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        command
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATABASE_URL", database_url)
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn");
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().context("could not start `herald serve`")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                    return Ok::<u16, anyhow::Error>(rest.trim().parse()?);
                }
            }
            bail!("the server exited before listening")
        })
        .await
        .context("the server did not start within 60 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build()?;
        Ok(Server { child, base: format!("http://127.0.0.1:{port}"), client, _dir: dir })
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response =
            self.client.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body)
    }

    fn peak_rss_mib(&self) -> f64 {
        let Some(pid) = self.child.id() else { return 0.0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Drops a database `fresh_database` created on PostgreSQL.
pub(crate) async fn drop_database(postgres: Option<&str>, database_url: &str) {
    let (Some(server), Ok(url)) = (postgres, url::Url::parse(database_url)) else { return };
    let name = url.path().trim_start_matches('/').to_owned();
    if !name.starts_with("herald_bench_") {
        return;
    }
    if let Ok(pool) = sqlx::PgPool::connect(server).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// A new empty database: a SQLite file in a temporary directory, or a `herald_bench_…` database
/// on the PostgreSQL server `postgres`. Returns (URL, backend name, the directory).
pub(crate) async fn fresh_database(
    postgres: Option<&str>,
) -> anyhow::Result<(String, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    match postgres {
        None => Ok((format!("sqlite://{}/bench.db", dir.path().display()), "sqlite".into(), dir)),
        Some(server) => {
            let name = format!("herald_bench_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::PgPool::connect(server).await.context("could not connect to PostgreSQL")?;
            sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&pool).await?;
            pool.close().await;
            let mut url = url::Url::parse(server)?;
            url.set_path(&format!("/{name}"));
            Ok((url.to_string(), "postgres".into(), dir))
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs the scenarios (each once per replica count) and prints the results.
pub async fn run(options: Options) -> anyhow::Result<Vec<Report>> {
    options.validate()?;
    let mut reports = Vec::new();
    for scenario in &options.scenarios {
        let counts: &[usize] = if *scenario == Scenario::Backlog { &[1] } else { &options.replicas };
        let mut first: Option<f64> = None;
        for &replicas in counts {
            let (database_url, backend, dir) = fresh_database(options.postgres.as_deref()).await?;
            let result = run_scenario(*scenario, &options, replicas, &database_url, backend).await;
            drop(dir);
            drop_database(options.postgres.as_deref(), &database_url).await;
            let mut report = result.with_context(|| format!("scenario {scenario:?}"))?;
            match first {
                None => first = Some(report.deliveries_per_second),
                Some(base) if base > 0.0 => report.notes.push(format!(
                    "{:.2}× the delivery rate of {} replica(s) in this run",
                    report.deliveries_per_second / base,
                    counts[0]
                )),
                Some(_) => {}
            }
            print_report(&report);
            reports.push(report);
        }
    }
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(reports)
}

fn print_report(r: &Report) {
    println!(
        "{:<11} {:<8} x{}{} events={:<8} deliveries={:<8} ingest={:>9.0}/s delivery={:>9.0}/s requests={:>9.0}/s p50={:>7.1}ms p95={:>7.1}ms p99={:>7.1}ms send→arrival p50={:.1}ms p99={:.1}ms rss={:>6.1}MiB cpu=herald {:.1}s+pg {:.1}s+bench {:.1}s/{:.1}s cpu/delivery=herald {:.3}ms+pg {:.3}ms herald-cores={:.2} missing={} duplicates={}{}",
        r.scenario,
        r.backend,
        r.replicas,
        match &r.ramp {
            Some(ramp) => format!(
                " delay={}ms ramped in {:.2}s to {:.0}/s",
                r.receiver_delay_ms, ramp.seconds, ramp.ramped_per_second
            ),
            None if r.receiver_delay_ms > 0 => format!(" delay={}ms", r.receiver_delay_ms),
            None => String::new(),
        },
        r.events,
        r.deliveries,
        r.ingest_per_second,
        r.deliveries_per_second,
        r.requests_per_second,
        r.latency_ms.p50,
        r.latency_ms.p95,
        r.latency_ms.p99,
        r.send_latency_ms.p50,
        r.send_latency_ms.p99,
        r.server_peak_rss_mib,
        r.cpu_seconds.herald,
        r.cpu_seconds.postgres,
        r.cpu_seconds.bench,
        r.cpu_seconds.wall,
        r.cpu_ms_per_delivery.herald,
        r.cpu_ms_per_delivery.postgres,
        r.herald_cores_busy,
        r.missing,
        r.duplicates,
        if r.notes.is_empty() { String::new() } else { format!(" ({})", r.notes.join("; ")) }
    );
}

async fn run_scenario(
    scenario: Scenario,
    options: &Options,
    replicas: usize,
    database_url: &str,
    backend: String,
) -> anyhow::Result<Report> {
    let database_url = database_url.to_owned();
    let healthy = Receiver::start(
        "127.0.0.1:0".parse()?,
        Behaviour { delay: options.receiver_delay, ..Behaviour::default() },
    )
    .await?;
    let hanging =
        Receiver::start("127.0.0.1:0".parse()?, Behaviour { hang_rate: 1.0, ..Behaviour::default() }).await?;
    let (endpoints, events, batch) = match scenario {
        Scenario::Single => (1, options.events, false),
        Scenario::Batch | Scenario::Batched => (1, options.events, true),
        Scenario::Fanout10 | Scenario::Isolation => (10, options.events, true),
        Scenario::Fanout1000 => (1000, (options.events / 100).max(10), true),
        Scenario::Filtered1000 | Scenario::Typed1000 => (1000, options.events, true),
        Scenario::Latency => (1, options.events.min(5000), false),
        Scenario::Backlog => (1, options.backlog, true),
    };
    let mut notes = Vec::new();
    let mut env: Vec<(&str, String)> = Vec::new();
    if scenario == Scenario::Backlog {
        // Ingest with the dispatcher off, then drain with a second process on the same database.
        env.push(("HERALD_INGEST__BATCH_BODY_LIMIT", "64MiB".into()));
    }
    let server = Server::start(&database_url, "all", &env).await?;
    let server = if scenario == Scenario::Backlog {
        server.stop().await;
        let api: Vec<(&str, String)> = vec![("HERALD_INGEST__BATCH_BODY_LIMIT", "64MiB".into())];
        let mut api_server = Server::start(&database_url, "api", &api).await?;
        setup(&api_server, endpoints, &healthy, &hanging, scenario, pinned_cap(options)).await?;
        let tenant = "bench";
        let started = Instant::now();
        ingest_batches(&api_server, tenant, events, false).await?;
        let ingest_secs = started.elapsed().as_secs_f64();
        notes.push(format!(
            "backlog ingested at {:.0} events/s with the dispatcher off",
            events as f64 / ingest_secs
        ));
        let _ = api_server.child.kill().await;
        let drain = Server::start(&database_url, "all", &[]).await?;
        let mark = CpuMark::take(&[&drain], false);
        let begin = Instant::now();
        let mut peak_samples = Vec::new();
        loop {
            let received = healthy.counters.accepted.load(Ordering::Relaxed) as usize;
            peak_samples.push(drain.peak_rss_mib());
            if received >= events || begin.elapsed() > options.limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let secs = begin.elapsed().as_secs_f64();
        let received = healthy.counters.accepted.load(Ordering::Relaxed) as usize;
        let mut report = Report {
            scenario: "backlog".into(),
            backend,
            replicas: 1,
            receiver_delay_ms: options.receiver_delay.as_millis() as u64,
            events,
            deliveries: events,
            ingest_per_second: events as f64 / ingest_secs,
            deliveries_per_second: received as f64 / secs,
            server_peak_rss_mib: drain.peak_rss_mib(),
            cpu_seconds: mark.since(),
            missing: events.saturating_sub(received),
            notes,
            ..Report::default()
        };
        report.derive_cpu(received);
        drain.stop().await;
        return Ok(report);
    } else {
        server
    };

    setup(&server, endpoints, &healthy, &hanging, scenario, pinned_cap(options)).await?;
    let mut others = Vec::new();
    for _ in 1..replicas {
        others.push(Server::start(&database_url, "all", &env).await?);
    }
    if replicas > 1 {
        notes.push(format!("{replicas} replicas on one database; producers use the first"));
    }
    let tenant = "bench";
    // Deliveries each event gets.
    let healthy_endpoints = match scenario {
        Scenario::Isolation => endpoints - 1,
        Scenario::Filtered1000 | Scenario::Typed1000 => endpoints / FILTER_SHARDS,
        _ => endpoints,
    };
    let expected = events * healthy_endpoints;
    let replicas_now: Vec<&Server> = std::iter::once(&server).chain(&others).collect();
    let mark = CpuMark::take(&replicas_now, options.postgres.is_some());
    let begin = Instant::now();
    let accepted: HashMap<String, Accepted> = if batch {
        ingest_batches(&server, tenant, events, scenario == Scenario::Typed1000).await?
    } else if scenario == Scenario::Latency {
        ingest_paced(&server, tenant, events, options.rate).await?
    } else {
        ingest_single(&server, tenant, events, options.concurrency).await?
    };
    let ingest_secs = begin.elapsed().as_secs_f64();
    while (healthy.counters.accepted.load(Ordering::Relaxed) as usize) < expected
        && begin.elapsed() < options.limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_seconds = mark.since();
    let arrivals = healthy.counters.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let last_arrival = arrivals.iter().map(|a| a.at).max().unwrap_or(0);
    let first_accept = accepted.values().map(|a| a.at).min().unwrap_or(0);
    let delivery_secs = ((last_arrival - first_accept) as f64 / 1e6).max(1e-6);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut latencies: Vec<f64> = Vec::with_capacity(arrivals.len());
    let mut send_latencies: Vec<f64> = Vec::with_capacity(arrivals.len());
    for arrival in arrivals.iter().filter(|a| a.ok) {
        *per_id.entry(arrival.id.as_str()).or_default() += 1;
        if let Some(accepted) = accepted.get(&arrival.id) {
            latencies.push((arrival.at - accepted.at) as f64 / 1000.0);
            send_latencies.push((arrival.at - accepted.sent) as f64 / 1000.0);
        }
    }
    let received: usize = per_id.values().sum();
    let duplicates = per_id.values().map(|n| n.saturating_sub(healthy_endpoints)).sum();
    if scenario == Scenario::Isolation {
        notes.push(format!(
            "one endpoint hangs until the timeout; {} requests to it",
            hanging.counters.requests.load(Ordering::Relaxed)
        ));
    }
    if scenario == Scenario::Fanout1000 {
        notes.push(format!("events scaled to {events}"));
    }
    let mut report = Report {
        scenario: format!("{scenario:?}").to_lowercase(),
        backend,
        events,
        deliveries: expected,
        ingest_per_second: events as f64 / ingest_secs,
        deliveries_per_second: received as f64 / delivery_secs,
        requests_per_second: healthy.counters.requests.load(Ordering::Relaxed) as f64 / delivery_secs,
        latency_ms: Latencies::of(latencies),
        send_latency_ms: Latencies::of(send_latencies),
        server_peak_rss_mib: others.iter().map(Server::peak_rss_mib).fold(server.peak_rss_mib(), f64::max),
        cpu_seconds,
        replicas,
        receiver_delay_ms: options.receiver_delay.as_millis() as u64,
        ramp: if options.receiver_delay.is_zero() {
            None
        } else {
            Ramp::of(&arrivals.iter().filter(|a| a.ok).map(|a| a.at).collect::<Vec<_>>())
        },
        duplicates,
        missing: expected.saturating_sub(received),
        notes,
        ..Report::default()
    };
    report.derive_cpu(received);
    server.stop().await;
    for other in others {
        other.stop().await;
    }
    Ok(report)
}

/// The per-endpoint cap the bench pins: 10 attempts in flight, so figures compare across
/// versions; with `--receiver-delay` none (the server's cap), so the adaptive window shows how
/// far and how fast it ramps for a slow endpoint.
fn pinned_cap(options: &Options) -> Value {
    if options.receiver_delay.is_zero() { json!(10) } else { Value::Null }
}

async fn setup(
    server: &Server,
    endpoints: usize,
    healthy: &Receiver,
    hanging: &Receiver,
    scenario: Scenario,
    max_in_flight: Value,
) -> anyhow::Result<()> {
    server.post("/v1/event-types", &json!({"name": "bench.event"})).await?;
    if scenario == Scenario::Typed1000 {
        for shard in 0..FILTER_SHARDS {
            server.post("/v1/event-types", &json!({"name": event_type(true, shard)})).await?;
        }
    }
    server.post("/v1/tenants", &json!({"name": "Bench", "external_id": "bench"})).await?;
    for n in 0..endpoints {
        let url = if scenario == Scenario::Isolation && n == 0 {
            format!("{}/hang", hanging.url())
        } else {
            format!("{}/hook/{n}", healthy.url())
        };
        let mut endpoint = match scenario {
            Scenario::Filtered1000 => {
                json!({"url": url, "filter": {"data.shard": n % FILTER_SHARDS, "data.n": {"$gte": 0}}})
            }
            Scenario::Typed1000 => json!({"url": url, "event_types": [event_type(true, n)]}),
            Scenario::Batched => json!({"url": url, "batch": {"max_events": 50, "max_wait": "10ms"}}),
            _ => json!({"url": url}),
        };
        endpoint["max_in_flight"] = max_in_flight.clone();
        server.post("/v1/tenants/bench/endpoints", &endpoint).await?;
    }
    Ok(())
}

/// Shards of the filtered scenario: event `n` carries `shard: n % FILTER_SHARDS`, and endpoint
/// `k` filters on `shard == k % FILTER_SHARDS`.
const FILTER_SHARDS: usize = 100;

/// The event type of event (or endpoint) `n`.
fn event_type(typed: bool, n: usize) -> String {
    if typed { format!("bench.t{}", n % FILTER_SHARDS) } else { "bench.event".to_owned() }
}

/// A 1 KiB `data` object.
fn data(n: usize) -> Value {
    json!({"n": n, "shard": n % FILTER_SHARDS, "padding": "x".repeat(1000)})
}

/// Sends event `n` through the single-event route at `url`: its id, with when it was sent and
/// when it was accepted.
async fn post_event(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<(String, Accepted)> {
    let sent = now_micros();
    let response = client
        .post(url)
        .bearer_auth(TOKEN)
        .json(&json!({"event": "bench.event", "data": data(n)}))
        .send()
        .await?;
    let at = now_micros();
    if !response.status().is_success() {
        bail!("ingest answered {}", response.status());
    }
    let body: Value = response.json().await?;
    Ok((body["id"].as_str().unwrap_or_default().to_owned(), Accepted { sent, at }))
}

async fn ingest_single(
    server: &Server,
    tenant: &str,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<HashMap<String, Accepted>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let client = server.client.clone();
        let url = format!("{}/v1/tenants/{tenant}/events", server.base);
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= events {
                    return Ok::<_, anyhow::Error>(accepted);
                }
                accepted.push(post_event(&client, &url, n).await?);
            }
        }));
    }
    let mut accepted = HashMap::with_capacity(events);
    for task in tasks {
        accepted.extend(task.await??);
    }
    Ok(accepted)
}

async fn ingest_paced(
    server: &Server,
    tenant: &str,
    events: usize,
    per_second: u64,
) -> anyhow::Result<HashMap<String, Accepted>> {
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    let mut tasks = Vec::with_capacity(events);
    for n in 0..events {
        interval.tick().await;
        let client = server.client.clone();
        let url = format!("{}/v1/tenants/{tenant}/events", server.base);
        tasks.push(tokio::spawn(async move { post_event(&client, &url, n).await }));
    }
    let mut accepted = HashMap::with_capacity(events);
    for task in tasks {
        let (id, times) = task.await??;
        accepted.insert(id, times);
    }
    Ok(accepted)
}

/// Sends `events` through the batch API; `typed` spreads them over the typed1000 scenario's
/// event types (`bench.t{n % 100}`) instead of `bench.event`.
async fn ingest_batches(
    server: &Server,
    tenant: &str,
    events: usize,
    typed: bool,
) -> anyhow::Result<HashMap<String, Accepted>> {
    let mut accepted = HashMap::with_capacity(events);
    let mut n = 0;
    while n < events {
        let size = (events - n).min(1000);
        let batch: Vec<Value> =
            (n..n + size).map(|i| json!({"event": event_type(typed, i), "data": data(i)})).collect();
        let sent = now_micros();
        let body =
            server.post(&format!("/v1/tenants/{tenant}/events/batch"), &json!({"events": batch})).await?;
        let at = now_micros();
        for item in body["data"].as_array().into_iter().flatten() {
            if let Some(id) = item["id"].as_str() {
                accepted.insert(id.to_owned(), Accepted { sent, at });
            }
        }
        n += size;
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_is_where_arrivals_first_reach_four_fifths_of_the_busiest_quarter_second() {
        // 10 arrivals in the first quarter second, 40 in the second, then 100 a quarter
        // second for a second, then a tail of 5.
        let mut arrivals = Vec::new();
        let at = |bucket: i64, i: i64, n: i64| bucket * RAMP_BUCKET + i * RAMP_BUCKET / n;
        arrivals.extend((0..10).map(|i| at(0, i, 10)));
        arrivals.extend((0..40).map(|i| at(1, i, 40)));
        for bucket in 2..6 {
            arrivals.extend((0..100).map(|i| at(bucket, i, 100)));
        }
        arrivals.extend((0..5).map(|i| at(6, i, 5)));
        let ramp = Ramp::of(&arrivals).expect("arrivals");
        assert_eq!(ramp.seconds, 0.5);
        assert_eq!(ramp.ramped_per_second, 400.0);
        assert_eq!(Ramp::of(&[]), None);
    }
}
