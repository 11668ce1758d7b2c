//! How a step calls its service when a JSON POST of its input to the service's URL is not it:
//! the HTTP method, a path template, query parameters and headers, which part of the
//! response is the output, or the gRPC method and metadata.
//!
//! Three forms: as written in a step ([`StepCall`]: [`HttpCall`] or [`GrpcCall`]), compiled
//! once per definition ([`CallTemplate`]), and rendered for one call ([`CallRequest`]).
//! Values are templates like a step's input (`${ jq }` in strings), rendered against the same
//! context.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{check_header_name, is_reserved_header};
use crate::error::{Error, Result};
use crate::expr::{EvalError, Evaluator, Expression, Template};

/// An HTTP method a step may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`: no body.
    Get,
    /// `POST`, the default.
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `HEAD`: no body either way.
    Head,
    /// `OPTIONS`.
    Options,
}

impl HttpMethod {
    /// The method as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
        }
    }

    /// True for the methods that send no request body.
    pub fn has_no_body(self) -> bool {
        matches!(self, Self::Get | Self::Head)
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of an HTTP response becomes the step's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponsePart {
    /// The body: JSON as it is, other `text/plain` as a string, empty as `null`.
    #[default]
    Body,
    /// `{"status": 200, "headers": {"<lowercase name>": "<value>"}, "body": <as above>}`.
    Response,
}

impl ResponsePart {
    fn is_body(&self) -> bool {
        *self == Self::Body
    }
}

/// A step's HTTP call as written: `http: {method, path, query, headers, output}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// The method; `POST` when unset.
    #[serde(default)]
    pub method: HttpMethod,
    /// Appended to the service's URL; must start with `/`. Expressions in it are
    /// percent-encoded as one path segment each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query parameters: a value that renders to `null` is left out, an array repeats the
    /// parameter, a string is sent as it is, anything else as JSON text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, Value>,
    /// Extra request headers, lowercase; `null` leaves a header out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Value>,
    /// Which part of the response is the output.
    #[serde(default, skip_serializing_if = "ResponsePart::is_body")]
    pub output: ResponsePart,
}

/// A gRPC method: `package.Service/Method`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GrpcMethod {
    service: String,
    method: String,
}

impl GrpcMethod {
    /// Parses `package.Service/Method`; the error names `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::invalid(field, text, reason);
        let (service, method) = text.split_once('/').ok_or_else(|| bad("must be package.Service/Method"))?;
        let ident = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !service.split('.').all(ident) || service.len() > 512 {
            return Err(bad("names no valid service (package.Service)"));
        }
        if !ident(method) || method.len() > 256 {
            return Err(bad("names no valid method"));
        }
        Ok(Self { service: service.to_owned(), method: method.to_owned() })
    }

    /// The service's full name, `package.Service`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method's name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request path, `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

impl fmt::Debug for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrpcMethod({self})")
    }
}

impl FromStr for GrpcMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse("method", s)
    }
}

impl Serialize for GrpcMethod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GrpcMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A step's gRPC call as written: `grpc: {method, metadata}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcCall {
    /// The unary method to call; unset: the one the service's endpoint names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethod>,
    /// Extra request metadata (lowercase ASCII keys); `null` leaves a key out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
}

/// How a step calls its service, as written.
#[derive(Debug, Clone, PartialEq)]
pub enum StepCall {
    /// An HTTP request shaped by the step.
    Http(HttpCall),
    /// A gRPC unary call.
    Grpc(GrpcCall),
}

/// A [`StepCall`] with its templates compiled.
#[derive(Debug, Clone)]
pub enum CallTemplate {
    /// An HTTP request.
    Http {
        /// The method.
        method: HttpMethod,
        /// The path template.
        path: Option<Template>,
        /// Query parameters, in order.
        query: Vec<(String, Template)>,
        /// Headers, in order.
        headers: Vec<(String, Template)>,
        /// Which part of the response is the output.
        output: ResponsePart,
    },
    /// A gRPC unary call.
    Grpc {
        /// The method, or the endpoint's.
        method: Option<GrpcMethod>,
        /// Metadata, in order.
        metadata: Vec<(String, Template)>,
    },
}

