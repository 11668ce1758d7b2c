//! The Serverless Workflow DSL 1.0 conformance kit (`conformance/serverless-workflow`, see its
//! `SOURCE.md`), every scenario of every feature file run against the real engine: the
//! scenario's document applied to a `ServiceOrchestrator`, started with the scenario's input,
//! and the kit's assertions checked on the finished execution and its journal.
//!
//! The Gherkin is read by hand: the kit uses a few step phrases, listed in its README, and a
//! phrase this runner does not know fails its scenario rather than being skipped. The nine
//! scenarios that call `https://petstore.swagger.io` and `https://httpbin.org` reach stand-ins
//! on 127.0.0.1 with the same behaviour, through the orchestrator's origin mapping
//! (`HttpConfig::origins`, a server setting a workflow cannot change).
//!
//! The report (passed / total per feature file, and why each failure failed) is written to
//! `<target>/tmp/ctk-report.txt`, which `cargo xtask ci` shows, and is the message of a failure.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use baton::{Options, ServiceOrchestrator};
use baton_core::{Event, EventKind, Execution, ExecutionState, Store, WorkflowName};
use baton_executor::{HttpConfig, Origins};
use serde_json::{Value, json};

/// The kit's feature files, by name.
const FEATURES: [(&str, &str); 11] = [
    ("branch.feature", include_str!("../../../conformance/serverless-workflow/features/branch.feature")),
    ("call.feature", include_str!("../../../conformance/serverless-workflow/features/call.feature")),
    ("data-flow.feature", include_str!("../../../conformance/serverless-workflow/features/data-flow.feature")),
    ("do.feature", include_str!("../../../conformance/serverless-workflow/features/do.feature")),
    ("emit.feature", include_str!("../../../conformance/serverless-workflow/features/emit.feature")),
    ("flow.feature", include_str!("../../../conformance/serverless-workflow/features/flow.feature")),
    ("for.feature", include_str!("../../../conformance/serverless-workflow/features/for.feature")),
    ("raise.feature", include_str!("../../../conformance/serverless-workflow/features/raise.feature")),
    ("set.feature", include_str!("../../../conformance/serverless-workflow/features/set.feature")),
    ("switch.feature", include_str!("../../../conformance/serverless-workflow/features/switch.feature")),
    ("try.feature", include_str!("../../../conformance/serverless-workflow/features/try.feature")),
];

/// The error type `try.feature` filters on (a pre-1.0 draft's), and the standard one the DSL
/// reference names; see `SOURCE.md`.
const DRAFT_ERROR_TYPES: &str = "https://serverlessworkflow.io/dsl/errors/types/";
const STANDARD_ERROR_TYPES: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/";

/// How long one scenario may run.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

/// One scenario: its steps, in order, doc strings attached.
#[derive(Debug)]
struct Scenario {
    name: String,
    steps: Vec<Step>,
}

/// A step as written: its phrase (keyword dropped) and its doc string, if any.
#[derive(Debug)]
struct Step {
    phrase: String,
    doc: Option<String>,
}

/// The scenarios of a feature file.
fn scenarios(feature: &str) -> Vec<Scenario> {
    let mut found: Vec<Scenario> = Vec::new();
    let mut lines = feature.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("Scenario:") {
            found.push(Scenario { name: name.trim().to_owned(), steps: Vec::new() });
            continue;
        }
        let keyword = ["Given ", "When ", "Then ", "And ", "But "].iter().find(|k| trimmed.starts_with(**k));
        let (Some(keyword), Some(scenario)) = (keyword, found.last_mut()) else { continue };
        let mut doc = None;
        if lines.peek().is_some_and(|next| next.trim().starts_with("\"\"\"")) {
            let open = lines.next().expect("peeked");
            let indent = open.len() - open.trim_start().len();
            let mut text = String::new();
            for line in lines.by_ref() {
                if line.trim() == "\"\"\"" {
                    break;
                }
                text.push_str(line.get(indent..).unwrap_or_else(|| line.trim_start()));
                text.push('\n');
            }
            doc = Some(text);
        }
        scenario.steps.push(Step { phrase: trimmed[keyword.len()..].trim().to_owned(), doc });
    }
    found
}

