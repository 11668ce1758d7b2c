//! How answers look: human text (tables and `field: value` records) and machine JSON, both from
//! the proto messages. Pure functions, so the tests pin the output down.

use baton_grpc::{convert, pb};
use serde_json::{Value, json};

use super::table::{Table, details};

// --- Small pieces -------------------------------------------------------------------------

/// A proto enum's name without its prefix, lowercase: `EXECUTION_STATE_RUNNING` -> `running`.
fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('_')).unwrap_or(name).to_ascii_lowercase()
}

/// An execution state's name, e.g. `running`.
pub(crate) fn execution_state(value: i32) -> String {
    pb::ExecutionState::try_from(value)
        .map_or_else(|_| format!("unknown({value})"), |s| label(s.as_str_name(), "EXECUTION_STATE"))
}

fn task_state(value: i32) -> String {
    pb::TaskState::try_from(value)
        .map_or_else(|_| format!("unknown({value})"), |s| label(s.as_str_name(), "TASK_STATE"))
}

fn health(status: Option<&pb::ServiceStatus>) -> String {
    let value = status.map_or(0, |s| s.health);
    pb::Health::try_from(value).map_or_else(|_| format!("unknown({value})"), |h| label(h.as_str_name(), "HEALTH"))
}

fn register_outcome(value: i32) -> String {
    pb::RegisterOutcome::try_from(value)
        .map_or_else(|_| format!("unknown({value})"), |o| label(o.as_str_name(), "REGISTER_OUTCOME"))
}

fn apply_outcome(value: i32) -> String {
    pb::ApplyOutcome::try_from(value)
        .map_or_else(|_| format!("unknown({value})"), |o| label(o.as_str_name(), "APPLY_OUTCOME"))
}

fn definition_format(value: i32) -> String {
    pb::DefinitionFormat::try_from(value)
        .map_or_else(|_| format!("unknown({value})"), |f| label(f.as_str_name(), "DEFINITION_FORMAT"))
}

/// A timestamp to the second, `-` when absent.
pub(crate) fn when(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |ts| ts_json(ts).as_str().map(short_time).unwrap_or_default())
}

/// RFC 3339 text without its fraction of a second.
fn short_time(text: &str) -> String {
    match text.find('.') {
        Some(dot) => format!("{}Z", &text[..dot]),
        None => text.to_owned(),
    }
}

fn ts_json(ts: &prost_types::Timestamp) -> Value {
    Value::String(ts.to_string())
}

fn opt_ts_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, ts_json)
}

/// Milliseconds from `from` to `to`.
pub(crate) fn between_ms(from: &prost_types::Timestamp, to: &prost_types::Timestamp) -> f64 {
    (to.seconds - from.seconds) as f64 * 1000.0 + f64::from(to.nanos - from.nanos) / 1e6
}

/// A duration for humans: `4.0 ms`, `12 ms`, `1.50 s`.
pub(crate) fn millis(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// JSON text carried in a `*_json` field, as a value; text that is not JSON stays a string.
fn payload(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// JSON text pretty-printed for humans.
fn pretty(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_owned()),
        Err(_) => text.to_owned(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "-".to_owned() } else { items.join(",") }
}

fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => "-".to_owned(),
    }
}

// --- Services -----------------------------------------------------------------------------

fn protocol(spec: &pb::ServiceSpec) -> &'static str {
    match spec.endpoint.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(pb::endpoint::Kind::Http(_)) => "http",
        Some(pb::endpoint::Kind::Grpc(_)) => "grpc",
        Some(pb::endpoint::Kind::Worker(_)) => "worker",
        None => "-",
    }
}

fn endpoint(spec: &pb::ServiceSpec) -> String {
    match spec.endpoint.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(pb::endpoint::Kind::Http(h)) => h.url.clone(),
        Some(pb::endpoint::Kind::Grpc(g)) => g.url.clone(),
        Some(pb::endpoint::Kind::Worker(w)) => format!("queue {}", w.queue),
        None => "-".to_owned(),
    }
}

