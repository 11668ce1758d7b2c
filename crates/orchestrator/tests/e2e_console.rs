//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver against a real `baton serve --demo`: what a person sees on each page,
//! an execution started from its workflow's page turning succeeded without a reload, pause,
//! resume and cancel from the page, the planner, a hostile service name shown as text, the
//! login a console with tokens asks for, and no error in the browser's console. A screenshot
//! of every page goes to `target/console-screenshots/`.

mod support;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_grpc::{convert, pb};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::{Clients, ServerProcess, free_addr};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const XSS: &str = "<img src=x onerror=alert(1)>";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: apt-get install chromium chromium-driver");
        let port = free_addr().port();
        // Its own process group, so that the browsers it starts end with it (see `Drop`).
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let profile = tempfile::tempdir().unwrap();
        let mut browser =
            Self { driver, base: format!("http://127.0.0.1:{port}"), session: String::new(), http, _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.request("GET", "/status", None).await.ok().and_then(|v| v["ready"].as_bool()) != Some(true) {
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,800", format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let session = browser.request("POST", "/session", Some(capabilities)).await.expect("a browser session");
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.http.request(request).await.map_err(|e| e.to_string())?;
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        match answer["value"].get("error") {
            Some(error) => Err(format!("{error}: {}", answer["value"]["message"])),
            None => Ok(answer["value"].clone()),
        }
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = if method == "GET" { None } else { Some(body) };
        self.request(method, &path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url})).await;
    }

    async fn url(&self) -> String {
        self.command("GET", "/url", json!({})).await.as_str().unwrap().to_owned()
    }

    /// Runs `script` (a function body) in the page.
    async fn run(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", json!({"script": script, "args": []})).await
    }

    async fn element(&self, css: &str) -> String {
        let found = self.command("POST", "/element", json!({"using": "css selector", "value": css})).await;
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id").to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.command("GET", &format!("/element/{element}/text"), json!({})).await.as_str().unwrap().to_owned()
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let script = format!("return [...document.querySelectorAll({css:?})].map(e => e.textContent.trim());");
        self.run(&script).await.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command("POST", &format!("/element/{element}/click"), json!({})).await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command("POST", &format!("/element/{element}/clear"), json!({})).await;
        self.command("POST", &format!("/element/{element}/value"), json!({"text": text})).await;
    }

    async fn accept_alert(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = format!("/session/{}/alert/text", self.session);
            if let Ok(text) = self.request("GET", &path, None).await {
                self.command("POST", "/alert/accept", json!({})).await;
                return text.as_str().unwrap_or_default().to_owned();
            }
            assert!(Instant::now() < deadline, "no confirmation was asked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `script` (a function body returning a boolean) until it is true.
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.run(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "waited 60 s for {what} on {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.command("GET", "/screenshot", json!({})).await;
        let bytes = base64_decode(png.as_str().unwrap());
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Messages the page logged at level SEVERE (errors, CSP violations, failed loads).
    async fn console_errors(&self) -> Vec<String> {
        let logs = self.command("POST", "/se/log", json!({"type": "browser"})).await;
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    /// Kills chromedriver's whole process group: killing chromedriver alone left the Chromium
    /// processes it had started running, as orphans, after the test.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let killed = Command::new("kill").args(["-KILL", "--", &group]).status();
        if !killed.is_ok_and(|status| status.success()) {
            let _ = self.driver.kill();
        }
        let _ = self.driver.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

const WAITS: &str = "\
name: waits
description: One step on a worker queue no worker polls, so it runs until someone steps in.
steps:
  - id: wait
    service: idle-worker
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_and_steers_executions_in_the_console() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&data.path().join("data"), &["--demo"]).await;
    let mut clients = Clients::new(server.channel().await);
    clients.wait_services(3).await;
    for spec in [
        json!({"id": "hostile", "name": XSS, "endpoint": {"protocol": "http", "url": "http://127.0.0.1:9/x"}, "capabilities": ["test.hostile"]}),
        json!({"id": "idle-worker", "endpoint": {"protocol": "worker", "queue": "idle"}, "capabilities": ["test.idle"]}),
    ] {
        let spec = baton_core::ServiceSpec::from_json(&spec.to_string()).unwrap();
        clients.registry.register(pb::RegisterRequest { spec: Some(convert::spec_to_proto(&spec)) }).await.unwrap();
    }
    clients.apply(WAITS).await;
    let console = format!("http://{}", server.console);
    let browser = Browser::start().await;

    // Overview.
    browser.goto(&format!("{console}/")).await;
    assert_eq!(browser.text("h1").await, "Overview");
    assert!(browser.texts("dl.cards dt").await.contains(&"Running now".to_owned()));
    browser.screenshot("overview").await;

    // Services: the example shop, and the hostile name as text.
    browser.goto(&format!("{console}/services")).await;
    let ids = browser.texts("#services tbody tr td:first-child a").await;
    for id in ["hostile", "idle-worker", "inventory", "payments", "shipping"] {
        assert!(ids.iter().any(|shown| shown == id), "{id} not in {ids:?}");
    }
    assert_eq!(browser.text("tr[data-service=hostile] .service-name").await, XSS);
    assert_eq!(browser.run("return document.querySelectorAll('img').length;").await, 0);
    browser.screenshot("services").await;
    browser.fill("#q", "payment").await;
    browser.click("form.filters button").await;
    browser.wait_until("the search", "return location.search.includes('q=payment');").await;
    assert_eq!(browser.texts("#services tbody tr td:first-child a").await, ["payments"]);
    browser.goto(&format!("{console}/services/hostile")).await;
    assert_eq!(browser.text("dd.service-name").await, XSS);
    browser.screenshot("service").await;

    // Workflows, and an order started from its page that completes without a reload.
    browser.goto(&format!("{console}/workflows")).await;
    let names = browser.texts("#workflows tbody td:first-child a").await;
    for name in ["checkout", "order", "pipeline", "waits"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    browser.screenshot("workflows").await;
    browser.goto(&format!("{console}/workflows/order")).await;
    assert_eq!(browser.texts("svg.graph [data-node]").await.len(), 3);
    browser.screenshot("workflow").await;
    browser.fill("#input", "{\"sku\": ").await;
    browser.click("form.start button").await;
    assert!(browser.text("#input-error").await.starts_with("Not valid JSON"), "the page checks JSON before sending");
    assert!(browser.url().await.ends_with("/workflows/order"));
    browser.fill("#input", r#"{"sku": "book-42", "quantity": 2, "amount": 31.5}"#).await;
    browser.click("form.start button").await;
    browser.wait_until("the execution page", "return location.pathname.startsWith('/executions/');").await;
    let execution_url = browser.url().await;
    browser.run("window.sameDocument = true; return true;").await;
    browser
        .wait_until(
            "every step succeeded",
            "return document.querySelectorAll('svg.graph [data-state=succeeded]').length === 3 \
             && document.querySelector('#state').dataset.state === 'completed';",
        )
        .await;
    assert_eq!(browser.run("return window.sameDocument === true;").await, true, "updated without a reload");
    assert_eq!(browser.texts("svg.gantt g.attempt").await.len(), 3, "a timeline bar per attempt");
    assert!(browser.text("[data-region=data]").await.contains("trk-"), "the output shows");
    browser.screenshot("execution").await;

    // Pause, resume and cancel an execution that waits on a worker.
    browser.goto(&format!("{console}/workflows/waits")).await;
    browser.fill("#idempotency_key", "waits-1").await;
    browser.click("form.start button").await;
    browser
        .wait_until("the running execution", "return document.querySelector('#state')?.dataset.state === 'running';")
        .await;
    let waiting_url = browser.url().await;
    browser.click("#pause").await;
    browser
        .wait_until(
            "the page after pausing",
            "return document.readyState === 'complete' && document.querySelector('#resume, #pause') !== null;",
        )
        .await;
    browser.wait_until("paused", "return document.querySelector('#state')?.dataset.state === 'paused';").await;
    browser.click("#resume").await;
    browser.wait_until("running again", "return document.querySelector('#state')?.dataset.state === 'running';").await;
    browser.fill("#reason", "seen enough <b>").await;
    browser.click("#cancel").await;
    assert!(browser.accept_alert().await.starts_with("Cancel this execution?"));
    browser.wait_until("cancelled", "return document.querySelector('#state')?.dataset.state === 'cancelled';").await;
    assert!(browser.text("[data-region=summary] .error .message").await.contains("seen enough <b>"));

    // The list, filtered by state and by the start of an id; a whole id is a deep link.
    let waiting_id = waiting_url.rsplit('/').next().unwrap().to_owned();
    browser.goto(&format!("{console}/executions?state=cancelled")).await;
    let listed: Vec<String> = browser
        .run("return [...document.querySelectorAll('tr[data-execution]')].map(r => r.dataset.execution);")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, std::slice::from_ref(&waiting_id));
    browser.screenshot("executions").await;
    browser.goto(&format!("{console}/executions?id={}", &waiting_id[..13])).await;
    assert_eq!(browser.texts("tr[data-execution] td:first-child").await, [waiting_id[..8].to_owned()]);
    browser.goto(&format!("{console}/executions?id={waiting_id}")).await;
    assert_eq!(browser.url().await, waiting_url);
    // By the idempotency key it was started with, from the filter form.
    browser.goto(&format!("{console}/executions")).await;
    browser.fill("#f-key", "waits-1").await;
    browser.click("form.filters button").await;
    browser.wait_until("the key filter", "return location.search.includes('idempotency_key=waits-1');").await;
    assert_eq!(browser.texts("tr[data-execution] td:first-child").await, [waiting_id[..8].to_owned()]);

    // The planner: the shop's goal composes three tasks in two levels, and runs.
    browser.goto(&format!("{console}/planner")).await;
    browser.fill("#have", "order").await;
    browser.fill("#want", "tracking").await;
    browser.click("form.goal button").await;
    browser.wait_until("the plan", "return document.querySelector('#plan-tasks') !== null;").await;
    assert_eq!(browser.texts("#plan-tasks tbody tr").await.len(), 3);
    assert_eq!(browser.texts("svg.graph [data-node]").await.len(), 3);
    browser.screenshot("planner").await;
    browser.fill("#run-input", r#"{"order": {"sku": "book-42", "quantity": 1, "amount": 5}}"#).await;
    browser.click("form.run button").await;
    browser
        .wait_until(
            "the planned run ends",
            "return ['completed', 'failed', 'cancelled'].includes(document.querySelector('#state')?.dataset.state);",
        )
        .await;
    let state = browser.run("return document.querySelector('#state').dataset.state;").await;
    assert_eq!(state, "completed", "the planned run: {}", browser.text("main").await);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
    browser.goto(&format!("{console}/planner")).await;
    browser.fill("#have", "order").await;
    browser.fill("#want", "unobtainium").await;
    browser.click("form.goal button").await;
    browser.wait_until("the planner's answer", "return document.querySelector('#plan-error') !== null;").await;
    assert!(!browser.text("#plan-error .message").await.is_empty(), "the planner's reason shows");

    // Keyboard: the skip link is the first stop and takes focus to the content.
    browser.goto(&format!("{console}/")).await;
    browser.goto(&execution_url).await;
    let first = browser
        .run("document.activeElement.blur(); return document.querySelector('a.skip').getAttribute('href');")
        .await;
    assert_eq!(first, "#main");

    // The one error expected: the planner page's own 409.
    let errors: Vec<String> =
        browser.console_errors().await.into_iter().filter(|e| !e.contains("status of 409 (Conflict)")).collect();
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_off_loopback_asks_for_a_token() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, "console-token-1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let port = free_addr().port();
    let server = ServerProcess::start(
        &data.path().join("data"),
        &["--console-listen", &format!("0.0.0.0:{port}"), "--auth-token-file", tokens.to_str().unwrap()],
    )
    .await;
    let _ = &server;
    let console = format!("http://127.0.0.1:{port}");
    let browser = Browser::start().await;
    browser.goto(&format!("{console}/executions")).await;
    assert!(browser.url().await.contains("/login?next=/executions"), "{}", browser.url().await);
    assert_eq!(browser.text("h1").await, "Log in");
    browser.screenshot("login").await;
    browser.fill("#token", "wrong").await;
    browser.click("form.login button").await;
    browser.wait_until("the refusal", "return document.querySelector('.error') !== null;").await;
    assert_eq!(browser.text(".error").await, "That token is not one this server accepts.");
    browser.fill("#token", "console-token-1").await;
    browser.click("form.login button").await;
    browser.wait_until("the list", "return location.pathname === '/executions';").await;
    assert_eq!(browser.url().await, format!("{console}/executions"));
    assert_eq!(browser.text("h1").await, "Executions");
    let cookie_hidden = browser.run("return !document.cookie.includes('baton_session');").await;
    assert_eq!(cookie_hidden, true, "the session cookie is HttpOnly");
    browser.click("form.logout button").await;
    browser.wait_until("the login page", "return location.pathname === '/login';").await;
    assert!(browser.url().await.ends_with("/login"));
    let errors: Vec<String> =
        browser.console_errors().await.into_iter().filter(|e| !e.contains("401 (Unauthorized)")).collect();
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
}
