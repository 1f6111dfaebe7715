//! The `herald` binary: version and help, `migrate`, `token create`, configuration errors at
//! start, the bootstrap admin token and a clean exit on SIGTERM. Each run has its own temp working
//! directory, a deadline, and is killed if the test ends first.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::helpers::{ADMIN_TOKEN, TestDatabase, announce_backend, id_of, spawn_app_on};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald` command in `dir`, with no inherited `HERALD_…` settings.
fn herald(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir).kill_on_drop(true).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            command.env_remove(key);
        }
    }
    command.env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs to completion within `limit`.
async fn run(dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let output = herald(dir, args, env).output();
    tokio::time::timeout(limit, output)
        .await
        .unwrap_or_else(|_| panic!("`herald {}` did not finish within {limit:?}", args.join(" ")))
        .expect("herald runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `herald serve`, read line by line.
struct Server {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Server {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = herald(dir, &["serve"], env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald serve starts");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Server { child, lines, seen: Vec::new() }
    }

    /// Reads stdout until a line satisfies `want`, within `limit`.
    async fn wait_for_line(&mut self, limit: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match next {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Ok(Ok(None)) => panic!("stdout closed before {what}; saw {:?}", self.seen),
                Ok(Err(e)) => panic!("reading stdout: {e}"),
                Err(_) => panic!("no {what} within {limit:?}; saw {:?}", self.seen),
            }
        }
    }

    /// The port from the `listening on` line.
    async fn port(&mut self) -> u16 {
        let line = self
            .wait_for_line(Duration::from_secs(60), "`listening on` line", |l| l.contains("listening on"))
            .await;
        let prefix = "Herald 0.1.0 listening on http://127.0.0.1:";
        let at = line.find(prefix).unwrap_or_else(|| panic!("unexpected listening line: {line:?}"));
        let port: String = line[at + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
        port.parse().unwrap_or_else(|_| panic!("no port in {line:?}"))
    }

    /// Sends SIGTERM and waits up to 15 s for exit; returns the rest of stdout.
    async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("still running");
        let status =
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("herald exits within 15 s of SIGTERM")
            .expect("wait");
        let mut rest = std::mem::take(&mut self.seen);
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await
        {
            rest.push(line);
        }
        (exit, rest)
    }
}

/// The `hrld_…` token inside a line.
fn token_in(line: &str) -> Option<String> {
    let at = line.find("hrld_")?;
    let token: String =
        line[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    Some(token)
}

#[tokio::test]
async fn version_prints_the_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["--version"], &[], Duration::from_secs(30)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "herald 0.1.0");
}

#[tokio::test]
async fn help_lists_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["--help"], &[], Duration::from_secs(30)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let help = text(&output.stdout);
    for word in ["serve", "migrate", "token"] {
        assert!(help.contains(word), "`{word}` missing from --help:\n{help}");
    }
    assert!(!dir.path().join("herald.db").exists(), "--help touches no database");
}

#[tokio::test]
async fn migrate_creates_and_migrates_the_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.db");
    let url = format!("sqlite://{}", file.display());
    let output =
        run(dir.path(), &["migrate"], &[("HERALD_DATABASE_URL", &url)], Duration::from_secs(60)).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert!(file.exists(), "the database file was created");
    // Running it again is a no-op.
    let again =
        run(dir.path(), &["migrate"], &[("HERALD_DATABASE_URL", &url)], Duration::from_secs(60)).await;
    assert!(again.status.success(), "stderr: {}", text(&again.stderr));
}

#[tokio::test]
async fn token_create_prints_one_admin_token_that_works() {
    let db = std::sync::Arc::new(TestDatabase::for_suite().await);
    announce_backend(db.backend);
    let dir = tempfile::tempdir().unwrap();
    let env = [("HERALD_DATABASE_URL", db.url.as_str())];
    let output = run(dir.path(), &["token", "create", "--name", "ci"], &env, Duration::from_secs(60)).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let token = lines[0].trim();
    assert!(token.starts_with("hrld_") && token_in(token).as_deref() == Some(token), "{token:?}");

    let app = spawn_app_on(db.clone(), |config| config.admin_token = None).await;
    assert_eq!(app.bootstrap_token, None, "an admin token is already stored");
    app.get("/v1/tenants", token).await.expect(200);
    app.post("/v1/event-types", token, &json!({"name": "cli.works"})).await.expect(201);
    let tokens = app.get("/v1/tokens", token).await;
    tokens.expect(200);
    assert!(
        tokens.data().iter().any(|t| t["name"] == json!("ci") && t["tenant_id"].is_null()),
        "{}",
        tokens.text
    );
}