/// Registered services, one per line.
pub(crate) fn services_table(services: &[pb::ServiceView]) -> String {
    let mut table = Table::new(&["ID", "NAME", "PROTOCOL", "HEALTH", "IN-FLIGHT", "CAPABILITIES", "OUTPUTS"]);
    for view in services {
        let spec = view.spec.clone().unwrap_or_default();
        table.row(vec![
            spec.id.clone(),
            spec.name.clone(),
            protocol(&spec).to_owned(),
            health(view.status.as_ref()),
            view.status.as_ref().map_or(0, |s| s.in_flight).to_string(),
            list(&spec.capabilities),
            list(&spec.outputs),
        ]);
    }
    table.render()
}

/// One service in full.
pub(crate) fn service_text(view: &pb::ServiceView) -> String {
    let spec = view.spec.clone().unwrap_or_default();
    let status = view.status.clone().unwrap_or_default();
    let qos = spec.qos.unwrap_or_default();
    let mut labels: Vec<String> = spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    details(&[
        ("id", spec.id.clone()),
        ("name", spec.name.clone()),
        ("version", or_dash(Some(&spec.version))),
        ("protocol", protocol(&spec).to_owned()),
        ("endpoint", endpoint(&spec)),
        ("capabilities", list(&spec.capabilities)),
        ("inputs", list(&spec.inputs)),
        ("outputs", list(&spec.outputs)),
        ("formats", list(&spec.formats)),
        (
            "qos",
            format!(
                "p50 {} ms, p99 {} ms, {} rps, cost {}, availability {}",
                qos.latency_p50_ms,
                qos.latency_p99_ms,
                qos.throughput_rps,
                qos.cost,
                qos.availability.unwrap_or(1.0)
            ),
        ),
        ("capacity", spec.capacity.to_string()),
        ("labels", list(&labels)),
        ("health", health(Some(&status))),
        ("in flight", status.in_flight.to_string()),
        ("success rate", format!("{:.3}", status.success_rate)),
        ("registered", when(status.registered_at.as_ref())),
        ("last heartbeat", when(status.last_heartbeat.as_ref())),
        ("last check", or_dash(Some(&status.last_check_output))),
    ])
}

/// The spec as its definition document (the form `service register` reads), so that JSON
/// output can be registered again; the raw fields when it does not convert.
fn spec_json(spec: &pb::ServiceSpec) -> Value {
    match convert::spec_from_proto(spec.clone()) {
        Ok(spec) => serde_json::to_value(&spec).unwrap_or(Value::Null),
        Err(_) => json!({ "id": spec.id, "name": spec.name }),
    }
}

fn status_json(status: &pb::ServiceStatus) -> Value {
    json!({
        "health": health(Some(status)),
        "in_flight": status.in_flight,
        "success_rate": status.success_rate,
        "registered_at": opt_ts_json(status.registered_at.as_ref()),
        "last_heartbeat": opt_ts_json(status.last_heartbeat.as_ref()),
        "last_check_output": status.last_check_output,
    })
}

/// A registered service as JSON: `{"spec": .., "status": ..}`.
pub(crate) fn service_json(view: &pb::ServiceView) -> Value {
    json!({
        "spec": view.spec.as_ref().map_or(Value::Null, spec_json),
        "status": view.status.as_ref().map_or(Value::Null, status_json),
    })
}

/// What registering did, for humans.
pub(crate) fn registered_text(response: &pb::RegisterResponse) -> String {
    let id = response.service.as_ref().and_then(|v| v.spec.as_ref()).map_or("?", |s| s.id.as_str());
    format!("service {id} {}\n", register_outcome(response.outcome))
}

/// What registering did, as JSON.
pub(crate) fn registered_json(response: &pb::RegisterResponse) -> Value {
    json!({
        "outcome": register_outcome(response.outcome),
        "service": response.service.as_ref().map_or(Value::Null, service_json),
    })
}

// --- Workflow definitions -----------------------------------------------------------------

