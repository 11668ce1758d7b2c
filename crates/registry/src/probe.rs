//! [`NetworkProbe`]: the real [`HealthProbe`], speaking HTTP and `grpc.health.v1`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use baton_core::duration;
use baton_core::{CheckKind, HealthProbe, ProbeResult, ProbeTarget};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How much of a failing HTTP response's body goes into the check output.
const BODY_EXCERPT: usize = 128;

/// Probes services over the network.
///
/// - [`CheckKind::Http`]: `GET` of the URL on a pooled HTTP/1 client; a 2xx status passes
///   (`HTTP 200`), anything else fails with the status and the start of the body.
/// - [`CheckKind::Grpc`]: `grpc.health.v1.Health/Check` for the check's service name; `SERVING`
///   passes, any other status or error fails. One lazily connected channel is kept per URL.
///
/// Every probe gives up after its target's timeout. Plain-text only: `https` URLs fail, as
/// no TLS stack is built in.
pub struct NetworkProbe {
    http: Client<HttpConnector, Empty<Bytes>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Default for NetworkProbe {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { http, channels: Mutex::default() }
    }
}

impl fmt::Debug for NetworkProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkProbe").field("grpc_channels", &self.channels.lock().len()).finish_non_exhaustive()
    }
}

impl HealthProbe for NetworkProbe {
    async fn probe(&self, target: &ProbeTarget) -> ProbeResult {
        let work = async {
            match &target.check {
                CheckKind::Http { url } => self.http(url).await,
                CheckKind::Grpc { url, service } => self.grpc(url, service).await,
                CheckKind::None | CheckKind::Ttl { .. } => Err("this check kind is not probed".to_owned()),
            }
        };
        match tokio::time::timeout(target.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("probe timed out after {}", duration::format(target.timeout))),
        }
    }
}

impl NetworkProbe {
    async fn http(&self, url: &str) -> ProbeResult {
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid url {url:?}: {e}"))?;
        let response = self.http.get(uri).await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(format!("HTTP {}", status.as_u16()));
        }
        // Read only as much of the body as the output keeps; a huge error page is not our problem.
        let mut body = response.into_body();
        let mut excerpt = Vec::new();
        while excerpt.len() < BODY_EXCERPT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        excerpt.extend_from_slice(&data[..data.len().min(BODY_EXCERPT - excerpt.len())]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        let text = String::from_utf8_lossy(&excerpt);
        let text = text.trim();
        Err(if text.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {text}", status.as_u16())
        })
    }

    async fn grpc(&self, url: &str, service: &str) -> ProbeResult {
        let channel = self.channel(url)?;
        let request = HealthCheckRequest { service: service.to_owned() };
        let response = HealthClient::new(channel).check(request).await.map_err(|status| {
            let code = status.code();
            match std::error::Error::source(&status).map(error_chain) {
                // Transport failures repeat the status message in their sources; keep the fuller chain.
                Some(chain) if chain.contains(status.message()) => format!("gRPC {code:?}: {chain}"),
                Some(chain) => format!("gRPC {code:?}: {}: {chain}", status.message()),
                None => format!("gRPC {code:?}: {}", status.message()),
            }
        })?;
        let status = response.into_inner().status;
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => Ok("SERVING".to_owned()),
            Ok(other) => Err(other.as_str_name().to_owned()),
            Err(_) => Err(format!("unknown serving status {status}")),
        }
    }

    /// The cached channel to `url`, created (not yet connected) on first use.
    fn channel(&self, url: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        // `grpc://` is how services write plain-text gRPC; the transport only knows `http`.
        let address = match url.strip_prefix("grpc://") {
            Some(rest) => format!("http://{rest}"),
            None => url.to_owned(),
        };
        let channel = Endpoint::from_shared(address).map_err(|e| format!("invalid url {url:?}: {e}"))?.connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// An error and its sources, outermost first: `client error (Connect): tcp connect error: ...`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their source's message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
