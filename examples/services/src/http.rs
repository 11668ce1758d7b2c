//! The HTTP side: one POST endpoint per service that performs its effect once per
//! `Idempotency-Key`, plus `GET /stats`, `GET /stats/keys` and `GET /health`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, watch};

use crate::keys::Keys;
use crate::shop::{self, Kind};

/// Counters of one service since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// POSTs received, whatever became of them.
    pub requests: u64,
    /// Effects performed: reservations made, charges taken, parcels shipped.
    pub effects: u64,
    /// Requests answered with the stored response of an earlier effect under the same key.
    pub duplicates: u64,
    /// Requests answered with an error: bad input (400), injected failures and lost
    /// responses (503), a killed service (503).
    pub failures: u64,
}

/// Where a service is in its life; handlers stop performing effects once it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Running,
    /// Shutting down gracefully: deregister, then finish in-flight requests.
    Stopping,
    /// Stopping at once, as if the process died: no deregistration, no more effects.
    Killed,
}

/// What a service remembers of one idempotency key.
#[derive(Debug, Default)]
struct Remembered {
    /// The stored response; empty until an effect succeeds, so a failed attempt leaves it for
    /// the retry and concurrent requests wait for the first.
    response: Arc<OnceCell<Value>>,
    /// Effects performed (at most 1 here; summed across instances by tests).
    effects: u64,
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) latency: Duration,
    pub(crate) fail_rate: f64,
    pub(crate) lose_rate: f64,
    pub(crate) mode: watch::Receiver<Mode>,
    /// The bearer token every effect request must carry; `None`: none needed.
    pub(crate) bearer: Option<String>,
    rng: Mutex<SmallRng>,
    /// What each idempotency key has come to, for the service's idempotency window.
    keys: Mutex<Keys<Remembered>>,
    /// The `traceparent` of the latest requests, oldest first.
    traceparents: Mutex<std::collections::VecDeque<String>>,
    /// The `X-Baton-Node` of the latest requests that had one, with when they came, oldest first.
    callers: Mutex<std::collections::VecDeque<(String, std::time::Instant)>>,
    requests: AtomicU64,
    effects: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("kind", &self.kind).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments, reason = "one per part of a service's behaviour, named at the one caller")]
    pub(crate) fn new(
        kind: Kind,
        id: String,
        latency: Duration,
        (fail_rate, lose_rate): (f64, f64),
        seed: u64,
        mode: watch::Receiver<Mode>,
        bearer: Option<String>,
        idempotency_window: Duration,
    ) -> Self {
        Self {
            kind,
            id,
            latency,
            fail_rate,
            lose_rate,
            mode,
            bearer,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            keys: Mutex::new(Keys::new(idempotency_window)),
            traceparents: Mutex::default(),
            callers: Mutex::default(),
            requests: AtomicU64::new(0),
            effects: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            effects: self.effects.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Effects per key, of the keys within the idempotency window that had one.
    pub(crate) fn key_effects(&self) -> BTreeMap<String, u64> {
        let keys = self.keys.lock();
        keys.live().filter(|(_, k)| k.effects > 0).map(|(key, k)| (key.to_owned(), k.effects)).collect()
    }

    pub(crate) fn traceparents(&self) -> Vec<String> {
        self.traceparents.lock().iter().cloned().collect()
    }

    pub(crate) fn callers(&self) -> Vec<(String, std::time::Instant)> {
        self.callers.lock().iter().cloned().collect()
    }

    /// True with probability `rate`.
    fn roll(&self, rate: f64) -> bool {
        rate > 0.0 && self.rng.lock().random_bool(rate.min(1.0))
    }

    fn killed(&self) -> bool {
        *self.mode.borrow() == Mode::Killed
    }

    /// Waits out the latency, then performs the effect unless the service was killed or a
    /// failure is injected. Errors are answers to send.
    async fn perform(&self, key: Option<&str>, order: &shop::Order) -> Result<Value, Response> {
        if !self.latency.is_zero() {
            let mut mode = self.mode.clone();
            tokio::select! {
                () = tokio::time::sleep(self.latency) => {}
                _ = mode.wait_for(|m| *m == Mode::Killed) => {}
            }
        }
        if self.killed() {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("service {} was killed", self.id)));
        }
        if self.roll(self.fail_rate) {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("injected failure in service {}", self.id)));
        }
        let sequence = self.effects.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(key) = key {
            self.keys.lock().entry(key, Remembered::default).effects += 1;
        }
        Ok(shop::answer(self.kind, &self.id, sequence, order))
    }
}

/// The service's routes over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(shared.kind.path(), post(effect))
        .route("/stats", get(stats))
        .route("/stats/keys", get(keys))
        .route("/health", get(health))
        .with_state(shared)
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "null".to_owned());
    (status, [(CONTENT_TYPE, "application/json")], text).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    json_response(status, &json!({"error": message}))
}

