//! The HTTP invoker: each call is a request to its service's URL, over plain HTTP/1.1 or
//! HTTPS (HTTP/2 or HTTP/1.1 by ALPN), pooled; a JSON POST of the input unless the step
//! shapes the request ([`baton_core::CallRequest::Http`]). Requests a workflow writes itself
//! (`call: http`, `call: openapi`) go out over the same pools, after [`Origins`] maps them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use ::http::{HeaderMap, Method, Request as Request_, StatusCode, Uri};
use base64::Engine as _;
use baton_core::{
    CallRequest, Credentials, Endpoint, ExecutionId, HttpMethod, ResponsePart, ServiceId, ServiceSpec, TlsSettings,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::{Map, Value};

use crate::invoker::{Call, Failure, Invoker};
use crate::request::{Request, Response};
use crate::secrets::{Secret, Secrets};
use crate::transport::{self, Transport, TransportConfig, TrustRoots};

/// How many bytes of an error response's body a failure message quotes.
const ERROR_QUOTE: usize = 200;
/// How many bytes of a non-JSON success body an `invalid_json` failure quotes.
const JSON_QUOTE: usize = 64;

/// Maps a service id to its registered spec, or `None` for a service it does not know.
pub type Resolve = Arc<dyn Fn(&ServiceId) -> Option<Arc<ServiceSpec>> + Send + Sync>;

/// How the HTTP invoker talks to services.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest response body accepted; a larger successful response fails permanently with
    /// `response_too_large`.
    pub max_response_bytes: usize,
    /// Time limit of establishing a connection, and again of its TLS handshake; `None`
    /// leaves the connect to the operating system.
    pub connect_timeout: Option<Duration>,
    /// Time limit of one request, from sending it to the last byte of the answer, on top of
    /// the step's attempt timeout; `None`: only the step's.
    pub request_timeout: Option<Duration>,
    /// The certificates trusted for every `https` service (system roots and `--services-ca`).
    pub roots: TrustRoots,
    /// Where credentials and TLS material named by services come from.
    pub secrets: Secrets,
    /// Origins that requests a workflow writes itself (`call: http`, `call: openapi`) reach
    /// elsewhere: a server setting, never a definition's.
    pub origins: Origins,
    /// In a cluster, the calling node's id, sent as `X-Baton-Node` with every request so that
    /// a service (and its logs) can tell which node called; `None` sends no such header.
    pub node: Option<HeaderValue>,
}

impl Default for HttpConfig {
    /// A 1 MiB response cap, 5 s to connect, 5 minutes a request, the system's roots, and
    /// secrets from environment variables only.
    fn default() -> Self {
        Self {
            max_response_bytes: 1024 * 1024,
            connect_timeout: Some(Duration::from_secs(5)),
            request_timeout: Some(Duration::from_secs(300)),
            roots: TrustRoots::system(),
            secrets: Secrets::default(),
            origins: Origins::default(),
            node: None,
        }
    }
}

/// Where requests to some origins really go: `https://petstore.swagger.io` to
/// `http://127.0.0.1:8080`, say, so tests and air-gapped sites can serve what a workflow
/// calls. The path and query of a request are kept (after the target's own path, if any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    map: std::collections::BTreeMap<String, url::Url>,
}

impl Origins {
    /// The mapping of each origin (`scheme://host[:port]`, nothing after) to the base URL that
    /// serves it (`http://` or `https://`, with an optional path).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut map = std::collections::BTreeMap::new();
        for (origin, target) in pairs {
            let from = url::Url::parse(origin).map_err(|e| format!("origin {origin:?} is not a URL: {e}"))?;
            if from.path() != "/" || from.query().is_some() || from.host().is_none() {
                return Err(format!("origin {origin:?} must be scheme://host[:port] with nothing after"));
            }
            let to =
                url::Url::parse(target).map_err(|e| format!("target {target:?} of {origin:?} is not a URL: {e}"))?;
            if !matches!(to.scheme(), "http" | "https") || to.host().is_none() || to.query().is_some() {
                return Err(format!("target {target:?} of {origin:?} must be an http or https URL without a query"));
            }
            map.insert(from.origin().ascii_serialization(), to);
        }
        Ok(Self { map })
    }

    /// True when no origin is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `url` with its origin replaced when it is mapped.
    fn apply(&self, mut url: url::Url) -> url::Url {
        let Some(target) = self.map.get(&url.origin().ascii_serialization()) else { return url };
        let path = format!("{}{}", target.path().trim_end_matches('/'), url.path());
        let mut mapped = target.clone();
        mapped.set_path(&path);
        mapped.set_query(url.query());
        url = mapped;
        url
    }
}