/// Stand-ins for the public hosts the kit calls, with the behaviour its scenarios rely on.
async fn stand_ins() -> String {
    fn pet(id: u64) -> Value {
        json!({"id": id, "category": {"id": 1, "name": "Dogs"}, "name": format!("doggie-{id}"),
               "photoUrls": [], "tags": [], "status": "available"})
    }
    fn not_found() -> Response {
        (StatusCode::NOT_FOUND, Json(json!({"code": 404, "type": "unknown", "message": "not found"}))).into_response()
    }
    let app = Router::new()
        // Pet store: pets by status, pets by id; `getPetByName/{name}` is not a route there,
        // so it answers 404 as the real one does.
        .route("/v2/pet/findByStatus", get(|| async { Json(json!([pet(1), pet(2), pet(3)])) }))
        .route(
            "/v2/pet/{id}",
            get(|Path(id): Path<String>| async move {
                match id.parse::<u64>() {
                    Ok(id) if id > 0 => Json(pet(id)).into_response(),
                    _ => not_found(),
                }
            }),
        )
        .route("/v2/swagger.json", get(|| async { Json(swagger()) }))
        // httpbin: basic authentication checked against the path's credentials.
        .route(
            "/basic-auth/{user}/{password}",
            get(|Path((user, password)): Path<(String, String)>, headers: HeaderMap| async move {
                use base64::Engine as _;
                let expected =
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some(given) if given == expected => {
                        Json(json!({"authenticated": true, "user": user})).into_response()
                    }
                    _ => StatusCode::UNAUTHORIZED.into_response(),
                }
            }),
        )
        .fallback(|| async { not_found() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// The part of the pet store's Swagger 2.0 document the kit's OpenAPI calls use.
fn swagger() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Swagger Petstore", "version": "1.0.7"},
        "host": "petstore.swagger.io",
        "basePath": "/v2",
        "schemes": ["https", "http"],
        "paths": {
            "/pet/findByStatus": {"get": {
                "operationId": "findPetsByStatus",
                "produces": ["application/json"],
                "parameters": [{"name": "status", "in": "query", "required": true, "type": "array",
                                "items": {"type": "string", "enum": ["available", "pending", "sold"]},
                                "collectionFormat": "multi"}]
            }},
            "/pet/{petId}": {"get": {
                "operationId": "getPetById",
                "produces": ["application/json"],
                "parameters": [{"name": "petId", "in": "path", "required": true, "type": "integer", "format": "int64"}]
            }}
        }
    })
}

/// What running a scenario came to.
struct Verdict {
    failure: Option<String>,
    corrected: bool,
}

/// Runs one scenario on an orchestrator of its own.
async fn run(scenario: &Scenario, stand_in: &str) -> Verdict {
    let mut corrected = false;
    let failure = run_steps(scenario, stand_in, &mut corrected).await.err();
    Verdict { failure, corrected }
}

