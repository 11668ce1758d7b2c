//! HTTP requests a workflow writes itself (the Serverless Workflow's `call: http` and
//! `call: openapi`), as opposed to calls of registered services: the request built from a
//! call's rendered parts, the task's output read from the response, and the attempts.
//!
//! The request goes out through [`Invoker::send`], so the server's HTTP client, its limits
//! and its origin overrides ([`crate::HttpConfig::origins`]) apply. A status outside 2xx is a
//! failure of class `http_<status>` (408, 429 and 5xx retryable), which becomes a
//! `communication` problem with that status.

use std::future::Future;

use base64::Engine as _;
use baton_core::program::HttpOutput;
use baton_core::{EventKind, ExecutionId, Problem, ServiceId, StepId, Template};
use serde_json::{Map, Value, json};

use crate::invoker::{CallTrace, Failure, Invoker};
use crate::run::{Shared, TaskError};

/// The most bytes of a failed response's body a failure quotes.
const ERROR_QUOTE: usize = 200;

/// One HTTP request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL, query included.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Option<Vec<u8>>,
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Credentials rendered from a call's templates.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) basic: Option<(Value, Value)>,
    pub(crate) bearer: Option<Value>,
}

impl Credentials {
    /// The `Authorization` header they make, if any.
    fn header(&self) -> Result<Option<String>, Problem> {
        if let Some((user, password)) = &self.basic {
            let (Some(user), Some(password)) = (user.as_str(), password.as_str()) else {
                return Err(Problem::standard("authentication", "basic credentials must render to text"));
            };
            if user.contains(':') {
                return Err(Problem::standard("authentication", "a basic username must not contain ':'"));
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            return Ok(Some(format!("Basic {encoded}")));
        }
        match &self.bearer {
            Some(Value::String(token)) => Ok(Some(format!("Bearer {token}"))),
            Some(_) => Err(Problem::standard("authentication", "a bearer token must render to text")),
            None => Ok(None),
        }
    }
}

impl Request {
    /// A request of `method` to `url` (query parameters appended to it) with `headers`, a
    /// JSON `body` (sent as is when it is text and a content type was given) and the
    /// credentials' `Authorization`. Parts rendered to the wrong shape are `validation`
    /// problems naming the part.
    pub(crate) fn build(
        method: &str,
        url: &Value,
        query: Option<&Value>,
        headers: Option<&Value>,
        body: Option<Value>,
        credentials: &Credentials,
    ) -> Result<Self, Problem> {
        let invalid = |what: String| Problem::standard("validation", what);
        let Some(text) = url.as_str() else { return Err(invalid(format!("the endpoint gave {url}, not a URL"))) };
        let mut parsed =
            url::Url::parse(text).map_err(|e| invalid(format!("the endpoint {text:?} is not a URL: {e}")))?;
        if let Some(query) = query {
            let pairs = pairs(query).ok_or_else(|| invalid(format!("query gave {query}, not an object")))?;
            if !pairs.is_empty() {
                let mut appended = parsed.query_pairs_mut();
                for (name, value) in &pairs {
                    appended.append_pair(name, value);
                }
            }
        }
        let mut header_list = match headers {
            Some(headers) => pairs(headers).ok_or_else(|| invalid(format!("headers gave {headers}, not an object")))?,
            None => Vec::new(),
        };
        if let Some(authorization) = credentials.header()? {
            header_list.retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
            header_list.push(("authorization".to_owned(), authorization));
        }
        let typed = header_list.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        let body = match body {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if typed => Some(text.into_bytes()),
            Some(value) => {
                if !typed {
                    header_list.push(("content-type".to_owned(), "application/json".to_owned()));
                }
                Some(serde_json::to_vec(&value).map_err(|e| invalid(format!("the body does not serialize: {e}")))?)
            }
        };
        Ok(Self { method: method.to_ascii_uppercase(), url: parsed.into(), headers: header_list, body })
    }

