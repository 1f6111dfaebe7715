//! The dashboard in a real browser: headless Chromium driven over the W3C WebDriver protocol
//! (chromedriver) against a running Herald. Skipped, with a note, when chromedriver is absent.
//!
//! `HERALD_TEST_CHROMEDRIVER` and `HERALD_TEST_CHROMIUM` override `/usr/bin/chromedriver` and
//! `/usr/bin/chromium`; `HERALD_UPDATE_SCREENSHOT=1` rewrites `docs/dashboard.png`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, free_port, id_of, ms, poll_until, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Deadline for what the page shows after an action (a fetch and a render).
const PAGE: Duration = Duration::from_secs(15);
/// Deadline for deliveries to settle.
const SETTLE: Duration = Duration::from_secs(20);

/// One browser at a time: each test starts its own chromedriver and Chromium.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("HERALD_TEST_CHROMEDRIVER")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "browser test skipped: no chromedriver at {} (set HERALD_TEST_CHROMEDRIVER)",
            path.display()
        );
        None
    }
}

fn chromium() -> String {
    std::env::var("HERALD_TEST_CHROMIUM")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// A chromedriver process and one browser session; both end when dropped, panics included.
struct Browser {
    client: reqwest::Client,
    driver_url: String,
    session: Option<String>,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Drop may run inside the test's runtime: close the session from a thread of its own.
            let url = format!("{}/session/{session}", self.driver_url);
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async {
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .ok()?;
                    client.delete(url).send().await.ok()
                })
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session; `None`
    /// (after saying why) when chromedriver is not installed.
    async fn start() -> Option<Browser> {
        let driver_path = chromedriver()?;
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
        let client =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().expect("client");
        let mut browser =
            Browser { client, driver_url: format!("http://127.0.0.1:{port}"), session: None, driver };
        let client = browser.client.clone();
        let status_url = format!("{}/status", browser.driver_url);
        eventually(Duration::from_secs(20), "chromedriver to become ready", || async {
            let status: Value = client.get(&status_url).send().await.ok()?.json().await.ok()?;
            (status["value"]["ready"] == json!(true)).then_some(())
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1366,900",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session =
            browser.call(Method::POST, "/session", Some(capabilities)).await.expect("a new browser session");
        let id = session["sessionId"].as_str().expect("sessionId").to_owned();
        browser.session = Some(id);
        Some(browser)
    }

    /// One WebDriver command; `Err` carries the WebDriver error code and message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.driver_url));
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == Method::POST {
            request = request.json(&json!({}));
        }
        let response = request.send().await.map_err(|e| format!("webdriver request failed: {e}"))?;
        let ok = response.status().is_success();
        let body: Value = response.json().await.map_err(|e| format!("webdriver answer is not JSON: {e}"))?;
        if ok {
            Ok(body["value"].clone())
        } else {
            Err(format!("{}: {}", body["value"]["error"], body["value"]["message"]))
        }
    }

    /// A command in the current session.
    async fn session(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let session = self.session.as_deref().expect("a session");
        self.call(method, &format!("/session/{session}{path}"), body).await
    }

    async fn goto(&self, url: &str) {
        self.session(Method::POST, "/url", Some(json!({"url": url}))).await.expect("navigate");
    }

    async fn current_url(&self) -> String {
        self.session(Method::GET, "/url", None)
            .await
            .expect("current url")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching a CSS selector.
    async fn find(&self, css: &str) -> Result<String, String> {
        let found = self
            .session(Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await?;
        found[ELEMENT].as_str().map(str::to_owned).ok_or_else(|| format!("no element reference in {found}"))
    }

    /// Every element matching a CSS selector.
    async fn find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let found = self
            .session(Method::POST, "/elements", Some(json!({"using": "css selector", "value": css})))
            .await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
            .collect())
    }

    async fn text(&self, element: &str) -> Result<String, String> {
        let text = self.session(Method::GET, &format!("/element/{element}/text"), None).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    async fn attribute(&self, element: &str, name: &str) -> Result<Option<String>, String> {
        let value = self.session(Method::GET, &format!("/element/{element}/attribute/{name}"), None).await?;
        Ok(value.as_str().map(str::to_owned))
    }

    async fn click(&self, element: &str) -> Result<(), String> {
        self.session(Method::POST, &format!("/element/{element}/click"), None).await.map(drop)
    }

    async fn clear(&self, element: &str) -> Result<(), String> {
        self.session(Method::POST, &format!("/element/{element}/clear"), None).await.map(drop)
    }

    async fn type_into(&self, element: &str, text: &str) -> Result<(), String> {
        self.session(Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text})))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body) in the page and returns its result.
    async fn script(&self, script: &str) -> Value {
        self.session(Method::POST, "/execute/sync", Some(json!({"script": script, "args": []})))
            .await
            .expect("script runs")
    }

    /// Text of the first element matching `css`, or `None` when there is none (yet).
    async fn text_of(&self, css: &str) -> Option<String> {
        let element = self.find(css).await.ok()?;
        self.text(&element).await.ok()
    }

    /// Clicks the first element matching `css`, retrying while it is missing, stale or covered.
    async fn click_on(&self, css: &str) {
        self.until(PAGE, &format!("to click {css}"), || async {
            let element = self.find(css).await.ok()?;
            self.click(&element).await.ok()
        })
        .await;
    }

    /// Types `text` into the (emptied) first element matching `css`.
    async fn fill(&self, css: &str, text: &str) {
        let element =
            self.until(PAGE, &format!("the field {css}"), || async { self.find(css).await.ok() }).await;
        self.clear(&element).await.expect("clear the field");
        self.type_into(&element, text).await.expect("type into the field");
    }

    /// Waits until the first element matching `css` has text containing `needle`; returns the text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        self.until(PAGE, &format!("{css} to say {needle:?}"), || async {
            self.text_of(css).await.filter(|text| text.contains(needle))
        })
        .await
    }

    /// Polls `check` until it answers `Some`; on timeout fails with what the page says.
    async fn until<T, F, Fut>(&self, timeout: Duration, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        if let Some(value) = poll_until(timeout, check).await {
            return value;
        }
        let page = self.script("return document.body.innerText;").await;
        let logs = self.console().await;
        panic!(
            "timed out after {timeout:?} waiting for {what}\n--- page ---\n{}\n--- console ---\n{logs:?}",
            page.as_str().unwrap_or_default()
        );
    }

    /// The browser console since the last call (chromedriver's log extension), as `LEVEL message`.
    async fn console(&self) -> Vec<String> {
        let Ok(entries) = self.session(Method::POST, "/se/log", Some(json!({"type": "browser"}))).await
        else {
            return Vec::new();
        };
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// A PNG of the viewport.
    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session(Method::GET, "/screenshot", None).await.expect("screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("base64 PNG")
    }

    /// Ends the session and chromedriver.
    async fn quit(mut self) {
        if let Some(session) = self.session.take() {
            self.call(Method::DELETE, &format!("/session/{session}"), None).await.expect("close the session");
        }
    }

    /// Opens the dashboard and signs in with `token`.
    async fn sign_in(&self, app: &TestApp, token: &str) {
        self.goto(&app.url("/dashboard")).await;
        self.fill("#token", token).await;
        self.click_on("#signin-submit").await;
        self.until(PAGE, "the signed-in view", || async {
            let element = self.find("[data-testid=signout]").await.ok()?;
            self.text(&element).await.ok().filter(|text| text == "Sign out")
        })
        .await;
    }

    /// `(endpoint id, failure rate text)` of every ranked row, top first.
    async fn ranked_rows(&self) -> Option<Vec<(String, String)>> {
        let mut rows = Vec::new();
        for row in self.find_all("[data-testid=endpoint-row]").await.ok()? {
            let id = self.attribute(&row, "data-endpoint-id").await.ok()??;
            let rate = self
                .session(
                    Method::POST,
                    &format!("/element/{row}/element"),
                    Some(json!({"using": "css selector", "value": "[data-testid=failure-rate]"})),
                )
                .await
                .ok()?;
            let rate = self.text(rate[ELEMENT].as_str()?).await.ok()?;
            rows.push((id, rate));
        }
        Some(rows)
    }
}

