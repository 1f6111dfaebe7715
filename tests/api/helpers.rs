//! Test harness: a real Herald on `127.0.0.1:0` over a fresh SQLite file, or a fresh PostgreSQL
//! database when `HERALD_TEST_POSTGRES_URL` is set, with request helpers and fixtures.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::app::App;
use herald::dispatch::Dispatcher;

use crate::receiver::{Receiver, Recorded};
use herald::config::{Config, Redacted};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The admin token every test app is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijklmnopqrstuvwxyz";

/// The environment variable naming a PostgreSQL server to run the suite against.
pub const POSTGRES_ENV: &str = "HERALD_TEST_POSTGRES_URL";
/// `sqlite` runs the suite on SQLite even when `POSTGRES_ENV` is set.
pub const BACKEND_ENV: &str = "HERALD_TEST_BACKEND";

/// The PostgreSQL server the suite runs on, if it runs on PostgreSQL.
pub fn suite_postgres_url() -> Option<String> {
    let sqlite_only = std::env::var(BACKEND_ENV).is_ok_and(|backend| backend == "sqlite");
    std::env::var(POSTGRES_ENV).ok().filter(|url| !url.trim().is_empty() && !sqlite_only)
}

/// Which database engine a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// A fresh, empty database: a temp SQLite file, or a PostgreSQL database dropped at the end.
pub struct TestDatabase {
    pub url: String,
    pub backend: BackendKind,
    _dir: Option<TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh database on the backend the suite runs on: PostgreSQL when `HERALD_TEST_POSTGRES_URL`
    /// is set, unless `HERALD_TEST_BACKEND=sqlite` keeps the suite on SQLite (the PostgreSQL-only
    /// tests still use the server then).
    pub async fn for_suite() -> TestDatabase {
        match suite_postgres_url() {
            Some(url) => TestDatabase::postgres(&url).await,
            None => TestDatabase::sqlite(),
        }
    }

    /// A fresh SQLite file in its own temp directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/herald.db", dir.path().display());
        TestDatabase { url, backend: BackendKind::Sqlite, _dir: Some(dir), postgres: None }
    }

    /// A fresh database `herald_test_<uuid>` on the server at `server_url`.
    pub async fn postgres(server_url: &str) -> TestDatabase {
        let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_ENV}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let mut url = url::Url::parse(server_url).expect("valid postgres url");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            url: url.to_string(),
            backend: BackendKind::Postgres,
            _dir: None,
            postgres: Some((server_url.to_owned(), name)),
        }
    }

    /// Drops a PostgreSQL database under a running app (its connections are terminated), to
    /// observe how the app behaves when its database is gone. Returns false on SQLite.
    pub async fn break_postgres(&self) -> bool {
        let Some((server_url, name)) = &self.postgres else { return false };
        let mut conn = sqlx::PgConnection::connect(server_url).await.expect("connect to the server");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        conn.close().await.ok();
        true
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server_url, name)) = self.postgres.take() else { return };
        // Drop from a thread with its own runtime: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server_url).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// Says once per test which backend runs, and that PostgreSQL is skipped when it is.
pub fn announce_backend(backend: BackendKind) {
    if backend == BackendKind::Sqlite && std::env::var(POSTGRES_ENV).is_err() {
        eprintln!("backend: sqlite ({POSTGRES_ENV} is unset: PostgreSQL variants are skipped)");
    } else {
        eprintln!("backend: {}", backend.name());
    }
}

/// A running Herald and a client for it.
pub struct TestApp {
    #[expect(dead_code, reason = "part of the harness; base_url is what most tests use")]
    pub addr: SocketAddr,
    pub base_url: String,
    pub client: reqwest::Client,
    /// The configured admin token, or the bootstrap token when none was configured.
    pub admin_token: String,
    /// The token printed at first start, when the app created one.
    pub bootstrap_token: Option<String>,
    pub shutdown: CancellationToken,
    #[expect(dead_code, reason = "part of the harness for backend-specific checks")]
    pub backend: BackendKind,
    pub db: Arc<TestDatabase>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The dispatcher, when the test drives it (`spawn_stepped_app_with`); otherwise the app
    /// runs its own loop.
    stepper: Option<tokio::sync::Mutex<Dispatcher>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The configuration tests start from, over `db`.
pub fn test_config(db: &TestDatabase) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: db.url.clone(),
        admin_token: Some(Redacted(ADMIN_TOKEN.to_owned())),
        dev: true,
        // Per-token rate limits have their own test; elsewhere they would only add noise.
        security: herald::config::SecurityConfig { tenant_rate_limit: 0, ..Default::default() },
        ..Config::default()
    }
}