async fn run_steps(scenario: &Scenario, stand_in: &str, corrected: &mut bool) -> Result<(), String> {
    let origins = Origins::new([("https://petstore.swagger.io", stand_in), ("https://httpbin.org", stand_in)])?;
    let options =
        Options { http: HttpConfig { origins, ..HttpConfig::default() }, supervisor: None, ..Options::default() };
    let orchestrator = ServiceOrchestrator::open(options).await.map_err(|e| format!("open: {e}"))?;
    let mut definition: Option<String> = None;
    let mut input = json!({});
    let mut finished: Option<(Execution, Vec<Event>)> = None;
    for step in &scenario.steps {
        let doc = || step.doc.clone().ok_or_else(|| format!("step {:?} needs a doc string", step.phrase));
        let yaml = |text: String| {
            serde_yaml::from_str::<Value>(&text).map_err(|e| format!("step {:?}: bad YAML: {e}", step.phrase))
        };
        let phrase = step.phrase.as_str();
        if phrase == "a workflow with definition:" {
            let mut text = doc()?;
            if text.contains(DRAFT_ERROR_TYPES) {
                text = text.replace(DRAFT_ERROR_TYPES, STANDARD_ERROR_TYPES);
                *corrected = true;
            }
            definition = Some(text);
        } else if phrase == "given the workflow input is:" {
            input = yaml(doc()?)?;
        } else if phrase == "the workflow is executed" {
            let text = definition.as_deref().ok_or("executed before a definition was given")?;
            finished = Some(execute(&orchestrator, text, input.clone()).await?);
        } else {
            let (execution, journal) = finished.as_ref().ok_or_else(|| format!("{phrase:?} before execution"))?;
            check(phrase, step.doc.clone().map(yaml).transpose()?, execution, journal)?;
        }
    }
    orchestrator.shutdown().await;
    Ok(())
}

/// Applies `text`, starts it on `input` and waits for it to finish; the finished execution and
/// its journal.
async fn execute(
    orchestrator: &ServiceOrchestrator,
    text: &str,
    input: Value,
) -> Result<(Execution, Vec<Event>), String> {
    let engine = orchestrator.engine();
    let applied = engine.apply(text).await.map_err(|e| format!("apply: {e}"))?;
    let name: &WorkflowName = &applied.name;
    let id = engine.start(name, Some(applied.version), input, None).await.map_err(|e| format!("start: {e}"))?;
    let execution = tokio::time::timeout(SCENARIO_LIMIT, engine.wait(id))
        .await
        .map_err(|_| format!("did not finish within {SCENARIO_LIMIT:?}"))?
        .map_err(|e| format!("wait: {e}"))?;
    let journal = orchestrator.store().read_journal(id, 1).await.map_err(|e| format!("journal: {e}"))?;
    Ok((execution, journal))
}

/// Checks one assertion step.
fn check(phrase: &str, doc: Option<Value>, execution: &Execution, journal: &[Event]) -> Result<(), String> {
    let state = execution.state;
    let completed = || {
        if state == ExecutionState::Completed {
            Ok(execution.output.clone().unwrap_or(Value::Null))
        } else {
            Err(format!(
                "the workflow is {state}, not completed ({})",
                execution.error.as_deref().unwrap_or("no error")
            ))
        }
    };
    match phrase {
        "the workflow should complete" => completed().map(drop),
        "the workflow should complete with output:" => {
            let output = completed()?;
            let expected = doc.ok_or("no expected output")?;
            same(&output, &expected).then_some(()).ok_or(format!("output {output}, expected {expected}"))
        }
        "the workflow should cancel" => {
            (state == ExecutionState::Cancelled).then_some(()).ok_or(format!("the workflow is {state}, not cancelled"))
        }
        "the workflow should fault" => {
            (state == ExecutionState::Failed).then_some(()).ok_or(format!("the workflow is {state}, not faulted"))
        }
        "the workflow should fault with error:" => {
            if state != ExecutionState::Failed {
                return Err(format!("the workflow is {state}, not faulted"));
            }
            let problem = execution.problem.as_ref().ok_or("the fault carries no problem details")?;
            let actual = problem.to_value();
            for (key, want) in doc.ok_or("no expected error")?.as_object().ok_or("the expected error is not a map")? {
                let got = actual.get(key).unwrap_or(&Value::Null);
                if !same(got, want) {
                    return Err(format!("error {key} is {got}, expected {want} (error: {actual})"));
                }
            }
            Ok(())
        }
        _ => check_output_or_order(phrase, doc, execution, journal, completed),
    }
}

