//! Registration rules that keep the orchestrator from being turned against its own network:
//! [`RestrictedDirectory`] refuses services whose endpoint or health check points at a
//! link-local or cloud metadata address, which Baton would otherwise call (to probe health and
//! to run steps) with whatever the address answers reaching the caller: the classic way to read
//! a cloud instance's credentials through a server that fetches URLs. It also refuses the
//! server's own addresses (gRPC, metrics, console; by loopback, unspecified or `localhost`
//! spellings, or the bound address itself), which would make Baton call itself in a loop.
//! The dispatcher applies the same rules to requests workflows write themselves (`call: http`,
//! `call: openapi`). (URLs that carry credentials are refused by `baton_core::ServiceSpec` for
//! every directory: every reader of the registry sees endpoints.)
//!
//! What is refused as link-local or metadata, unless `baton serve --allow-link-local`:
//!
//! - IPv4 `169.254.0.0/16` (link-local; AWS, GCP, Azure and OpenStack metadata live at
//!   `169.254.169.254`) and `100.100.100.200` (Alibaba Cloud's metadata);
//! - IPv6 `fe80::/10` (link-local) and `fd00:ec2::254` (AWS's IPv6 metadata), and IPv4 addresses
//!   of the above written as IPv4-mapped IPv6 (`::ffff:169.254.169.254`);
//! - the host names `metadata.google.internal` and `metadata` (any case, trailing dot or not).
//!
//! IPv4 hosts are read as browsers and the URL standard read them, so `http://2852039166/` and
//! `http://0xa9.254.169.254/` are `169.254.169.254`, in `grpc://` URLs too. A DNS name that
//! resolves to such an address is not caught here: that needs the check at connect time.
//!
//! Schemes are already checked by `baton_core::ServiceSpec` (HTTP endpoints and health checks:
//! `http` or `https`; gRPC ones: `http`, `https` or `grpc`; a host is required).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use baton_core::directory::{Matches, Page, Registration, ServiceStatus, ServiceView};
use baton_core::{BoxFuture, CheckKind, Endpoint, ServiceDirectory, ServiceId, ServiceRequirements, ServiceSpec};
use url::{Host, Url};

/// Where service endpoints may point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// Accept link-local and cloud metadata addresses.
    pub allow_link_local: bool,
    /// The server's own listening addresses, by what they serve (`gRPC`, `metrics`,
    /// `console`): an endpoint there would make Baton call itself, in a loop.
    pub own: Vec<(&'static str, SocketAddr)>,
}

impl EndpointPolicy {
    /// `Ok` when `spec`'s endpoint and health check URLs are allowed; else the invalid-argument
    /// error naming the field (`endpoint.url` or `health_check.url`).
    pub fn check(&self, spec: &ServiceSpec) -> baton_core::Result<()> {
        match spec.endpoint() {
            Endpoint::Http { url } | Endpoint::Grpc { url, .. } => self.check_url("endpoint.url", url)?,
            Endpoint::Worker { .. } => {}
        }
        match &spec.health_check().kind {
            CheckKind::Http { url } | CheckKind::Grpc { url, .. } => self.check_url("health_check.url", url)?,
            CheckKind::None | CheckKind::Ttl { .. } => {}
        }
        Ok(())
    }

    /// `Ok` when a request a workflow writes itself (`call: http`, `call: openapi`) may go to
    /// `url`; the same rules as for registered endpoints, since the server would fetch it.
    pub fn check_request(&self, url: &str) -> baton_core::Result<()> {
        self.check_url("url", url)
    }

