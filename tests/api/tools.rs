//! The tools that ship in the binary: `herald receive` misbehaving on purpose, and `herald soak`,
//! the chaos run with SIGKILLed servers that must end with nothing lost.

use std::process::Stdio;
use std::time::Duration;

use herald::tools::receive::{Behaviour, Receiver};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{POSTGRES_ENV, id_of, ms, spawn_app_with};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

async fn resetting_receiver() -> Receiver {
    Receiver::start("127.0.0.1:0".parse().unwrap(), Behaviour { reset_rate: 1.0, ..Behaviour::default() })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_receiver_resets_the_connection_before_any_status_line() {
    let receiver = resetting_receiver().await;
    let mut stream = TcpStream::connect(receiver.addr).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\nwebhook-id: evt_1\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends at once");
    match read {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
        Ok(_) => panic!("expected a TCP reset, read {:?}", String::from_utf8_lossy(&answer)),
    }
    assert!(answer.is_empty(), "no status line may arrive: {:?}", String::from_utf8_lossy(&answer));
    let arrivals = receiver.counters.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(
        (arrivals[0].id.as_str(), arrivals[0].path.as_str(), arrivals[0].ok),
        ("evt_1", "/hook", false)
    );
}

#[tokio::test]
async fn herald_records_a_reset_connection_as_a_failed_attempt_without_a_status() {
    let app = spawn_app_with(|config| config.delivery.retry_schedule = vec![ms(50)]).await;
    let receiver = resetting_receiver().await;
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&format!("{}/hook", receiver.url()), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery = app
        .settled(
            &tenant,
            &id_of(&app.only_delivery(&tenant, &event).await),
            "failed",
            Duration::from_secs(10),
        )
        .await;
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "a reset is retried: {delivery}");
    for attempt in attempts {
        assert!(attempt["status_code"].is_null(), "{attempt}");
        assert!(!["http_status", "timeout"].contains(&attempt["error_kind"].as_str().unwrap()), "{attempt}");
    }
    assert_eq!(receiver.counters.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// `herald soak` against the backend under test, small and bounded: one kill aimed at the emission,
/// one while the retries drain, an endpoint down for a stretch, and on PostgreSQL two replicas.
#[tokio::test]
async fn a_soak_with_kills_and_a_misbehaving_receiver_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["soak", "--events", "300", "--endpoints", "2", "--kills", "2", "--limit", "150s"])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1");
    let replicas = match crate::helpers::suite_postgres_url() {
        Some(url) => {
            command.args(["--postgres", &url, "--replicas", "2"]);
            2
        }
        None => 1,
    };
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("the soak ends within its limit")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the soak failed:\n{stdout}\n{stderr}");
    // The report is pretty-printed JSON between a line `{` and a line `}`.
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines.iter().position(|l| *l == "{").expect("a JSON report");
    let end = lines.iter().rposition(|l| *l == "}").expect("a JSON report");
    let report: Value = serde_json::from_str(&lines[start..=end].join("\n")).expect("the report is JSON");
    assert_eq!(report["replicas"], json!(replicas), "{report}");
    assert_eq!(report["kills"], json!(2), "{report}");
    let draining = report["kills_while_draining"].as_u64().unwrap();
    assert!(draining >= 1, "the second kill waits for the last event: {report}");
    assert_eq!(report["events"], json!(300), "{report}");
    // Two endpoints on the misbehaving receiver and the outage endpoint.
    assert_eq!(report["deliveries"], json!(900), "{report}");
    for zero in ["lost", "over_limit", "unrecorded", "unfinished", "invalid_signatures"] {
        assert_eq!(report[zero], json!(0), "{zero}: {report}");
    }
    let received = report["received"].as_u64().unwrap();
    let exhausted = report["exhausted"].as_u64().unwrap();
    assert_eq!(received + exhausted, 900, "{report}");
    let by_failures = exhausted - report["outage_exhausted"].as_u64().unwrap();
    assert!(by_failures < 60, "most deliveries get through a 26 % failure rate in four attempts: {report}");
    assert!(report["outage_refused"].as_u64().unwrap() > 0, "the outage endpoint was down: {report}");
    assert!(report["requests"].as_u64().unwrap() > 900, "failures were retried: {report}");
    assert!(report["attempts"].as_u64().unwrap() >= report["requests"].as_u64().unwrap(), "{report}");
}

/// Runs `herald <args>`, which must refuse them: exit status 1 and a message on standard error.
async fn refused(args: &[&str]) -> String {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn soak_refuses_a_rate_outside_zero_to_one_and_names_the_flag() {
    let stderr = refused(&["soak", "--reset-rate", "1.5"]).await;
    assert!(stderr.contains("`--reset-rate` must be at least 0 and below 1"), "{stderr}");
}

#[tokio::test]
async fn soak_refuses_replicas_without_postgres_and_names_the_flag() {
    let stderr = refused(&["soak", "--replicas", "3"]).await;
    assert!(stderr.contains("`--replicas` above 1 needs `--postgres`"), "{stderr}");
    let stderr = refused(&["soak", "--replicas", "0"]).await;
    assert!(stderr.contains("`--replicas` must be between 1 and 16"), "{stderr}");
}

#[tokio::test]
async fn receive_refuses_a_rate_outside_zero_to_one_and_names_the_flag() {
    let stderr = refused(&["receive", "--listen", "127.0.0.1:0", "--fail-rate", "2"]).await;
    assert!(stderr.contains("`--fail-rate` must be between 0 and 1"), "{stderr}");
}

#[tokio::test]
async fn bench_refuses_replica_counts_it_cannot_run_and_names_the_flag() {
    let stderr = refused(&["bench", "--replicas", "1,3"]).await;
    assert!(stderr.contains("`--replicas` above 1 needs `--postgres`"), "{stderr}");
    let stderr = refused(&["bench", "--replicas", "0"]).await;
    assert!(stderr.contains("`--replicas` must be between 1 and 16"), "{stderr}");
}

/// `--replicas 1,2` runs the scenario once per count on one PostgreSQL server, with a slow
/// receiver, and reports both runs, their ratio and where the CPU went.
#[tokio::test]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn bench_compares_replica_counts_in_one_run_on_postgres() {
    let url = std::env::var(POSTGRES_ENV).expect("HERALD_TEST_POSTGRES_URL");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let output = tokio::process::Command::new(BIN)
        .args(["bench", "--scenario", "fanout10", "--events", "30", "--replicas", "1,2"])
        .args(["--receiver-delay", "20ms", "--limit", "2m", "--postgres", &url])
        .arg("--json")
        .arg(&json_path)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let reports: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, replicas) in reports.iter().zip([1, 2]) {
        assert_eq!(report["replicas"], replicas);
        assert_eq!(report["backend"], "postgres");
        assert_eq!(report["receiver_delay_ms"], 20);
        assert_eq!(report["deliveries"], 300);
        assert_eq!(report["missing"], 0);
        assert_eq!(report["duplicates"], 0);
        assert!(report["cpu_seconds"]["herald"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["cpu_seconds"]["postgres"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["cpu_seconds"]["wall"].as_f64().unwrap() > 0.0, "{report}");
    }
    let notes = reports[1]["notes"].to_string();
    assert!(
        notes.contains("2 replicas on one database") && notes.contains("× the delivery rate of 1"),
        "{notes}"
    );
    assert!(stdout.contains("x2 delay=20ms"), "{stdout}");
}