fn check_output_or_order(
    phrase: &str,
    doc: Option<Value>,
    execution: &Execution,
    journal: &[Event],
    completed: impl Fn() -> Result<Value, String>,
) -> Result<(), String> {
    if let Some(list) = phrase.strip_prefix("the workflow output should have properties ") {
        let output = completed()?;
        for path in quoted(list) {
            at(&output, &path).ok_or(format!("output {output} has no property {path:?}"))?;
        }
        return Ok(());
    }
    if let Some(rest) = phrase.strip_prefix("the workflow output should have a ") {
        let output = completed()?;
        let path = quoted(rest).into_iter().next().ok_or(format!("no property named in {phrase:?}"))?;
        let value = at(&output, &path).ok_or(format!("output {output} has no property {path:?}"))?;
        if rest.ends_with("property with value:") {
            let expected = doc.ok_or("no expected value")?;
            return same(value, &expected).then_some(()).ok_or(format!("{path} is {value}, expected {expected}"));
        }
        let count = rest
            .split(" property containing ")
            .nth(1)
            .and_then(|r| r.strip_suffix(" items"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .ok_or(format!("unknown step {phrase:?}"))?;
        let items = value.as_array().ok_or(format!("{path} is {value}, not a list"))?;
        return (items.len() == count)
            .then_some(())
            .ok_or(format!("{path} has {} items, expected {count}", items.len()));
    }
    let order = Order::of(journal);
    let words: Vec<&str> = phrase.split_whitespace().collect();
    match words.as_slice() {
        [task, "should", "run", "first"] => {
            let first = order.first().ok_or("no task ran")?;
            (first == *task).then_some(()).ok_or(format!("{first} ran first, not {task}"))
        }
        [task, "should", "run", "last"] => {
            let last = order.last().ok_or("no task ran")?;
            (last == *task).then_some(()).ok_or(format!("{last} ran last, not {task}"))
        }
        [task, "should", "run", "after", other] => order.before(other, task),
        [task, "should", "run", "before", other] => order.before(task, other),
        [task, "should", "complete"] => task_ended(execution, journal, task, true),
        [task, "should", "fault"] => task_ended(execution, journal, task, false),
        _ => Err(format!("unknown step {phrase:?}")),
    }
}

/// Whether `task`'s last event says it succeeded (`ok`) or failed for good.
fn task_ended(_: &Execution, journal: &[Event], task: &str, ok: bool) -> Result<(), String> {
    let last = journal.iter().rev().find_map(|e| match &e.kind {
        EventKind::TaskSucceeded { step, .. } if step.as_str() == task => Some(true),
        EventKind::TaskFailed { step, retryable: false, .. } if step.as_str() == task => Some(false),
        _ => None,
    });
    match last {
        Some(ended) if ended == ok => Ok(()),
        Some(_) => Err(format!("{task} {}", if ok { "faulted" } else { "completed" })),
        None => Err(format!("{task} never ended")),
    }
}

/// Which tasks ran when: for each top-level task, the journal sequence of the first and the
/// last event of it or of anything nested in it.
struct Order {
    spans: Vec<(String, u64, u64)>,
}

impl Order {
    fn of(journal: &[Event]) -> Self {
        let mut spans: Vec<(String, u64, u64)> = Vec::new();
        for event in journal {
            let step = match &event.kind {
                EventKind::TaskScheduled { step, .. }
                | EventKind::TaskSucceeded { step, .. }
                | EventKind::TaskFailed { step, .. }
                | EventKind::TaskSkipped { step, .. } => step,
                _ => continue,
            };
            let top = step.as_str().split('/').next().unwrap_or_default();
            match spans.iter_mut().find(|(name, _, _)| name == top) {
                Some(span) => span.2 = event.sequence,
                None => spans.push((top.to_owned(), event.sequence, event.sequence)),
            }
        }
        Self { spans }
    }

    fn first(&self) -> Option<&str> {
        self.spans.iter().min_by_key(|s| s.1).map(|s| s.0.as_str())
    }

    fn last(&self) -> Option<&str> {
        self.spans.iter().max_by_key(|s| s.2).map(|s| s.0.as_str())
    }

    /// `earlier` ended before `later` began.
    fn before(&self, earlier: &str, later: &str) -> Result<(), String> {
        let span = |name: &str| self.spans.iter().find(|s| s.0 == name).ok_or(format!("{name} never ran"));
        let (a, b) = (span(earlier)?, span(later)?);
        (a.2 < b.1)
            .then_some(())
            .ok_or(format!("{earlier} (events {}..{}) did not run before {later} (events {}..{})", a.1, a.2, b.1, b.2))
    }
}

/// The single-quoted names in `text`: `'a', 'b.c'`.
fn quoted(text: &str) -> Vec<String> {
    text.split('\'').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The value at a dotted path.
fn at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// JSON equality with numbers compared by value (`1` and `1.0` are the same).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_of_the_conformance_kit_passes() {
    let stand_in = stand_ins().await;
    let mut report = String::new();
    let mut failures = String::new();
    let mut corrections = Vec::new();
    let (mut passed, mut total) = (0, 0);
    let mut rows = Vec::new();
    for (file, text) in FEATURES {
        let scenarios = scenarios(text);
        assert!(!scenarios.is_empty(), "{file} has no scenario");
        let mut file_passed = 0;
        for scenario in &scenarios {
            let verdict = run(scenario, &stand_in).await;
            if verdict.corrected {
                corrections.push(format!("{file}: {}", scenario.name));
            }
            match verdict.failure {
                None => file_passed += 1,
                Some(reason) => {
                    let _ = writeln!(failures, "  {file}: {}: {reason}", scenario.name);
                }
            }
        }
        rows.push((file, file_passed, scenarios.len()));
        passed += file_passed;
        total += scenarios.len();
    }
    let _ = writeln!(
        report,
        "Serverless Workflow DSL 1.0 conformance kit (conformance/serverless-workflow, d758f0b): {passed} / {total} scenarios pass"
    );
    for (file, file_passed, file_total) in rows {
        let _ = writeln!(report, "  {file:<20} {file_passed:>2} / {file_total}");
    }
    if !corrections.is_empty() {
        let _ = writeln!(
            report,
            "run with the documented correction (try.feature's draft error type, see SOURCE.md): {}",
            corrections.join("; ")
        );
    }
    if !failures.is_empty() {
        let _ = write!(report, "failures:\n{failures}");
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ctk-report.txt");
    std::fs::write(&path, &report).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    assert_eq!(total, 21, "the kit has 21 scenarios");
    assert_eq!(passed, total, "{report}");
}

#[test]
fn the_kits_gherkin_reads_into_scenarios_and_steps() {
    let switch = scenarios(FEATURES[9].1);
    assert_eq!(switch.len(), 3);
    assert_eq!(switch[0].name, "Switch task with matching case");
    let phrases: Vec<&str> = switch[0].steps.iter().map(|s| s.phrase.as_str()).collect();
    assert_eq!(
        phrases,
        [
            "a workflow with definition:",
            "given the workflow input is:",
            "the workflow is executed",
            "the workflow should complete with output:",
            "switchColor should run first",
            "setRed should run last",
        ]
    );
    assert!(switch[0].steps[0].doc.as_deref().unwrap().starts_with("document:\n  dsl: '1.0.3'"));
    assert_eq!(switch[0].steps[1].doc.as_deref(), Some("color: red\n"));
    let total: usize = FEATURES.iter().map(|(_, text)| scenarios(text).len()).sum();
    assert_eq!(total, 21);
    assert_eq!(quoted("'a', 'b.c', 'd'"), ["a", "b.c", "d"]);
    assert!(same(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
}