impl HttpConfig {
    /// An invoker that calls each service at the endpoint of the spec `resolve` returns for
    /// it; a service it returns `None` for fails with `unknown_service`.
    ///
    /// Needs a tokio runtime when calls are made, not when built.
    pub fn build(self, resolve: Resolve) -> HttpInvoker {
        HttpInvoker { transport: Arc::new(Transport::new(self.transport(), false)), config: self, resolve }
    }

    pub(crate) fn transport(&self) -> TransportConfig {
        TransportConfig {
            roots: self.roots.clone(),
            secrets: self.secrets.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// Calls services by HTTP and classifies the answer into an output or a [`Failure`]. Cheap
/// to clone; clones share the connection pools.
///
/// Each request carries `Idempotency-Key`, `X-Baton-Execution`, `X-Baton-Step`,
/// `X-Baton-Attempt`, in a cluster `X-Baton-Node` (the calling node), the call's `traceparent` and `tracestate`, and the service's credentials (read from their secret on every call).
/// A 2xx body is the output: JSON as it is, other `text/plain` as a string, empty as `null`. 408, 429
/// and 5xx are retryable `http_{code}`; other statuses are permanent `http_{code}`; a 2xx
/// body that is neither is a permanent `invalid_json`; a certificate that is not trusted is a
/// permanent `tls_certificate`; other transport errors are retryable `connect`. No failure
/// message holds a secret's value. Dropping a call abandons its request.
#[derive(Clone)]
pub struct HttpInvoker {
    config: HttpConfig,
    resolve: Resolve,
    transport: Arc<Transport<Full<Bytes>>>,
}

impl fmt::Debug for HttpInvoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpInvoker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Invoker for HttpInvoker {
    async fn send(&self, _execution: ExecutionId, request: Request) -> Result<Response, Failure> {
        HttpInvoker::send(self, request).await
    }

    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let Some(spec) = (self.resolve)(&call.service) else {
            return Err(Failure::permanent("unknown_service", format!("no URL for service {}", call.service)));
        };
        self.call(&spec, call).await
    }
}

impl HttpInvoker {
    /// The configuration it was built with.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Calls `call` at the HTTP endpoint of `spec`.
    pub async fn call(&self, spec: &ServiceSpec, call: Call) -> Result<Value, Failure> {
        let Endpoint::Http { url } = spec.endpoint() else {
            return Err(Failure::permanent(
                "unsupported_protocol",
                format!("service {} has a {} endpoint, not http", spec.id(), spec.protocol()),
            ));
        };
        let secret = match spec.credentials() {
            Some(credentials) => Some(
                self.config
                    .secrets
                    .get(credentials.secret())
                    .map_err(|e| Failure::permanent("secret", format!("service {}: {e}", spec.id())))?,
            ),
            None => None,
        };
        let result = self.exchange(spec, url, &call, secret.as_ref()).await;
        // A service may quote a request back in an error; its credentials stop here.
        result.map_err(|failure| match &secret {
            Some(secret) => redact(failure, secret),
            None => failure,
        })
    }

    /// Sends a request a workflow wrote itself, after mapping its origin
    /// ([`HttpConfig::origins`]), over the pools service calls use: `https://` trusts the
    /// configured roots (the system's and `--services-ca`) and fails permanently, naming the
    /// host, on a certificate it does not trust.
    pub async fn send(&self, request: Request) -> Result<Response, Failure> {
        let parsed = url::Url::parse(&request.url)
            .map_err(|e| Failure::permanent("invalid_url", format!("url {:?}: {e}", request.url)))?;
        let url = self.config.origins.apply(parsed);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::permanent(
                "unsupported_scheme",
                format!("{url}: a request goes to an http or https URL"),
            ));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|e| Failure::permanent("invalid_request", format!("method {:?}: {e}", request.method)))?;
        let mut builder = Request_::builder().method(method).uri(url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = Full::new(Bytes::from(request.body.unwrap_or_default()));
        let mut outgoing =
            builder.body(body).map_err(|e| Failure::permanent("invalid_request", format!("request to {url}: {e}")))?;
        // Set last: a workflow cannot pass itself off as another node.
        if let Some(node) = &self.config.node {
            outgoing.headers_mut().insert("x-baton-node", node.clone());
        }
        let client = self.transport.client(&TlsSettings::default())?;
        let exchange = async {
            let response = client.request(outgoing).await.map_err(|e| transport::classify(&e, &host))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                .collect();
            let (body, truncated) = read(response.into_body(), self.config.max_response_bytes)
                .await
                .map_err(|e| transport::classify(&e, &host))?;
            Ok::<_, Failure>((status, headers, body, truncated))
        };
        let (status, headers, body, truncated) = match self.config.request_timeout {
            Some(limit) => tokio::time::timeout(limit, exchange).await.map_err(|_| {
                Failure::retryable(
                    "timeout",
                    format!("{url} did not answer within {}", baton_core::duration::format(limit)),
                )
            })??,
            None => exchange.await?,
        };
        if truncated {
            return Err(Failure::permanent(
                "response_too_large",
                format!("the response of {url} exceeds {} bytes", self.config.max_response_bytes),
            ));
        }
        Ok(Response { status, headers, body })
    }

    async fn exchange(
        &self,
        spec: &ServiceSpec,
        url: &str,
        call: &Call,
        secret: Option<&Secret>,
    ) -> Result<Value, Failure> {
        let (method, path_and_query, extra, output) = match call.request.as_deref() {
            None => (HttpMethod::Post, "", &[][..], ResponsePart::Body),
            Some(CallRequest::Http { method, path_and_query, headers, output }) => {
                (*method, path_and_query.as_str(), headers.as_slice(), *output)
            }
            Some(CallRequest::Grpc { .. }) => {
                return Err(Failure::permanent(
                    "unsupported_protocol",
                    format!("step {} makes a gRPC call but service {} is an HTTP endpoint", call.step, spec.id()),
                ));
            }
        };
        let uri = join(url, path_and_query)?;
        let host = uri.host().unwrap_or_default().to_owned();
        let mut request = request(&uri, method, call, extra)?;
        if let Some(node) = &self.config.node {
            request.headers_mut().insert("x-baton-node", node.clone());
        }
        if let (Some(credentials), Some(secret)) = (spec.credentials(), secret) {
            let (name, value) = credential_header(credentials, secret)
                .map_err(|reason| Failure::permanent("secret", format!("service {}: {reason}", spec.id())))?;
            request.headers_mut().insert(name, value);
        }
        let client = self.transport.client(spec.tls())?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| transport::classify(&e, &host))?;
            let status = response.status();
            let headers = response.headers().clone();
            let (body, truncated) = read(response.into_body(), self.config.max_response_bytes)
                .await
                .map_err(|e| transport::classify(&e, &host))?;
            Ok::<_, Failure>((status, headers, body, truncated))
        };
        let (status, headers, body, truncated) = match self.config.request_timeout {
            Some(limit) => tokio::time::timeout(limit, exchange).await.map_err(|_| {
                Failure::retryable(
                    "timeout",
                    format!("service {} did not answer within {}", spec.id(), baton_core::duration::format(limit)),
                )
            })??,
            None => exchange.await?,
        };
        if truncated && status.is_success() {
            return Err(Failure::permanent(
                "response_too_large",
                format!("response of service {} exceeds {} bytes", spec.id(), self.config.max_response_bytes),
            ));
        }
        classify(status, &headers, &body, output)
    }
}