/// Definitions, one version per line.
pub(crate) fn definitions_table(definitions: &[pb::DefinitionSummary]) -> String {
    let mut table = Table::new(&["NAME", "VERSION", "STEPS", "CREATED", "DESCRIPTION"]);
    for d in definitions {
        table.row(vec![
            d.name.clone(),
            d.version.to_string(),
            d.step_count.to_string(),
            when(d.created_at.as_ref()),
            d.description.clone(),
        ]);
    }
    table.render()
}

/// A definition version's summary as JSON.
pub(crate) fn summary_json(d: &pb::DefinitionSummary) -> Value {
    json!({
        "name": d.name,
        "version": d.version,
        "description": d.description,
        "created_at": opt_ts_json(d.created_at.as_ref()),
        "content_hash": d.content_hash,
        "step_count": d.step_count,
    })
}

fn summary_pairs(d: &pb::DefinitionSummary) -> Vec<(&'static str, String)> {
    vec![
        ("name", d.name.clone()),
        ("version", d.version.to_string()),
        ("description", or_dash(Some(&d.description))),
        ("steps", d.step_count.to_string()),
        ("created", when(d.created_at.as_ref())),
        ("content hash", d.content_hash.clone()),
    ]
}

/// What applying did, for humans.
pub(crate) fn applied_text(response: &pb::ApplyDefinitionResponse) -> String {
    let d = response.definition.clone().unwrap_or_default();
    let outcome = match pb::ApplyOutcome::try_from(response.outcome) {
        Ok(pb::ApplyOutcome::Created) => "created",
        Ok(pb::ApplyOutcome::Unchanged) => "unchanged",
        _ => "applied",
    };
    format!("workflow {} version {} {outcome} ({} steps)\n", d.name, d.version, d.step_count)
}

/// What applying did, as JSON.
pub(crate) fn applied_json(response: &pb::ApplyDefinitionResponse) -> Value {
    json!({
        "outcome": apply_outcome(response.outcome),
        "definition": response.definition.as_ref().map_or(Value::Null, summary_json),
    })
}