#[tokio::test]
async fn token_create_for_a_tenant_issues_a_tenant_token() {
    let db = std::sync::Arc::new(TestDatabase::for_suite().await);
    let app = spawn_app_on(db.clone(), |_| {}).await;
    let tenant = id_of(&app.create_tenant().await);
    let dir = tempfile::tempdir().unwrap();
    let env = [("HERALD_DATABASE_URL", db.url.as_str()), ("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)];
    let args = ["token", "create", "--tenant", tenant.as_str(), "--name", "t"];
    let output = run(dir.path(), &args, &env, Duration::from_secs(60)).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = stdout.trim();
    app.get(&format!("/v1/tenants/{tenant}"), token).await.expect(200);
    app.get("/v1/tenants", token).await.expect_problem(403);
}

#[tokio::test]
async fn token_create_for_an_unknown_tenant_fails() {
    let db = std::sync::Arc::new(TestDatabase::for_suite().await);
    announce_backend(db.backend);
    let dir = tempfile::tempdir().unwrap();
    let env = [("HERALD_DATABASE_URL", db.url.as_str())];
    let migrate = run(dir.path(), &["migrate"], &env, Duration::from_secs(60)).await;
    assert!(migrate.status.success(), "stderr: {}", text(&migrate.stderr));
    let args = ["token", "create", "--tenant", "tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV", "--name", "t"];
    let output = run(dir.path(), &args, &env, Duration::from_secs(60)).await;
    assert!(!output.status.success(), "stdout: {}", text(&output.stdout));
    assert!(!text(&output.stdout).contains("hrld_"), "no token is printed");
    assert!(!text(&output.stderr).is_empty(), "says why");
}

#[tokio::test]
async fn serve_refuses_an_invalid_timeout_and_names_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("HERALD_DELIVERY__TIMEOUT", "abc"), ("HERALD_LISTEN", "127.0.0.1:0")];
    let output = run(dir.path(), &["serve"], &env, Duration::from_secs(20)).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("delivery.timeout"), "stderr names the option: {stderr}");
}

#[tokio::test]
async fn serve_refuses_an_invalid_listen_address_and_names_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["serve"], &[("HERALD_LISTEN", "nonsense")], Duration::from_secs(20)).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("listen"), "stderr names the option: {stderr}");
}

#[tokio::test]
async fn serve_prints_a_bootstrap_token_once_and_stops_cleanly_on_sigterm() {
    let db = TestDatabase::for_suite().await;
    announce_backend(db.backend);
    let dir = tempfile::tempdir().unwrap();
    let env = [("HERALD_LISTEN", "127.0.0.1:0"), ("HERALD_DATABASE_URL", db.url.as_str())];
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();

    let mut server = Server::start(dir.path(), &env);
    let port = server.port().await;
    let line =
        server.wait_for_line(Duration::from_secs(30), "the bootstrap token", |l| l.contains("hrld_")).await;
    let token = token_in(&line).unwrap();
    assert!(token.len() > 20, "{line:?}");
    let response =
        client.get(format!("http://127.0.0.1:{port}/v1/tenants")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, _) = server.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    let mut second = Server::start(dir.path(), &env);
    let port = second.port().await;
    let health = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let response =
        client.get(format!("http://127.0.0.1:{port}/v1/tenants")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "the first token still works");
    let (status, stdout) = second.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(!stdout.iter().any(|l| l.contains("hrld_")), "a second start prints no token: {stdout:?}");
}

#[tokio::test]
async fn serve_without_a_database_url_uses_herald_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("HERALD_LISTEN", "127.0.0.1:0")]);
    server.port().await;
    assert!(dir.path().join("herald.db").exists());
    let (status, _) = server.terminate().await;
    assert!(status.success(), "{status:?}");
}