    /// Refuses `text` when its host is link-local or a metadata address (unless allowed), or
    /// when it is one of the server's own addresses.
    fn check_url(&self, field: &str, text: &str) -> baton_core::Result<()> {
        // The spec has checked the URL already; one that does not parse here is refused all the same.
        let shown = baton_core::service::without_credentials(text);
        let url = Url::parse(text).map_err(|e| baton_core::Error::invalid(field, &shown, e.to_string()))?;
        let Some(host) = url.host() else {
            return Err(baton_core::Error::invalid(field, &shown, "must name a host"));
        };
        // `grpc://` hosts are not parsed as addresses by the URL parser: read them as `http` would.
        let host = match host {
            Host::Ipv4(ip) => HostKind::Ip(IpAddr::V4(ip)),
            Host::Ipv6(ip) => HostKind::Ip(IpAddr::V6(ip)),
            Host::Domain(name) => match Url::parse(&format!("http://{name}/")).ok().as_ref().and_then(Url::host) {
                Some(Host::Ipv4(ip)) => HostKind::Ip(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => HostKind::Ip(IpAddr::V6(ip)),
                _ => HostKind::Name(name.to_owned()),
            },
        };
        let forbidden = match &host {
            HostKind::Ip(ip) => forbidden_ip(*ip),
            HostKind::Name(name) => forbidden_name(name),
        };
        if forbidden && !self.allow_link_local {
            return Err(baton_core::Error::invalid(
                field,
                &shown,
                "points at a link-local or cloud metadata address; baton serve --allow-link-local accepts it",
            ));
        }
        let port = url.port_or_known_default();
        if let Some((what, own)) = self.own.iter().find(|(_, own)| Some(own.port()) == port && reaches(&host, own)) {
            return Err(baton_core::Error::invalid(
                field,
                &shown,
                format!("points at this server's own {what} address {own}: Baton would call itself in a loop"),
            ));
        }
        Ok(())
    }
}

/// A URL's host: an address (however written) or a name.
enum HostKind {
    Ip(IpAddr),
    Name(String),
}

/// Whether `host` names this machine's address `own` listens on: a loopback or unspecified
/// address or `localhost` (which reach a listener on a loopback or unspecified address), or
/// `own`'s address itself. Another name or address of the machine is not caught.
fn reaches(host: &HostKind, own: &SocketAddr) -> bool {
    let local = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || ip.is_unspecified()
    };
    let listens_locally = local(own.ip());
    match host {
        HostKind::Ip(ip) => *ip == own.ip() || (listens_locally && local(*ip)),
        HostKind::Name(name) => {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            listens_locally && (name == "localhost" || name.ends_with(".localhost"))
        }
    }
}

/// Link-local and metadata addresses.
fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(mapped) = ip.to_ipv4_mapped() {
                return forbidden_v4(mapped);
            }
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            let aws_metadata = ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
            link_local || aws_metadata
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200)
}

/// Metadata host names.
fn forbidden_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("metadata.google.internal") || name.eq_ignore_ascii_case("metadata")
}

/// A [`ServiceDirectory`] that applies an [`EndpointPolicy`] to every registration and passes
/// everything else to the directory it wraps.
#[derive(Debug, Clone)]
pub struct RestrictedDirectory<D> {
    inner: D,
    policy: EndpointPolicy,
}