    /// The request as a `response` output shows it; credentials are not shown.
    fn describe(&self) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if name.eq_ignore_ascii_case("authorization") { "(redacted)" } else { value };
                (name.clone(), Value::String(shown.to_owned()))
            })
            .collect();
        json!({"method": self.method, "uri": self.url, "headers": headers})
    }

    /// The service id its `TaskScheduled` events name: the host, when it makes a valid id.
    fn service(&self) -> ServiceId {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().and_then(|h| ServiceId::new(&h.to_ascii_lowercase()).ok()))
            .unwrap_or_else(|| ServiceId::new("http").expect("a valid id"))
    }
}

/// Name/value pairs of a rendered object: text as it is, other values as JSON, null left out.
fn pairs(value: &Value) -> Option<Vec<(String, String)>> {
    let object = value.as_object()?;
    Some(
        object
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
    )
}

/// The task's raw output from `response`: its content, the whole response, or its body as
/// base64, per `mode`. A status outside 2xx is a failure.
pub fn output(mode: HttpOutput, request: &Request, response: Response) -> Result<Value, Failure> {
    succeeded(request, &response)?;
    Ok(match mode {
        HttpOutput::Raw => Value::String(base64::engine::general_purpose::STANDARD.encode(&response.body)),
        HttpOutput::Content => content(&response)?,
        HttpOutput::Response => {
            let headers: Map<String, Value> =
                response.headers.iter().map(|(name, value)| (name.clone(), Value::String(value.clone()))).collect();
            json!({
                "request": request.describe(),
                "statusCode": response.status,
                "headers": headers,
                "content": content(&response)?,
            })
        }
    })
}

/// A status outside 2xx as a failure of class `http_<status>`, quoting the body.
fn succeeded(request: &Request, response: &Response) -> Result<(), Failure> {
    if (200..300).contains(&response.status) {
        return Ok(());
    }
    let class = format!("http_{}", response.status);
    let quoted = String::from_utf8_lossy(&response.body[..response.body.len().min(ERROR_QUOTE)]).into_owned();
    let message = format!("{} {} answered {}: {quoted}", request.method, request.url, response.status);
    let retryable = matches!(response.status, 408 | 429) || response.status >= 500;
    Err(if retryable { Failure::retryable(&class, message) } else { Failure::permanent(&class, message) })
}

/// The body read by its content type: JSON when it says so (or says nothing and parses),
/// else text, else base64; nothing is null.
fn content(response: &Response) -> Result<Value, Failure> {
    if response.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let kind = response.headers.iter().find(|(name, _)| name == "content-type").map(|(_, v)| v.to_ascii_lowercase());
    let json = kind.as_deref().is_some_and(|k| k.contains("json"));
    if json || kind.is_none() {
        match serde_json::from_slice(&response.body) {
            Ok(value) => return Ok(value),
            Err(e) if json => {
                let quoted = String::from_utf8_lossy(&response.body[..response.body.len().min(64)]).into_owned();
                return Err(Failure::permanent(
                    "invalid_json",
                    format!("the body says JSON but is not ({e}): {quoted:?}"),
                ));
            }
            Err(_) => {}
        }
    }
    Ok(match std::str::from_utf8(&response.body) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(&response.body)),
    })
}

/// Renders `template` (a call's part) with the task's scope.
pub(crate) type Render<'r> = &'r dyn Fn(&Template) -> Result<Value, Problem>;

/// How a request task is attempted: its retry policy and time limits, as for a service call.
pub(crate) struct RequestSpec<'a> {
    pub(crate) step: &'a StepId,
    pub(crate) retry: &'a baton_core::RetryPolicy,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) task_timeout: Option<std::time::Duration>,
    pub(crate) reference: &'a str,
    pub(crate) first_attempt: u32,
}

