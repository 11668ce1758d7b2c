//! The console through its router, over core's in-memory fakes: rendering, escaping, the
//! security rules and a hand-written accessibility check of the main pages.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use baton_core::activity::fakes::InMemoryActivity;
use baton_core::api::DefinitionFormat;
use baton_core::api::fakes::{InMemoryExecutions, InMemoryOrchestrator, InMemoryWorkflows};
use baton_core::fakes::InMemoryDirectory;
use baton_core::{Goal, Plan, Planning, ServiceDirectory, ServiceSpec, WorkflowCatalog};
use http_body_util::BodyExt as _;
use tower_service::Service as _;

use super::*;

struct NoPlans;

impl Planning for NoPlans {
    fn plan(&self, goal: &Goal) -> baton_core::Result<Plan> {
        Err(baton_core::Error::Precondition(format!("nothing produces {}", goal.wanted.join(", "))))
    }
}

const XSS: &str = "<img src=x onerror=alert(1)>";

struct Harness {
    router: Router,
    workflows: InMemoryWorkflows,
    directory: Arc<InMemoryDirectory>,
}

async fn harness(config: Config) -> Harness {
    let directory = Arc::new(InMemoryDirectory::default());
    let spec = serde_json::json!({
        "id": "shop.pay", "name": XSS, "endpoint": {"protocol": "http", "url": "http://127.0.0.1:1/pay"},
        "capabilities": ["payment.charge"],
    });
    directory.register(ServiceSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    let workflows = InMemoryWorkflows::default();
    let definition = serde_json::json!({
        "name": "order", "description": "an order",
        "steps": [
            {"id": "reserve", "service": "shop.pay", "input": {}},
            {"id": "pay", "service": "shop.pay", "input": {"r": "${ .steps.reserve.output }"}, "depends_on": ["reserve"]},
        ],
    });
    workflows.apply(definition.to_string(), DefinitionFormat::Json).await.unwrap();
    let executions = InMemoryExecutions::new(workflows.clone());
    let backends = Backends {
        directory: Arc::clone(&directory) as Arc<dyn ServiceDirectory>,
        planner: Arc::new(NoPlans),
        workflows: Arc::new(workflows.clone()),
        executions: Arc::new(executions.clone()),
        orchestrator: Arc::new(InMemoryOrchestrator::new(Arc::new(NoPlans), executions)),
        activity: Arc::new(InMemoryActivity::default()),
    };
    let (_stop, stopping) = watch::channel(false);
    Harness { router: router(config, backends, stopping), workflows, directory }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Harness {
    async fn send(&mut self, request: Request<Body>) -> Answer {
        std::future::poll_fn(|cx| <Router as tower_service::Service<Request<Body>>>::poll_ready(&mut self.router, cx))
            .await
            .unwrap();
        let response = self.router.call(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    async fn get(&mut self, path: &str, cookie: &str) -> Answer {
        let request = Request::get(path).header(header::HOST, "127.0.0.1:9465").header(header::COOKIE, cookie);
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&mut self, path: &str, cookie: &str, form: &str) -> Answer {
        let request = Request::post(path)
            .header(header::HOST, "127.0.0.1:9465")
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        self.send(request.body(Body::from(form.to_owned())).unwrap()).await
    }
}

const CSRF: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn csrf_cookie() -> String {
    format!("baton_csrf={CSRF}")
}

fn encode(text: &str) -> String {
    crate::services::encode(text)
}

#[tokio::test]
async fn user_text_shows_as_text_and_every_page_is_locked_down() {
    let mut h = harness(Config::default()).await;
    for path in ["/", "/services", "/services/shop.pay", "/workflows", "/workflows/order", "/executions", "/planner"] {
        let answer = h.get(path, &csrf_cookie()).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert_eq!(answer.headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
        assert!(!answer.body.contains("<img"), "{path}: {}", answer.body);
        assert!(!answer.body.contains(" style="), "{path}: inline style");
        assert_eq!(answer.body.matches("<script").count(), answer.body.matches("<script src=").count(), "{path}");
    }
    let services = h.get("/services", &csrf_cookie()).await.body;
    assert!(services.contains("&lt;img src=x onerror=alert(1)&gt;"), "{services}");
    let workflow = h.get("/workflows/order", &csrf_cookie()).await.body;
    assert!(workflow.contains(r#"data-node="reserve""#) && workflow.contains(r#"data-node="pay""#), "{workflow}");
    assert!(workflow.contains("edge edge-data") || workflow.contains(r#"class="edge""#), "{workflow}");
}

#[tokio::test]
async fn a_grpc_service_shows_its_method_and_its_descriptor_set_by_size() {
    let mut harness = harness(Config::default()).await;
    let set = "QUJD".repeat(1_000);
    let spec = serde_json::json!({
        "id": "notify", "capabilities": ["customer.notify"],
        "endpoint": {"protocol": "grpc", "url": "http://127.0.0.1:2", "method": "shop.v1.Notifications/Notify",
                     "descriptor_set": set},
        "credentials": {"kind": "bearer", "secret": "notify-token"},
    });
    harness.directory.register(ServiceSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    let page = harness.get("/services/notify", "").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("shop.v1.Notifications/Notify"), "{}", page.body);
    assert!(page.body.contains("(a descriptor set, 4000 bytes of base64)"), "{}", page.body);
    assert!(!page.body.contains(&set[..64]), "the set's bytes are not on the page");
    assert!(page.body.contains("notify-token"), "the secret's name is, never a value");
}

#[tokio::test]
async fn starting_needs_the_csrf_token_and_shows_errors_verbatim() {
    let mut h = harness(Config::default()).await;
    let form = format!("csrf={CSRF}&workflow=order&version=1&input={}", encode(r#"{"sku":"<b>"}"#));
    let refused = h.post("/executions", &csrf_cookie(), &form.replace(CSRF, &"b".repeat(64))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let started = h.post("/executions", &csrf_cookie(), &form).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let location = started.headers[header::LOCATION].to_str().unwrap().to_owned();
    let page = h.get(&location, &csrf_cookie()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("&quot;sku&quot;: &quot;&lt;b&gt;&quot;"), "{}", page.body);
    assert!(page.body.contains(r#"data-node="reserve""#) && page.body.contains("state-pending"), "{}", page.body);
    assert!(page.body.contains("data-events="), "a running execution is followed live");
    let bad = h.post("/executions", &csrf_cookie(), &format!("csrf={CSRF}&workflow=order&input=%7Bnope")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("invalid input: not JSON: key must be a string"), "{}", bad.body);
    let unknown = h.post("/executions", &csrf_cookie(), &format!("csrf={CSRF}&workflow=refund")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    let cross_site = Request::post("/executions")
        .header(header::HOST, "127.0.0.1:9465")
        .header("sec-fetch-site", "cross-site")
        .header(header::COOKIE, csrf_cookie())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    assert_eq!(h.send(cross_site).await.status, StatusCode::FORBIDDEN);
    let id = location.rsplit('/').next().unwrap();
    // A signal is sent with its data; data that is not JSON and a bad name are refused, named.
    let signalled = h
        .post(
            &format!("/executions/{id}/signal"),
            &csrf_cookie(),
            &format!("csrf={CSRF}&name=approve&data={}", encode(r#"{"by":"ann"}"#)),
        )
        .await;
    assert_eq!(signalled.status, StatusCode::SEE_OTHER, "{}", signalled.body);
    let page = h.get(&location, &csrf_cookie()).await;
    assert!(page.body.contains("signal received") && page.body.contains(">approve<"), "{}", page.body);
    let not_json = h
        .post(&format!("/executions/{id}/signal"), &csrf_cookie(), &format!("csrf={CSRF}&name=approve&data=%7Bno"))
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.body.contains("data: not JSON"), "{}", not_json.body);
    let cancelled =
        h.post(&format!("/executions/{id}/cancel"), &csrf_cookie(), &format!("csrf={CSRF}&reason=<oops>")).await;
    assert_eq!(cancelled.status, StatusCode::SEE_OTHER, "{}", cancelled.body);
    let again = h.post(&format!("/executions/{id}/pause"), &csrf_cookie(), &format!("csrf={CSRF}")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("cannot go from cancelled to paused"), "{}", again.body);
    let _ = &h.workflows;
}

#[tokio::test]
async fn an_open_console_answers_only_literal_hosts_and_a_planner_error_is_shown() {
    let mut h = harness(Config::default()).await;
    let rebound = Request::get("/").header(header::HOST, "evil.example").body(Body::empty()).unwrap();
    assert_eq!(h.send(rebound).await.status, StatusCode::MISDIRECTED_REQUEST);
    let fresh = h.get("/", "").await;
    let cookie = fresh.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("baton_csrf=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let plan = h.post("/planner", &csrf_cookie(), &format!("csrf={CSRF}&have=order&want=%3Cx%3E")).await;
    assert_eq!(plan.status, StatusCode::CONFLICT);
    assert!(plan.body.contains("nothing produces &lt;x&gt;"), "{}", plan.body);
    let list = h.get("/executions?id=zz", &csrf_cookie()).await;
    assert_eq!(list.status, StatusCode::BAD_REQUEST);
    assert!(list.body.contains("is not the start of an execution id"), "{}", list.body);
}

#[tokio::test]
async fn the_list_finds_the_execution_an_idempotency_key_started() {
    let mut h = harness(Config::default()).await;
    let mut started = Vec::new();
    // The hostile name is a valid key, and must show as text.
    for key in ["", "order-2", XSS] {
        let form = format!("csrf={CSRF}&workflow=order&idempotency_key={}", encode(key));
        let answer = h.post("/executions", &csrf_cookie(), &form).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        started.push(answer.headers[header::LOCATION].to_str().unwrap().rsplit('/').next().unwrap().to_owned());
    }
    let rows = |body: &str| body.matches("<tr data-execution=").count();
    let everything = h.get("/executions", &csrf_cookie()).await;
    assert_eq!(rows(&everything.body), 3, "{}", everything.body);
    assert!(everything.body.contains(r#"<label for="f-key">Idempotency key</label>"#), "{}", everything.body);

    let by_key = h.get(&format!("/executions?idempotency_key={}", encode(XSS)), &csrf_cookie()).await;
    assert_eq!(by_key.status, StatusCode::OK, "{}", by_key.body);
    assert_eq!(rows(&by_key.body), 1, "{}", by_key.body);
    assert!(by_key.body.contains(&format!(r#"data-execution="{}""#, started[2])), "{}", by_key.body);
    assert!(!by_key.body.contains("<img"), "{}", by_key.body);
    assert!(by_key.body.contains(r#"value="&lt;img src=x onerror=alert(1)&gt;""#), "the key stays in its field");
    // Padding is trimmed, as the start form trims it; the other filters still apply.
    let padded = h.get("/executions?idempotency_key=%20order-2%20&workflow=order", &csrf_cookie()).await;
    assert_eq!(rows(&padded.body), 1, "{}", padded.body);
    assert!(padded.body.contains(&format!(r#"data-execution="{}""#, started[1])), "{}", padded.body);
    let paused = h.get("/executions?idempotency_key=order-2&state=paused", &csrf_cookie()).await;
    assert!(rows(&paused.body) == 0 && paused.body.contains("No execution matches."), "{}", paused.body);
    let unused = h.get("/executions?idempotency_key=order-3", &csrf_cookie()).await;
    assert_eq!((unused.status, rows(&unused.body)), (StatusCode::OK, 0));

    // A key the start form would refuse is refused here, the message naming the field.
    let long = h.get(&format!("/executions?idempotency_key={}", "k".repeat(300)), &csrf_cookie()).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert!(long.body.contains("invalid idempotency_key"), "{}", long.body);
    assert!(long.body.contains("is 300 bytes long, the limit is 256"), "{}", long.body);
    let control = h.get("/executions?idempotency_key=a%07b", &csrf_cookie()).await;
    assert_eq!(control.status, StatusCode::BAD_REQUEST);
    assert!(control.body.contains("must not hold control characters"), "{}", control.body);

    // Paging links carry the key, encoded, with the other filters.
    let form: executions::ListQuery =
        serde_json::from_value(serde_json::json!({"state": "failed", "idempotency_key": "a b&c"})).unwrap();
    assert_eq!(form.filters(), "state=failed&idempotency_key=a%20b%26c");
}

#[tokio::test]
async fn with_tokens_every_page_needs_a_login() {
    let check: TokenCheck = Arc::new(|token: &[u8]| token == b"s3cret");
    let mut h = harness(Config { tokens: Some(check), secure_cookies: true }).await;
    // With a login, any host name is fine: the session cookie is what counts.
    let away = h.get("/executions?state=running", &csrf_cookie()).await;
    assert_eq!(away.status, StatusCode::SEE_OTHER);
    assert_eq!(away.headers[header::LOCATION], "/login?next=/executions%3Fstate%3Drunning");
    assert_eq!(h.get("/executions/x/events", &csrf_cookie()).await.status, StatusCode::UNAUTHORIZED);
    let login = h.get("/login?next=/executions", &csrf_cookie()).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains(r#"type="password""#));
    let wrong = h.post("/login", &csrf_cookie(), &format!("csrf={CSRF}&token=nope&next=/executions")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("not one this server accepts"));
    let right = h.post("/login", &csrf_cookie(), &format!("csrf={CSRF}&token=s3cret&next=/executions")).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    assert_eq!(right.headers[header::LOCATION], "/executions");
    let session = right.headers.get_all(header::SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().unwrap();
        v.starts_with("baton_session=").then(|| v.to_owned())
    });
    let session = session.expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Secure"),
        "{session}"
    );
    let cookie = format!("{}; {}", csrf_cookie(), session.split(';').next().unwrap());
    assert_eq!(h.get("/executions", &cookie).await.status, StatusCode::OK);
    let logout = h.post("/logout", &cookie, &format!("csrf={CSRF}")).await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert_eq!(h.get("/executions", &cookie).await.status, StatusCode::SEE_OTHER);
}

/// Every visible form control has a label, pages have a language, one heading 1 and a skip
/// link, graphics are named, nothing takes a positive tab index, focus is visible, and the
/// style sheet's text colours keep 4.5:1 against their backgrounds in both themes.
#[tokio::test]
async fn the_main_pages_pass_the_accessibility_checks() {
    let mut h = harness(Config::default()).await;
    let started = h.post("/executions", &csrf_cookie(), &format!("csrf={CSRF}&workflow=order")).await;
    let execution = started.headers[header::LOCATION].to_str().unwrap().to_owned();
    for path in [
        "/",
        "/services",
        "/services/shop.pay",
        "/workflows",
        "/workflows/order",
        "/executions",
        "/planner",
        &execution,
    ] {
        let body = h.get(path, &csrf_cookie()).await.body;
        assert!(body.contains(r#"<html lang="en">"#), "{path}");
        assert_eq!(body.matches("<h1").count(), 1, "{path}");
        assert!(body.contains(r##"class="skip" href="#main""##), "{path}");
        assert!(!body.contains(r#"tabindex="1"#), "{path}");
        for control in controls(&body) {
            let id = attribute(&control, "id").unwrap_or_else(|| panic!("{path}: control without id: {control}"));
            assert!(body.contains(&format!(r#"<label for="{id}""#)), "{path}: no label for {id}");
        }
        for svg in body.split("<svg").skip(1) {
            let tag = &svg[..svg.find('>').unwrap()];
            assert!(tag.contains("aria-label="), "{path}: unnamed graphic {tag}");
        }
    }
    let css = include_str!("../assets/app.css");
    assert!(css.contains(":focus-visible"));
    let (light, dark) = css.split_once("@media (prefers-color-scheme: dark)").unwrap();
    for theme in [light, dark] {
        let colour = |name: &str| {
            let at = theme.find(&format!("{name}:")).unwrap_or_else(|| panic!("{name} not set"));
            let hex = theme[at..].split('#').nth(1).unwrap();
            u32::from_str_radix(&hex[..6], 16).unwrap()
        };
        for (fg, bg) in [
            ("--fg", "--bg"),
            ("--muted", "--bg"),
            ("--muted", "--panel"),
            ("--link", "--bg"),
            ("--ok-fg", "--ok-bg"),
            ("--bad-fg", "--bad-bg"),
            ("--warn-fg", "--warn-bg"),
            ("--run-fg", "--run-bg"),
            ("--idle-fg", "--idle-bg"),
        ] {
            let ratio = contrast(colour(fg), colour(bg));
            assert!(ratio >= 4.5, "{fg} on {bg}: {ratio:.2}");
        }
    }
}

/// The visible `input`, `select` and `textarea` tags of `html`.
fn controls(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for tag in ["<input", "<select", "<textarea"] {
        for part in html.split(tag).skip(1) {
            let element = &part[..part.find('>').unwrap()];
            if !element.contains(r#"type="hidden""#) {
                found.push(element.to_owned());
            }
        }
    }
    found
}

fn attribute(element: &str, name: &str) -> Option<String> {
    let at = element.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(element[at..at + element[at..].find('"')?].to_owned())
}

/// WCAG's contrast ratio of two sRGB colours.
fn contrast(a: u32, b: u32) -> f64 {
    let luminance = |rgb: u32| {
        let channel = |shift: u32| {
            let c = f64::from((rgb >> shift) & 0xff) / 255.0;
            if c <= 0.03928 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
        };
        0.2126 * channel(16) + 0.7152 * channel(8) + 0.0722 * channel(0)
    };
    let (x, y) = (luminance(a), luminance(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}
