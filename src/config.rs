//! Configuration: one struct, layered defaults < `herald.toml` (or `--config FILE`) < `HERALD_…`
//! environment (`__` nests) < command-line flags, validated once at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The default configuration file, read from the working directory when it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

/// Everything Herald can be told. Every field is documented in `docs/configuration.md`, whose test
/// lists the keys by serializing the defaults (durations as text, secrets as `[redacted]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP API listens on (`HERALD_LISTEN`).
    pub listen: SocketAddr,
    /// `sqlite://path` (created if missing) or `postgres://…` (`HERALD_DATABASE_URL`).
    pub database_url: String,
    /// Bootstrap admin token accepted in addition to the tokens stored in the database.
    pub admin_token: Option<Redacted>,
    /// Development mode: allows `http://` and private or loopback endpoint URLs.
    pub dev: bool,
    /// Master key for secrets at rest: base64 of 32 random bytes (`HERALD_SECRET_KEY`).
    pub secret_key: Option<Redacted>,
    /// A file holding the master key instead (e.g. a mounted Kubernetes secret).
    pub secret_key_file: Option<std::path::PathBuf>,
    /// Older master keys still accepted for reading, until `herald secrets rekey` has run
    /// (a list, or a comma-separated string in the environment).
    #[serde(deserialize_with = "redacted_list")]
    pub previous_secret_keys: Vec<Redacted>,
    /// Send-time address checks and API limits.
    pub security: SecurityConfig,
    /// Log output: `pretty` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// Delivery settings.
    pub delivery: DeliveryConfig,
    /// Ingest settings.
    pub ingest: IngestConfig,
    /// Storage settings.
    pub store: StoreConfig,
    /// Management API settings.
    pub api: ApiConfig,
    /// Signature headers.
    pub signing: SigningConfig,
    /// Scheduled jobs.
    pub maintenance: MaintenanceConfig,
    /// Operational events.
    pub operations: OperationsConfig,
    /// OpenTelemetry traces.
    pub telemetry: TelemetryConfig,
    /// Whether this process serves the management API (`false` for `serve --role worker`).
    #[serde(skip)]
    pub api_enabled: bool,
    /// Whether this process runs the dispatcher (`false` for `serve --role api`).
    #[serde(skip)]
    pub dispatcher_enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://herald.db".to_owned(),
            admin_token: None,
            dev: false,
            secret_key: None,
            secret_key_file: None,
            previous_secret_keys: Vec::new(),
            security: SecurityConfig::default(),
            log_format: LogFormat::Pretty,
            delivery: DeliveryConfig::default(),
            ingest: IngestConfig::default(),
            store: StoreConfig::default(),
            api: ApiConfig::default(),
            signing: SigningConfig::default(),
            maintenance: MaintenanceConfig::default(),
            operations: OperationsConfig::default(),
            telemetry: TelemetryConfig::default(),
            api_enabled: true,
            dispatcher_enabled: true,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[delivery]`: how attempts are made and retried.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Time allowed for one attempt, DNS and connect included (`10s`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub timeout: Duration,
    /// Backoff after attempts 1, 2, 3 (`5s,5m,30m`); each is jittered by ±20 %.
    #[serde(deserialize_with = "duration_list", serialize_with = "duration_list_text")]
    pub retry_schedule: Vec<Duration>,
    /// Attempts in flight at once in this process, across all endpoints (256).
    pub max_in_flight: usize,
    /// Cap on attempts in flight per endpoint, for endpoints whose `max_in_flight` is `null`
    /// (100); the adaptive window grows up to it.
    pub max_in_flight_per_endpoint: i32,
    /// Where an endpoint's adaptive in-flight window starts (10).
    pub initial_in_flight: i32,
    /// Consecutive failures on an endpoint's side that open its circuit (10); 0 turns the
    /// breaker off.
    pub breaker_failures: u32,
    /// How long an open circuit waits before its first probe (`30s`); doubles on each failed probe.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub breaker_cooldown: Duration,
    /// The longest wait between probes (`10m`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub breaker_cooldown_max: Duration,
    /// How long a claim holds a delivery (`30s`); must be at least `timeout` + 5s.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub lease: Duration,
    /// How long a stopping process waits for attempts in flight (default `timeout` + 5s).
    #[serde(deserialize_with = "opt_duration", serialize_with = "opt_duration_text")]
    pub shutdown_grace: Option<Duration>,
    /// Largest honoured `Retry-After` (`1h`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub retry_after_max: Duration,
    /// Retry 4xx answers (other than 410) instead of failing at once (false).
    pub retry_client_errors: bool,
    /// Longest the dispatcher sleeps between looks at the store when nothing wakes it (`1s`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub poll_interval: Duration,
    /// Longest attempt timeout an endpoint may ask for; at most `lease` − 5s (default: 25s, or
    /// `lease` − 5s when that is shorter).
    #[serde(deserialize_with = "opt_duration", serialize_with = "opt_duration_text")]
    pub timeout_max: Option<Duration>,
    /// Shortest retry delay an endpoint's own schedule may list (`1s`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub retry_min: Duration,
}

impl DeliveryConfig {
    /// The effective shutdown grace period: by default the longest attempt plus 5s.
    pub fn grace(&self) -> Duration {
        self.shutdown_grace.unwrap_or(self.timeout_max() + Duration::from_secs(5))
    }

    /// The longest attempt timeout an endpoint may ask for.
    pub fn timeout_max(&self) -> Duration {
        self.timeout_max.unwrap_or_else(|| {
            Duration::from_secs(25).min(self.lease.saturating_sub(Duration::from_secs(5))).max(self.timeout)
        })
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> crate::domain::breaker::Breaker {
        crate::domain::breaker::Breaker {
            failures: self.breaker_failures,
            cooldown: self.breaker_cooldown,
            cooldown_max: self.breaker_cooldown_max,
        }
    }

    /// The server's values and bounds for endpoints' own delivery policies.
    pub fn policy_server(&self) -> crate::domain::policy::Server {
        crate::domain::policy::Server {
            timeout: self.timeout,
            retry: crate::domain::retry::RetryPolicy {
                schedule: self.retry_schedule.clone(),
                retry_after_max: self.retry_after_max,
                retry_client_errors: self.retry_client_errors,
            },
            timeout_max: self.timeout_max(),
            retry_min: self.retry_min,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
            ],
            max_in_flight: 256,
            max_in_flight_per_endpoint: 100,
            initial_in_flight: 10,
            breaker_failures: 10,
            breaker_cooldown: Duration::from_secs(30),
            breaker_cooldown_max: Duration::from_secs(600),
            lease: Duration::from_secs(30),
            shutdown_grace: None,
            retry_after_max: Duration::from_secs(3600),
            retry_client_errors: false,
            poll_interval: Duration::from_secs(1),
            timeout_max: None,
            retry_min: Duration::from_secs(1),
        }
    }
}

/// `[ingest]`: limits on what producers may send.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct IngestConfig {
    /// Largest accepted event `data`, in bytes (`1MiB`).
    #[serde(deserialize_with = "byte_size")]
    pub payload_limit: usize,
    /// Largest accepted batch request body, in bytes (`16MiB`).
    #[serde(deserialize_with = "byte_size")]
    pub batch_body_limit: usize,
    /// How long an idempotency key is remembered (`24h`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub idempotency_window: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            payload_limit: 1024 * 1024,
            batch_body_limit: 16 * 1024 * 1024,
            idempotency_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[store]`: database settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `durable` (fsync on every commit) or `relaxed` (faster; an OS crash may lose the last
    /// milliseconds of commits).
    pub durability: Durability,
    /// Size of the connection pool (PostgreSQL) or of the read pool (SQLite).
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { durability: Durability::Durable, max_connections: 8 }
    }
}

