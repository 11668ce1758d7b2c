//! Conversions between proto messages and `baton-core` types. Every conversion of client
//! input is checked: bad data becomes `INVALID_ARGUMENT` naming the field, never a panic.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_core::api::{DefinitionFormat, DefinitionSummary, LeasedTask};
use baton_core::directory::{Candidate, ServiceStatus, ServiceView};
use baton_core::service::DEFAULT_CAPACITY;
use baton_core::{
    AuthScheme, CheckKind, Constraints, Credentials, DataFlow, DescriptorSet, Encryption, Endpoint, Event, EventKind,
    Execution, ExecutionId, ExecutionState, Goal, GrpcMethod, Health, HealthCheck, IdempotencyKey, Objective, Plan,
    PlanTask, PredictedQos, Problem, Protocol, Qos, SecretName, SecurityProfile, SecurityRequirements,
    ServiceDefinition, ServiceId, ServiceRequirements, ServiceSpec, StepId, TaskState, TaskStatus, Timestamp,
    TlsSettings, Weights, WorkflowName,
};
use serde_json::Value;
use tonic::Status;

use crate::pb;

/// `INVALID_ARGUMENT` for `field`, saying why.
pub(crate) fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// A service id from a request field.
pub(crate) fn service_id(field: &str, text: &str) -> Result<ServiceId, Status> {
    ServiceId::new(text).map_err(|e| invalid(field, e))
}

fn enum_value<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, Status> {
    E::try_from(value).map_err(|_| invalid(field, format!("unknown enum value {value}")))
}

fn protocol(field: &str, value: i32) -> Result<Protocol, Status> {
    match enum_value::<pb::Protocol>(field, value)? {
        pb::Protocol::Http => Ok(Protocol::Http),
        pb::Protocol::Grpc => Ok(Protocol::Grpc),
        pb::Protocol::Worker => Ok(Protocol::Worker),
        pb::Protocol::Unspecified => Err(invalid(field, "must be specified")),
    }
}

fn auth_scheme(field: &str, value: i32) -> Result<AuthScheme, Status> {
    match enum_value::<pb::AuthScheme>(field, value)? {
        pb::AuthScheme::None => Ok(AuthScheme::None),
        pb::AuthScheme::ApiKey => Ok(AuthScheme::ApiKey),
        pb::AuthScheme::Bearer => Ok(AuthScheme::Bearer),
        pb::AuthScheme::Mtls => Ok(AuthScheme::Mtls),
        pb::AuthScheme::Oauth2 => Ok(AuthScheme::Oauth2),
        pb::AuthScheme::Unspecified => Err(invalid(field, "must be specified")),
    }
}

/// An encryption level; unspecified reads as none, as the proto documents.
fn encryption(field: &str, value: i32) -> Result<Encryption, Status> {
    Ok(match enum_value::<pb::Encryption>(field, value)? {
        pb::Encryption::Unspecified | pb::Encryption::None => Encryption::None,
        pb::Encryption::Tls => Encryption::Tls,
        pb::Encryption::Mtls => Encryption::Mtls,
    })
}

fn duration(field: &str, value: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    value.map(|d| Duration::try_from(d).map_err(|e| invalid(field, format!("{e}")))).transpose()
}

fn list<T>(field: &str, values: Vec<i32>, convert: fn(&str, i32) -> Result<T, Status>) -> Result<Vec<T>, Status> {
    values.into_iter().enumerate().map(|(i, v)| convert(&format!("{field}[{i}]"), v)).collect()
}

/// Checks a proto spec into a domain spec.
pub fn spec_from_proto(spec: pb::ServiceSpec) -> Result<ServiceSpec, Status> {
    let endpoint = match spec.endpoint.and_then(|e| e.kind) {
        Some(pb::endpoint::Kind::Http(h)) => Endpoint::Http { url: h.url },
        Some(pb::endpoint::Kind::Grpc(g)) => grpc_endpoint_from_proto(g)?,
        Some(pb::endpoint::Kind::Worker(w)) => Endpoint::Worker { queue: w.queue },
        None => return Err(invalid("spec.endpoint", "must be set to http, grpc or worker")),
    };
    let qos = spec.qos.map_or_else(Qos::default, |q| Qos {
        latency_p50_ms: q.latency_p50_ms,
        latency_p99_ms: q.latency_p99_ms,
        throughput_rps: q.throughput_rps,
        cost: q.cost,
        availability: q.availability.unwrap_or(1.0),
    });
    let security = match spec.security {
        None => SecurityProfile::default(),
        Some(s) => SecurityProfile {
            auth_schemes: list("spec.security.auth_schemes", s.auth_schemes, auth_scheme)?,
            encryption: encryption("spec.security.encryption", s.encryption)?,
            compliance: s.compliance,
        },
    };
    let health_check = match spec.health_check {
        None => HealthCheck::default(),
        Some(h) => health_check_from_proto(h)?,
    };
    let credentials = spec.credentials.map(credentials_from_proto).transpose()?;
    let tls = match spec.tls {
        None => TlsSettings::default(),
        Some(t) => {
            let name = |field: &str, text: String| {
                (!text.is_empty())
                    .then(|| SecretName::new(&text).map_err(|e| invalid(field, e.to_string())))
                    .transpose()
            };
            TlsSettings {
                ca: name("spec.tls.ca", t.ca)?,
                client_cert: name("spec.tls.client_cert", t.client_cert)?,
                client_key: name("spec.tls.client_key", t.client_key)?,
            }
        }
    };
    let mut definition = ServiceDefinition {
        id: spec.id,
        name: spec.name,
        version: spec.version,
        endpoint,
        capabilities: spec.capabilities,
        inputs: spec.inputs,
        outputs: spec.outputs,
        formats: spec.formats,
        qos,
        security,
        capacity: spec.capacity,
        health_check,
        labels: spec.labels.into_iter().collect(),
        credentials,
        tls,
    };
    if definition.capacity == 0 {
        definition.capacity = DEFAULT_CAPACITY;
    }
    ServiceSpec::new(definition).map_err(|e| Status::invalid_argument(format!("spec: {e}")))
}

