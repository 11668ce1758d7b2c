//! The connections services are called over: TCP, or TLS through rustls (no OpenSSL) with
//! ALPN offering HTTP/2 and HTTP/1.1, pooled by hyper's client, one pool per TLS profile.
//!
//! A profile is a service's [`TlsSettings`]: the CA certificates it adds to the trusted roots
//! and the client certificate it presents. Services with the same settings share a pool;
//! every service without settings shares the default one. The settings name secrets, which
//! are read on every call, and a profile is built again (with a fresh pool) when one of them
//! changed, so a rotated client certificate is presented on the next connection.
//!
//! TLS failures are told apart from other transport errors here: a certificate the roots do
//! not trust, one for another name, or a server that refused the client certificate will not
//! be fixed by calling again, so they are permanent failures naming the host.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::Uri;
use baton_core::TlsSettings;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::invoker::Failure;
use crate::secrets::Secrets;

/// The certificates every TLS connection to a service trusts: the system's roots and the
/// server's own bundle (`--services-ca`). Cheap to clone.
#[derive(Clone)]
pub struct TrustRoots {
    roots: Arc<RootCertStore>,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots").field("certificates", &self.roots.len()).finish()
    }
}

/// A PEM bundle that holds no usable certificate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PemError(String);

impl TrustRoots {
    /// No roots at all: only certificates added with [`TrustRoots::with_pem`] are trusted.
    pub fn empty() -> Self {
        Self { roots: Arc::new(RootCertStore::empty()) }
    }

    /// The operating system's trusted roots, loaded once per process. Certificates the
    /// system store holds but rustls cannot use are skipped.
    pub fn system() -> Self {
        static SYSTEM: OnceLock<Arc<RootCertStore>> = OnceLock::new();
        let roots = SYSTEM.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        });
        Self { roots: Arc::clone(roots) }
    }

    /// These roots and every certificate of the PEM bundle `pem`; an error when it holds
    /// none or one does not parse.
    pub fn with_pem(&self, pem: &[u8]) -> Result<Self, PemError> {
        let mut roots = (*self.roots).clone();
        add_pem(&mut roots, pem)?;
        Ok(Self { roots: Arc::new(roots) })
    }

    /// How many certificates are trusted.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

fn add_pem(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), PemError> {
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| PemError(format!("the CA bundle does not parse: {e}")))?;
        roots.add(cert).map_err(|e| PemError(format!("a CA certificate is not usable: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(PemError("the CA bundle holds no certificate".to_owned()));
    }
    Ok(())
}

/// What a transport needs besides the roots.
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    pub(crate) roots: TrustRoots,
    pub(crate) secrets: Secrets,
    /// Time limit of the TCP connect, and again of the TLS handshake.
    pub(crate) connect_timeout: Option<Duration>,
}

/// The connection pools of every TLS profile in use.
pub(crate) struct Transport<B> {
    config: TransportConfig,
    /// Offered in the TLS handshake, most preferred first.
    alpn: &'static [&'static [u8]],
    http2_only: bool,
    profiles: Mutex<HashMap<TlsSettings, Arc<Profile<B>>>>,
}

struct Profile<B> {
    /// The versions of the secrets it was built from, in [`TlsSettings::secrets`] order.
    versions: Vec<u64>,
    client: Client<Connector, B>,
}

impl<B> fmt::Debug for Transport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("config", &self.config).field("http2_only", &self.http2_only).finish()
    }
}

/// ALPN for HTTP calls: HTTP/2 when the server speaks it, else HTTP/1.1.
pub(crate) const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for gRPC: HTTP/2 only.
pub(crate) const ALPN_H2: &[&[u8]] = &[b"h2"];