/// A Herald with the test configuration on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A Herald on a fresh database, with `tweak` applied to the test configuration.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let db = Arc::new(TestDatabase::for_suite().await);
    spawn_app_on(db, tweak).await
}

/// A Herald on an existing test database (to restart over the same data).
pub async fn spawn_app_on(db: Arc<TestDatabase>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    launch(db, tweak, false).await
}

/// A Herald on a fresh database whose dispatcher the test drives: nothing is delivered until the
/// test waits (`TestApp::until`, `settled`, `received`), and then deterministically, step by
/// step (claim, send, record), with no loop running behind the test's back.
pub async fn spawn_stepped_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    launch(Arc::new(TestDatabase::for_suite().await), tweak, true).await
}

/// A stepped Herald (`spawn_stepped_app_with`) on an existing test database: a second replica.
pub async fn spawn_stepped_app_on(db: Arc<TestDatabase>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    launch(db, tweak, true).await
}

async fn launch(db: Arc<TestDatabase>, tweak: impl FnOnce(&mut Config), stepped: bool) -> TestApp {
    announce_backend(db.backend);
    let mut config = test_config(&db);
    tweak(&mut config);
    let configured = config.admin_token.as_ref().map(|t| t.0.clone());
    let mut app = App::build(config).await.expect("the app builds");
    let stepper = if stepped { app.take_dispatcher().map(tokio::sync::Mutex::new) } else { None };
    let addr = app.local_addr();
    let bootstrap_token = app.bootstrap_token().map(str::to_owned);
    let admin_token = configured.or_else(|| bootstrap_token.clone()).unwrap_or_default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let client =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client");
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        client,
        admin_token,
        bootstrap_token,
        shutdown,
        backend: db.backend,
        db,
        task: Some(task),
        stepper,
    }
}

/// What came back from one request.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Null` when empty, a JSON string of the text when not JSON.
    pub body: Value,
    pub text: String,
}

impl ApiResponse {
    pub fn content_type(&self) -> &str {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self
    }

    /// The `data` array of a list response.
    #[track_caller]
    pub fn data(&self) -> &Vec<Value> {
        self.body["data"].as_array().unwrap_or_else(|| panic!("no `data` array in {}", self.text))
    }

