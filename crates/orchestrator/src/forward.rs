//! Commands for an execution another node of the cluster runs, sent on to that node.
//!
//! Pause, Resume, Cancel and Signal change a running execution, so they must reach the engine
//! that runs it: a node that does not own the execution's partition forwards the call over the
//! gRPC API to the node that does (its advertised address, from the cluster's tables as of
//! this node's last heartbeat). The forwarded call carries the caller's deadline (or
//! [`DEFAULT_DEADLINE`]), this server's own bearer token when it has tokens, and
//! [`FORWARDED_BY`] naming this node: a node that receives a forwarded call for an execution it
//! does not own answers `UNAVAILABLE` instead of forwarding it again, so forwarding is one hop.
//! An owner that cannot be reached is `UNAVAILABLE` naming it.
//!
//! Reads need no owner: Get replays the execution's journal from the store, and a Watch follows
//! it there (`baton_workflow::Config::remote_watch_poll`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_cluster::{Member, Peer};
use baton_core::{ApiError, ApiResult, ExecutionId};
use baton_grpc::forwarding::{FORWARDED_BY, Incoming};
use baton_grpc::pb;
use baton_grpc::pb::execution_service_client::ExecutionServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a forwarded call may take when its caller set no deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long connecting to an owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How this node calls the others: the credentials it presents.
#[derive(Clone, Default)]
pub struct PeerAccess {
    /// The bearer token sent with forwarded calls (the first of the server's own tokens).
    pub token: Option<String>,
    /// TLS to the other nodes, when this node serves TLS itself.
    pub tls: Option<PeerTls>,
}

impl std::fmt::Debug for PeerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAccess").field("token", &self.token.is_some()).field("tls", &self.tls.is_some()).finish()
    }
}

/// TLS to the other nodes: they serve certificates from the same authorities as this node.
#[derive(Clone)]
pub struct PeerTls {
    /// Certificates (PEM) trusted besides the system's roots: the client CA and the services' CA.
    pub roots_pem: Vec<Vec<u8>>,
    /// This node's certificate chain and key (PEM), presented when the others ask for a client
    /// certificate (mutual TLS).
    pub identity_pem: (Vec<u8>, Vec<u8>),
}

/// What a node that does not own an execution does with a command for it.
#[derive(Debug)]
pub enum Route {
    /// This node owns it: run the command here.
    Local,
    /// Send the command to this node.
    Owner(Peer),
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("roots", &self.roots_pem.len()).finish_non_exhaustive()
    }
}

/// Sends commands on to the nodes that own their executions.
pub struct Forwarder {
    member: Member,
    access: PeerAccess,
    channels: Mutex<HashMap<String, Channel>>,
    forwarded: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("node", &self.member.node_id()).finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder for node `member`, calling the others with `access`.
    pub fn new(member: Member, access: PeerAccess) -> Self {
        Self { member, access, channels: Mutex::default(), forwarded: AtomicU64::new(0), failed: AtomicU64::new(0) }
    }

