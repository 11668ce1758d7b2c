//! A tower layer counting gRPC calls by method and status code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use baton_executor::GRPC_CODE_NAMES as CODES;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

const OK: u16 = 0;
const CANCELLED: u16 = 1;
const UNKNOWN: u16 = 2;
const UNIMPLEMENTED: u16 = 12;
const UNAUTHENTICATED: u16 = 16;

/// The method label of calls to no method the server has: clients choose paths, so they must
/// not choose label values.
const UNMATCHED: &str = "unmatched";

/// The longest path kept as a method label.
const MAX_METHOD_LEN: usize = 160;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The families the layer feeds.
#[derive(Debug)]
pub(crate) struct GrpcMetrics {
    requests: Family<CallLabels, Counter>,
    unauthenticated: Counter,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

/// 0.5 ms to about 16 s, doubling.
fn grpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl GrpcMetrics {
    /// The families, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            requests: Family::default(),
            unauthenticated: Counter::default(),
            durations: Family::new_with_constructor(grpc_histogram),
        };
        registry.register(
            "baton_grpc_requests",
            "gRPC calls finished, by method and status code",
            this.requests.clone(),
        );
        registry.register(
            "baton_grpc_unauthenticated",
            "gRPC calls refused as UNAUTHENTICATED",
            this.unauthenticated.clone(),
        );
        registry.register(
            "baton_grpc_request_duration_seconds",
            "Time from a gRPC request to its response headers, by method: a unary call's whole handling, \
             a streaming call's setup",
            this.durations.clone(),
        );
        this
    }

    fn count(&self, method: &str, code: u16) {
        let method = if code == UNIMPLEMENTED { UNMATCHED } else { method };
        let code = CODES.get(usize::from(code)).copied().unwrap_or(CODES[usize::from(UNKNOWN)]);
        self.requests.get_or_create(&CallLabels { method: method.to_owned(), code }).inc();
        if code == CODES[usize::from(UNAUTHENTICATED)] {
            self.unauthenticated.inc();
        }
    }
}

/// `path` when it has the shape of a gRPC method, `/package.Service/Method`.
fn method_label(path: &str) -> &str {
    let well_formed = path.len() <= MAX_METHOD_LEN
        && path.strip_prefix('/').and_then(|rest| rest.split_once('/')).is_some_and(|(service, method)| {
            let name =
                |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
            name(service) && name(method)
        });
    if well_formed { path } else { UNMATCHED }
}

/// The code of a `grpc-status` header or trailer; a malformed one is `UNKNOWN`.
fn status_code(headers: &http::HeaderMap) -> Option<u16> {
    let value = headers.get("grpc-status")?;
    Some(value.to_str().ok().and_then(|v| v.parse::<u16>().ok()).filter(|&c| c <= 16).unwrap_or(UNKNOWN))
}

/// A tower [`Layer`](tower_layer::Layer) over a gRPC server's services, from
/// [`Metrics::grpc_layer`](super::Metrics::grpc_layer): use it as
/// `tonic::transport::Server::builder().layer(metrics.grpc_layer())`.
///
/// It counts each call once by method and status code: the `grpc-status` of a trailers-only
/// response (how tonic answers an error status), else the one in the body's trailers; a body
/// that ends without one is `OK`, a call dropped before its end (the client went away) is
/// `CANCELLED`. Paths that are no gRPC method, and calls answered `UNIMPLEMENTED`, count under
/// method `unmatched`.
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcLayer {
    pub(crate) fn new(metrics: Arc<GrpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// The service [`GrpcLayer`] wraps around a gRPC server's.
#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<GrpcBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            method: method_label(request.uri().path()).to_owned(),
            start: Instant::now(),
        };
        ResponseFuture { inner: self.inner.call(request), tally: Tally(Some(call)) }
    }
}

/// One call not counted yet.
#[derive(Debug)]
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: String,
    start: Instant,
}

/// Counts its call once: when told the code, or as `CANCELLED` when dropped before.
#[derive(Debug)]
struct Tally(Option<Call>);

impl Tally {
    fn finish(&mut self, code: u16) {
        if let Some(call) = self.0.take() {
            call.metrics.count(&call.method, code);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

pin_project! {
    /// The response future of a [`GrpcService`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        tally: Tally,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GrpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut tally = Tally(this.tally.0.take());
        match result {
            Ok(response) => {
                let code = status_code(response.headers());
                if let Some(call) = &tally.0 {
                    let method = if code == Some(UNIMPLEMENTED) { UNMATCHED } else { call.method.as_str() };
                    let labels = MethodLabels { method: method.to_owned() };
                    call.metrics.durations.get_or_create(&labels).observe(call.start.elapsed().as_secs_f64());
                }
                if let Some(code) = code {
                    tally.finish(code);
                }
                Poll::Ready(Ok(response.map(|inner| GrpcBody { inner, tally })))
            }
            Err(error) => {
                tally.finish(UNKNOWN);
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project! {
    /// A response body that reads the `grpc-status` of its trailers as they pass.
    #[derive(Debug)]
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        tally: Tally,
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.tally.finish(status_code(trailers).unwrap_or(UNKNOWN));
                }
            }
            Some(Err(_)) => this.tally.finish(UNKNOWN),
            None => this.tally.finish(OK),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_method_shaped_paths_become_labels() {
        for (path, label) in [
            ("/baton.v1.ExecutionService/StartExecution", "/baton.v1.ExecutionService/StartExecution"),
            ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"),
            ("/", UNMATCHED),
            ("/a/b/c", UNMATCHED),
            ("/svc/", UNMATCHED),
            ("/svc/m%20x", UNMATCHED),
            (&format!("/s/{}", "m".repeat(MAX_METHOD_LEN)), UNMATCHED),
        ] {
            assert_eq!(method_label(path), label, "{path}");
        }
    }

    #[test]
    fn status_codes_read_from_headers() {
        let check = |value: Option<&str>, expected: Option<u16>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = value {
                headers.insert("grpc-status", value.parse().unwrap());
            }
            assert_eq!(status_code(&headers), expected, "{value:?}");
        };
        check(None, None);
        check(Some("0"), Some(OK));
        check(Some("16"), Some(UNAUTHENTICATED));
        check(Some("17"), Some(UNKNOWN));
        check(Some("x"), Some(UNKNOWN));
    }
}
