//! The HTTP invoker: a JSON POST to each service's URL over a pooled HTTP/1 client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{CONTENT_TYPE, HeaderValue};
use ::http::{Method, Request as Request_, StatusCode, Uri};
use baton_core::ServiceId;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use crate::invoker::{Call, Failure, Invoker};
use crate::request::{Request, Response};

/// How many bytes of an error response's body a failure message quotes.
const ERROR_QUOTE: usize = 200;
/// How many bytes of a non-JSON success body an `invalid_json` failure quotes.
const JSON_QUOTE: usize = 64;

/// Maps a service to its URL (`http://` only), or `None` for a service it does not know.
pub type Resolve = Arc<dyn Fn(&ServiceId) -> Option<String> + Send + Sync>;

/// How the HTTP invoker talks to services.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest response body accepted; a larger successful response fails permanently with
    /// `response_too_large`.
    pub max_response_bytes: usize,
    /// Time limit of establishing a connection; `None` leaves it to the operating system.
    /// Whole-call limits are the executor's per-attempt timeouts.
    pub connect_timeout: Option<Duration>,
    /// Origins that requests a workflow writes itself (`call: http`, `call: openapi`) reach
    /// elsewhere: a server setting, never a definition's.
    pub origins: Origins,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_response_bytes: 1024 * 1024,
            connect_timeout: Some(Duration::from_secs(5)),
            origins: Origins::default(),
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
    /// An invoker that POSTs each call to the URL `resolve` returns for its service
    /// (`http://` only); a service it returns `None` for fails with `unknown_service`.
    ///
    /// Needs a tokio runtime when calls are made, not when built.
    pub fn build(self, resolve: Resolve) -> HttpInvoker {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(self.connect_timeout);
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        HttpInvoker { config: self, resolve, client }
    }
}

/// Calls services by HTTP: a JSON POST of the call's payload, classified into an output or a
/// [`Failure`]. Cheap to clone; clones share one connection pool.
///
/// Each request carries `Idempotency-Key`, `X-Baton-Execution`, `X-Baton-Step` and
/// `X-Baton-Attempt`. A 2xx JSON body is the output (an empty one is `null`); 408, 429 and 5xx
/// are retryable `http_{code}`; other statuses are permanent `http_{code}`; a 2xx body that is
/// not JSON is a permanent `invalid_json`; transport errors are retryable `connect`. Dropping
/// a call abandons its request.
#[derive(Clone)]
pub struct HttpInvoker {
    config: HttpConfig,
    resolve: Resolve,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for HttpInvoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpInvoker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Invoker for HttpInvoker {
    async fn send(&self, request: Request) -> Result<Response, Failure> {
        HttpInvoker::send(self, request).await
    }

    async fn invoke(&self, call: Call) -> Result<Value, Failure> {
        let Some(url) = (self.resolve)(&call.service) else {
            return Err(Failure::permanent("unknown_service", format!("no URL for service {}", call.service)));
        };
        let request = request(&url, &call)?;
        let response = self.client.request(request).await.map_err(|e| Failure::retryable("connect", chain(&e)))?;
        let status = response.status();
        let (body, truncated) = read(response.into_body(), self.config.max_response_bytes)
            .await
            .map_err(|e| Failure::retryable("connect", chain(&e)))?;
        if truncated && status.is_success() {
            return Err(Failure::permanent(
                "response_too_large",
                format!("response of service {} exceeds {} bytes", call.service, self.config.max_response_bytes),
            ));
        }
        classify(status, &body)
    }
}

impl HttpInvoker {
    /// Sends a request a workflow wrote itself, after mapping its origin
    /// ([`HttpConfig::origins`]). Plain `http://` only: `https://` needs TLS, which this
    /// client does not speak, so such a request fails unless its origin is mapped.
    pub async fn send(&self, request: Request) -> Result<Response, Failure> {
        let parsed = url::Url::parse(&request.url)
            .map_err(|e| Failure::permanent("invalid_url", format!("url {:?}: {e}", request.url)))?;
        let url = self.config.origins.apply(parsed);
        if url.scheme() != "http" {
            return Err(Failure::permanent(
                "unsupported_scheme",
                format!("{url}: this server's HTTP client speaks plain http only (no TLS)"),
            ));
        }
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|e| Failure::permanent("invalid_request", format!("method {:?}: {e}", request.method)))?;
        let mut builder = Request_::builder().method(method).uri(url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = Full::new(Bytes::from(request.body.unwrap_or_default()));
        let outgoing =
            builder.body(body).map_err(|e| Failure::permanent("invalid_request", format!("request to {url}: {e}")))?;
        let response = self.client.request(outgoing).await.map_err(|e| Failure::retryable("connect", chain(&e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let (body, truncated) = read(response.into_body(), self.config.max_response_bytes)
            .await
            .map_err(|e| Failure::retryable("connect", chain(&e)))?;
        if truncated {
            return Err(Failure::permanent(
                "response_too_large",
                format!("the response of {url} exceeds {} bytes", self.config.max_response_bytes),
            ));
        }
        Ok(Response { status, headers, body })
    }
}

/// The POST of `call` to `url`.
fn request(url: &str, call: &Call) -> Result<Request_<Full<Bytes>>, Failure> {
    let uri: Uri = url.parse().map_err(|e| Failure::permanent("invalid_url", format!("url {url:?}: {e}")))?;
    let body = serde_json::to_vec(&call.payload).map_err(|e| Failure::permanent("invalid_payload", e.to_string()))?;
    Request_::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("idempotency-key", call.idempotency_key())
        .header("x-baton-execution", call.execution.to_string())
        .header("x-baton-step", call.step.as_str())
        .header("x-baton-attempt", call.attempt.to_string())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure::permanent("invalid_request", format!("request to {url:?}: {e}")))
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
fn classify(status: StatusCode, body: &[u8]) -> Result<Value, Failure> {
    let class = format!("http_{}", status.as_u16());
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(body).map_err(|e| {
            Failure::permanent(
                "invalid_json",
                format!("{status} body is not JSON ({e}): {:?}", quote(body, JSON_QUOTE)),
            )
        });
    }
    let message = if body.is_empty() { status.to_string() } else { quote(body, ERROR_QUOTE) };
    if matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS) || status.is_server_error() {
        Err(Failure::retryable(&class, message))
    } else {
        Err(Failure::permanent(&class, message))
    }
}

/// The first `max` bytes of `body` as text.
fn quote(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
}

/// An error's message followed by those of its sources, which carry the useful part
/// (e.g. "client error (Connect): tcp connect error: Connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, expected: Result<Value, (bool, &str, &str)>) {
        let actual = classify(StatusCode::from_u16(status).unwrap(), body.as_bytes())
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
    fn error_bodies_are_quoted_up_to_200_bytes() {
        let body = "y".repeat(500);
        let failure = classify(StatusCode::BAD_GATEWAY, body.as_bytes()).unwrap_err();
        assert_eq!(failure.message, "y".repeat(200));
    }

    #[tokio::test]
    async fn an_unknown_service_fails_permanently() {
        let invoker = HttpConfig::default().build(Arc::new(|_: &ServiceId| None));
        let call = Call {
            execution: baton_core::ExecutionId::generate(),
            step: "a".parse().unwrap(),
            attempt: 1,
            service: ServiceId::new("nowhere").unwrap(),
            payload: Value::Null,
        };
        let failure = invoker.invoke(call).await.unwrap_err();
        assert_eq!((failure.retryable, failure.class.as_str()), (false, "unknown_service"));
        assert!(failure.message.contains("nowhere"), "{failure}");
    }
}