/// Commit durability.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// SQLite `synchronous=FULL`, PostgreSQL `synchronous_commit=on`.
    Durable,
    /// SQLite `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`.
    Relaxed,
}

/// `[api]`: management API limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Largest accepted body for management requests (endpoints, tenants, event types), in bytes.
    #[serde(deserialize_with = "byte_size")]
    pub body_limit: usize,
    /// Most custom headers one endpoint may carry.
    pub max_headers_per_endpoint: usize,
    /// Most live endpoints one tenant may have.
    pub max_endpoints_per_tenant: i64,
    /// The address users reach Herald at, such as `https://webhooks.example.com`, for the links
    /// Herald builds (portal links); unset = `http://` and the request's `Host` header.
    pub public_url: Option<String>,
    /// Origins allowed to show the dashboard in a frame (CSP `frame-ancestors`), such as
    /// `https://app.example.com`, to embed the customer portal; empty = no framing.
    #[serde(deserialize_with = "text_list")]
    pub frame_ancestors: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 256 * 1024,
            max_headers_per_endpoint: 20,
            max_endpoints_per_tenant: 1000,
            public_url: None,
            frame_ancestors: Vec::new(),
        }
    }
}

/// `[signing]`: the optional classic body-only signature header.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SigningConfig {
    /// Header name for a lowercase hex HMAC-SHA256 of the body, keyed by the whole secret string,
    /// such as `X-AetherFlow-Signature`; unset = not sent.
    pub hex_header: Option<String>,
    /// Prefix of that header's value, such as `sha256=`.
    pub hex_prefix: String,
}