impl<D> RestrictedDirectory<D> {
    /// `inner`, registering only what `policy` allows.
    pub fn new(inner: D, policy: EndpointPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<D: ServiceDirectory + ?Sized> ServiceDirectory for RestrictedDirectory<Arc<D>> {
    fn register(&self, spec: ServiceSpec) -> BoxFuture<'_, baton_core::Result<Registration>> {
        match self.policy.check(&spec) {
            Ok(()) => self.inner.register(spec),
            Err(refused) => Box::pin(std::future::ready(Err(refused))),
        }
    }

    fn deregister<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<()>> {
        self.inner.deregister(id)
    }

    fn heartbeat<'a>(&'a self, id: &'a ServiceId) -> BoxFuture<'a, baton_core::Result<ServiceStatus>> {
        self.inner.heartbeat(id)
    }

    fn get(&self, id: &ServiceId) -> baton_core::Result<ServiceView> {
        self.inner.get(id)
    }

    fn list(&self, after: Option<&ServiceId>, limit: usize) -> Page {
        self.inner.list(after, limit)
    }

    fn find(&self, requirements: &ServiceRequirements, limit: usize) -> baton_core::Result<Matches> {
        self.inner.find(requirements, limit)
    }
}

/// The bearer tokens of a token file's text: one per line, surrounding spaces trimmed, blank
/// lines and lines starting with `#` ignored. An error (naming the line, never a token) when a
/// token is malformed or there is none.
pub fn parse_tokens(text: &str) -> Result<baton_grpc::Tokens, String> {
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("line {}: a token must be visible ASCII without spaces", index + 1));
        }
        tokens.push(line.to_owned());
    }
    if tokens.is_empty() {
        return Err("no tokens: write one per line (blank lines and # comments are ignored)".to_owned());
    }
    baton_grpc::Tokens::new(tokens).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(endpoint: serde_json::Value, health_check: Option<serde_json::Value>) -> ServiceSpec {
        let mut definition = json!({"id": "svc", "endpoint": endpoint, "capabilities": ["x"]});
        if let Some(check) = health_check {
            definition["health_check"] = check;
        }
        ServiceSpec::from_json(&definition.to_string()).unwrap()
    }

    /// `url` as an HTTP endpoint, a gRPC endpoint and an HTTP health check: refused (naming the
    /// field) when `refused`, else accepted.
    fn check(url: &str, refused: bool) {
        let policy = EndpointPolicy::default();
        let cases = [
            (spec(json!({"protocol": "http", "url": url}), None), "endpoint.url"),
            (spec(json!({"protocol": "grpc", "url": url}), None), "endpoint.url"),
            (
                spec(
                    json!({"protocol": "worker", "queue": "jobs"}),
                    Some(json!({"kind": "http", "url": url, "interval": "10s"})),
                ),
                "health_check.url",
            ),
        ];
        for (spec, field) in cases {
            match policy.check(&spec) {
                Err(baton_core::Error::Invalid { field: named, reason, .. }) if refused => {
                    assert_eq!(named, field, "{url}");
                    assert!(reason.contains("--allow-link-local"), "{reason}");
                }
                Ok(()) if !refused => {}
                other => panic!("{url} as {field}: expected refused={refused}, got {other:?}"),
            }
            let lenient = EndpointPolicy { allow_link_local: true, ..EndpointPolicy::default() };
            assert_eq!(lenient.check(&spec), Ok(()), "{url}");
        }
    }

    #[test]
    fn link_local_and_metadata_hosts_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.0.1:8080/",
            "https://169.254.255.255/",
            "http://[fe80::1]:80/",
            "http://[febf:ffff::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
            "http://metadata/",
            "http://100.100.100.200/latest/meta-data/",
            // Other spellings of 169.254.169.254.
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
        ] {
            check(url, true);
        }
    }

    #[test]
    fn ordinary_hosts_are_accepted() {
        for url in [
            "http://127.0.0.1:8080/charge",
            "http://10.0.0.5/",
            "https://payments.internal.example/",
            "http://169.253.255.255/",
            "http://169.255.0.1/",
            "http://[::1]:9000/",
            "http://[fec0::1]/",
            "http://[fd00:ec2::253]/",
            "http://metadata.example.com/",
            "http://my-metadata/",
        ] {
            check(url, false);
        }
    }

    #[test]
    fn grpc_urls_are_read_like_http_ones() {
        let policy = EndpointPolicy::default();
        for url in ["grpc://169.254.169.254:50051", "grpc://2852039166:50051", "grpc://metadata:80"] {
            assert!(policy.check(&spec(json!({"protocol": "grpc", "url": url}), None)).is_err(), "{url}");
        }
        assert!(policy.check(&spec(json!({"protocol": "grpc", "url": "grpc://10.1.2.3:50051"}), None)).is_ok());
    }

    #[test]
    fn the_servers_own_addresses_are_refused_as_endpoints() {
        let grpc: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let console: std::net::SocketAddr = "0.0.0.0:9465".parse().unwrap();
        let metrics: std::net::SocketAddr = "[::1]:9464".parse().unwrap();
        let policy = EndpointPolicy {
            allow_link_local: true,
            own: vec![("gRPC", grpc), ("console", console), ("metrics", metrics)],
        };
        let refused = |url: &str, field: &str| {
            let specs = [
                (spec(json!({"protocol": "http", "url": url}), None), "endpoint.url"),
                (
                    spec(
                        json!({"protocol": "worker", "queue": "jobs"}),
                        Some(json!({"kind": "http", "url": url, "interval": "10s"})),
                    ),
                    "health_check.url",
                ),
            ];
            for (spec, named) in specs {
                match policy.check(&spec) {
                    Err(baton_core::Error::Invalid { field, reason, .. }) => {
                        assert_eq!(field, named, "{url}");
                        assert!(reason.contains("this server's own") && reason.contains("loop"), "{reason}");
                    }
                    other => panic!("{url} as {field}: expected a refusal, got {other:?}"),
                }
            }
        };
        for url in [
            "http://127.0.0.1:50051/",
            "http://localhost:50051/x",
            "http://LOCALHOST.:50051/",
            "http://api.localhost:50051/",
            "http://127.1.2.3:50051/",
            "http://[::ffff:127.0.0.1]:50051/",
            "http://0.0.0.0:50051/",
            // The console listens on every address: any loopback or local spelling reaches it.
            "http://127.0.0.1:9465/",
            "http://[::1]:9465/",
            "http://[::1]:9464/metrics",
        ] {
            refused(url, "endpoint.url");
        }
        for url in ["http://127.0.0.1:50052/", "http://10.0.0.5:50051/", "http://127.0.0.1/", "http://pay:9465/"] {
            let spec = spec(json!({"protocol": "http", "url": url}), None);
            assert_eq!(policy.check(&spec), Ok(()), "{url}");
        }
        let grpc_url = spec(json!({"protocol": "grpc", "url": "grpc://localhost:50051"}), None);
        assert!(policy.check(&grpc_url).is_err());
    }

    #[test]
    fn token_files_hold_one_token_a_line_with_comments() {
        let tokens = parse_tokens("# ops\n\n  alpha  \n#beta\r\ngamma\r\n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(b"alpha") && tokens.accepts(b"gamma") && !tokens.accepts(b"#beta"));
        for (text, error) in [
            ("", "no tokens"),
            ("# only a comment\n\n", "no tokens"),
            ("ok\nnot ok\n", "line 2: a token must be visible ASCII"),
        ] {
            let message = parse_tokens(text).unwrap_err();
            assert!(message.starts_with(error), "{text:?}: {message}");
            assert!(!message.contains("not ok"), "{message}");
        }
    }

    #[tokio::test]
    async fn the_directory_refuses_before_registering_and_passes_the_rest_through() {
        let registry = Arc::new(baton_registry::Registry::default());
        let directory = RestrictedDirectory::new(registry, EndpointPolicy::default());
        let error = directory
            .register(spec(json!({"protocol": "http", "url": "http://169.254.169.254/"}), None))
            .await
            .unwrap_err();
        assert!(error.to_string().starts_with("invalid endpoint.url \"http://169.254.169.254/\""), "{error}");
        assert_eq!(directory.list(None, 10).services.len(), 0);
        let ok = spec(json!({"protocol": "http", "url": "http://127.0.0.1:9/"}), None);
        assert_eq!(directory.register(ok).await.unwrap(), Registration::Created);
        let id = ServiceId::new("svc").unwrap();
        assert_eq!(directory.get(&id).unwrap().spec.id(), &id);
        directory.deregister(&id).await.unwrap();
        assert!(directory.get(&id).is_err());
    }
}