/// One definition version with its source, for humans.
pub(crate) fn definition_text(response: &pb::GetDefinitionResponse) -> String {
    let d = response.definition.clone().unwrap_or_default();
    let mut pairs = summary_pairs(&d);
    pairs.push(("format", definition_format(response.format)));
    let mut out = details(&pairs);
    out.push('\n');
    out.push_str(&response.source);
    if !response.source.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// One definition version as JSON, with its source and the validated definition.
pub(crate) fn definition_json(response: &pb::GetDefinitionResponse) -> Value {
    json!({
        "definition": response.definition.as_ref().map_or(Value::Null, summary_json),
        "format": definition_format(response.format),
        "source": response.source,
        "validated": payload(&response.definition_json),
    })
}

// --- Executions ---------------------------------------------------------------------------

/// Executions, one per line.
pub(crate) fn executions_table(executions: &[pb::Execution]) -> String {
    let mut table = Table::new(&["ID", "WORKFLOW", "VERSION", "STATE", "CREATED", "UPDATED"]);
    for e in executions {
        table.row(vec![
            e.id.clone(),
            e.workflow.clone(),
            e.version.to_string(),
            execution_state(e.state),
            when(e.created_at.as_ref()),
            when(e.updated_at.as_ref()),
        ]);
    }
    table.render()
}

fn task_duration(task: &pb::TaskStatus) -> String {
    match (&task.started_at, &task.finished_at) {
        (Some(from), Some(to)) => millis(between_ms(from, to)),
        _ => "-".to_owned(),
    }
}

/// One execution with its tasks and output, for humans.
pub(crate) fn execution_text(e: &pb::Execution) -> String {
    let mut pairs = vec![
        ("id", e.id.clone()),
        ("workflow", format!("{} v{}", e.workflow, e.version)),
        ("state", execution_state(e.state)),
        ("created", when(e.created_at.as_ref())),
        ("updated", when(e.updated_at.as_ref())),
    ];
    if let Some(error) = &e.error {
        pairs.push(("error", error.clone()));
    }
    if !e.elided.is_empty() {
        pairs.push(("left out", format!("{} (too large for one answer; stored whole)", e.elided.join(", "))));
    }
    let mut out = details(&pairs);
    if !e.tasks.is_empty() {
        let mut table = Table::new(&["STEP", "STATE", "ATTEMPTS", "SERVICE", "TOOK", "ERROR"]);
        for task in &e.tasks {
            table.row(vec![
                task.step.clone(),
                task_state(task.state),
                task.attempts.to_string(),
                or_dash(task.service.as_deref()),
                task_duration(task),
                task.error.clone().unwrap_or_default(),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    if let Some(output) = &e.output_json {
        out.push_str("\noutput:\n");
        out.push_str(&pretty(output));
        out.push('\n');
    }
    out
}

fn task_json(task: &pb::TaskStatus) -> Value {
    json!({
        "step": task.step,
        "state": task_state(task.state),
        "attempts": task.attempts,
        "service": task.service,
        "error": task.error,
        "started_at": opt_ts_json(task.started_at.as_ref()),
        "finished_at": opt_ts_json(task.finished_at.as_ref()),
    })
}

/// One execution as JSON, its input and output as JSON values; `elided` names the fields left
/// out of the answer, only when there are any.
pub(crate) fn execution_json(e: &pb::Execution) -> Value {
    let mut value = json!({
        "id": e.id,
        "workflow": e.workflow,
        "version": e.version,
        "state": execution_state(e.state),
        "input": payload(&e.input_json),
        "output": e.output_json.as_deref().map_or(Value::Null, payload),
        "error": e.error,
        "created_at": opt_ts_json(e.created_at.as_ref()),
        "updated_at": opt_ts_json(e.updated_at.as_ref()),
        "tasks": e.tasks.iter().map(task_json).collect::<Vec<_>>(),
    });
    with_elided(&mut value, &e.elided);
    value
}

/// Adds `elided` to `object` when the server left fields out of its answer.
fn with_elided(object: &mut Value, elided: &[String]) {
    if let (false, Some(object)) = (elided.is_empty(), object.as_object_mut()) {
        object.insert("elided".to_owned(), json!(elided));
    }
}

/// A problem as JSON, RFC 7807's field names.
pub(crate) fn problem_json(problem: &pb::Problem) -> Value {
    json!({
        "type": problem.r#type,
        "status": problem.status,
        "title": problem.title,
        "detail": problem.detail,
        "instance": problem.instance,
    })
}

/// One journal event as a JSON object: `{"execution_id", "sequence", "at", "kind", ..fields}`.
pub(crate) fn event_json(event: &pb::Event) -> Value {
    use pb::event::Kind;
    let (kind, fields) = match &event.kind {
        None => ("unknown", json!({})),
        Some(Kind::Started(e)) => ("started", json!({ "input": payload(&e.input_json) })),
        Some(Kind::TaskScheduled(e)) => {
            ("task_scheduled", json!({ "step": e.step, "attempt": e.attempt, "service": e.service }))
        }
        Some(Kind::TaskSucceeded(e)) => {
            ("task_succeeded", json!({ "step": e.step, "attempt": e.attempt, "output": payload(&e.output_json) }))
        }
        Some(Kind::TaskFailed(e)) => {
            ("task_failed", json!({ "step": e.step, "attempt": e.attempt, "error": e.error, "retryable": e.retryable }))
        }
        Some(Kind::TaskSkipped(e)) => ("task_skipped", json!({ "step": e.step, "reason": e.reason })),
        Some(Kind::Paused(_)) => ("paused", json!({})),
        Some(Kind::Resumed(_)) => ("resumed", json!({})),
        Some(Kind::Cancelled(e)) => ("cancelled", json!({ "reason": e.reason })),
        Some(Kind::Completed(e)) => ("completed", json!({ "output": payload(&e.output_json) })),
        Some(Kind::Failed(e)) => {
            ("failed", json!({ "error": e.error, "problem": e.problem.as_ref().map(problem_json) }))
        }
        Some(Kind::TimerStarted(e)) => ("timer_started", json!({ "step": e.step, "due": opt_ts_json(e.due.as_ref()) })),
        Some(Kind::SignalReceived(e)) => ("signal_received", json!({ "name": e.name, "data": payload(&e.data_json) })),
        Some(Kind::SignalConsumed(e)) => {
            ("signal_consumed", json!({ "step": e.step, "signals": e.signals, "output": payload(&e.output_json) }))
        }
        Some(Kind::ChildStarted(e)) => ("child_started", json!({ "step": e.step, "child": e.child_execution_id })),
    };
    let mut object = json!({
        "execution_id": event.execution_id,
        "sequence": event.sequence,
        "at": opt_ts_json(event.at.as_ref()),
        "kind": kind,
    });
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    with_elided(&mut object, &event.elided);
    object
}

/// What starting did, for humans.
pub(crate) fn started_text(response: &pb::StartExecutionResponse) -> String {
    let e = response.execution.clone().unwrap_or_default();
    let what = if response.existing { "already started (same idempotency key)" } else { "started" };
    format!("execution {} of {} v{} {what}\n", e.id, e.workflow, e.version)
}

/// What starting did, as JSON.
pub(crate) fn started_json(response: &pb::StartExecutionResponse) -> Value {
    json!({
        "execution": response.execution.as_ref().map_or(Value::Null, execution_json),
        "existing": response.existing,
    })
}

// --- Plans --------------------------------------------------------------------------------

/// A plan for humans: its tasks by level, then its predicted quality.
pub(crate) fn plan_text(plan: &pb::Plan) -> String {
    let level_of = |task: &str| plan.levels.iter().position(|level| level.tasks.iter().any(|t| t == task));
    let mut tasks: Vec<&pb::PlanTask> = plan.tasks.iter().collect();
    tasks.sort_by_key(|task| (level_of(&task.id).unwrap_or(usize::MAX), task.id.clone()));
    let mut table = Table::new(&["LEVEL", "TASK", "SERVICE", "INPUTS", "OUTPUTS", "AFTER", "ALTERNATIVES"]);
    for task in tasks {
        table.row(vec![
            level_of(&task.id).map_or_else(|| "-".to_owned(), |l| l.to_string()),
            task.id.clone(),
            task.service.clone(),
            list(&task.inputs),
            list(&task.outputs),
            list(&task.depends_on),
            list(&task.alternatives),
        ]);
    }
    let mut out = table.render();
    if let Some(p) = &plan.predicted {
        out.push('\n');
        out.push_str(&details(&[
            ("latency", millis(p.latency_ms)),
            ("throughput", format!("{} rps", p.throughput_rps)),
            ("cost", p.cost.to_string()),
            ("availability", p.availability.to_string()),
        ]));
    }
    out
}

/// A plan as JSON.
pub(crate) fn plan_json(plan: &pb::Plan) -> Value {
    json!({
        "tasks": plan.tasks.iter().map(|t| json!({
            "id": t.id,
            "service": t.service,
            "alternatives": t.alternatives,
            "inputs": t.inputs,
            "outputs": t.outputs,
            "depends_on": t.depends_on,
        })).collect::<Vec<_>>(),
        "data_flow": plan.data_flow.iter().map(|f| json!({
            "from_task": f.from_task,
            "from_concept": f.from_concept,
            "to_task": f.to_task,
            "to_concept": f.to_concept,
        })).collect::<Vec<_>>(),
        "levels": plan.levels.iter().map(|l| l.tasks.clone()).collect::<Vec<_>>(),
        "predicted": plan.predicted.as_ref().map_or(Value::Null, |p| json!({
            "latency_ms": p.latency_ms,
            "throughput_rps": p.throughput_rps,
            "cost": p.cost,
            "availability": p.availability,
        })),
    })
}

/// What orchestrating did, for humans.
pub(crate) fn orchestrated_text(response: &pb::OrchestrateResponse) -> String {
    let mut out = response.plan.as_ref().map(plan_text).unwrap_or_default();
    out.push('\n');
    let mut pairs = vec![("execution", response.execution_id.clone()), ("state", execution_state(response.state))];
    if let Some(error) = &response.error {
        pairs.push(("error", error.clone()));
    }
    out.push_str(&details(&pairs));
    if let Some(output) = &response.output_json {
        out.push_str("\noutput:\n");
        out.push_str(&pretty(output));
        out.push('\n');
    }
    out
}

/// What orchestrating did, as JSON.
pub(crate) fn orchestrated_json(response: &pb::OrchestrateResponse) -> Value {
    json!({
        "plan": response.plan.as_ref().map_or(Value::Null, plan_json),
        "execution_id": response.execution_id,
        "state": execution_state(response.state),
        "output": response.output_json.as_deref().map_or(Value::Null, payload),
        "error": response.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    fn execution() -> pb::Execution {
        pb::Execution {
            id: "0190-aa".into(),
            workflow: "order".into(),
            version: 3,
            state: pb::ExecutionState::Completed as i32,
            input_json: r#"{"sku":"b"}"#.into(),
            output_json: Some(r#"{"tracking":"t-1"}"#.into()),
            error: None,
            created_at: ts(1_700_000_000, 123_000_000),
            updated_at: ts(1_700_000_002, 0),
            tasks: vec![
                pb::TaskStatus {
                    step: "charge".into(),
                    state: pb::TaskState::Succeeded as i32,
                    attempts: 2,
                    service: Some("payments-1".into()),
                    error: Some("http 503".into()),
                    started_at: ts(1_700_000_000, 500_000_000),
                    finished_at: ts(1_700_000_000, 512_000_000),
                    child_execution_id: None,
                    due: None,
                    problem: None,
                },
                pb::TaskStatus {
                    step: "ship".into(),
                    state: pb::TaskState::Pending as i32,
                    attempts: 0,
                    ..pb::TaskStatus::default()
                },
            ],
            parent: None,
            problem: None,
            elided: Vec::new(),
        }
    }

    #[test]
    fn enum_labels_drop_their_prefix() {
        assert_eq!(execution_state(pb::ExecutionState::Running as i32), "running");
        assert_eq!(execution_state(42), "unknown(42)");
        assert_eq!(task_state(pb::TaskState::Skipped as i32), "skipped");
        assert_eq!(register_outcome(pb::RegisterOutcome::Updated as i32), "updated");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(millis(0.42), "0.4 ms");
        assert_eq!(millis(12.4), "12 ms");
        assert_eq!(millis(1500.0), "1.50 s");
        assert_eq!(millis(-3.0), "0.0 ms");
        let from = prost_types::Timestamp { seconds: 10, nanos: 900_000_000 };
        let to = prost_types::Timestamp { seconds: 11, nanos: 100_000_000 };
        assert!((between_ms(&from, &to) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn an_execution_reads_as_a_record_a_task_table_and_its_output() {
        assert_eq!(
            execution_text(&execution()),
            "\
id:        0190-aa
workflow:  order v3
state:     completed
created:   2023-11-14T22:13:20Z
updated:   2023-11-14T22:13:22Z

STEP    STATE      ATTEMPTS  SERVICE     TOOK   ERROR
charge  succeeded  2         payments-1  12 ms  http 503
ship    pending    0         -           -

output:
{
  \"tracking\": \"t-1\"
}
"
        );
    }

    #[test]
    fn executions_as_json_carry_their_payloads_as_values() {
        let value = execution_json(&execution());
        assert_eq!(value["state"], "completed");
        assert_eq!(value["input"], json!({ "sku": "b" }));
        assert_eq!(value["output"], json!({ "tracking": "t-1" }));
        assert_eq!(value["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["tasks"][0]["service"], "payments-1");
        assert_eq!(value["tasks"][1]["service"], Value::Null);
    }

    #[test]
    fn fields_the_server_left_out_are_named() {
        assert!(execution_json(&execution()).get("elided").is_none());
        let large =
            pb::Execution { output_json: Some(String::new()), elided: vec!["output_json".into()], ..execution() };
        assert_eq!(execution_json(&large)["elided"], json!(["output_json"]));
        assert_eq!(execution_json(&large)["output"], Value::Null);
        let text = execution_text(&large);
        assert!(text.contains("left out:  output_json (too large for one answer; stored whole)\n"), "{text}");
    }

    #[test]
    fn events_as_json_are_flat_objects() {
        let event = pb::Event {
            execution_id: "e".into(),
            sequence: 4,
            at: ts(1_700_000_000, 0),
            kind: Some(pb::event::Kind::TaskFailed(pb::event::TaskFailed {
                step: "charge".into(),
                attempt: 1,
                error: "boom".into(),
                retryable: true,
                problem: None,
            })),
            elided: Vec::new(),
        };
        assert_eq!(
            event_json(&event),
            json!({
                "execution_id": "e", "sequence": 4, "at": "2023-11-14T22:13:20Z", "kind": "task_failed",
                "step": "charge", "attempt": 1, "error": "boom", "retryable": true,
            })
        );
    }

    #[test]
    fn services_list_as_a_table() {
        let view = pb::ServiceView {
            spec: Some(pb::ServiceSpec {
                id: "payments-1".into(),
                name: "Payments".into(),
                endpoint: Some(pb::Endpoint {
                    kind: Some(pb::endpoint::Kind::Http(pb::endpoint::Http { url: "http://x".into() })),
                }),
                capabilities: vec!["payment.charge".into(), "payment.refund".into()],
                ..pb::ServiceSpec::default()
            }),
            status: Some(pb::ServiceStatus {
                health: pb::Health::Passing as i32,
                in_flight: 3,
                ..pb::ServiceStatus::default()
            }),
        };
        assert_eq!(
            services_table(&[view]),
            "\
ID          NAME      PROTOCOL  HEALTH   IN-FLIGHT  CAPABILITIES                   OUTPUTS
payments-1  Payments  http      passing  3          payment.charge,payment.refund  -
"
        );
    }

    #[test]
    fn service_json_is_the_registrable_definition() {
        let spec = super::super::input::parse_service_spec(
            "{\"id\": \"a\", \"endpoint\": {\"protocol\": \"worker\", \"queue\": \"q\"}, \"capabilities\": [\"c\"]}",
            None,
        )
        .unwrap();
        let view = pb::ServiceView { spec: Some(convert::spec_to_proto(&spec)), status: None };
        let value = service_json(&view);
        assert_eq!(value["spec"]["id"], "a");
        assert_eq!(value["spec"]["endpoint"], json!({ "protocol": "worker", "queue": "q" }));
        let again: baton_core::ServiceDefinition = serde_json::from_value(value["spec"].clone()).unwrap();
        assert_eq!(&again, spec.definition());
    }

    #[test]
    fn plans_list_tasks_by_level() {
        let task = |id: &str, service: &str, after: &[&str]| pb::PlanTask {
            id: id.into(),
            service: service.into(),
            depends_on: after.iter().map(|s| (*s).to_owned()).collect(),
            ..pb::PlanTask::default()
        };
        let plan = pb::Plan {
            tasks: vec![
                task("ship", "shipping", &["pay", "reserve"]),
                task("reserve", "inventory", &[]),
                task("pay", "payments", &[]),
            ],
            data_flow: vec![],
            levels: vec![
                pb::Level { tasks: vec!["reserve".into(), "pay".into()] },
                pb::Level { tasks: vec!["ship".into()] },
            ],
            predicted: Some(pb::PredictedQos {
                latency_ms: 30.0,
                throughput_rps: 100.0,
                cost: 1.5,
                availability: 0.99,
            }),
        };
        assert_eq!(
            plan_text(&plan),
            "\
LEVEL  TASK     SERVICE    INPUTS  OUTPUTS  AFTER        ALTERNATIVES
0      pay      payments   -       -        -            -
0      reserve  inventory  -       -        -            -
1      ship     shipping   -       -        pay,reserve  -

latency:       30 ms
throughput:    100 rps
cost:          1.5
availability:  0.99
"
        );
        assert_eq!(plan_json(&plan)["levels"], json!([["reserve", "pay"], ["ship"]]));
    }
}