/// A [`CallTemplate`] rendered for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallRequest {
    /// An HTTP request.
    Http {
        /// The method.
        method: HttpMethod,
        /// Appended to the service's URL: the escaped path and `?query`, or empty.
        path_and_query: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Which part of the response is the output.
        output: ResponsePart,
    },
    /// A gRPC unary call.
    Grpc {
        /// The method, or the endpoint's.
        method: Option<GrpcMethod>,
        /// Extra metadata.
        metadata: Vec<(String, String)>,
    },
}

impl CallTemplate {
    /// Compiles `call`, the call of the step at `place` (`steps.<id>`); `has_input` tells
    /// whether the step has a body to send. Its expressions read no variables.
    pub fn compile(place: &str, call: &StepCall, has_input: bool) -> Result<Self> {
        Self::compile_by(place, call, has_input, &mut |place, value| Template::compile(place, value))
    }

    /// Compiles `call` as [`CallTemplate::compile`] does, each value through `template`
    /// (given its place and value): for a compiler that binds variables and counts
    /// expressions as it compiles a step's other templates.
    pub fn compile_by<E: From<Error>>(
        place: &str,
        call: &StepCall,
        has_input: bool,
        template: &mut dyn FnMut(&str, &Value) -> Result<Template, E>,
    ) -> Result<Self, E> {
        match call {
            StepCall::Http(http) => {
                let place = format!("{place}.http");
                if http.method.has_no_body() && has_input {
                    return Err(Error::invalid(
                        format!("{place}.method"),
                        http.method,
                        "sends no body, so the step may have no input (use query)",
                    )
                    .into());
                }
                let path = match &http.path {
                    None => None,
                    Some(path) => {
                        check_path(&format!("{place}.path"), path)?;
                        Some(template(&format!("{place}.path"), &Value::String(path.clone()))?)
                    }
                };
                let mut query = Vec::with_capacity(http.query.len());
                for (name, value) in &http.query {
                    if name.is_empty() {
                        return Err(Error::invalid(format!("{place}.query"), name, "a parameter needs a name").into());
                    }
                    query.push((name.clone(), template(&format!("{place}.query.{name}"), value)?));
                }
                let headers = compile_headers(&format!("{place}.headers"), &http.headers, template)?;
                Ok(Self::Http { method: http.method, path, query, headers, output: http.output })
            }
            StepCall::Grpc(grpc) => {
                let place = format!("{place}.grpc.metadata");
                for name in grpc.metadata.keys() {
                    if name.ends_with("-bin") {
                        return Err(Error::invalid(&place, name, "binary metadata cannot be written as text").into());
                    }
                }
                Ok(Self::Grpc {
                    method: grpc.method.clone(),
                    metadata: compile_headers(&place, &grpc.metadata, template)?,
                })
            }
        }
    }

