//! Who may call, and how often: bearer tokens and a per-connection request rate, checked by one
//! tower layer in front of every service before a request body is read.
//!
//! The rate limit counts every request, health checks included, so that a flood is cut before it
//! costs a token comparison or a decode. Tokens are asked of every method but health and
//! reflection, which load balancers and tools call without credentials.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The paths served without a token: health and reflection.
const OPEN_PREFIXES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// The bearer tokens a request may present, any one of them. Its `Debug` output never shows a
/// token.
#[derive(Clone)]
pub struct Tokens {
    tokens: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("count", &self.tokens.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// The set of `tokens`: at least one, each non-empty visible ASCII without spaces (what an
    /// HTTP header carries after `Bearer `).
    pub fn new(tokens: Vec<String>) -> crate::Result<Self> {
        if tokens.is_empty() {
            return Err(crate::Error::Tokens("there must be at least one token".to_owned()));
        }
        let mut checked = Vec::with_capacity(tokens.len());
        for (index, token) in tokens.into_iter().enumerate() {
            // The message names the token by position: it must not print the secret.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(crate::Error::Tokens(format!(
                    "token {} must be non-empty visible ASCII without spaces",
                    index + 1
                )));
            }
            checked.push(token.into_bytes().into_boxed_slice());
        }
        Ok(Self { tokens: checked })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true: a set has at least one token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// True when `presented` is one of the tokens. Every token is compared in full, in time that
    /// depends on the presented token's length only, so timing tells neither which token nor
    /// how much of one matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut accepted = false;
        for token in &self.tokens {
            accepted |= constant_time_eq(token, presented);
        }
        accepted
    }
}

/// Compares a secret with a presented value in time that depends on `presented.len()` only:
/// no early exit, and the secret is read cyclically rather than bounds-checked.
fn constant_time_eq(secret: &[u8], presented: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut diff = u8::from(secret.len() != presented.len());
    for (index, byte) in presented.iter().enumerate() {
        diff |= byte ^ secret[index % secret.len()];
    }
    // Keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// A token bucket per connection: `rate` requests a second, bursts of up to `rate`.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_connection: HashMap<SocketAddr, Bucket>,
    last_sweep: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Limiter {
    fn new(rate: NonZeroU32, now: Instant) -> Self {
        let rate = f64::from(rate.get());
        Self { rate, burst: rate, state: Mutex::new(Buckets { by_connection: HashMap::new(), last_sweep: now }) }
    }

    /// How long an idle bucket takes to refill: after that it is as good as a new one.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate)
    }

    /// Takes a token from `connection`'s bucket; false when it is empty.
    fn admit(&self, connection: SocketAddr, now: Instant) -> bool {
        // A panic elsewhere cannot leave a bucket half-updated: every update is one assignment.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let refill = self.refill_time();
        // Closed connections are never announced, so buckets that have refilled are dropped;
        // forgetting a full bucket changes nothing, since a new one starts full.
        if now.saturating_duration_since(state.last_sweep) >= refill {
            state.by_connection.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < refill);
            state.last_sweep = now;
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = state.by_connection.entry(connection).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().unwrap().by_connection.len()
    }
}

/// What the guard checks, shared by every connection.
#[derive(Debug)]
struct Rules {
    tokens: Option<Tokens>,
    limiter: Option<Limiter>,
}

impl Rules {
    /// The status refusing `request`, or `None` to let it through.
    fn refuse<B>(&self, request: &http::Request<B>) -> Option<tonic::Status> {
        if let Some(limiter) = &self.limiter
            && let Some(connection) = remote_addr(request)
            && !limiter.admit(connection, Instant::now())
        {
            return Some(tonic::Status::resource_exhausted(format!(
                "rate limit of {} requests per second on this connection exceeded; slow down",
                limiter.rate
            )));
        }
        let tokens = self.tokens.as_ref()?;
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|open| path.starts_with(open)) {
            return None;
        }
        // The messages never repeat what was sent.
        let Some(value) = request.headers().get(http::header::AUTHORIZATION) else {
            return Some(tonic::Status::unauthenticated("missing credentials: send `authorization: Bearer <token>`"));
        };
        match bearer(value.as_bytes()) {
            Some(token) if tokens.accepts(token) => None,
            Some(_) => Some(tonic::Status::unauthenticated("invalid bearer token")),
            None => Some(tonic::Status::unauthenticated("malformed credentials: expected `Bearer <token>`")),
        }
    }
}

/// The token of an `authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The peer of the connection a request came on, which tonic records in its extensions.
fn remote_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))
}

/// The layer that puts a [`Guarded`] around the server's routes.
#[derive(Debug, Clone)]
pub(crate) struct GuardLayer {
    rules: Arc<Rules>,
}

impl GuardLayer {
    /// A guard asking for one of `tokens` (none: no authentication) and admitting `rate`
    /// requests per second per connection (none: no limit).
    pub(crate) fn new(tokens: Option<Tokens>, rate: Option<NonZeroU32>) -> Self {
        let limiter = rate.map(|rate| Limiter::new(rate, Instant::now()));
        Self { rules: Arc::new(Rules { tokens, limiter }) }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded { inner, rules: Arc::clone(&self.rules) }
    }
}

/// The services behind the guard: a request over its connection's rate is answered
/// `RESOURCE_EXHAUSTED`, one without a valid bearer token (when tokens are set) `UNAUTHENTICATED`,
/// both without reading its body. A layer given to [`Config::serve_with_layer`](crate::Config::serve_with_layer)
/// wraps this service, so it sees the refused calls too.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Guarded<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.rules.refuse(&request) {
            Some(status) => GuardedFuture { admitted: None, refused: Some(status.into_http()) },
            None => GuardedFuture { admitted: Some(self.inner.call(request)), refused: None },
        }
    }
}