    /// Asserts an RFC 9457 problem with this status.
    #[track_caller]
    pub fn expect_problem(&self, status: u16) -> &Self {
        self.expect(status);
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "content-type for {status} was {:?}; body: {}",
            self.content_type(),
            self.text
        );
        let body = &self.body;
        assert!(body["type"].is_string(), "problem without `type`: {}", self.text);
        assert!(body["title"].is_string(), "problem without `title`: {}", self.text);
        assert_eq!(body["status"], json!(status), "problem `status` differs: {}", self.text);
        assert!(body["detail"].is_string(), "problem without `detail`: {}", self.text);
        self
    }

    /// Asserts a 422 problem naming `field` in `errors`.
    #[track_caller]
    pub fn expect_invalid(&self, field: &str) -> &Self {
        self.expect_problem(422);
        let errors = self.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("422 without an `errors` array: {}", self.text));
        for error in errors {
            assert!(error["message"].is_string(), "error without a message: {}", self.text);
        }
        assert!(
            errors.iter().any(|e| e["field"] == json!(field)),
            "no error for field `{field}` in {}",
            self.text
        );
        self
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends `method path` with an optional bearer token and JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> ApiResponse {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        send(request).await
    }

    /// Sends raw bytes with the given content type (or none).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> ApiResponse {
        let mut request = self.client.request(method, self.url(path)).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        send(request).await
    }

    pub async fn get(&self, path: &str, token: &str) -> ApiResponse {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> ApiResponse {
        self.request(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> ApiResponse {
        self.request(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> ApiResponse {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// `GET` as admin.
    pub async fn admin_get(&self, path: &str) -> ApiResponse {
        self.get(path, &self.admin_token).await
    }

    /// Creates an event type as admin; panics unless 201.
    pub async fn create_event_type(&self, name: &str) -> Value {
        let body = json!({"name": name, "description": format!("{name} happened")});
        let response = self.post("/v1/event-types", &self.admin_token, &body).await;
        response.expect(201);
        response.body
    }

    /// Creates a tenant with a unique name as admin; panics unless 201.
    pub async fn create_tenant(&self) -> Value {
        let n = unique();
        self.create_tenant_with(&json!({"name": format!("Tenant {n}")})).await
    }

    /// Creates a tenant from `body` as admin; panics unless 201.
    pub async fn create_tenant_with(&self, body: &Value) -> Value {
        let response = self.post("/v1/tenants", &self.admin_token, body).await;
        response.expect(201);
        response.body
    }

    /// Issues a token scoped to `tenant` (an id or external id); returns the `hrld_…` token.
    pub async fn create_tenant_token(&self, tenant: &str) -> String {
        let path = format!("/v1/tenants/{tenant}/tokens");
        let response = self.post(&path, &self.admin_token, &json!({"name": "test"})).await;
        response.expect(201);
        response.body["token"].as_str().expect("token in response").to_owned()
    }

    /// Creates a tenant and a token for it: `(tenant id, token)`.
    pub async fn create_tenant_and_token(&self) -> (String, String) {
        let tenant = self.create_tenant().await;
        let id = tenant["id"].as_str().expect("tenant id").to_owned();
        let token = self.create_tenant_token(&id).await;
        (id, token)
    }

    /// Creates an endpoint under `tenant` with `token`; panics unless 201.
    pub async fn create_endpoint(&self, tenant: &str, token: &str, body: &Value) -> Value {
        let response = self.post(&format!("/v1/tenants/{tenant}/endpoints"), token, body).await;
        response.expect(201);
        response.body
    }

    /// Follows `next_cursor` from `path` (which may carry a query) with page size `limit`,
    /// returning every page's items in order and the number of pages.
    pub async fn walk_pages(&self, path: &str, token: &str, limit: u32) -> (Vec<Value>, usize) {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{path}{separator}limit={limit}");
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={}", encode_query(cursor)));
            }
            let response = self.get(&url, token).await;
            response.expect(200);
            pages += 1;
            let data = response.data();
            assert!(data.len() <= limit as usize, "page larger than limit {limit}: {}", response.text);
            items.extend(data.iter().cloned());
            match &response.body["next_cursor"] {
                Value::Null => break,
                Value::String(next) => {
                    assert!(!data.is_empty(), "an empty page carried a next_cursor: {}", response.text);
                    cursor = Some(next.clone());
                }
                other => panic!("next_cursor is neither null nor a string: {other}"),
            }
            assert!(pages < 1000, "pagination does not end");
        }
        (items, pages)
    }

    /// Stops the app and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the app stops within 20 s")?
    }
}

async fn send(request: reqwest::RequestBuilder) -> ApiResponse {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
    };
    ApiResponse { status, headers, body, text }
}

/// Percent-encodes a query value.
pub fn encode_query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A free port below the kernel's ephemeral range, for a child process to listen on. A port
/// the kernel hands out for `:0` comes from that range, which every outgoing connection of the
/// other tests running meanwhile also draws from: between this check and the child's bind one
/// of them could take it ("Address already in use"). Below the range only another explicit bind
/// can.
pub fn free_port() -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low / 2);
    let span = u32::from(ephemeral_low.saturating_sub(low).max(1));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos())
        ^ std::process::id();
    for attempt in 0..span.min(2_000) {
        let port = low + ((seed.wrapping_add(attempt.wrapping_mul(7_919))) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// A number unique within this test process.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The `id` field of a JSON object.
#[track_caller]
pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

/// Whether `text` is `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_rfc3339_millis(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Asserts that `value` is a time string as Herald writes them.
#[track_caller]
pub fn assert_time(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("time is not a string: {value}"));
    assert!(is_rfc3339_millis(text), "`{text}` is not RFC 3339 UTC with milliseconds and Z");
}

/// Whether `text` is `prefix_` + 26 uppercase Crockford base32 characters.
pub fn is_id(prefix: &str, text: &str) -> bool {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| CROCKFORD.contains(&b)))
}

/// Asserts that `value` is an id with `prefix`.
#[track_caller]
pub fn assert_id(prefix: &str, value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("id is not a string: {value}"));
    assert!(is_id(prefix, text), "`{text}` is not a `{prefix}_` id");
}

/// Polls `check` until it returns `Some`, failing after `timeout`: the one way tests wait for an
/// effect they do not drive themselves.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(timeout, check).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`; `None` after `timeout` (for callers that
/// say more than `eventually` when it times out).
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Delivery fixtures, shared by the delivery, ingest, replay and interop tests.

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A retry schedule of milliseconds, so that a run of 1 + 3 attempts ends in well under a second.
pub fn fast_retries(config: &mut Config) {
    config.delivery.retry_schedule = vec![ms(50), ms(100), ms(150)];
}