/// `[security]`: which private ranges endpoints may reach, and per-token API rate limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct SecurityConfig {
    /// CIDR ranges opened to every endpoint despite the private-address guard, e.g. `10.20.0.0/16`.
    #[serde(deserialize_with = "cidr_list", serialize_with = "display_list")]
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// CIDR ranges opened to the operations tenant's endpoints only.
    #[serde(deserialize_with = "cidr_list", serialize_with = "display_list")]
    pub operations_allow_cidrs: Vec<ipnet::IpNet>,
    /// Requests per second per tenant token (burst of the same size); 0 = unlimited (100).
    pub tenant_rate_limit: u32,
    /// Requests per second per admin token; 0 = unlimited (0: producers are never throttled by surprise).
    pub admin_rate_limit: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            operations_allow_cidrs: Vec::new(),
            tenant_rate_limit: 100,
            admin_rate_limit: 0,
        }
    }
}

/// `[maintenance]`: scheduled jobs. Cron expressions have six fields with seconds first
/// (`sec min hour day-of-month month day-of-week`), in UTC.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct MaintenanceConfig {
    /// Events (with their deliveries and attempts) older than this are deleted; pending work is
    /// kept whatever its age (`30d`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub retention: Duration,
    /// An endpoint with no success for this long whose deliveries keep failing is disabled (`5d`).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub disable_after: Duration,
    /// Rows deleted per statement by the retention and expiry jobs (1000).
    pub batch_size: i64,
    /// When the retention job runs (`0 17 * * * *`: hourly).
    pub retention_cron: String,
    /// When expired idempotency keys are deleted (`0 */10 * * * *`).
    pub idempotency_cron: String,
    /// When rotated secrets past their grace period are forgotten (`30 */5 * * * *`).
    pub secrets_cron: String,
    /// When the endpoint health job runs (`0 */15 * * * *`).
    pub health_cron: String,
    /// When lapsed leases are closed (`45 * * * * *`); dispatchers also do it inline.
    pub leases_cron: String,
    /// When old stats buckets are deleted (`0 41 * * * *`).
    pub stats_cron: String,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
            disable_after: Duration::from_secs(5 * 86_400),
            batch_size: 1000,
            retention_cron: "0 17 * * * *".into(),
            idempotency_cron: "0 */10 * * * *".into(),
            secrets_cron: "30 */5 * * * *".into(),
            health_cron: "0 */15 * * * *".into(),
            leases_cron: "45 * * * * *".into(),
            stats_cron: "0 41 * * * *".into(),
        }
    }
}

/// `[operations]`: where Herald reports about itself.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct OperationsConfig {
    /// The tenant (id or external_id) that receives `endpoint.disabled`, `endpoint.enabled` and
    /// `delivery.exhausted` events; unset = none.
    pub tenant: Option<String>,
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (DESIGN §16).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// Where spans go: the OTLP/HTTP traces URL, such as `http://collector:4318/v1/traces`; unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, or
    /// no export.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// The traces URL in force, if any: the setting, else the standard environment variables.
    pub fn traces_endpoint(&self) -> Option<String> {
        let env =
            |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        self.otlp_endpoint
            .clone()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| {
                env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
            })
    }
}

/// A secret string that never appears in `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted(pub String);