    /// Calls forwarded to another node, and of those the ones that failed to reach it.
    pub fn counts(&self) -> (u64, u64) {
        (self.forwarded.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// Where a command for `id` runs; `UNAVAILABLE` when no node can take it now. What this
    /// node knows of the owners is as of its last heartbeat: when it names no other live owner,
    /// the next heartbeats are waited for (a partition may have just been claimed).
    pub async fn route(&self, id: ExecutionId) -> ApiResult<Route> {
        const LOOKS: usize = 3;
        let me = self.member.node_id();
        let forwarded_by = Incoming::current().and_then(|incoming| incoming.forwarded_by);
        let mut partition = 0;
        for look in 1..=LOOKS {
            let ownership = self.member.ownership();
            partition = id.partition(ownership.partitions());
            if ownership.epoch(partition).is_some() {
                return Ok(Route::Local);
            }
            if let Some(by) = &forwarded_by {
                return Err(ApiError::Unavailable(format!(
                    "node {by} forwarded the call for execution {id} to node {me}, which does not own its partition \
                     {partition} (ownership is moving); retry"
                )));
            }
            if let Some(peer) = self.member.owner(partition).filter(|peer| peer.node != me) {
                return Ok(Route::Owner(peer));
            }
            if look < LOOKS && !self.member.owners_refreshed().await {
                break;
            }
        }
        Err(ApiError::Unavailable(format!(
            "no live node owns partition {partition} of execution {id} now (its owner is leaving or its lease \
             expired and no node claimed it yet); retry"
        )))
    }

    /// Forwards `command` for execution `id` to `owner`.
    pub async fn send(&self, owner: &Peer, id: ExecutionId, command: Command) -> ApiResult<()> {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut client = ExecutionServiceClient::new(self.channel(owner)?);
        let id = id.to_string();
        let answered = match command {
            Command::Pause => client.pause_execution(self.request(pb::PauseExecutionRequest { id })?).await.map(drop),
            Command::Resume => {
                client.resume_execution(self.request(pb::ResumeExecutionRequest { id })?).await.map(drop)
            }
            Command::Cancel(reason) => {
                client.cancel_execution(self.request(pb::CancelExecutionRequest { id, reason })?).await.map(drop)
            }
            Command::Signal(name, data) => {
                let data_json = data.to_string();
                client
                    .signal_execution(self.request(pb::SignalExecutionRequest { id, name, data_json })?)
                    .await
                    .map(drop)
            }
        };
        answered.map_err(|status| self.error(owner, &status))
    }

    /// `message` with this node's mark, its token and the caller's deadline.
    fn request<T>(&self, message: T) -> ApiResult<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let left = Incoming::current()
            .and_then(|incoming| incoming.deadline)
            .map_or(DEFAULT_DEADLINE, |deadline| deadline.saturating_duration_since(tokio::time::Instant::now()));
        if left.is_zero() {
            return Err(ApiError::Unavailable("the caller's deadline passed before the call was forwarded".to_owned()));
        }
        request.set_timeout(left);
        let metadata = request.metadata_mut();
        let me = self.member.node_id().parse().map_err(|_| ApiError::Internal("a node id that is no header".into()))?;
        metadata.insert(FORWARDED_BY, me);
        if let Some(token) = &self.access.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ApiError::Internal("a token that is no header".into()))?;
            metadata.insert("authorization", value);
        }
        Ok(request)
    }

    /// The owner's answer as this node's: its own refusals pass through, a failure to reach it
    /// names it.
    fn error(&self, owner: &Peer, status: &tonic::Status) -> ApiError {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => ApiError::NotFound(message),
            Code::InvalidArgument => ApiError::InvalidArgument { field: String::new(), message },
            Code::AlreadyExists => ApiError::AlreadyExists(message),
            Code::FailedPrecondition => ApiError::FailedPrecondition(message),
            Code::ResourceExhausted => ApiError::ResourceExhausted(message),
            Code::OutOfRange => ApiError::OutOfRange(message),
            Code::Internal => ApiError::Internal(format!("node {} answered: {message}", owner.node)),
            _ => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                // A connection that failed is dialled again next time.
                self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&owner.address);
                ApiError::Unavailable(format!(
                    "node {} at {}, which owns the execution, did not answer: {} ({message})",
                    owner.node,
                    owner.address,
                    status.code().description()
                ))
            }
        }
    }

    /// A channel to `owner`, connected on first use and kept.
    fn channel(&self, owner: &Peer) -> ApiResult<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(&owner.address) {
            return Ok(channel.clone());
        }
        let unusable = |reason: String| {
            ApiError::Unavailable(format!(
                "node {} advertises {}, which cannot be used: {reason}",
                owner.node, owner.address
            ))
        };
        let scheme = if self.access.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", owner.address))
            .map_err(|e| unusable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.access.tls {
            let mut config = ClientTlsConfig::new()
                .with_native_roots()
                .identity(Identity::from_pem(&tls.identity_pem.0, &tls.identity_pem.1));
            for pem in &tls.roots_pem {
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(config).map_err(|e| unusable(e.to_string()))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(owner.address.clone(), channel.clone());
        Ok(channel)
    }
}

/// A command only an execution's owner can carry out.
#[derive(Debug)]
pub enum Command {
    /// Stop dispatching.
    Pause,
    /// Dispatch again.
    Resume,
    /// Stop for good, with the reason.
    Cancel(String),
    /// A signal's name and data.
    Signal(String, serde_json::Value),
}