    /// Its templates: the path, then query parameters, then headers or metadata.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        let (path, pairs): (Option<&Template>, Vec<&(String, Template)>) = match self {
            Self::Http { path, query, headers, .. } => (path.as_ref(), query.iter().chain(headers).collect()),
            Self::Grpc { metadata, .. } => (None, metadata.iter().collect()),
        };
        path.into_iter().chain(pairs.into_iter().map(|(_, t)| t))
    }

    /// Step ids its expressions read.
    pub fn referenced_steps(&self) -> BTreeSet<String> {
        self.templates().flat_map(Template::referenced_steps).collect()
    }

    /// True when it holds no expression, so every call renders it the same.
    pub fn is_static(&self) -> bool {
        self.templates().all(|t| t.expressions().is_empty())
    }

    /// True when rendering may read variables: only then do callers need to bind them.
    pub fn needs_variables(&self) -> bool {
        self.templates().any(Template::needs_variables)
    }

    /// True when some expression needs jq, so an [`Evaluator`].
    pub fn uses_jaq(&self) -> bool {
        self.templates().any(Template::uses_jaq)
    }

    /// Renders it against `context`, running any jq on this thread, unbounded: for a call
    /// without expressions, and tests. Calls of a run render with [`CallTemplate::render_with`].
    pub fn render(&self, context: &Value) -> Result<CallRequest, EvalError> {
        self.render_vars(context, &[])
    }

    /// Renders it against `context` with `values` bound to its variables, running any jq on
    /// this thread, unbounded.
    pub fn render_vars(&self, context: &Value, values: &[Value]) -> Result<CallRequest, EvalError> {
        self.render_by(&mut |e: &Expression| e.eval_with(context, values))
    }

    /// Renders it against `context`: plain paths here, every other expression of all its
    /// templates on `evaluator`, in one evaluation, as a step's input is rendered.
    pub async fn render_with(&self, context: &Value, evaluator: &dyn Evaluator) -> Result<CallRequest, EvalError> {
        self.render_bounded(context, &[], evaluator).await
    }

    /// [`CallTemplate::render_with`], with `values` bound to the expressions' variables.
    pub async fn render_bounded(
        &self,
        context: &Value,
        values: &[Value],
        evaluator: &dyn Evaluator,
    ) -> Result<CallRequest, EvalError> {
        let jaq: Vec<&Expression> =
            self.templates().flat_map(Template::expressions).filter(|e| !e.is_plain_path()).collect();
        if jaq.is_empty() {
            return self.render_vars(context, values);
        }
        let bound = values;
        let values = evaluator.evaluate(&jaq, context, bound).await?;
        if values.len() != jaq.len() {
            let reason = format!("got {} values from the evaluator for {} expressions", values.len(), jaq.len());
            return Err(EvalError::failed(jaq[0].source(), reason));
        }
        let mut values = values.into_iter();
        self.render_by(&mut |e: &Expression| {
            if e.is_plain_path() {
                e.eval_with(context, bound)
            } else {
                Ok(values.next().expect("a value per expression, counted"))
            }
        })
    }

    /// Renders it with `eval` answering each expression, in the order of [`Self::templates`].
    fn render_by(
        &self,
        eval: &mut dyn FnMut(&Expression) -> Result<Value, EvalError>,
    ) -> Result<CallRequest, EvalError> {
        match self {
            Self::Http { method, path, query, headers, output } => {
                let mut path_and_query = match path {
                    Some(path) => path.render_text_by(eval, &encode_segment)?,
                    None => String::new(),
                };
                let mut params = url::form_urlencoded::Serializer::new(String::new());
                let mut any = false;
                for (name, template) in query {
                    match template.render_by(eval)? {
                        Value::Null => {}
                        Value::Array(items) => {
                            for item in items.iter().filter(|v| !v.is_null()) {
                                params.append_pair(name, &text(item));
                                any = true;
                            }
                        }
                        value => {
                            params.append_pair(name, &text(&value));
                            any = true;
                        }
                    }
                }
                if any {
                    path_and_query.push('?');
                    path_and_query.push_str(&params.finish());
                }
                Ok(CallRequest::Http {
                    method: *method,
                    path_and_query,
                    headers: render_headers(headers, eval)?,
                    output: *output,
                })
            }
            Self::Grpc { method, metadata } => {
                Ok(CallRequest::Grpc { method: method.clone(), metadata: render_headers(metadata, eval)? })
            }
        }
    }
}

fn compile_headers<E: From<Error>>(
    place: &str,
    headers: &BTreeMap<String, Value>,
    template: &mut dyn FnMut(&str, &Value) -> Result<Template, E>,
) -> Result<Vec<(String, Template)>, E> {
    let mut compiled = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        check_header_name(place, name)?;
        if is_reserved_header(name) {
            return Err(Error::invalid(place, name, "is a header Baton sets itself").into());
        }
        compiled.push((name.clone(), template(&format!("{place}.{name}"), value)?));
    }
    Ok(compiled)
}

