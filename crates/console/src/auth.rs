//! Who may see the console and how its forms are protected.
//!
//! - Login: with tokens configured, `POST /login` with a token the check accepts opens a
//!   session: a random id kept in memory (12 hours, at most [`MAX_SESSIONS`]) and sent as the
//!   `baton_session` cookie, HttpOnly (no script reads it) and SameSite=Strict (no other site
//!   sends it). Without tokens the console is open, and serves only requests addressed to an
//!   IP literal or `localhost`: a page elsewhere cannot rebind its own name to the loopback
//!   console and read it.
//! - CSRF: every response that finds no `baton_csrf` cookie sets one (random, HttpOnly,
//!   SameSite=Strict); every form carries its value in a hidden field and a POST is accepted
//!   only when the two match. Browsers that say where a request comes from
//!   (`Sec-Fetch-Site`, `Origin`) get a cross-site POST refused before it is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use parking_lot::Mutex;
use rand::TryRngCore as _;
use serde::Deserialize;

use crate::{Config, PageError, Shared, view};

/// Says whether a presented bearer token is one of the server's (in constant time).
pub type TokenCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Sessions held at once; the oldest goes when a login needs room.
pub(crate) const MAX_SESSIONS: usize = 10_000;
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const SESSION_COOKIE: &str = "baton_session";
const CSRF_COOKIE: &str = "baton_csrf";

pub(crate) struct Auth {
    tokens: Option<TokenCheck>,
    secure: bool,
    /// Session id -> when it ends.
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    pub(crate) fn new(config: Config) -> Self {
        Self { tokens: config.tokens, secure: config.secure_cookies, sessions: Mutex::new(HashMap::new()) }
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
        HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"))
            .expect("cookie values are hex")
    }

    fn session_valid(&self, id: &str) -> bool {
        let mut sessions = self.sessions.lock();
        match sessions.get(id) {
            Some(end) if *end > Instant::now() => true,
            Some(_) => {
                sessions.remove(id);
                false
            }
            None => false,
        }
    }

    fn open_session(&self) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, end| *end > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, end)| **end).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + SESSION_TTL);
        id
    }
}

/// 32 random bytes from the operating system, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the operating system has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_token_text(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y))) == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// What a page knows of its visitor.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The CSRF token forms carry.
    pub(crate) csrf: String,
    /// Logins are needed (tokens are configured).
    pub(crate) login_required: bool,
    /// The visitor has a session.
    pub(crate) logged_in: bool,
}

impl Context {
    /// Refuses a form whose CSRF field does not match the cookie.
    pub(crate) fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        if same(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token does not match this browser's; reload the page and try again",
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Context>().cloned().ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Whether `host` (the Host header) names the machine itself by address or as `localhost`.
fn is_literal_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// A POST from another site, by what the browser says.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match (headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => {
            let host = host.to_str().unwrap_or_default();
            origin.split_once("://").is_none_or(|(_, rest)| rest != host)
        }
        _ => false,
    }
}

/// Every request: the host rule, the cross-site rule, the CSRF cookie and the [`Context`].
pub(crate) async fn guard(State(console): State<Shared>, mut request: Request, next: Next) -> Response {
    let auth = &console.auth;
    let headers = request.headers();
    if auth.tokens.is_none() {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !is_literal_host(host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "this console has no login and answers only requests to its IP address or localhost",
            )
                .into_response();
        }
    }
    if request.method() == Method::POST && cross_site(headers) {
        return (StatusCode::FORBIDDEN, "cross-site form posts are refused").into_response();
    }
    let existing = cookie(headers, CSRF_COOKIE).filter(|v| is_token_text(v)).map(str::to_owned);
    let logged_in = cookie(headers, SESSION_COOKIE).is_some_and(|id| auth.session_valid(id));
    let fresh = existing.is_none();
    let csrf = existing.unwrap_or_else(random_hex);
    request.extensions_mut().insert(Context { csrf: csrf.clone(), login_required: auth.tokens.is_some(), logged_in });
    let mut response = next.run(request).await;
    if fresh {
        response.headers_mut().append(header::SET_COOKIE, auth.cookie(CSRF_COOKIE, &csrf, None));
    }
    response
}

/// The pages behind the login: without a session, a page sends the visitor to log in and
/// anything else is 401.
pub(crate) async fn require_login(context: Context, request: Request, next: Next) -> Response {
    if !context.login_required || context.logged_in {
        return next.run(request).await;
    }
    if request.method() == Method::GET
        && !request.uri().path().ends_with("/events")
        && !request.uri().path().ends_with("/live")
    {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let query = serde_urlencoded_pair("next", target);
        return Redirect::to(&format!("/login?{query}")).into_response();
    }
    (StatusCode::UNAUTHORIZED, "log in first").into_response()
}

fn serde_urlencoded_pair(key: &str, value: &str) -> String {
    let encoded: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{key}={encoded}")
}

/// Where to go after logging in: a path on this site, else the overview.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/",
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn login_form(
    State(console): State<Shared>,
    context: Context,
    Query(query): Query<NextQuery>,
) -> Response {
    if console.auth.tokens.is_none() || context.logged_in {
        return Redirect::to(safe_next(query.next.as_deref())).into_response();
    }
    login_page(&context, query.next.as_deref(), None, StatusCode::OK)
}

fn login_page(context: &Context, next: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        form.card.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(context.csrf);
            input type="hidden" name="next" value=(safe_next(next));
            p { "This server needs a bearer token: the same as its gRPC API takes." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            label for="token" { "Token" }
            input #token type="password" name="token" required autocomplete="current-password" autofocus;
            button type="submit" { "Log in" }
        }
    };
    view::page(context, status, "Log in", None, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    csrf: String,
    token: String,
    next: Option<String>,
}

pub(crate) async fn login(State(console): State<Shared>, context: Context, Form(form): Form<LoginForm>) -> Response {
    if let Err(error) = context.check_csrf(&form.csrf) {
        return view::error_page(&context, error.status(), "Log in", error.message());
    }
    let Some(tokens) = &console.auth.tokens else { return Redirect::to("/").into_response() };
    if !tokens(form.token.trim().as_bytes()) {
        tracing::info!("console: a login with an unknown token was refused");
        return login_page(
            &context,
            form.next.as_deref(),
            Some("That token is not one this server accepts."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let session = console.auth.open_session();
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, console.auth.cookie(SESSION_COOKIE, &session, Some(SESSION_TTL.as_secs())));
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogoutForm {
    csrf: String,
}

pub(crate) async fn logout(
    State(console): State<Shared>,
    context: Context,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(error) = context.check_csrf(&form.csrf) {
        return view::error_page(&context, error.status(), "Log out", error.message());
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        console.auth.sessions.lock().remove(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, console.auth.cookie(SESSION_COOKIE, "", Some(0)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_literal_hosts_pass_without_a_login() {
        for host in ["127.0.0.1:9465", "localhost", "LOCALHOST:80", "[::1]:9465", "10.0.0.1"] {
            assert!(is_literal_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:9465", "127.0.0.1.evil.example", "", "[::1"] {
            assert!(!is_literal_host(host), "{host}");
        }
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/executions?state=running")), "/executions?state=running");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", ""] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; baton_csrf=abc; baton_session=x"));
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("x"));
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!cross_site(&headers));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9465"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9465"));
        assert!(!cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(cross_site(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_site(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&headers));
    }
}