/// Errors the page logged (CSP violations, exceptions, failed requests), ignoring the expected 401
/// of a rejected token.
fn severe(console: &[String]) -> Vec<&String> {
    console.iter().filter(|line| line.starts_with("SEVERE") && !line.contains("401")).collect()
}

fn save_screenshot(png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG");
    if std::env::var("HERALD_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::create_dir_all(path.parent().expect("docs/")).expect("create docs/");
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}

/// Every delivery of `endpoint`, once none is pending any more.
async fn settled_deliveries(app: &TestApp, tenant: &str, endpoint: &str, expected: usize) -> Vec<Value> {
    eventually(SETTLE, &format!("{expected} deliveries to {endpoint} to settle"), || async {
        let deliveries = app.deliveries(tenant, &format!("endpoint_id={endpoint}")).await;
        (deliveries.len() == expected && deliveries.iter().all(|d| d["status"] != json!("pending")))
            .then_some(deliveries)
    })
    .await
}

#[tokio::test]
#[cfg_attr(not(herald_test_browser), ignore = "needs chromedriver: set HERALD_TEST_CHROMEDRIVER")]
async fn on_call_sees_the_failing_endpoint_first_and_retries_a_delivery_from_the_browser() {
    let _one_browser = BROWSER_LOCK.lock().await;
    let browser = Browser::start().await.expect("chromedriver is installed");
    let receiver = Receiver::start().await;
    receiver.respond("/acme/orders", Reply::status(500).body("{\"error\":\"database unavailable\"}"));
    // The breaker off: the failing endpoint's deliveries run their schedule out and fail, which
    // is what on-call sees here (an open circuit parks them instead; see the `stress` tests).
    let app = spawn_app_with(|c| {
        c.delivery.retry_schedule = vec![ms(50), ms(50), ms(50)];
        c.delivery.breaker_failures = 0;
    })
    .await;
    app.create_event_type("order.created").await;
    let acme = id_of(&app.create_tenant_with(&json!({"name": "Acme Corp"})).await);
    let globex = id_of(&app.create_tenant_with(&json!({"name": "Globex"})).await);
    let failing = id_of(
        &app.add_endpoint(&acme, &receiver.url("/acme/orders"), json!({"description": "Order sync"})).await,
    );
    let healthy = id_of(&app.add_endpoint(&acme, &receiver.url("/acme/audit"), json!({})).await);
    let other = id_of(&app.add_endpoint(&globex, &receiver.url("/globex/hooks"), json!({})).await);
    for n in 0..3 {
        app.emit(&acme, "order.created", &json!({"order": n})).await;
    }
    app.emit(&globex, "order.created", &json!({"order": 9})).await;
    let failed = settled_deliveries(&app, &acme, &failing, 3).await;
    assert!(failed.iter().all(|d| d["status"] == json!("failed")), "{failed:?}");
    settled_deliveries(&app, &acme, &healthy, 3).await;
    settled_deliveries(&app, &globex, &other, 1).await;

    // A wrong token is refused with a clear message and kept out of the URL.
    browser.goto(&app.url("/dashboard")).await;
    browser.fill("#token", "not-a-valid-token-at-all-0000").await;
    browser.click_on("#signin-submit").await;
    browser.wait_text("[data-testid=signin-error]", "not accepted").await;

    browser.fill("#token", &app.admin_token).await;
    browser.click_on("#signin-submit").await;
    browser.wait_text("[data-testid=whoami]", "admin").await;
    let rows = browser
        .until(PAGE, "the failing endpoint ranked first at 100.0 %", || async {
            let rows = browser.ranked_rows().await?;
            (rows.len() == 3 && rows[0] == (failing.clone(), "100.0 %".to_owned())).then_some(rows)
        })
        .await;
    assert!(rows[1..].iter().all(|(_, rate)| rate == "0.0 %"), "{rows:?}");
    assert!(!browser.current_url().await.contains(&app.admin_token), "the token reached the URL");
    let stored =
        browser.script("return [sessionStorage.length, localStorage.length, document.cookie];").await;
    assert_eq!(stored, json!([1, 0, ""]), "the token belongs in sessionStorage only");

    // Open the failing endpoint: its failed deliveries, each with its attempts.
    browser.click_on(&format!("[data-endpoint-id=\"{failing}\"] [data-testid=open-endpoint]")).await;
    let ids = browser
        .until(PAGE, "the endpoint's three failed deliveries", || async {
            let rows = browser.find_all("[data-testid=delivery-row][data-status=failed]").await.ok()?;
            let mut ids = Vec::new();
            for row in rows {
                ids.push(browser.attribute(&row, "data-delivery-id").await.ok()??);
            }
            (ids.len() == 3).then_some(ids)
        })
        .await;
    // Charts: since when it fails, for this endpoint and across every endpoint.
    browser.wait_text("#detail-chart [data-testid=failing-since]", "Failing since").await;
    browser.wait_text("#overall-chart [data-testid=failing-since]", "Failing since").await;
    let bars = browser.find_all("#detail-chart [data-testid=failure-bar]").await.expect("failure bars");
    assert!(!bars.is_empty(), "the chart draws the failures");
    // At 1,280 px nothing needs scrolling sideways.
    browser
        .session(Method::POST, "/window/rect", Some(json!({"width": 1280, "height": 900})))
        .await
        .expect("resize");
    let widths = browser
        .script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth];")
        .await;
    assert!(widths[0].as_i64() <= widths[1].as_i64(), "the page is wider than the window: {widths}");

    let target = ids[0].clone();
    let before = app.delivery(&acme, &target).await;
    assert_eq!(before["status"], json!("failed"));
    let attempts_before = before["attempt_count"].as_i64().expect("attempt_count");
    browser.click_on(&format!("[data-delivery-id=\"{target}\"] [data-testid=attempts-toggle]")).await;
    browser
        .until(PAGE, "the attempts of the delivery", || async {
            let rows = browser.find_all("[data-testid=attempt-row]").await.ok()?;
            (rows.len() as i64 == attempts_before).then_some(())
        })
        .await;
    browser.wait_text("[data-testid=attempt-row]", "500").await;

    // Retry it: the page says so, and the store has it queued again.
    browser.click_on(&format!("[data-delivery-id=\"{target}\"] [data-testid=retry]")).await;
    let said = browser.wait_text("[data-testid=live]", "queued again").await;
    assert!(said.contains(&target), "{said}");
    let after = app.delivery(&acme, &target).await;
    assert!(
        after["status"] == json!("pending") || after["attempt_count"].as_i64() > Some(attempts_before),
        "the retried delivery is neither pending nor attempted again: {after}"
    );
    let again = app.settled(&acme, &target, "failed", SETTLE).await;
    assert!(again["attempt_count"].as_i64() > Some(attempts_before), "{again}");

    // Back in the failed list after its new run, with every attempt shown.
    browser.click_on("#refresh").await;
    let total = again["attempt_count"].as_i64().expect("attempt_count");
    browser
        .until(PAGE, "the new attempts in the page", || async {
            let rows = browser.find_all("[data-testid=attempt-row]").await.ok()?;
            (rows.len() as i64 == total).then_some(())
        })
        .await;
    let console = browser.console().await;
    assert!(severe(&console).is_empty(), "the page logged errors: {console:?}");
    browser.script("window.scrollTo(0, 0); document.activeElement.blur(); return null;").await;
    save_screenshot(&browser.screenshot().await);

    browser.click_on("[data-testid=signout]").await;
    browser.until(PAGE, "the sign-in form again", || async { browser.find("#token").await.ok() }).await;
    let stored = browser.script("return sessionStorage.length;").await;
    assert_eq!(stored, json!(0), "signing out forgets the token");
    browser.quit().await;
}