impl<B> Transport<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Pools that speak HTTP/1.1 or HTTP/2 (`http2_only`: HTTP/2 with prior knowledge on plain
    /// connections, as gRPC does).
    pub(crate) fn new(config: TransportConfig, http2_only: bool) -> Self {
        let alpn = if http2_only { ALPN_H2 } else { ALPN_HTTP };
        Self { config, alpn, http2_only, profiles: Mutex::default() }
    }

    /// The client of the profile `tls`, built again when a secret it names has changed.
    pub(crate) fn client(&self, tls: &TlsSettings) -> Result<Client<Connector, B>, Failure> {
        let mut secrets = Vec::new();
        for name in tls.secrets() {
            secrets.push(self.config.secrets.get(name).map_err(|e| Failure::permanent("secret", e.to_string()))?);
        }
        let versions: Vec<u64> = secrets.iter().map(crate::secrets::Secret::version).collect();
        if let Some(profile) = self.profiles.lock().get(tls)
            && profile.versions == versions
        {
            return Ok(profile.client.clone());
        }
        let mut secrets = secrets.into_iter();
        let ca = tls.ca.as_ref().map(|_| secrets.next().expect("a secret per name"));
        let identity = tls
            .client_cert
            .as_ref()
            .map(|_| (secrets.next().expect("a secret per name"), secrets.next().expect("a secret per name")));
        let mut roots = (*self.config.roots.roots).clone();
        if let (Some(name), Some(pem)) = (&tls.ca, &ca) {
            add_pem(&mut roots, pem.expose().as_bytes())
                .map_err(|e| Failure::permanent("tls_config", format!("tls.ca secret {name}: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::permanent("tls_config", e.to_string()))?
            .with_root_certificates(roots);
        let mut tls_config = match (&identity, &tls.client_cert, &tls.client_key) {
            (Some((cert, key)), Some(cert_name), Some(key_name)) => {
                let chain = CertificateDer::pem_slice_iter(cert.expose().as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Failure::permanent(
                            "tls_config",
                            format!("tls.client_cert secret {cert_name} does not parse: {e}"),
                        )
                    })?;
                if chain.is_empty() {
                    let message = format!("tls.client_cert secret {cert_name} holds no certificate");
                    return Err(Failure::permanent("tls_config", message));
                }
                // The key's parse error is not quoted: it could echo part of the key.
                let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|_| {
                    Failure::permanent(
                        "tls_config",
                        format!("tls.client_key secret {key_name} holds no PEM private key"),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Failure::permanent(
                        "tls_config",
                        format!("tls.client_cert {cert_name} and tls.client_key {key_name} do not go together: {e}"),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        tls_config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        let connector = Connector::new(&self.config, Arc::new(tls_config));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new()).timer(TokioTimer::new()).http2_only(self.http2_only);
        let client = builder.build(connector);
        self.profiles.lock().insert(tls.clone(), Arc::new(Profile { versions, client: client.clone() }));
        Ok(client)
    }
}

/// Connects TCP, then TLS for `https` URIs. The connection reports HTTP/2 when ALPN chose it.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    tls: Arc<ClientConfig>,
    handshake_timeout: Option<Duration>,
}

impl Connector {
    fn new(config: &TransportConfig, tls: Arc<ClientConfig>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(config.connect_timeout);
        tcp.set_nodelay(true);
        // https URIs are ours to handle: the TCP connector only connects.
        tcp.enforce_http(false);
        Self { tcp, tls, handshake_timeout: config.connect_timeout }
    }
}

/// Why a connection could not be made; [`classify`] reads it back out of hyper's errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error(transparent)]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("tls handshake with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("tls handshake with {host} took longer than {}", baton_core::duration::format(*.limit))]
    HandshakeTimeout { host: String, limit: Duration },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("unsupported scheme in {uri}")]
    Scheme { uri: String },
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.tcp.poll_ready(cx).map_err(|e| ConnectError::Tcp(e.into()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        Box::pin(async move {
            let secure = match uri.scheme_str() {
                Some("https") => true,
                Some("http" | "grpc") | None => false,
                Some(_) => return Err(ConnectError::Scheme { uri: uri.to_string() }),
            };
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let stream = tower_service::Service::call(&mut tcp, plain(&uri))
                .await
                .map_err(|e| ConnectError::Tcp(e.into()))?
                .into_inner();
            if !secure {
                return Ok(TokioIo::new(Stream::Plain(stream)));
            }
            let name =
                ServerName::try_from(host.clone()).map_err(|_| ConnectError::ServerName { host: host.clone() })?;
            let asked = Arc::new(AtomicBool::new(false));
            let mut config = (*tls).clone();
            config.client_auth_cert_resolver =
                Arc::new(NoteAsked { inner: Arc::clone(&config.client_auth_cert_resolver), asked: Arc::clone(&asked) });
            let handshake = async {
                let mut stream = TlsConnector::from(Arc::new(config)).connect(name, stream).await?;
                if asked.load(Ordering::Relaxed) {
                    verdict(&mut stream, handshake_timeout.unwrap_or(VERDICT_WAIT).min(VERDICT_WAIT)).await?;
                }
                Ok::<_, io::Error>(stream)
            };
            let stream = match handshake_timeout {
                Some(limit) => tokio::time::timeout(limit, handshake)
                    .await
                    .map_err(|_| ConnectError::HandshakeTimeout { host: host.clone(), limit })?,
                None => handshake.await,
            }
            .map_err(|source| ConnectError::Tls { host, source })?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

/// How long a connection whose server asked for a client certificate waits for the server's
/// verdict on it.
const VERDICT_WAIT: Duration = Duration::from_millis(250);

/// Notes whether the server asked for a client certificate.
#[derive(Debug)]
struct NoteAsked {
    inner: Arc<dyn ResolvesClientCert>,
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for NoteAsked {
    fn resolve(&self, hints: &[&[u8]], schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.inner.resolve(hints, schemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// Waits for the server's first record after a TLS 1.3 handshake in which it asked for a
/// client certificate. TLS 1.3 lets the client finish before the server has checked the
/// certificate: a refusal comes as an alert afterwards, and a server that closes the
/// connection on it races the first request, which then sees only a broken pipe. Waiting
/// for the verdict (a session ticket, or data, or the alert) names the refusal every time.
/// A server that sends nothing is given [`VERDICT_WAIT`].
async fn verdict(stream: &mut TlsStream<TcpStream>, wait: Duration) -> io::Result<()> {
    let (tcp, session) = stream.get_mut();
    if session.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(());
    }
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            ready = tcp.readable() => ready?,
            () = &mut deadline => return Ok(()),
        }
        let read = match tcp.try_read(&mut buf) {
            // The connection's reads will tell.
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buf[..read];
        while !rest.is_empty() {
            let taken = session.read_tls(&mut rest)?;
            session.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if taken == 0 {
                // Its buffers are full of data for the connection to read: no alert in them.
                break;
            }
        }
        return Ok(());
    }
}

/// `uri` as `http://`, which the TCP connector accepts, with the right default port.
fn plain(uri: &Uri) -> Uri {
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let host = uri.host().unwrap_or_default();
    format!("http://{host}:{port}/").parse().unwrap_or_else(|_| uri.clone())
}

/// A connection to a service, with or without TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(tcp) => tcp.connected(),
            Self::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") { connected.negotiated_h2() } else { connected }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A transport error as a failure: TLS trust and identity problems are permanent and named,
/// a handshake that timed out and everything else (refused, reset, closed) is retryable
/// `connect`. `host` names the service's host in the messages.
pub(crate) fn classify(error: &(dyn std::error::Error + 'static), host: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = rustls_error(e) {
            return tls_failure(tls, host);
        }
        match e.downcast_ref::<ConnectError>() {
            Some(ConnectError::ServerName { .. }) => return Failure::permanent("tls", format!("tls: {e}")),
            Some(ConnectError::HandshakeTimeout { .. }) => return Failure::retryable("connect", format!("tls: {e}")),
            _ => {}
        }
        source = e.source();
    }
    Failure::retryable("connect", chain(error))
}

/// The rustls error inside `error`, which io errors carry as their inner error (and do not
/// give as their source).
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    error.downcast_ref::<io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
}

fn tls_failure(error: &rustls::Error, host: &str) -> Failure {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match error {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                Cert::UnknownIssuer => "issued by no trusted CA".to_owned(),
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => "issued for another name".to_owned(),
                Cert::Expired | Cert::ExpiredContext { .. } => "expired".to_owned(),
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => "not valid yet".to_owned(),
                Cert::Revoked => "revoked".to_owned(),
                other => format!("{other:?}"),
            };
            Failure::permanent("tls_certificate", format!("tls: certificate for {host} not trusted: {why}"))
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::AccessDenied),
        ) => Failure::permanent(
            "tls_client_certificate",
            format!("tls: {host} refused the client certificate ({})", alert_name(*alert)),
        ),
        rustls::Error::NoApplicationProtocol => {
            Failure::permanent("tls", format!("tls: {host} agreed on no application protocol (ALPN)"))
        }
        other => Failure::retryable("tls", format!("tls: handshake with {host} failed: {other}")),
    }
}

fn alert_name(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as Alert;
    match alert {
        Alert::CertificateRequired => "a client certificate is required".to_owned(),
        Alert::UnknownCA | Alert::BadCertificate | Alert::CertificateUnknown => {
            "the certificate is not trusted".to_owned()
        }
        other => format!("{other:?}"),
    }
}

/// An error's message followed by those of its sources, which carry the useful part
/// (e.g. "client error (Connect): tcp connect error: Connection refused").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        // io errors show their inner error and give it as their source too.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