/// Serialized as `[redacted]`, like its `Debug`: a listing of the configuration never shows it.
impl Serialize for Redacted {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl Config {
    /// Loads the layered configuration. `file` is `--config`; without it `herald.toml` is read
    /// when present. `overrides` are `(key, value)` pairs from command-line flags.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> anyhow::Result<Config> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    bail!("configuration file `{}` does not exist", path.display());
                }
                builder = builder.add_source(config::File::from(path).required(true));
            }
            None => {
                builder = builder.add_source(config::File::with_name(DEFAULT_CONFIG_FILE).required(false));
            }
        }
        builder = builder
            .add_source(config::Environment::with_prefix("HERALD").prefix_separator("_").separator("__"));
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, value.clone())
                .with_context(|| format!("invalid flag for `{key}`"))?;
        }
        let raw = builder.build().context("could not read the configuration")?;
        let config: Config =
            raw.try_deserialize().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// The secrets-at-rest cipher from `secret_key` (or `secret_key_file`) and `previous_secret_keys`.
    pub fn cipher(&self) -> anyhow::Result<crate::crypto::Cipher> {
        let from_file = match &self.secret_key_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("could not read `secret_key_file` `{}`", path.display()))?,
            ),
            None => None,
        };
        let current = self.secret_key.as_ref().map(|k| k.0.clone()).or(from_file);
        let previous: Vec<String> = self.previous_secret_keys.iter().map(|k| k.0.clone()).collect();
        crate::crypto::Cipher::new(current.as_deref(), &previous)
            .map_err(|e| anyhow::anyhow!("invalid `secret_key`: {e}"))
    }

    /// Checks the rules that span fields; names the option and what it accepts.
    pub fn validate(&self) -> anyhow::Result<()> {
        let db = &self.database_url;
        if !(db.starts_with("sqlite:") || db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            bail!("invalid `database_url` `{}`: expected `sqlite://PATH` or `postgres://…`", redact_url(db));
        }
        if self.delivery.timeout.is_zero() || self.delivery.timeout > Duration::from_secs(300) {
            bail!("invalid `delivery.timeout`: expected a duration between 1ms and 5m");
        }
        if let Some(url) = &self.api.public_url
            && !is_origin_like(url.trim_end_matches('/'), true)
        {
            bail!(
                "invalid `api.public_url` `{url}`: expected an http:// or https:// address, such as https://webhooks.example.com"
            );
        }
        if let Some(bad) = self.api.frame_ancestors.iter().find(|origin| !is_origin_like(origin, false)) {
            bail!(
                "invalid `api.frame_ancestors` entry `{bad}`: expected an origin such as https://app.example.com"
            );
        }
        let delivery = &self.delivery;
        if delivery.lease < delivery.timeout + Duration::from_secs(5) {
            bail!("invalid `delivery.lease`: must be at least `delivery.timeout` + 5s");
        }
        if let Some(max) = delivery.timeout_max
            && (max + Duration::from_secs(5) > delivery.lease || max < delivery.timeout)
        {
            bail!(
                "invalid `delivery.timeout_max`: must be between `delivery.timeout` and `delivery.lease` - 5s"
            );
        }
        if delivery.retry_min.is_zero() || delivery.retry_min > Duration::from_secs(3600) {
            bail!("invalid `delivery.retry_min`: expected between 1ms and 1h");
        }
        if delivery.max_in_flight == 0 || delivery.max_in_flight > 100_000 {
            bail!("invalid `delivery.max_in_flight`: expected 1 to 100000");
        }
        if !(1..=1000).contains(&delivery.max_in_flight_per_endpoint) {
            bail!("invalid `delivery.max_in_flight_per_endpoint`: expected 1 to 1000");
        }
        if !(1..=1000).contains(&delivery.initial_in_flight) {
            bail!("invalid `delivery.initial_in_flight`: expected 1 to 1000");
        }
        if delivery.breaker_failures > 1000 {
            bail!("invalid `delivery.breaker_failures`: expected 0 (off) to 1000");
        }
        if delivery.breaker_cooldown.is_zero() || delivery.breaker_cooldown > delivery.breaker_cooldown_max {
            bail!(
                "invalid `delivery.breaker_cooldown`: expected more than 0 and at most `delivery.breaker_cooldown_max`"
            );
        }
        if delivery.breaker_cooldown_max > Duration::from_secs(24 * 3600) {
            bail!("invalid `delivery.breaker_cooldown_max`: expected at most 24h");
        }
        if delivery.poll_interval.is_zero() || delivery.poll_interval > Duration::from_secs(60) {
            bail!("invalid `delivery.poll_interval`: expected between 1ms and 60s");
        }
        if let Some(name) = &self.signing.hex_header {
            let lower = name.to_ascii_lowercase();
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || lower.starts_with("webhook-")
                || lower == "content-type"
            {
                bail!("invalid `signing.hex_header` `{name}`: expected a header name such as X-Signature");
            }
        }
        if self.secret_key.is_some() && self.secret_key_file.is_some() {
            bail!("invalid `secret_key_file`: set either `secret_key` or `secret_key_file`, not both");
        }
        self.cipher()?;
        let maintenance = &self.maintenance;
        if maintenance.batch_size < 1 || maintenance.batch_size > 100_000 {
            bail!("invalid `maintenance.batch_size`: expected 1 to 100000");
        }
        if maintenance.retention < Duration::from_secs(3600) {
            bail!("invalid `maintenance.retention`: expected at least 1h");
        }
        if maintenance.disable_after < Duration::from_secs(60) {
            bail!("invalid `maintenance.disable_after`: expected at least 1m");
        }
        for (name, expression) in [
            ("retention_cron", &maintenance.retention_cron),
            ("idempotency_cron", &maintenance.idempotency_cron),
            ("secrets_cron", &maintenance.secrets_cron),
            ("health_cron", &maintenance.health_cron),
            ("leases_cron", &maintenance.leases_cron),
            ("stats_cron", &maintenance.stats_cron),
        ] {
            if let Err(error) =
                tokio_cron_scheduler::Job::new_async(expression.as_str(), |_, _| Box::pin(async {}))
            {
                bail!(
                    "invalid `maintenance.{name}` `{expression}`: expected a cron expression with seconds, such as `0 */15 * * * *` ({error})"
                );
            }
        }
        if self.delivery.retry_schedule.len() > 20 {
            bail!("invalid `delivery.retry_schedule`: at most 20 retries are accepted");
        }
        if self.ingest.payload_limit == 0 || self.ingest.payload_limit > 64 * 1024 * 1024 {
            bail!("invalid `ingest.payload_limit`: expected between 1B and 64MiB");
        }
        if self.ingest.batch_body_limit < self.ingest.payload_limit {
            bail!("invalid `ingest.batch_body_limit`: must be at least `ingest.payload_limit`");
        }
        if self.store.max_connections == 0 {
            bail!("invalid `store.max_connections`: expected at least 1");
        }
        if self.api.max_endpoints_per_tenant < 1 {
            bail!("invalid `api.max_endpoints_per_tenant`: expected at least 1");
        }
        if self.api.max_headers_per_endpoint > 100 {
            bail!("invalid `api.max_headers_per_endpoint`: expected at most 100");
        }
        if self.api.body_limit < 1024 {
            bail!("invalid `api.body_limit`: expected at least 1KiB");
        }
        if let Some(token) = &self.admin_token
            && token.0.len() < 16
        {
            bail!("invalid `admin_token`: expected at least 16 characters");
        }
        Ok(())
    }
}

