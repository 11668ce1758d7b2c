//! Baton's web console: services, workflows, executions and the planner in a browser.
//!
//! What it is for: people looking at and steering a running server. Every page is rendered
//! here, on the server, from the same ports the gRPC facade serves (`ServiceDirectory`,
//! `Planning`, `WorkflowCatalog`, `Executions`, `Orchestrating`) plus the [`Activity`] read
//! model, so no rule of Baton is implemented twice. HTML comes from `maud` templates, which
//! escape every value they are given; graphs are laid out in Rust and drawn as SVG
//! ([`graph`]). A small script (`assets/app.js`, embedded in the binary like the style sheet)
//! keeps an execution page live over server-sent events fed by `Executions::watch`, validates
//! JSON before a form is sent and asks before cancelling. A strict Content-Security-Policy
//! allows no inline script or style.
//!
//! Security (`auth.rs`): with bearer tokens configured, every page needs a login with one of
//! them (a session cookie, HttpOnly and SameSite=Strict); without tokens only IP-literal or
//! `localhost` hosts are served, which defeats DNS rebinding of a loopback console. Every POST
//! carries a CSRF token matched against a cookie, and a cross-site POST is refused.
//!
//! What it is not for: an API. Scripts use gRPC; the console's URLs are for people and links.

mod auth;
mod diff;
mod executions;
pub mod graph;
mod overview;
mod planner;
mod services;
mod view;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_core::{Activity, ApiError, Executions, Orchestrating, Planning, ServiceDirectory, WorkflowCatalog};
use tokio::sync::watch;

pub use crate::auth::TokenCheck;

/// The ports the console reads and acts through.
#[derive(Clone)]
pub struct Backends {
    /// Services.
    pub directory: Arc<dyn ServiceDirectory>,
    /// Plans for goals.
    pub planner: Arc<dyn Planning>,
    /// Workflow definitions.
    pub workflows: Arc<dyn WorkflowCatalog>,
    /// Executions.
    pub executions: Arc<dyn Executions>,
    /// Plan and run a goal.
    pub orchestrator: Arc<dyn Orchestrating>,
    /// What happened lately.
    pub activity: Arc<dyn Activity>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// How the console is served.
#[derive(Clone, Default)]
pub struct Config {
    /// `Some`: a login with a token it accepts is needed for every page. `None`: open, for
    /// loopback hosts only.
    pub tokens: Option<TokenCheck>,
    /// Served over TLS: cookies get the `Secure` attribute.
    pub secure_cookies: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("tokens", &self.tokens.is_some())
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

/// What every handler shares.
struct Console {
    backends: Backends,
    auth: auth::Auth,
    /// Turns true on shutdown: live streams end so a graceful shutdown does not wait for them.
    stopping: watch::Receiver<bool>,
}

type Shared = Arc<Console>;

/// The console's router over `backends`; live streams end when `stopping` turns true.
pub fn router(config: Config, backends: Backends, stopping: watch::Receiver<bool>) -> Router {
    let console = Arc::new(Console { backends, auth: auth::Auth::new(config), stopping });
    let pages = Router::new()
        .route("/", get(overview::page))
        .route("/services", get(services::list))
        .route("/services/{id}", get(services::page))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{name}", get(workflows::page))
        .route("/executions", get(executions::list).post(executions::start))
        .route("/executions/{id}", get(executions::page))
        .route("/executions/{id}/live", get(executions::live))
        .route("/executions/{id}/events", get(executions::events))
        .route("/executions/{id}/pause", post(executions::pause))
        .route("/executions/{id}/resume", post(executions::resume))
        .route("/executions/{id}/cancel", post(executions::cancel))
        .route("/executions/{id}/signal", post(executions::signal))
        .route("/planner", get(planner::form).post(planner::plan))
        .route("/planner/run", post(planner::run))
        .route("/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&console), auth::require_login));
    Router::new()
        .merge(pages)
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/assets/{file}", get(asset))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&console), auth::guard))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// No inline script or style, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The embedded assets: `(name, content type, bytes)`.
const ASSETS: [(&str, &str, &str); 3] = [
    ("app.css", "text/css; charset=utf-8", include_str!("../assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
    ("icon.svg", "image/svg+xml", include_str!("../assets/icon.svg")),
];

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=3600")], *body)
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn not_found(State(console): State<Shared>, context: auth::Context) -> Response {
    let _ = console;
    view::error_page(&context, StatusCode::NOT_FOUND, "Not found", "There is no page at this address.")
}

/// An error a page shows: the server's message verbatim (escaped), with a fitting status.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        let status = match &error {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            ApiError::AlreadyExists(_) | ApiError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ApiError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

impl From<baton_core::Error> for PageError {
    fn from(error: baton_core::Error) -> Self {
        ApiError::from(error).into()
    }
}

#[cfg(test)]
mod tests;