impl TestApp {
    /// Emits `{event, data}` for `tenant` as admin; panics unless 202; returns the answer.
    pub async fn emit(&self, tenant: &str, event: &str, data: &Value) -> Value {
        let body = json!({"event": event, "data": data});
        let response = self.post(&format!("/v1/tenants/{tenant}/events"), &self.admin_token, &body).await;
        response.expect(202);
        response.body
    }

    /// A new tenant with one endpoint: `{"url": url}` merged with `options`. Returns the tenant id
    /// and the endpoint as created (with its secret).
    pub async fn tenant_with_endpoint(&self, url: &str, options: Value) -> (String, Value) {
        let tenant = id_of(&self.create_tenant().await);
        let endpoint = self.add_endpoint(&tenant, url, options).await;
        (tenant, endpoint)
    }

    /// Creates an endpoint for `tenant` as admin: `{"url": url}` merged with `options`.
    pub async fn add_endpoint(&self, tenant: &str, url: &str, options: Value) -> Value {
        let mut body = json!({"url": url});
        if let Value::Object(options) = options {
            body.as_object_mut().unwrap().extend(options);
        }
        self.create_endpoint(tenant, &self.admin_token, &body).await
    }

    /// One delivery with its attempts, as admin; panics unless 200.
    pub async fn delivery(&self, tenant: &str, id: &str) -> Value {
        let response = self.admin_get(&format!("/v1/tenants/{tenant}/deliveries/{id}")).await;
        response.expect(200);
        response.body
    }

    /// Every delivery of `tenant` matching `query` (such as `event_id=evt_…`), newest first.
    pub async fn deliveries(&self, tenant: &str, query: &str) -> Vec<Value> {
        let (items, _) = self
            .walk_pages(&format!("/v1/tenants/{tenant}/deliveries?{query}"), &self.admin_token, 250)
            .await;
        items
    }

    /// The one delivery of `event_id`; panics unless there is exactly one.
    pub async fn only_delivery(&self, tenant: &str, event_id: &str) -> Value {
        let deliveries = self.deliveries(tenant, &format!("event_id={event_id}")).await;
        assert_eq!(deliveries.len(), 1, "expected one delivery of {event_id}: {deliveries:?}");
        deliveries.into_iter().next().unwrap()
    }

    /// Waits until delivery `id` is `status` and not in flight; returns it with its attempts.
    pub async fn settled(&self, tenant: &str, id: &str, status: &str, timeout: Duration) -> Value {
        self.until(timeout, &format!("delivery {id} to be {status}"), || async {
            let delivery = self.delivery(tenant, id).await;
            (delivery["status"] == json!(status) && delivery["in_flight"] != json!(true)).then_some(delivery)
        })
        .await
    }

    /// Waits until `count` deliveries of `tenant` are delivered; returns them.
    pub async fn all_delivered(&self, tenant: &str, count: usize, timeout: Duration) -> Vec<Value> {
        self.until(timeout, &format!("{count} deliveries to be delivered"), || async {
            let delivered = self.deliveries(tenant, "status=delivered").await;
            (delivered.len() == count).then_some(delivered)
        })
        .await
    }

    /// Waits until `receiver` has seen at least `count` requests on `path`; returns them all.
    pub async fn received(
        &self,
        receiver: &Receiver,
        path: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Recorded> {
        self.until(timeout, &format!("{count} requests on {path}"), || async {
            let requests = receiver.requests(path);
            (requests.len() >= count).then_some(requests)
        })
        .await
    }

    /// Waits until `check` returns `Some`, failing after `timeout`. With a stepped dispatcher
    /// (`spawn_stepped_app_with`), each turn delivers what is due now, one step at a time, and
    /// sleeps only until the next delivery falls due; otherwise it polls (`eventually`).
    pub async fn until<T, F, Fut>(&self, timeout: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let Some(stepper) = &self.stepper else {
            return eventually(timeout, what, check).await;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            let mut dispatcher = stepper.lock().await;
            let step = dispatcher.step().await.expect("a dispatcher step");
            if step.started == 0 && step.recorded == 0 {
                dispatcher.until_due(Duration::from_millis(50)).await;
            }
        }
    }
}

impl TestApp {
    /// `POST` a JSON body with extra request headers.
    pub async fn post_with_headers(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> ApiResponse {
        let mut request = self.client.post(self.url(path)).bearer_auth(token).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(request).await
    }
}