/// Hides the password of a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `http(s)://host[:port]` (with `path`, a path may follow), with nothing that could end a
/// header directive.
fn is_origin_like(text: &str, path: bool) -> bool {
    let Ok(url) = url::Url::parse(text) else { return false };
    matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.query().is_none()
        && url.fragment().is_none()
        && (path || url.path() == "/")
        && !text.contains(|c: char| c.is_whitespace() || c == ';' || c == ',' || c == '\'')
}

const DURATION_HELP: &str = "expected a number with a unit, such as 200ms, 10s, 5m or 24h";

/// Parses `200ms`, `10s`, `5m`, `1h`, `1h 30m`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty duration: {DURATION_HELP}"));
    }
    humantime::parse_duration(text).map_err(|_| format!("invalid duration `{text}`: {DURATION_HELP}"))
}

/// Parses `1048576`, `512KiB`, `1MiB`, `16MB`.
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("invalid size `{text}`: expected bytes such as 1048576, 512KiB or 1MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(format!("invalid size unit in `{text}`: expected B, KiB, MiB or GiB")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("size `{text}` is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Number(u64),
    Text(String),
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match StringOrNumber::deserialize(deserializer).map_err(|_| de::Error::custom(DURATION_HELP))? {
        StringOrNumber::Number(_) => {
            Err(de::Error::custom(format!("a bare number is ambiguous: {DURATION_HELP}")))
        }
        StringOrNumber::Text(text) => parse_duration(&text).map_err(de::Error::custom),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// A TOML array of strings, or one comma-separated string (the environment's form).
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrText {
    List(Vec<String>),
    Text(String),
}

impl ListOrText {
    /// Reads either form; `expected` is the whole error for anything else.
    fn read<'de, D: Deserializer<'de>>(deserializer: D, expected: &str) -> Result<ListOrText, D::Error> {
        ListOrText::deserialize(deserializer).map_err(|_| de::Error::custom(expected))
    }
}

fn redacted_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Redacted>, D::Error> {
    Ok(match ListOrText::read(deserializer, "expected a list of keys")? {
        ListOrText::List(items) => items.into_iter().map(Redacted).collect(),
        ListOrText::Text(text) => {
            text.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| Redacted(k.to_owned())).collect()
        }
    })
}

/// A [`ListOrText`] of strings, each trimmed.
fn text_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match ListOrText::read(deserializer, "expected a list of strings")? {
        ListOrText::List(items) => items.into_iter().map(|item| item.trim().to_owned()).collect(),
        ListOrText::Text(text) if text.trim().is_empty() => Vec::new(),
        ListOrText::Text(text) => text.split(',').map(|item| item.trim().to_owned()).collect(),
    })
}