fn render_headers(
    headers: &[(String, Template)],
    eval: &mut dyn FnMut(&Expression) -> Result<Value, EvalError>,
) -> Result<Vec<(String, String)>, EvalError> {
    let mut rendered = Vec::with_capacity(headers.len());
    for (name, template) in headers {
        let value = match template.render_by(eval)? {
            Value::Null => continue,
            value => text(&value),
        };
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(EvalError::failed(&format!("header {name}"), "rendered a value with a control character"));
        }
        rendered.push((name.clone(), value));
    }
    Ok(rendered)
}

/// A string as it is, anything else as JSON text.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a path template's literal text: starts with `/`, only characters a URL path holds.
fn check_path(field: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::invalid(field, path, "must start with /"));
    }
    let mut literal = String::new();
    let mut rest = path;
    // Only the text outside `${ }` is checked; expressions are encoded when rendered.
    while let Some(at) = rest.find("${") {
        literal.push_str(&rest[..at]);
        rest = rest[at..].find('}').map_or("", |end| &rest[at + end + 1..]);
    }
    literal.push_str(rest);
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c);
    if let Some(c) = literal.chars().find(|&c| !allowed(c)) {
        let hint = if c == '?' { " (put parameters under query)" } else { "" };
        return Err(Error::invalid(field, path, format!("has {c:?}, which a URL path cannot hold{hint}")));
    }
    Ok(())
}