#[tokio::test]
#[cfg_attr(not(herald_test_browser), ignore = "needs chromedriver: set HERALD_TEST_CHROMEDRIVER")]
async fn a_tenant_token_opens_that_tenants_portal_only() {
    let _one_browser = BROWSER_LOCK.lock().await;
    let browser = Browser::start().await.expect("chromedriver is installed");
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|c| c.delivery.retry_schedule = vec![ms(50), ms(50), ms(50)]).await;
    app.create_event_type("order.created").await;
    let acme = id_of(&app.create_tenant_with(&json!({"name": "Acme Corp"})).await);
    let globex = id_of(&app.create_tenant_with(&json!({"name": "Globex"})).await);
    let mine = id_of(&app.add_endpoint(&acme, &receiver.url("/acme"), json!({})).await);
    let theirs = id_of(&app.add_endpoint(&globex, &receiver.url("/globex"), json!({})).await);
    let token = app.create_tenant_token(&acme).await;

    browser.sign_in(&app, &token).await;
    browser.wait_text("[data-testid=whoami]", "Acme Corp").await;
    let rows = browser
        .until(PAGE, "the tenant's endpoint", || async {
            browser.ranked_rows().await.filter(|rows| !rows.is_empty())
        })
        .await;
    assert_eq!(rows, vec![(mine.clone(), "0.0 %".to_owned())], "only {mine}, never {theirs}");

    // Add an endpoint: its secret is shown once, and it joins the table.
    browser.fill("[data-testid=add-url]", &receiver.url("/acme/new")).await;
    browser.click_on("#add-submit").await;
    let secret = browser
        .until(PAGE, "the new secret", || async {
            browser.text_of("[data-testid=new-secret]").await.filter(|s| !s.is_empty())
        })
        .await;
    let listed = app.admin_get(&format!("/v1/tenants/{acme}/endpoints")).await;
    let added = listed
        .data()
        .iter()
        .find(|e| e["url"] == json!(receiver.url("/acme/new")))
        .expect("the new endpoint");
    let added = id_of(added);
    let shown = app.admin_get(&format!("/v1/tenants/{acme}/endpoints/{added}/secret")).await;
    assert_eq!(shown.body["secret"], json!(secret));
    browser
        .until(PAGE, "two endpoints in the table", || async {
            browser.ranked_rows().await.filter(|rows| rows.len() == 2)
        })
        .await;

    // Send it a test event from its row.
    browser.click_on(&format!("[data-endpoint-id=\"{added}\"] [data-testid=send-test]")).await;
    browser.wait_text("[data-testid=live]", "Test event").await;
    receiver.wait_for("/acme/new", 1, SETTLE).await;
    let console = browser.console().await;
    assert!(severe(&console).is_empty(), "the page logged errors: {console:?}");
    browser.quit().await;
}