/// How many `traceparent`s a service remembers.
const TRACEPARENTS_KEPT: usize = 10_000;

async fn effect(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut kept = shared.traceparents.lock();
        if kept.len() == TRACEPARENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(traceparent.to_owned());
    }
    if let Some(node) = headers.get("x-baton-node").and_then(|v| v.to_str().ok()) {
        let mut kept = shared.callers.lock();
        if kept.len() == TRACEPARENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back((node.to_owned(), std::time::Instant::now()));
    }
    let answer = answer(&shared, &headers, &body).await;
    if !answer.status().is_success() {
        shared.failures.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

async fn answer(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(token) = &shared.bearer {
        let sent = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // The message does not quote what was sent: it may be a credential.
        if sent != Some(token.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required".to_owned());
        }
    }
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
        }
    };
    let order = match shop::parse(shared.kind, &payload) {
        Ok(order) => order,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if !key.is_empty() => Some(key.to_owned()),
        Some(_) => return error(StatusCode::BAD_REQUEST, "header Idempotency-Key must be non-empty text".to_owned()),
    };
    let Some(key) = key else {
        // Without a key every request is a new effect, as with any non-idempotent API.
        return match shared.perform(None, &order).await {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(response) => response,
        };
    };
    let cell = Arc::clone(&shared.keys.lock().entry(&key, Remembered::default).response);
    let performed = AtomicBool::new(false);
    let stored = cell
        .get_or_try_init(|| async {
            performed.store(true, Ordering::Relaxed);
            shared.perform(Some(&key), &order).await
        })
        .await;
    match stored {
        Ok(answer) if performed.load(Ordering::Relaxed) => {
            if shared.roll(shared.lose_rate) {
                // The effect happened and its response is stored, but the caller never hears:
                // its retry must get the stored response rather than a second effect. Half the
                // lost answers are a 503, half a connection cut mid-answer.
                if shared.roll(0.5) {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    return cut();
                }
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("injected failure after the effect in service {} (response lost)", shared.id),
                );
            }
            json_response(StatusCode::OK, answer)
        }
        Ok(answer) => {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, answer)
        }
        Err(response) => response,
    }
}

/// A 200 whose body fails before its first byte: the server aborts the connection, so the
/// caller gets the headers and then a broken transfer, an answer lost on the way.
fn cut() -> Response {
    let mut response = Response::new(axum::body::Body::new(Cut));
    response.headers_mut().insert(CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    response
}

struct Cut;

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("injected cut: the answer is lost"))))
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.stats())
}

async fn keys(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.key_effects())
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.killed() {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("service {} was killed", shared.id));
    }
    json_response(StatusCode::OK, &json!({"status": "ok", "id": shared.id, "kind": shared.kind.name()}))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn service(window: Duration) -> (Shared, watch::Sender<Mode>) {
        let (mode, mode_rx) = watch::channel(Mode::Running);
        let shared =
            Shared::new(Kind::Payments, "payments".to_owned(), Duration::ZERO, (0.0, 0.0), 1, mode_rx, None, window);
        (shared, mode)
    }

    async fn charge(shared: &Shared, key: &str) -> Value {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        let response = answer(shared, &headers, br#"{"amount": 12.5}"#).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_answers_from_its_stored_response_until_its_window_passes() {
        let (shared, _mode) = service(24 * HOUR);
        let first = charge(&shared, "e1/charge").await;
        tokio::time::advance(23 * HOUR).await;
        assert_eq!(charge(&shared, "e1/charge").await, first, "a retry within the window");
        assert_eq!((shared.stats().effects, shared.stats().duplicates), (1, 1));
        assert_eq!(shared.key_effects(), BTreeMap::from([("e1/charge".to_owned(), 1)]));

        tokio::time::advance(HOUR).await;
        assert!(shared.key_effects().is_empty(), "forgotten after 24 hours");
        let again = charge(&shared, "e1/charge").await;
        assert_ne!(again["receipt"], first["receipt"], "a new effect under the old key");
        assert_eq!((shared.stats().effects, shared.stats().duplicates), (2, 1));
        assert_eq!(shared.key_effects(), BTreeMap::from([("e1/charge".to_owned(), 1)]));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_past_their_window_are_evicted_as_requests_come() {
        let (shared, _mode) = service(HOUR);
        for i in 0..200 {
            charge(&shared, &format!("old/{i}")).await;
        }
        tokio::time::advance(HOUR).await;
        for i in 0..10 {
            charge(&shared, &format!("new/{i}")).await;
        }
        assert_eq!(shared.keys.lock().held(), 10, "the 200 expired keys are gone");
    }
}