/// The service's URL with the step's path appended and the queries of both joined.
fn join(url: &str, path_and_query: &str) -> Result<Uri, Failure> {
    let invalid = |e: &dyn fmt::Display| Failure::permanent("invalid_url", format!("url {url:?}: {e}"));
    if path_and_query.is_empty() {
        return url.parse().map_err(|e| invalid(&e));
    }
    let (base, base_query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (path, query) = path_and_query.split_once('?').map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let mut joined = base.trim_end_matches('/').to_owned();
    joined.push_str(path);
    let query: Vec<&str> = base_query.into_iter().chain(query).filter(|q| !q.is_empty()).collect();
    if !query.is_empty() {
        joined.push('?');
        joined.push_str(&query.join("&"));
    }
    joined.parse().map_err(|e| invalid(&e))
}

/// The request of `call` to `uri`.
fn request(
    uri: &Uri,
    method: HttpMethod,
    call: &Call,
    extra: &[(String, String)],
) -> Result<Request_<Full<Bytes>>, Failure> {
    let body = if method.has_no_body() || (method == HttpMethod::Delete && call.payload.is_null()) {
        None
    } else {
        Some(serde_json::to_vec(&call.payload).map_err(|e| Failure::permanent("invalid_payload", e.to_string()))?)
    };
    let mut builder = Request_::builder()
        .method(Method::from_bytes(method.as_str().as_bytes()).expect("a known method"))
        .uri(uri.clone())
        .header("idempotency-key", call.idempotency_key())
        .header("x-baton-execution", call.execution.to_string())
        .header("x-baton-step", call.step.as_str())
        .header("x-baton-attempt", call.attempt.to_string());
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(trace) = &call.trace {
        builder = builder.header("traceparent", trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            builder = builder.header("tracestate", &**state);
        }
    }
    for (name, value) in extra {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| Failure::permanent("invalid_request", format!("request to {uri}: {e}")))
}

/// The header that carries `credentials`, marked sensitive so HTTP/2 never indexes it.
fn credential_header(credentials: &Credentials, secret: &Secret) -> Result<(HeaderName, HeaderValue), String> {
    let (name, text) = match credentials {
        Credentials::Bearer { .. } => (AUTHORIZATION, format!("Bearer {}", secret.expose())),
        Credentials::Basic { username, .. } => {
            let pair = format!("{username}:{}", secret.expose());
            (AUTHORIZATION, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
        }
        Credentials::Header { header, .. } => {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| format!("invalid header {header:?}"))?;
            (name, secret.expose().to_owned())
        }
    };
    // The value is not quoted: the secret would be in the message.
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| format!("secret {} is not a valid header value", credentials.secret()))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// `failure` with every occurrence of the secret's value replaced by `***`.
fn redact(mut failure: Failure, secret: &Secret) -> Failure {
    if failure.message.contains(secret.expose()) {
        failure.message = failure.message.replace(secret.expose(), "***");
    }
    failure
}

/// Reads at most `limit` bytes of `body`; true when there was more (the rest is not read, so
/// the connection is closed rather than pooled).
async fn read(mut body: Incoming, limit: usize) -> Result<(Vec<u8>, bool), hyper::Error> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        if buf.len() + data.len() > limit {
            buf.extend_from_slice(&data[..limit - buf.len()]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf, false))
}