/// A platform opens its customer's portal with a link: signed in at once as that tenant, the
/// token gone from the address bar, and refused once the link expires.
#[tokio::test]
#[cfg_attr(not(herald_test_browser), ignore = "needs chromedriver: set HERALD_TEST_CHROMEDRIVER")]
async fn a_portal_link_opens_the_portal_signed_in_until_it_expires() {
    let _one_browser = BROWSER_LOCK.lock().await;
    let browser = Browser::start().await.expect("chromedriver is installed");
    let receiver = Receiver::start().await;
    receiver.respond("/acme", Reply::status(503));
    let app = spawn_app_with(|c| c.delivery.retry_schedule = vec![Duration::from_secs(600)]).await;
    app.create_event_type("order.created").await;
    let acme = id_of(&app.create_tenant_with(&json!({"name": "Acme Corp"})).await);
    let mine = id_of(&app.add_endpoint(&acme, &receiver.url("/acme"), json!({})).await);
    let event = id_of(&app.emit(&acme, "order.created", &json!({"order": 1})).await);
    let retrying = eventually(SETTLE, "the first attempt to fail", || async {
        let delivery = app.only_delivery(&acme, &event).await;
        (delivery["attempt_count"] == json!(1) && delivery["status"] == json!("pending")).then_some(delivery)
    })
    .await;
    let link = app
        .post(&format!("/v1/tenants/{acme}/portal-links"), &app.admin_token, &json!({"expires_in": "8s"}))
        .await;
    link.expect(201);

    browser.goto(link.body["url"].as_str().unwrap()).await;
    browser.wait_text("[data-testid=whoami]", "Acme Corp").await;
    let rows = browser
        .until(PAGE, "the tenant's endpoint", || async {
            browser.ranked_rows().await.filter(|rows| !rows.is_empty())
        })
        .await;
    assert_eq!(rows[0].0, mine);
    // A delivery still retrying shows at once among the failing ones.
    browser.click_on(&format!("[data-endpoint-id=\"{mine}\"] [data-testid=open-endpoint]")).await;
    let row = format!("[data-delivery-id=\"{}\"]", id_of(&retrying));
    browser.wait_text(&row, "retrying").await;
    let address = browser.current_url().await;
    assert!(!address.contains("hrld_"), "the token left the address bar: {address}");

    // Once the link has expired, opening the page again (the tab kept the token) is refused.
    let token = link.body["url"].as_str().unwrap().rsplit_once("#token=").unwrap().1.to_owned();
    crate::helpers::eventually(Duration::from_secs(15), "the link to expire", || async {
        (app.get("/v1/me", &token).await.status.as_u16() == 401).then_some(())
    })
    .await;
    browser.goto(&app.url("/dashboard")).await;
    browser.wait_text("#signin-error", "expired").await;
    browser.quit().await;
}