fn cidr_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items = text_list(deserializer)
        .map_err(|_| de::Error::custom("expected a list of CIDR ranges such as 10.0.0.0/8"))?;
    items
        .iter()
        .map(|item| {
            item.trim().parse::<ipnet::IpNet>().map_err(|_| {
                de::Error::custom(format!("invalid CIDR range `{}`: expected e.g. 10.0.0.0/8", item.trim()))
            })
        })
        .collect()
}

fn duration_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    let items = match ListOrText::deserialize(deserializer).map_err(|_| {
        de::Error::custom(format!("expected a comma-separated list of durations: {DURATION_HELP}"))
    })? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) if text.trim().is_empty() => Vec::new(),
        ListOrText::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    items.iter().map(|item| parse_duration(item).map_err(de::Error::custom)).collect()
}

fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match StringOrNumber::deserialize(deserializer)
        .map_err(|_| de::Error::custom("expected bytes such as 1048576, 512KiB or 1MiB"))?
    {
        StringOrNumber::Number(n) => usize::try_from(n).map_err(de::Error::custom),
        StringOrNumber::Text(text) => parse_byte_size(&text).map_err(de::Error::custom),
    }
}

/// A duration as the text the configuration accepts (`10s`, `5m`).
fn duration_text<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

fn opt_duration_text<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => duration_text(value, serializer),
        None => serializer.serialize_none(),
    }
}

fn duration_list_text<S: serde::Serializer>(value: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(value.iter().map(|d| humantime::format_duration(*d).to_string()))
}

/// A list of values by their `Display` text (CIDR ranges).
fn display_list<S: serde::Serializer, T: fmt::Display>(
    value: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(value.iter().map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://herald.db");
        assert_eq!(config.delivery.timeout, Duration::from_secs(10));
        assert_eq!(
            config.delivery.retry_schedule,
            vec![Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(1800)]
        );
        assert_eq!(config.ingest.payload_limit, 1024 * 1024);
        assert!(!config.dev);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_byte_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_byte_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("42"), Ok(42));
        assert!(parse_byte_size("12 parsecs").is_err());
    }

    #[test]
    fn nonsense_limits_are_refused_naming_the_option() {
        let mut config = Config::default();
        config.api.max_endpoints_per_tenant = 0;
        let error = config.validate().expect_err("refused").to_string();
        assert!(error.contains("api.max_endpoints_per_tenant"), "{error}");
        let mut config = Config::default();
        config.delivery.lease = Duration::from_secs(5);
        assert!(config.validate().expect_err("refused").to_string().contains("delivery.lease"));
        let mut config = Config::default();
        config.maintenance.health_cron = "every tuesday".into();
        assert!(config.validate().expect_err("refused").to_string().contains("maintenance.health_cron"));
    }

    #[test]
    fn admin_token_is_redacted_in_debug() {
        let config =
            Config { admin_token: Some(Redacted("super-secret-token-value".into())), ..Config::default() };
        assert!(!format!("{config:?}").contains("super-secret"));
    }
}