pin_project! {
    /// The response future of a [`Guarded`] service.
    #[derive(Debug)]
    pub struct GuardedFuture<F, B> {
        // The inner service's answer, for a call let through.
        #[pin]
        admitted: Option<F>,
        // The trailers-only response of a refused call, until it is returned.
        refused: Option<http::Response<B>>,
    }
}

impl<F, B, E> Future for GuardedFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(response) = this.refused.take() {
            return Poll::Ready(Ok(response));
        }
        match this.admitted.as_pin_mut() {
            Some(admitted) => admitted.poll(cx),
            None => panic!("a refused call's future was polled after it completed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &[&str]) -> Tokens {
        Tokens::new(list.iter().map(|t| (*t).to_owned()).collect()).unwrap()
    }

    #[test]
    fn constant_time_eq_is_equality() {
        for (secret, presented, equal) in [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "ab", false),
            ("abc", "abcabc", false),
            ("abc", "", false),
            ("", "", false),
            ("s3cret-token", "s3cret-token", true),
        ] {
            assert_eq!(constant_time_eq(secret.as_bytes(), presented.as_bytes()), equal, "{secret:?} {presented:?}");
        }
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let set = tokens(&["alpha", "beta"]);
        assert!(set.accepts(b"alpha") && set.accepts(b"beta"));
        assert!(!set.accepts(b"alph") && !set.accepts(b"gamma") && !set.accepts(b""));
        assert!(!format!("{set:?}").contains("alpha"));
        for bad in
            [vec![], vec!["ok".to_owned(), String::new()], vec!["has space".to_owned()], vec!["tab\t".to_owned()]]
        {
            let error = Tokens::new(bad.clone()).unwrap_err().to_string();
            assert!(error.starts_with("bearer tokens:"), "{bad:?}: {error}");
            assert!(!error.contains("has space") && !error.contains("tab\t"), "{error}");
        }
    }

    #[test]
    fn bearer_values_parse() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
            ("Basic abc", None),
            ("", None),
        ] {
            assert_eq!(bearer(value.as_bytes()), token.map(str::as_bytes), "{value:?}");
        }
    }

    fn request(path: &str, authorization: Option<&str>, peer: Option<SocketAddr>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let mut request = request.body(()).unwrap();
        if let Some(peer) = peer {
            let info = TcpConnectInfo { local_addr: None, remote_addr: Some(peer) };
            request.extensions_mut().insert(info);
        }
        request
    }

    #[test]
    fn requests_need_a_token_except_health_and_reflection() {
        let rules = Rules { tokens: Some(tokens(&["s3cret"])), limiter: None };
        let check = |path: &str, authorization: Option<&str>| rules.refuse(&request(path, authorization, None));
        let method = "/baton.v1.RegistryService/ListServices";
        assert!(check(method, Some("Bearer s3cret")).is_none());
        for (authorization, message) in [
            (None, "missing credentials"),
            (Some("Bearer wrong"), "invalid bearer token"),
            (Some("Basic s3cret"), "malformed credentials"),
        ] {
            let status = check(method, authorization).unwrap();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().starts_with(message), "{}", status.message());
            assert!(!status.message().contains("wrong") && !status.message().contains("s3cret"));
        }
        assert!(check("/grpc.health.v1.Health/Check", None).is_none());
        assert!(check("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None).is_none());
        assert!(check("/grpc.health.v1.Healthy/Check", None).is_some());
        assert!(Rules { tokens: None, limiter: None }.refuse(&request(method, None, None)).is_none());
    }

    #[test]
    fn each_connection_has_its_own_bucket_which_refills() {
        let start = Instant::now();
        let limiter = Limiter::new(NonZeroU32::new(10).unwrap(), start);
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1000".parse().unwrap(), "10.0.0.1:1001".parse().unwrap());
        for _ in 0..10 {
            assert!(limiter.admit(a, start));
        }
        assert!(!limiter.admit(a, start), "the burst is spent");
        assert!(limiter.admit(b, start), "another connection is not affected");
        assert!(!limiter.admit(a, start + Duration::from_millis(50)), "half a token");
        assert!(limiter.admit(a, start + Duration::from_millis(110)), "a token refilled");
        assert!(!limiter.admit(a, start + Duration::from_millis(110)));
        // Once a connection has been idle long enough to refill, its bucket is forgotten.
        assert_eq!(limiter.tracked(), 2);
        assert!(limiter.admit(b, start + Duration::from_secs(2)));
        assert_eq!(limiter.tracked(), 1);
        for _ in 0..10 {
            assert!(limiter.admit(a, start + Duration::from_secs(2)));
        }
    }

    #[test]
    fn the_rate_limit_refuses_with_resource_exhausted_before_authentication() {
        let limiter = Limiter::new(NonZeroU32::new(1).unwrap(), Instant::now());
        let rules = Rules { tokens: Some(tokens(&["s3cret"])), limiter: Some(limiter) };
        let peer = Some("127.0.0.1:5000".parse().unwrap());
        let first = rules.refuse(&request("/grpc.health.v1.Health/Check", None, peer));
        assert!(first.is_none());
        let second = rules.refuse(&request("/baton.v1.RegistryService/ListServices", None, peer)).unwrap();
        assert_eq!(second.code(), tonic::Code::ResourceExhausted);
        // Without a known peer (no TCP connection), nothing is limited.
        assert!(rules.refuse(&request("/grpc.health.v1.Health/Check", None, None)).is_none());
    }
}