fn grpc_endpoint_from_proto(g: pb::endpoint::Grpc) -> Result<Endpoint, Status> {
    let method = (!g.method.is_empty())
        .then(|| {
            GrpcMethod::parse("spec.endpoint.method", &g.method).map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .transpose()?;
    let descriptor_set = if g.descriptor_set.is_empty() {
        None
    } else {
        // Decoded here so that a registration with a broken set is refused, not its calls.
        <prost_types::FileDescriptorSet as prost::Message>::decode(g.descriptor_set.as_slice())
            .map_err(|e| invalid("spec.endpoint.descriptor_set", format!("is not a FileDescriptorSet: {e}")))?;
        Some(DescriptorSet::new(&g.descriptor_set))
    };
    Ok(Endpoint::Grpc { url: g.url, method, descriptor_set })
}

fn credentials_from_proto(c: pb::Credentials) -> Result<Credentials, Status> {
    let secret = |text: &str| SecretName::new(text).map_err(|e| invalid("spec.credentials.secret", e.to_string()));
    Ok(match c.kind {
        Some(pb::credentials::Kind::Bearer(b)) => Credentials::Bearer { secret: secret(&b.secret)? },
        Some(pb::credentials::Kind::Basic(b)) => {
            Credentials::Basic { username: b.username, secret: secret(&b.secret)? }
        }
        Some(pb::credentials::Kind::Header(h)) => Credentials::Header { header: h.header, secret: secret(&h.secret)? },
        None => return Err(invalid("spec.credentials", "must be set to bearer, basic or header")),
    })
}

fn credentials_to_proto(c: &Credentials) -> pb::Credentials {
    let kind = match c {
        Credentials::Bearer { secret } => {
            pb::credentials::Kind::Bearer(pb::credentials::Bearer { secret: secret.to_string() })
        }
        Credentials::Basic { username, secret } => pb::credentials::Kind::Basic(pb::credentials::Basic {
            username: username.clone(),
            secret: secret.to_string(),
        }),
        Credentials::Header { header, secret } => pb::credentials::Kind::Header(pb::credentials::Header {
            header: header.clone(),
            secret: secret.to_string(),
        }),
    };
    pb::Credentials { kind: Some(kind) }
}

fn health_check_from_proto(h: pb::HealthCheck) -> Result<HealthCheck, Status> {
    let defaults = HealthCheck::default();
    let kind = match h.kind {
        None | Some(pb::health_check::Kind::None(_)) => CheckKind::None,
        Some(pb::health_check::Kind::Ttl(t)) => CheckKind::Ttl {
            ttl: duration("spec.health_check.ttl.ttl", t.ttl)?
                .ok_or_else(|| invalid("spec.health_check.ttl.ttl", "must be set"))?,
        },
        Some(pb::health_check::Kind::Http(x)) => CheckKind::Http { url: x.url },
        Some(pb::health_check::Kind::Grpc(g)) => CheckKind::Grpc { url: g.url, service: g.service },
    };
    let nonzero = |v: u32, default: u32| if v == 0 { default } else { v };
    Ok(HealthCheck {
        kind,
        interval: duration("spec.health_check.interval", h.interval)?.unwrap_or(defaults.interval),
        timeout: duration("spec.health_check.timeout", h.timeout)?.unwrap_or(defaults.timeout),
        healthy_threshold: nonzero(h.healthy_threshold, defaults.healthy_threshold),
        unhealthy_threshold: nonzero(h.unhealthy_threshold, defaults.unhealthy_threshold),
        deregister_after: duration("spec.health_check.deregister_after", h.deregister_after)?,
    })
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

fn proto_protocol(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Worker => pb::Protocol::Worker,
    }
}

fn proto_auth(a: AuthScheme) -> pb::AuthScheme {
    match a {
        AuthScheme::None => pb::AuthScheme::None,
        AuthScheme::ApiKey => pb::AuthScheme::ApiKey,
        AuthScheme::Bearer => pb::AuthScheme::Bearer,
        AuthScheme::Mtls => pb::AuthScheme::Mtls,
        AuthScheme::Oauth2 => pb::AuthScheme::Oauth2,
    }
}

fn proto_encryption(e: Encryption) -> pb::Encryption {
    match e {
        Encryption::None => pb::Encryption::None,
        Encryption::Tls => pb::Encryption::Tls,
        Encryption::Mtls => pb::Encryption::Mtls,
    }
}

/// A domain spec as proto.
pub fn spec_to_proto(spec: &ServiceSpec) -> pb::ServiceSpec {
    let endpoint = match spec.endpoint() {
        Endpoint::Http { url } => pb::endpoint::Kind::Http(pb::endpoint::Http { url: url.clone() }),
        Endpoint::Grpc { url, method, descriptor_set } => pb::endpoint::Kind::Grpc(pb::endpoint::Grpc {
            url: url.clone(),
            method: method.as_ref().map(ToString::to_string).unwrap_or_default(),
            descriptor_set: descriptor_set.as_ref().map(|set| set.bytes().to_vec()).unwrap_or_default(),
        }),
        Endpoint::Worker { queue } => pb::endpoint::Kind::Worker(pb::endpoint::Worker { queue: queue.clone() }),
    };
    let qos = spec.qos();
    let check = spec.health_check();
    let kind = match &check.kind {
        CheckKind::None => pb::health_check::Kind::None(pb::health_check::NoCheck {}),
        CheckKind::Ttl { ttl } => {
            pb::health_check::Kind::Ttl(pb::health_check::Ttl { ttl: Some(proto_duration(*ttl)) })
        }
        CheckKind::Http { url } => pb::health_check::Kind::Http(pb::health_check::Http { url: url.clone() }),
        CheckKind::Grpc { url, service } => {
            pb::health_check::Kind::Grpc(pb::health_check::Grpc { url: url.clone(), service: service.clone() })
        }
    };
    pb::ServiceSpec {
        id: spec.id().to_string(),
        name: spec.name().to_owned(),
        version: spec.version().to_owned(),
        endpoint: Some(pb::Endpoint { kind: Some(endpoint) }),
        capabilities: spec.capabilities().to_vec(),
        inputs: spec.inputs().to_vec(),
        outputs: spec.outputs().to_vec(),
        formats: spec.formats().to_vec(),
        qos: Some(pb::Qos {
            latency_p50_ms: qos.latency_p50_ms,
            latency_p99_ms: qos.latency_p99_ms,
            throughput_rps: qos.throughput_rps,
            cost: qos.cost,
            availability: Some(qos.availability),
        }),
        security: Some(pb::SecurityProfile {
            auth_schemes: spec.security().auth_schemes.iter().map(|&a| proto_auth(a) as i32).collect(),
            encryption: proto_encryption(spec.security().encryption) as i32,
            compliance: spec.security().compliance.clone(),
        }),
        capacity: spec.capacity(),
        health_check: Some(pb::HealthCheck {
            kind: Some(kind),
            interval: Some(proto_duration(check.interval)),
            timeout: Some(proto_duration(check.timeout)),
            healthy_threshold: check.healthy_threshold,
            unhealthy_threshold: check.unhealthy_threshold,
            deregister_after: check.deregister_after.map(proto_duration),
        }),
        labels: spec.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        credentials: spec.credentials().map(credentials_to_proto),
        tls: (!spec.tls().is_empty()).then(|| {
            let name = |n: &Option<SecretName>| n.as_ref().map(ToString::to_string).unwrap_or_default();
            pb::TlsSettings {
                ca: name(&spec.tls().ca),
                client_cert: name(&spec.tls().client_cert),
                client_key: name(&spec.tls().client_key),
            }
        }),
    }
}

fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos().min(999_999_999) as i32 }
}