/// Maps a response to an output or a failure.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], output: ResponsePart) -> Result<Value, Failure> {
    let class = format!("http_{}", status.as_u16());
    if status.is_success() {
        let body = decode(status, headers, body)?;
        return Ok(match output {
            ResponsePart::Body => body,
            ResponsePart::Response => {
                let mut fields = Map::new();
                for name in headers.keys() {
                    let values: Vec<String> = headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    fields.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
                }
                serde_json::json!({"status": status.as_u16(), "headers": fields, "body": body})
            }
        });
    }
    let message = if body.is_empty() { status.to_string() } else { quote(body, ERROR_QUOTE) };
    if matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS) || status.is_server_error() {
        Err(Failure::retryable(&class, message))
    } else {
        Err(Failure::permanent(&class, message))
    }
}

/// A success body as a value: empty is `null`, JSON as it is, other `text/plain` a string.
fn decode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Result<Value, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).or_else(|e| {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        // Only plain text: an HTML page on a 2xx is more often a proxy's than the service's answer.
        if content_type.starts_with("text/plain") {
            return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        Err(Failure::permanent(
            "invalid_json",
            format!("{status} body is not JSON ({e}): {:?}", quote(body, JSON_QUOTE)),
        ))
    })
}

/// The first `max` bytes of `body` as text.
fn quote(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, expected: Result<Value, (bool, &str, &str)>) {
        let actual =
            classify(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body.as_bytes(), ResponsePart::Body)
                .map_err(|f| (f.retryable, f.class, f.message));
        match (actual, expected) {
            (Ok(a), Ok(e)) => assert_eq!(a, e, "{status} {body:?}"),
            (Err((retryable, class, message)), Err((e_retryable, e_class, e_contains))) => {
                assert_eq!((retryable, class.as_str()), (e_retryable, e_class), "{status} {body:?}");
                assert!(message.contains(e_contains), "{message:?} lacks {e_contains:?}");
            }
            (actual, expected) => panic!("{status} {body:?}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn responses_are_classified() {
        check(200, r#"{"a": 1}"#, Ok(serde_json::json!({"a": 1})));
        check(201, "[1, 2]", Ok(serde_json::json!([1, 2])));
        check(200, "", Ok(Value::Null));
        check(204, " \n", Ok(Value::Null));
        check(200, "hello", Err((false, "invalid_json", "\"hello\"")));
        check(200, &"x".repeat(100), Err((false, "invalid_json", &format!("\"{}\"", "x".repeat(64)))));
        check(408, "slow", Err((true, "http_408", "slow")));
        check(429, "later", Err((true, "http_429", "later")));
        check(500, "boom", Err((true, "http_500", "boom")));
        check(503, "", Err((true, "http_503", "503 Service Unavailable")));
        check(400, "bad input", Err((false, "http_400", "bad input")));
        check(404, "", Err((false, "http_404", "404 Not Found")));
        check(409, "{}", Err((false, "http_409", "{}")));
        check(302, "", Err((false, "http_302", "302 Found")));
    }

    #[test]
    fn text_bodies_are_strings_and_the_whole_response_can_be_the_output() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        let body = classify(StatusCode::OK, &headers, b"pong", ResponsePart::Body).unwrap();
        assert_eq!(body, Value::String("pong".to_owned()));
        let whole = classify(StatusCode::CREATED, &headers, b"pong", ResponsePart::Response).unwrap();
        assert_eq!(
            whole,
            serde_json::json!({
                "status": 201,
                "headers": {"content-type": "text/plain; charset=utf-8", "x-tag": "a, b"},
                "body": "pong",
            })
        );
    }

    #[test]
    fn error_bodies_are_quoted_up_to_200_bytes() {
        let body = "y".repeat(500);
        let failure =
            classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), body.as_bytes(), ResponsePart::Body).unwrap_err();
        assert_eq!(failure.message, "y".repeat(200));
    }

    #[test]
    fn step_paths_join_the_service_url() {
        let check =
            |url: &str, extra: &str, expected: &str| assert_eq!(join(url, extra).unwrap().to_string(), expected);
        check("http://h/api", "", "http://h/api");
        check("http://h/api/", "/items/1", "http://h/api/items/1");
        check("http://h/api?key=1", "/items?a=b", "http://h/api/items?key=1&a=b");
        check("https://h:8443", "?a=b", "https://h:8443/?a=b");
    }

    #[tokio::test]
    async fn an_unknown_service_fails_permanently() {
        let config = HttpConfig { roots: TrustRoots::empty(), ..HttpConfig::default() };
        let invoker = config.build(Arc::new(|_: &ServiceId| None));
        let call = Call::new(
            baton_core::ExecutionId::generate(),
            "a".parse().unwrap(),
            1,
            ServiceId::new("nowhere").unwrap(),
            Value::Null,
        );
        let failure = invoker.invoke(call).await.unwrap_err();
        assert_eq!((failure.retryable, failure.class.as_str()), (false, "unknown_service"));
        assert!(failure.message.contains("nowhere"), "{failure}");
    }
}