/// Attempts a request task: each attempt is `attempt()`, journaled as scheduled, failures
/// journaled with their problem and retried under the task's policy, all within its time
/// limits. Answers the attempt that succeeded and the raw output.
pub(crate) async fn run_request<I, F, Fut>(
    shared: &Shared<I>,
    spec: &RequestSpec<'_>,
    service: ServiceId,
    attempt_once: F,
) -> Result<(u32, Value), TaskError>
where
    I: Invoker,
    F: Fn(CallTrace) -> Fut,
    Fut: Future<Output = Result<Value, Failure>>,
{
    // As for service calls: attempts keep their numbers across a restart, which gives the task
    // its whole budget again.
    let first = spec.first_attempt.max(1);
    let max = first + spec.retry.max_attempts.max(1) - 1;
    let attempts = async {
        let mut last = TaskError::NoAttempt;
        for attempt in first..=max {
            if !shared.wait_unless_paused().await {
                return Err(TaskError::Cancelled);
            }
            shared.emit(EventKind::TaskScheduled { step: spec.step.clone(), attempt, service: service.clone() });
            let trace = shared.call_trace(spec.step, attempt);
            let limit = crate::run::attempt_limit(shared, spec.timeout);
            let deadline = limit.map(|(limit, _)| tokio::time::Instant::now() + limit);
            let result = crate::run::within_attempt_limit(limit, deadline, attempt_once(trace)).await;
            match result {
                Ok(output) => return Ok((attempt, output)),
                Err(failure) => {
                    let retryable = failure.retryable && !spec.retry.non_retryable.contains(&failure.class);
                    let follows = attempt < max && retryable;
                    let problem = failure.problem().at(spec.reference);
                    shared.emit(EventKind::TaskFailed {
                        step: spec.step.clone(),
                        attempt,
                        error: failure.to_string(),
                        retryable: follows,
                        problem: Some(problem.clone()),
                    });
                    last = TaskError::Failed(problem);
                    if !follows {
                        return Err(last);
                    }
                    tokio::time::sleep(shared.backoff(spec.retry, attempt)).await;
                }
            }
        }
        Err(last)
    };
    crate::run::within_task_limit(shared, spec.step, spec.reference, spec.task_timeout, attempts).await
}

impl Request {
    /// The request carrying the attempt's trace context, unless the definition wrote its
    /// own `traceparent`.
    fn traced(&self, trace: &CallTrace) -> Self {
        let mut request = self.clone();
        if !request.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("traceparent")) {
            request.headers.push(("traceparent".to_owned(), trace.traceparent.clone()));
            if let Some(state) = &trace.tracestate {
                request.headers.push(("tracestate".to_owned(), state.to_string()));
            }
        }
        request
    }
}

/// One attempt of `call: http`: sends `request` with the attempt's trace context, reads the
/// output.
pub(crate) async fn attempt_http<I: Invoker>(
    invoker: &I,
    execution: ExecutionId,
    request: &Request,
    trace: &CallTrace,
    mode: HttpOutput,
) -> Result<Value, Failure> {
    let response = invoker.send(execution, request.traced(trace)).await?;
    output(mode, request, response)
}

/// The operation a `call: openapi` calls: its `operationId` and its parameters by name.
pub(crate) struct Operation<'a> {
    pub(crate) id: &'a str,
    pub(crate) parameters: &'a Value,
}

/// One attempt of `call: openapi`: fetches the document, finds the operation, sends it, each
/// request with the attempt's trace context.
pub(crate) async fn attempt_openapi<I: Invoker>(
    invoker: &I,
    execution: ExecutionId,
    document_url: &str,
    operation: Operation<'_>,
    credentials: &Credentials,
    trace: &CallTrace,
    mode: HttpOutput,
) -> Result<Value, Failure> {
    let Operation { id: operation_id, parameters } = operation;
    let fetch = Request { method: "GET".to_owned(), url: document_url.to_owned(), headers: Vec::new(), body: None };
    let response = invoker.send(execution, fetch.traced(trace)).await?;
    succeeded(&fetch, &response)?;
    let invalid =
        |reason: String| Failure::permanent("invalid_openapi", format!("the document at {document_url} {reason}"));
    let document = crate::openapi::read_document(&response.body).map_err(invalid)?;
    let operation = crate::openapi::resolve(&document, document_url, operation_id, parameters).map_err(invalid)?;
    let request = Request::build(
        &operation.method,
        &Value::String(operation.url),
        None,
        Some(&Value::Object(operation.headers)),
        operation.body,
        credentials,
    )
    .map_err(|problem| Failure::permanent("invalid_request", problem.message()))?;
    let response = invoker.send(execution, request.traced(trace)).await?;
    output(mode, &request, response)
}