/// A live status as proto.
pub fn status_to_proto(status: &ServiceStatus) -> pb::ServiceStatus {
    let health = match status.health {
        Health::Unknown => pb::Health::Unknown,
        Health::Passing => pb::Health::Passing,
        Health::Critical => pb::Health::Critical,
    };
    pb::ServiceStatus {
        health: health as i32,
        in_flight: status.in_flight,
        success_rate: status.success_rate,
        registered_at: Some(timestamp(status.registered_at)),
        last_heartbeat: status.last_heartbeat.map(timestamp),
        last_check_output: status.last_check_output.clone(),
    }
}

/// A service with its status as proto.
pub fn view_to_proto(view: &ServiceView) -> pb::ServiceView {
    pb::ServiceView { spec: Some(spec_to_proto(&view.spec)), status: Some(status_to_proto(&view.status)) }
}

/// A ranked candidate as proto.
pub fn candidate_to_proto(candidate: &Candidate) -> pb::Candidate {
    pb::Candidate { service: Some(view_to_proto(&candidate.service)), score: candidate.score }
}

/// Checks proto requirements into domain requirements (their own rules are checked by the
/// directory, which names the field).
pub fn requirements_from_proto(req: pb::ServiceRequirements) -> Result<ServiceRequirements, Status> {
    let security = security_requirements_from_proto("requirements.security", req.security)?;
    Ok(ServiceRequirements {
        capabilities: req.capabilities,
        protocols: list("requirements.protocols", req.protocols, protocol)?,
        formats: req.formats,
        max_latency_p99_ms: req.max_latency_p99_ms,
        min_throughput_rps: req.min_throughput_rps,
        max_cost: req.max_cost,
        min_availability: req.min_availability,
        security,
        labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

/// Domain requirements as proto (for clients).
pub fn requirements_to_proto(req: &ServiceRequirements) -> pb::ServiceRequirements {
    pb::ServiceRequirements {
        capabilities: req.capabilities.clone(),
        protocols: req.protocols.iter().map(|&p| proto_protocol(p) as i32).collect(),
        formats: req.formats.clone(),
        max_latency_p99_ms: req.max_latency_p99_ms,
        min_throughput_rps: req.min_throughput_rps,
        max_cost: req.max_cost,
        min_availability: req.min_availability,
        security: Some(security_requirements_to_proto(&req.security)),
        labels: req.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Security requirements from the proto at `field`; absent reads as none.
fn security_requirements_from_proto(
    field: &str,
    security: Option<pb::SecurityRequirements>,
) -> Result<SecurityRequirements, Status> {
    let Some(s) = security else { return Ok(SecurityRequirements::default()) };
    Ok(SecurityRequirements {
        auth_schemes: list(&format!("{field}.auth_schemes"), s.auth_schemes, auth_scheme)?,
        min_encryption: s.min_encryption.map(|e| encryption(&format!("{field}.min_encryption"), e)).transpose()?,
        compliance: s.compliance,
    })
}

fn security_requirements_to_proto(security: &SecurityRequirements) -> pb::SecurityRequirements {
    pb::SecurityRequirements {
        auth_schemes: security.auth_schemes.iter().map(|&a| proto_auth(a) as i32).collect(),
        min_encryption: security.min_encryption.map(|e| proto_encryption(e) as i32),
        compliance: security.compliance.clone(),
    }
}

fn service_ids(field: &str, ids: Vec<String>) -> Result<Vec<ServiceId>, Status> {
    ids.iter().enumerate().map(|(i, id)| service_id(&format!("{field}[{i}]"), id)).collect()
}

/// An objective; unspecified reads as latency, as the proto documents.
fn objective(field: &str, value: i32) -> Result<Objective, Status> {
    Ok(match enum_value::<pb::Objective>(field, value)? {
        pb::Objective::Unspecified | pb::Objective::Latency => Objective::Latency,
        pb::Objective::Throughput => Objective::Throughput,
        pb::Objective::Cost => Objective::Cost,
        pb::Objective::Weighted => Objective::Weighted,
    })
}

/// Checks a proto goal (the `goal` field of a request) into a domain goal. The planner checks
/// the rest of its rules (a wanted concept, bounds in range) and names the field.
pub fn goal_from_proto(goal: pb::Goal) -> Result<Goal, Status> {
    let constraints = match goal.constraints {
        None => Constraints::default(),
        Some(c) => Constraints {
            max_latency_ms: c.max_latency_ms,
            max_cost: c.max_cost,
            min_availability: c.min_availability,
            security: security_requirements_from_proto("goal.constraints.security", c.security)?,
            include_services: service_ids("goal.constraints.include_services", c.include_services)?,
            exclude_services: service_ids("goal.constraints.exclude_services", c.exclude_services)?,
            protocols: list("goal.constraints.protocols", c.protocols, protocol)?,
            max_services: c.max_services,
        },
    };
    let weights = match goal.weights {
        None => Weights::default(),
        Some(w) => {
            let weights =
                Weights { latency: w.latency, throughput: w.throughput, cost: w.cost, availability: w.availability };
            for (name, value) in [
                ("latency", w.latency),
                ("throughput", w.throughput),
                ("cost", w.cost),
                ("availability", w.availability),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(invalid(
                        &format!("goal.weights.{name}"),
                        format!("{value} is not a finite number >= 0"),
                    ));
                }
            }
            weights
        }
    };
    Ok(Goal {
        provided: goal.provided,
        wanted: goal.wanted,
        constraints,
        objective: objective("goal.objective", goal.objective)?,
        weights,
    })
}

/// A domain goal as proto (for clients).
pub fn goal_to_proto(goal: &Goal) -> pb::Goal {
    let c = &goal.constraints;
    let objective = match goal.objective {
        Objective::Latency => pb::Objective::Latency,
        Objective::Throughput => pb::Objective::Throughput,
        Objective::Cost => pb::Objective::Cost,
        Objective::Weighted => pb::Objective::Weighted,
    };
    let w = goal.weights;
    pb::Goal {
        provided: goal.provided.clone(),
        wanted: goal.wanted.clone(),
        constraints: Some(pb::Constraints {
            max_latency_ms: c.max_latency_ms,
            max_cost: c.max_cost,
            min_availability: c.min_availability,
            security: Some(security_requirements_to_proto(&c.security)),
            include_services: c.include_services.iter().map(ToString::to_string).collect(),
            exclude_services: c.exclude_services.iter().map(ToString::to_string).collect(),
            protocols: c.protocols.iter().map(|&p| proto_protocol(p) as i32).collect(),
            max_services: c.max_services,
        }),
        objective: objective as i32,
        weights: Some(pb::Weights {
            latency: w.latency,
            throughput: w.throughput,
            cost: w.cost,
            availability: w.availability,
        }),
    }
}

fn task_to_proto(task: &PlanTask) -> pb::PlanTask {
    pb::PlanTask {
        id: task.id.to_string(),
        service: task.service.to_string(),
        alternatives: task.alternatives.iter().map(ToString::to_string).collect(),
        inputs: task.inputs.clone(),
        outputs: task.outputs.clone(),
        depends_on: task.depends_on.iter().map(ToString::to_string).collect(),
    }
}

fn data_flow_to_proto(edge: &DataFlow) -> pb::DataFlow {
    pb::DataFlow {
        from_task: edge.from.as_ref().map(ToString::to_string).unwrap_or_default(),
        from_concept: edge.from_concept.clone(),
        to_task: edge.to.to_string(),
        to_concept: edge.to_concept.clone(),
    }
}

fn predicted_to_proto(p: &PredictedQos) -> pb::PredictedQos {
    pb::PredictedQos {
        latency_ms: p.latency_ms,
        throughput_rps: p.throughput_rps,
        cost: p.cost,
        availability: p.availability,
    }
}

/// A plan as proto.
pub fn plan_to_proto(plan: &Plan) -> pb::Plan {
    pb::Plan {
        tasks: plan.tasks.iter().map(task_to_proto).collect(),
        data_flow: plan.data_flow.iter().map(data_flow_to_proto).collect(),
        levels: plan
            .levels
            .iter()
            .map(|level| pb::Level { tasks: level.iter().map(ToString::to_string).collect() })
            .collect(),
        predicted: Some(predicted_to_proto(&plan.predicted)),
    }
}

// ---------------------------------------------------------------------------------------------
// Workflows, executions, events and worker tasks.

/// An execution id from a request field.
pub(crate) fn execution_id(field: &str, text: &str) -> Result<ExecutionId, Status> {
    if text.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    text.parse::<ExecutionId>().map_err(|e| invalid(field, e))
}

/// A workflow name from a request field.
pub(crate) fn workflow_name(field: &str, text: &str) -> Result<WorkflowName, Status> {
    WorkflowName::new(text).map_err(|e| invalid(field, e))
}

/// An idempotency key from a request field, under core's rule; the message names the field.
pub(crate) fn idempotency_key(text: &str) -> Result<IdempotencyKey, Status> {
    IdempotencyKey::new(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// JSON text from a request field; empty text reads as `empty`.
pub(crate) fn json_field(field: &str, text: &str, empty: Value) -> Result<Value, Status> {
    if text.trim().is_empty() {
        return Ok(empty);
    }
    serde_json::from_str(text).map_err(|e| invalid(field, format!("not valid JSON: {e}")))
}

/// A point in time from a request field.
pub(crate) fn timestamp_from_proto(field: &str, t: prost_types::Timestamp) -> Result<Timestamp, Status> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| Timestamp::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| invalid(field, format!("{}s {}ns is not a valid time", t.seconds, t.nanos)))
}

/// An execution state as proto.
pub fn execution_state_to_proto(state: ExecutionState) -> pb::ExecutionState {
    match state {
        ExecutionState::Created => pb::ExecutionState::Created,
        ExecutionState::Running => pb::ExecutionState::Running,
        ExecutionState::Paused => pb::ExecutionState::Paused,
        ExecutionState::Completed => pb::ExecutionState::Completed,
        ExecutionState::Failed => pb::ExecutionState::Failed,
        ExecutionState::Cancelled => pb::ExecutionState::Cancelled,
    }
}

/// An execution state from a request field; unspecified is refused.
pub fn execution_state_from_proto(field: &str, value: i32) -> Result<ExecutionState, Status> {
    Ok(match enum_value::<pb::ExecutionState>(field, value)? {
        pb::ExecutionState::Created => ExecutionState::Created,
        pb::ExecutionState::Running => ExecutionState::Running,
        pb::ExecutionState::Paused => ExecutionState::Paused,
        pb::ExecutionState::Completed => ExecutionState::Completed,
        pb::ExecutionState::Failed => ExecutionState::Failed,
        pb::ExecutionState::Cancelled => ExecutionState::Cancelled,
        pb::ExecutionState::Unspecified => return Err(invalid(field, "must be specified")),
    })
}

fn task_state_to_proto(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Scheduled => pb::TaskState::Scheduled,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Skipped => pb::TaskState::Skipped,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::Waiting => pb::TaskState::Waiting,
    }
}

/// A problem as proto.
pub fn problem_to_proto(problem: &Problem) -> pb::Problem {
    pb::Problem {
        r#type: problem.kind.clone(),
        status: u32::from(problem.status),
        title: problem.title.clone(),
        detail: problem.detail.clone(),
        instance: problem.instance.clone(),
    }
}

fn task_status_to_proto(step: &StepId, status: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        step: step.to_string(),
        state: task_state_to_proto(status.state) as i32,
        attempts: status.attempts,
        service: status.service.as_ref().map(ToString::to_string),
        error: status.error.clone(),
        started_at: status.started_at.map(timestamp),
        finished_at: status.finished_at.map(timestamp),
        problem: status.problem.as_ref().map(problem_to_proto),
        child_execution_id: status.child.map(|c| c.to_string()),
        due: status.due.map(timestamp),
    }
}

/// An execution as proto, with its tasks ordered by step id.
pub fn execution_to_proto(execution: &Execution) -> pb::Execution {
    pb::Execution {
        tasks: execution.tasks.iter().map(|(step, status)| task_status_to_proto(step, status)).collect(),
        ..execution_summary_to_proto(execution)
    }
}

/// An execution as proto without its tasks, as listings return it.
pub fn execution_summary_to_proto(execution: &Execution) -> pb::Execution {
    pb::Execution {
        id: execution.id.to_string(),
        workflow: execution.workflow.to_string(),
        version: execution.version,
        state: execution_state_to_proto(execution.state) as i32,
        input_json: execution.input.to_string(),
        output_json: execution.output.as_ref().map(ToString::to_string),
        error: execution.error.clone(),
        created_at: Some(timestamp(execution.created_at)),
        updated_at: Some(timestamp(execution.updated_at)),
        tasks: Vec::new(),
        problem: execution.problem.as_ref().map(problem_to_proto),
        parent: execution
            .parent
            .as_ref()
            .map(|p| pb::ParentLink { execution_id: p.execution.to_string(), step: p.step.to_string() }),
        elided: Vec::new(),
    }
}

/// A journal event as proto.
pub fn event_to_proto(event: &Event) -> pb::Event {
    use pb::event;
    let kind = match &event.kind {
        EventKind::Started { input } => event::Kind::Started(event::Started { input_json: input.to_string() }),
        EventKind::TaskScheduled { step, attempt, service } => event::Kind::TaskScheduled(event::TaskScheduled {
            step: step.to_string(),
            attempt: *attempt,
            service: service.to_string(),
        }),
        EventKind::TaskSucceeded { step, attempt, output, context } => {
            event::Kind::TaskSucceeded(event::TaskSucceeded {
                step: step.to_string(),
                attempt: *attempt,
                output_json: output.to_string(),
                context_json: context.as_ref().map(ToString::to_string),
            })
        }
        EventKind::TaskFailed { step, attempt, error, retryable, problem } => {
            event::Kind::TaskFailed(event::TaskFailed {
                step: step.to_string(),
                attempt: *attempt,
                error: error.clone(),
                retryable: *retryable,
                problem: problem.as_ref().map(problem_to_proto),
            })
        }
        EventKind::TaskSkipped { step, reason } => {
            event::Kind::TaskSkipped(event::TaskSkipped { step: step.to_string(), reason: reason.clone() })
        }
        EventKind::Paused => event::Kind::Paused(event::Paused {}),
        EventKind::Resumed => event::Kind::Resumed(event::Resumed {}),
        EventKind::Cancelled { reason } => event::Kind::Cancelled(event::Cancelled { reason: reason.clone() }),
        EventKind::Completed { output } => event::Kind::Completed(event::Completed { output_json: output.to_string() }),
        EventKind::Failed { error, problem } => {
            event::Kind::Failed(event::Failed { error: error.clone(), problem: problem.as_ref().map(problem_to_proto) })
        }
        EventKind::TimerStarted { step, due } => {
            event::Kind::TimerStarted(event::TimerStarted { step: step.to_string(), due: Some(timestamp(*due)) })
        }
        EventKind::SignalReceived { name, data } => {
            event::Kind::SignalReceived(event::SignalReceived { name: name.clone(), data_json: data.to_string() })
        }
        EventKind::SignalConsumed { step, signals, output } => event::Kind::SignalConsumed(event::SignalConsumed {
            step: step.to_string(),
            signals: signals.clone(),
            output_json: output.to_string(),
        }),
        EventKind::ChildStarted { step, child } => event::Kind::ChildStarted(event::ChildStarted {
            step: step.to_string(),
            child_execution_id: child.to_string(),
        }),
    };
    pb::Event {
        execution_id: event.execution.to_string(),
        sequence: event.sequence,
        at: Some(timestamp(event.at)),
        kind: Some(kind),
        elided: Vec::new(),
    }
}

/// A definition format from a request field; unspecified reads as detect.
pub fn definition_format_from_proto(field: &str, value: i32) -> Result<DefinitionFormat, Status> {
    Ok(match enum_value::<pb::DefinitionFormat>(field, value)? {
        pb::DefinitionFormat::Unspecified => DefinitionFormat::Auto,
        pb::DefinitionFormat::Yaml => DefinitionFormat::Yaml,
        pb::DefinitionFormat::Json => DefinitionFormat::Json,
    })
}

/// A definition format as proto (detect is never returned: it reads as unspecified).
pub fn definition_format_to_proto(format: DefinitionFormat) -> pb::DefinitionFormat {
    match format {
        DefinitionFormat::Auto => pb::DefinitionFormat::Unspecified,
        DefinitionFormat::Yaml => pb::DefinitionFormat::Yaml,
        DefinitionFormat::Json => pb::DefinitionFormat::Json,
    }
}

/// A definition version's summary as proto.
pub fn definition_summary_to_proto(summary: &DefinitionSummary) -> pb::DefinitionSummary {
    pb::DefinitionSummary {
        name: summary.name.to_string(),
        version: summary.version,
        description: summary.description.clone(),
        created_at: Some(timestamp(summary.created_at)),
        content_hash: summary.content_hash.clone(),
        step_count: summary.step_count,
    }
}

/// A leased task as proto.
pub fn leased_task_to_proto(task: &LeasedTask) -> pb::Task {
    pb::Task {
        task_token: task.token.to_string(),
        queue: task.queue.clone(),
        service: task.service.to_string(),
        execution_id: task.execution.to_string(),
        step: task.step.to_string(),
        attempt: task.attempt,
        idempotency_key: task.idempotency_key.clone(),
        input_json: task.input.to_string(),
        lease_expires_at: Some(timestamp(task.lease_expires_at)),
        deadline: task.deadline.map(timestamp),
    }
}

/// A point in time as proto.
pub fn timestamp_to_proto(t: Timestamp) -> prost_types::Timestamp {
    timestamp(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec::from_json(
            r#"{"id":"pay","version":"2.1","endpoint":{"protocol":"grpc","url":"http://127.0.0.1:9000"},
                "capabilities":["charge"],"inputs":["card"],"outputs":["receipt"],"formats":["json"],
                "qos":{"latency_p50_ms":5,"latency_p99_ms":20,"throughput_rps":100,"cost":0.5,"availability":0.99},
                "security":{"auth_schemes":["bearer","mtls"],"encryption":"tls","compliance":["pci-dss"]},
                "capacity":7,
                "health_check":{"kind":"grpc","url":"http://127.0.0.1:9000","service":"pay","deregister_after":"5m"},
                "labels":{"team":"payments"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn specs_and_requirements_round_trip() {
        let spec = spec();
        assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);
        let req: ServiceRequirements = serde_json::from_str(
            r#"{"capabilities":["charge"],"protocols":["grpc"],"max_latency_p99_ms":30,
                "security":{"auth_schemes":["mtls"],"min_encryption":"tls","compliance":["pci-dss"]},
                "labels":{"team":"payments"}}"#,
        )
        .unwrap();
        assert_eq!(requirements_from_proto(requirements_to_proto(&req)).unwrap(), req);
    }

    fn check(patch: impl FnOnce(&mut pb::ServiceSpec), expected: &str) {
        let mut proto = spec_to_proto(&spec());
        patch(&mut proto);
        let status = spec_from_proto(proto).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{:?} should contain {expected:?}", status.message());
    }

    #[test]
    fn bad_specs_are_invalid_arguments_naming_the_field() {
        check(|s| s.endpoint = None, "spec.endpoint: must be set");
        check(|s| s.id = "Pay".into(), r#"invalid id "Pay""#);
        check(|s| s.qos.as_mut().unwrap().availability = Some(2.0), "qos.availability");
        check(|s| s.qos.as_mut().unwrap().latency_p50_ms = f64::NAN, "qos.latency_p50_ms");
        check(
            |s| s.security.as_mut().unwrap().auth_schemes = vec![99],
            "spec.security.auth_schemes[0]: unknown enum value 99",
        );
        check(
            |s| s.security.as_mut().unwrap().auth_schemes = vec![0],
            "spec.security.auth_schemes[0]: must be specified",
        );
        check(
            |s| s.health_check.as_mut().unwrap().interval = Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            "spec.health_check.interval",
        );
        check(
            |s| {
                s.health_check.as_mut().unwrap().kind =
                    Some(pb::health_check::Kind::Ttl(pb::health_check::Ttl { ttl: None }))
            },
            "spec.health_check.ttl.ttl: must be set",
        );
        check(|s| s.capabilities = vec!["a b".into()], "capabilities[0]");
    }

    #[test]
    fn proto_defaults_read_as_the_domain_defaults() {
        let proto = pb::ServiceSpec {
            id: "x".into(),
            endpoint: Some(pb::Endpoint {
                kind: Some(pb::endpoint::Kind::Worker(pb::endpoint::Worker { queue: "q".into() })),
            }),
            outputs: vec!["thing".into()],
            ..Default::default()
        };
        let spec = spec_from_proto(proto).unwrap();
        assert_eq!(spec.capacity(), 64);
        assert_eq!(spec.qos().availability, 1.0);
        assert_eq!(spec.health_check(), &HealthCheck::default());
        let bad = pb::ServiceRequirements { protocols: vec![0], ..Default::default() };
        assert!(requirements_from_proto(bad).unwrap_err().message().contains("requirements.protocols[0]"));
    }

    #[test]
    fn goals_round_trip_and_defaults_read_as_the_domain_defaults() {
        let goal: Goal = serde_json::from_str(
            r#"{"provided":["order"],"wanted":["receipt"],"objective":"weighted",
                "weights":{"latency":1,"throughput":0.5,"cost":2,"availability":0},
                "constraints":{"max_latency_ms":100,"min_availability":0.9,"max_services":3,
                  "security":{"auth_schemes":["mtls"],"min_encryption":"tls","compliance":["pci-dss"]},
                  "include_services":["pay"],"exclude_services":["slow"],"protocols":["grpc","worker"]}}"#,
        )
        .unwrap();
        assert_eq!(goal_from_proto(goal_to_proto(&goal)).unwrap(), goal);
        let bare = pb::Goal { wanted: vec!["receipt".into()], ..Default::default() };
        let expected = Goal { wanted: vec!["receipt".into()], ..Goal::default() };
        assert_eq!(goal_from_proto(bare).unwrap(), expected);
    }

    fn check_goal(patch: impl FnOnce(&mut pb::Goal), expected: &str) {
        let mut proto = pb::Goal {
            wanted: vec!["receipt".into()],
            constraints: Some(pb::Constraints::default()),
            weights: Some(pb::Weights::default()),
            ..Default::default()
        };
        patch(&mut proto);
        let status = goal_from_proto(proto).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{:?} should contain {expected:?}", status.message());
    }

    #[test]
    fn bad_goals_are_invalid_arguments_naming_the_field() {
        check_goal(|g| g.objective = 9, "goal.objective: unknown enum value 9");
        check_goal(|g| g.constraints.as_mut().unwrap().protocols = vec![1, 0], "goal.constraints.protocols[1]");
        check_goal(
            |g| g.constraints.as_mut().unwrap().include_services = vec!["Pay".into()],
            "goal.constraints.include_services[0]",
        );
        check_goal(
            |g| g.constraints.as_mut().unwrap().exclude_services = vec!["ok".into(), String::new()],
            "goal.constraints.exclude_services[1]",
        );
        check_goal(
            |g| {
                g.constraints.as_mut().unwrap().security =
                    Some(pb::SecurityRequirements { min_encryption: Some(7), ..Default::default() })
            },
            "goal.constraints.security.min_encryption",
        );
        check_goal(|g| g.weights.as_mut().unwrap().cost = f64::NAN, "goal.weights.cost");
        check_goal(|g| g.weights.as_mut().unwrap().latency = -1.0, "goal.weights.latency");
    }

    #[test]
    fn plans_convert_field_by_field() {
        let plan: Plan = serde_json::from_str(
            r#"{"tasks":[
                  {"id":"bill","service":"bill","alternatives":["bill-2"],"inputs":["order"],"outputs":["invoice"]},
                  {"id":"file","service":"file","inputs":["document"],"outputs":["receipt"],"depends_on":["bill"]}],
                "data_flow":[
                  {"from":null,"from_concept":"order","to":"bill","to_concept":"order"},
                  {"from":"bill","from_concept":"invoice","to":"file","to_concept":"document"}],
                "levels":[["bill"],["file"]],
                "predicted":{"latency_ms":30,"throughput_rps":50,"cost":2,"availability":0.98}}"#,
        )
        .unwrap();
        let proto = plan_to_proto(&plan);
        assert_eq!(proto.tasks[0].alternatives, ["bill-2"]);
        assert_eq!(proto.tasks[1].depends_on, ["bill"]);
        assert_eq!((proto.data_flow[0].from_task.as_str(), proto.data_flow[1].from_task.as_str()), ("", "bill"));
        assert_eq!(proto.data_flow[1].to_concept, "document");
        let levels: Vec<&[String]> = proto.levels.iter().map(|l| l.tasks.as_slice()).collect();
        assert_eq!(levels, [["bill"], ["file"]]);
        let predicted = proto.predicted.unwrap();
        assert_eq!((predicted.latency_ms, predicted.throughput_rps, predicted.availability), (30.0, 50.0, 0.98));
    }
}