/// Percent-encodes `value` as one path segment: everything but unreserved characters.
fn encode_segment(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn http(call: Value) -> Result<CallTemplate> {
        let call: HttpCall = serde_json::from_value(call).map_err(|e| Error::invalid("http", "", e.to_string()))?;
        CallTemplate::compile("steps.s", &StepCall::Http(call), false)
    }

    fn rendered(call: Value, context: Value) -> CallRequest {
        http(call).unwrap().render(&context).unwrap()
    }

    #[test]
    fn paths_encode_their_expressions_and_queries_their_values() {
        let request = rendered(
            json!({
                "method": "GET",
                "path": "/items/${ .input.sku }/stock",
                "query": {"page": "${ .input.page }", "tag": ["a b", "c&d"], "none": "${ .input.missing }"},
                "headers": {"x-tenant": "acme-${ .input.page }"},
                "output": "response",
            }),
            json!({"input": {"sku": "a/b c?", "page": 2}}),
        );
        assert_eq!(
            request,
            CallRequest::Http {
                method: HttpMethod::Get,
                path_and_query: "/items/a%2Fb%20c%3F/stock?page=2&tag=a+b&tag=c%26d".to_owned(),
                headers: vec![("x-tenant".to_owned(), "acme-2".to_owned())],
                output: ResponsePart::Response,
            }
        );
        let only_query = rendered(json!({"query": {"q": "x"}}), json!({}));
        assert!(
            matches!(only_query, CallRequest::Http { path_and_query, method: HttpMethod::Post, .. } if path_and_query == "?q=x")
        );
    }

    #[test]
    fn bad_calls_are_refused_naming_the_place() {
        let error = |call: Value| http(call).unwrap_err().to_string();
        assert!(error(json!({"path": "items"})).contains(r#"invalid steps.s.http.path "items": must start with /"#));
        assert!(error(json!({"path": "/a?b=1"})).contains("put parameters under query"));
        assert!(error(json!({"path": "/a b"})).contains("which a URL path cannot hold"));
        assert!(error(json!({"headers": {"X-Tenant": "a"}})).contains("must be a lowercase header name"));
        assert!(error(json!({"headers": {"idempotency-key": "a"}})).contains("sets itself"));
        assert!(error(json!({"headers": {"authorization": "a"}})).contains("sets itself"));
        assert!(error(json!({"method": "TRACE"})).contains("unknown variant `TRACE`"));
        assert!(error(json!({"output": "headers"})).contains("unknown variant `headers`"));
        assert!(error(json!({"path": "/${ .input. }"})).contains("steps.s.http.path"));
        let get = StepCall::Http(HttpCall { method: HttpMethod::Get, ..HttpCall::default() });
        let with_body = CallTemplate::compile("steps.s", &get, true).unwrap_err().to_string();
        assert!(with_body.contains("sends no body"), "{with_body}");
    }

    #[test]
    fn header_values_with_line_breaks_fail_to_render() {
        let template = http(json!({"headers": {"x-a": "${ .input.v }"}})).unwrap();
        let error = template.render(&json!({"input": {"v": "a\r\nx-evil: 1"}})).unwrap_err();
        assert!(error.to_string().contains("control character"), "{error}");
    }

    /// Evaluates as the in-process evaluator does, keeping each batch it was asked.
    #[derive(Debug, Default)]
    struct Batches(std::sync::Mutex<Vec<Vec<String>>>);

    impl Evaluator for Batches {
        fn evaluate<'a>(
            &'a self,
            expressions: &'a [&'a Expression],
            context: &'a Value,
            variables: &'a [Value],
        ) -> crate::api::BoxFuture<'a, std::result::Result<Vec<Value>, EvalError>> {
            self.0.lock().unwrap().push(expressions.iter().map(|e| e.source().to_owned()).collect());
            let values = crate::expr::evaluate_all(expressions, context, variables, crate::expr::DEFAULT_OUTPUT_BYTES);
            Box::pin(std::future::ready(values))
        }
    }

    #[test]
    fn a_calls_jq_goes_to_the_evaluator_in_one_batch_and_its_paths_do_not() {
        use futures_util::FutureExt as _;
        let template = http(json!({
            "method": "GET",
            "path": "/items/${ .input.sku }/${ .input.sku | ascii_downcase }",
            "query": {"n": "${ .input.items | length }", "page": "${ .input.page }"},
            "headers": {"x-tenant": "${ .input.tenant + \"-eu\" }"},
        }))
        .unwrap();
        let context = json!({"input": {"sku": "A/B", "items": [1, 2], "page": 3, "tenant": "acme"}});
        let evaluator = Batches::default();
        let call = template.render_with(&context, &evaluator).now_or_never().unwrap().unwrap();
        assert_eq!(call, template.render(&context).unwrap(), "the same call either way");
        let CallRequest::Http { path_and_query, headers, .. } = call else { panic!("an HTTP call") };
        assert_eq!(path_and_query, "/items/A%2FB/a%2Fb?n=2&page=3");
        assert_eq!(headers, [("x-tenant".to_owned(), "acme-eu".to_owned())]);
        let batches = evaluator.0.lock().unwrap().clone();
        assert_eq!(batches, [vec![".input.sku | ascii_downcase", ".input.items | length", ".input.tenant + \"-eu\""]]);

        // Paths only: nothing is sent to the evaluator.
        let paths = http(json!({"method": "GET", "path": "/items/${ .input.sku }"})).unwrap();
        paths.render_with(&context, &evaluator).now_or_never().unwrap().unwrap();
        assert_eq!(evaluator.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn grpc_methods_parse_package_service_and_method() {
        let method: GrpcMethod = "shop.v1.Inventory/Reserve".parse().unwrap();
        assert_eq!((method.service(), method.method()), ("shop.v1.Inventory", "Reserve"));
        assert_eq!(method.path(), "/shop.v1.Inventory/Reserve");
        for bad in ["Reserve", "shop.v1.Inventory/", "/Reserve", "shop..Inventory/Reserve", "a/b/c", "a-b/C"] {
            assert!(bad.parse::<GrpcMethod>().is_err(), "{bad}");
        }
        let grpc = StepCall::Grpc(GrpcCall { method: None, metadata: [("x-k-bin".to_owned(), json!("a"))].into() });
        assert!(CallTemplate::compile("steps.s", &grpc, true).unwrap_err().to_string().contains("binary metadata"));
    }
}