/// Every template [`http_request`] renders.
pub(crate) fn http_templates(http: &baton_core::program::HttpCall) -> Vec<&Template> {
    let mut templates = Vec::new();
    if let Some((user, password)) = &http.basic_auth {
        templates.extend([user, password]);
    }
    templates.extend(http.bearer.as_ref());
    templates.push(&http.uri);
    templates.extend([&http.query, &http.headers, &http.body].into_iter().flatten());
    templates
}

/// Every template [`openapi_parts`] renders.
pub(crate) fn openapi_templates(api: &baton_core::program::OpenApiCall) -> Vec<&Template> {
    let mut templates = vec![&api.document];
    templates.extend(api.parameters.as_ref());
    if let Some((user, password)) = &api.basic_auth {
        templates.extend([user, password]);
    }
    templates.extend(api.bearer.as_ref());
    templates
}

/// The `Request` of a rendered `call: http`.
pub(crate) fn http_request(
    http: &baton_core::program::HttpCall,
    render: Render<'_>,
) -> Result<(Request, ServiceId), Problem> {
    let rendered = |template: &Option<Template>| template.as_ref().map(render).transpose();
    let credentials = Credentials {
        basic: http.basic_auth.as_ref().map(|(u, p)| Ok::<_, Problem>((render(u)?, render(p)?))).transpose()?,
        bearer: rendered(&http.bearer)?,
    };
    let request = Request::build(
        &http.method,
        &render(&http.uri)?,
        rendered(&http.query)?.as_ref(),
        rendered(&http.headers)?.as_ref(),
        rendered(&http.body)?,
        &credentials,
    )?;
    let service = request.service();
    Ok((request, service))
}

/// The rendered parts of a `call: openapi`: the document's URL, the parameters and the
/// credentials.
pub(crate) fn openapi_parts(
    api: &baton_core::program::OpenApiCall,
    render: Render<'_>,
) -> Result<(String, Value, Credentials, ServiceId), Problem> {
    let document = render(&api.document)?;
    let Some(url) = document.as_str() else {
        return Err(Problem::standard("validation", format!("the document endpoint gave {document}, not a URL")));
    };
    let parameters = match &api.parameters {
        Some(template) => render(template)?,
        None => Value::Object(Map::new()),
    };
    if !parameters.is_object() {
        return Err(Problem::standard("validation", format!("parameters gave {parameters}, not an object")));
    }
    let credentials = Credentials {
        basic: api.basic_auth.as_ref().map(|(u, p)| Ok::<_, Problem>((render(u)?, render(p)?))).transpose()?,
        bearer: api.bearer.as_ref().map(render).transpose()?,
    };
    let service = Request { method: "GET".to_owned(), url: url.to_owned(), headers: Vec::new(), body: None }.service();
    Ok((url.to_owned(), parameters, credentials, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, kind: Option<&str>, body: &str) -> Response {
        let headers = kind.map(|k| vec![("content-type".to_owned(), k.to_owned())]).unwrap_or_default();
        Response { status, headers, body: body.as_bytes().to_vec() }
    }

    fn get() -> Request {
        Request::build("get", &json!("https://x.test/pets?a=1"), None, None, None, &Credentials::default()).unwrap()
    }

    #[test]
    fn requests_are_built_from_rendered_parts() {
        let credentials = Credentials { basic: Some((json!("ann"), json!("s3cret"))), bearer: None };
        let request = Request::build(
            "post",
            &json!("https://x.test/pets?a=1"),
            Some(&json!({"b": "two words", "n": 3, "skip": null})),
            Some(&json!({"X-Trace": "t-1"})),
            Some(json!({"name": "Milou"})),
            &credentials,
        )
        .unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://x.test/pets?a=1&b=two+words&n=3");
        assert!(request.headers.contains(&("authorization".to_owned(), "Basic YW5uOnMzY3JldA==".to_owned())));
        assert!(request.headers.contains(&("content-type".to_owned(), "application/json".to_owned())));
        assert_eq!(request.body.as_deref(), Some(br#"{"name":"Milou"}"#.as_slice()));
        let bearer = Credentials { basic: None, bearer: Some(json!("tok")) };
        let typed = Request::build(
            "put",
            &json!("http://x.test/"),
            None,
            Some(&json!({"content-type": "text/plain"})),
            Some(json!("hello")),
            &bearer,
        )
        .unwrap();
        assert_eq!(typed.body.as_deref(), Some(b"hello".as_slice()));
        assert!(typed.headers.contains(&("authorization".to_owned(), "Bearer tok".to_owned())));
        let error = |url: Value| Request::build("get", &url, None, None, None, &Credentials::default()).unwrap_err();
        assert!(error(json!(5)).to_string().contains("not a URL"));
        assert!(error(json!("not a url")).to_string().contains("is not a URL"));
        let bad_user = Credentials { basic: Some((json!("a:b"), json!("c"))), bearer: None };
        let problem = Request::build("get", &json!("http://x.test/"), None, None, None, &bad_user).unwrap_err();
        assert_eq!(problem.status, 401);
    }

    #[test]
    fn outputs_follow_the_mode() {
        let request = get();
        let json = response(200, Some("application/json; charset=utf-8"), r#"{"id": 1}"#);
        assert_eq!(output(HttpOutput::Content, &request, json.clone()).unwrap(), json!({"id": 1}));
        assert_eq!(output(HttpOutput::Content, &request, response(200, None, "[1]")).unwrap(), json!([1]));
        assert_eq!(
            output(HttpOutput::Content, &request, response(200, Some("text/plain"), "hi")).unwrap(),
            json!("hi")
        );
        assert_eq!(output(HttpOutput::Content, &request, response(204, None, "")).unwrap(), Value::Null);
        assert_eq!(output(HttpOutput::Raw, &request, response(200, None, "hi")).unwrap(), json!("aGk="));
        let whole = output(HttpOutput::Response, &request, json).unwrap();
        assert_eq!(whole["statusCode"], 200);
        assert_eq!(whole["content"], json!({"id": 1}));
        assert_eq!(whole["request"]["method"], "GET");
        assert_eq!(whole["request"]["uri"], "https://x.test/pets?a=1");
        assert!(whole["headers"]["content-type"].is_string() && whole["request"]["headers"].is_object());
        let bad = output(HttpOutput::Content, &request, response(200, Some("application/json"), "nope")).unwrap_err();
        assert_eq!(bad.class, "invalid_json");
    }

    #[test]
    fn statuses_outside_2xx_fail_as_communication_problems() {
        let request = get();
        let missing = output(HttpOutput::Content, &request, response(404, None, "no pet")).unwrap_err();
        assert_eq!((missing.class.as_str(), missing.retryable), ("http_404", false));
        let problem = missing.problem().at("/do/0/getPet");
        assert_eq!(problem.kind, "https://serverlessworkflow.io/spec/1.0.0/errors/communication");
        assert_eq!((problem.status, problem.title.as_deref()), (404, Some("http_404")));
        assert_eq!(problem.instance.as_deref(), Some("/do/0/getPet"));
        assert!(problem.detail.unwrap().contains("no pet"));
        let busy = output(HttpOutput::Content, &request, response(503, None, "")).unwrap_err();
        assert!(busy.retryable);
        let moved = output(HttpOutput::Content, &request, response(302, None, "")).unwrap_err();
        assert_eq!((moved.class.as_str(), moved.retryable), ("http_302", false));
    }
}
