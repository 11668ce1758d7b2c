//! The gRPC invoker: a step's call is one unary method, its JSON input converted to the
//! request message (prost-reflect) and the answer read back to JSON (`proto_json`), both
//! dynamically from the service's descriptors. Descriptors come from the endpoint's registered descriptor set
//! or from the server by reflection (v1, then v1alpha), and are kept per service version.
//!
//! Calls go over the same transport as HTTP (TLS, pooling, secrets), HTTP/2 only.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::http::Uri;
use ::http::uri::PathAndQuery;
use base64::Engine as _;
use baton_core::{CallRequest, Credentials, Endpoint, GrpcMethod, ServiceId, ServiceSpec};
use hyper_util::client::legacy::Client;
use parking_lot::Mutex;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};
use serde_json::Value;
use tokio::sync::OnceCell;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};

use crate::http::HttpConfig;
use crate::invoker::{Call, Failure};
use crate::proto_json;
use crate::secrets::Secret;
use crate::transport::{self, Connector, Transport};

/// The most files one reflection conversation may bring.
const MAX_REFLECTED_FILES: usize = 256;
/// The largest reflection answer accepted.
const MAX_REFLECTION_BYTES: usize = 4 * 1024 * 1024;
/// The most descriptor pools kept; past it, the cache starts again.
const MAX_POOLS: usize = 1024;

type GrpcClient = Client<Connector, tonic::body::Body>;

/// Calls gRPC services. Cheap to clone; clones share connections and descriptors.
///
/// Each call carries metadata `idempotency-key`, `x-baton-execution`, `x-baton-step`,
/// `x-baton-attempt`, `traceparent` and `tracestate`, in a cluster `x-baton-node` (the calling
/// node), the service's credentials, and `grpc-timeout` when the attempt has a time limit. Status codes map to failures as documented in `docs/operations.md`:
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL`, `UNKNOWN` and
/// `CANCELLED` are retryable, the rest permanent, each as class `grpc_<code>` with the code
/// and the service's message.
#[derive(Clone)]
pub struct GrpcInvoker {
    config: HttpConfig,
    transport: Arc<Transport<tonic::body::Body>>,
    descriptors: Arc<Descriptors>,
}

impl fmt::Debug for GrpcInvoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcInvoker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl GrpcInvoker {
    /// An invoker with the trust roots, secrets, timeouts and response cap of `config`.
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            transport: Arc::new(Transport::new(config.transport(), true)),
            config: config.clone(),
            descriptors: Arc::default(),
        }
    }

    /// Calls `call` at the gRPC endpoint of `spec`.
    pub async fn call(&self, spec: &ServiceSpec, call: Call) -> Result<Value, Failure> {
        let Endpoint::Grpc { url, method: default_method, .. } = spec.endpoint() else {
            return Err(Failure::permanent(
                "unsupported_protocol",
                format!("service {} has a {} endpoint, not grpc", spec.id(), spec.protocol()),
            ));
        };
        let (method, metadata) = match call.request.as_deref() {
            None => (None, &[][..]),
            Some(CallRequest::Grpc { method, metadata }) => (method.as_ref(), metadata.as_slice()),
            Some(CallRequest::Http { .. }) => {
                return Err(Failure::permanent(
                    "unsupported_protocol",
                    format!("step {} shapes an HTTP request but service {} is a gRPC endpoint", call.step, spec.id()),
                ));
            }
        };
        let Some(method) = method.or(default_method.as_ref()) else {
            return Err(Failure::permanent(
                "no_method",
                format!("step {} names no gRPC method, and neither does service {}", call.step, spec.id()),
            ));
        };
        let secret = match spec.credentials() {
            Some(credentials) => Some(
                self.config
                    .secrets
                    .get(credentials.secret())
                    .map_err(|e| Failure::permanent("secret", format!("service {}: {e}", spec.id())))?,
            ),
            None => None,
        };
        let exchange = self.exchange(spec, url, method, metadata, &call, secret.as_ref());
        let result = match self.config.request_timeout {
            Some(limit) => tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| {
                Err(Failure::retryable(
                    "timeout",
                    format!("service {} did not answer within {}", spec.id(), baton_core::duration::format(limit)),
                ))
            }),
            None => exchange.await,
        };
        result.map_err(|mut failure| {
            if let Some(secret) = &secret {
                failure.message = failure.message.replace(secret.expose(), "***");
            }
            failure
        })
    }

    async fn exchange(
        &self,
        spec: &ServiceSpec,
        url: &str,
        method: &GrpcMethod,
        extra: &[(String, String)],
        call: &Call,
        secret: Option<&Secret>,
    ) -> Result<Value, Failure> {
        let origin = origin(url)?;
        let host = origin.host().unwrap_or_default().to_owned();
        let client = self.transport.client(spec.tls())?;
        let mut credentials = MetadataMap::new();
        if let (Some(kind), Some(secret)) = (spec.credentials(), secret) {
            credential_metadata(&mut credentials, kind, secret)
                .map_err(|reason| Failure::permanent("secret", format!("service {}: {reason}", spec.id())))?;
        }
        let pool = self.descriptors.pool(spec, method, &client, &origin, &host, &credentials).await?;
        let Some(service) = pool.get_service_by_name(method.service()) else {
            return Err(Failure::permanent(
                "unknown_method",
                format!("service {} does not describe gRPC service {}", spec.id(), method.service()),
            ));
        };
        let Some(descriptor) = service.methods().find(|m| m.name() == method.method()) else {
            let known: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
            return Err(Failure::permanent(
                "unknown_method",
                format!("{} has no method {} (it has {})", method.service(), method.method(), known.join(", ")),
            ));
        };
        if descriptor.is_client_streaming() || descriptor.is_server_streaming() {
            return Err(Failure::permanent(
                "unsupported_method",
                format!("{method} streams; steps call unary methods"),
            ));
        }
        // Read in place: the input is not copied on its way to the message.
        let empty = Value::Object(Default::default());
        let payload = if call.payload.is_null() { &empty } else { &call.payload };
        let message = DynamicMessage::deserialize_with_options(descriptor.input(), payload, &DeserializeOptions::new())
            .map_err(|e| {
                Failure::permanent(
                    "invalid_input",
                    format!("step {} input does not fit {}: {e}", call.step, descriptor.input().full_name()),
                )
            })?;
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        *metadata = credentials;
        let not_ascii = |name: &str| {
            Failure::permanent("invalid_request", format!("metadata {name} of step {} is not ASCII", call.step))
        };
        // Baton's own keys are static: only the values are checked on every call.
        let mut baton = vec![
            ("idempotency-key", call.idempotency_key()),
            ("x-baton-execution", call.execution.to_string()),
            ("x-baton-step", call.step.to_string()),
            ("x-baton-attempt", call.attempt.to_string()),
        ];
        if let Some(trace) = &call.trace {
            baton.push(("traceparent", trace.traceparent.clone()));
            if let Some(state) = &trace.tracestate {
                baton.push(("tracestate", state.to_string()));
            }
        }
        for (name, value) in baton {
            let value = AsciiMetadataValue::try_from(value).map_err(|_| not_ascii(name))?;
            request.metadata_mut().insert(name, value);
        }
        if let Some(node) = &self.config.node {
            // A node id is checked visible ASCII when the server starts.
            let node = AsciiMetadataValue::try_from(node.as_bytes()).map_err(|_| not_ascii("x-baton-node"))?;
            request.metadata_mut().insert("x-baton-node", node);
        }
        for (name, value) in extra {
            let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| not_ascii(name))?;
            let name = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
                .map_err(|_| Failure::permanent("invalid_request", format!("invalid metadata key {name}")))?;
            request.metadata_mut().insert(name, value);
        }
        if let Some(timeout) = call.timeout {
            request.set_timeout(timeout);
        }
        let mut grpc = tonic::client::Grpc::with_origin(client, origin)
            .max_decoding_message_size(self.config.max_response_bytes)
            .max_encoding_message_size(usize::MAX);
        grpc.ready().await.map_err(|e| transport::classify(&e, &host))?;
        let path = PathAndQuery::try_from(method.path())
            .map_err(|e| Failure::permanent("invalid_request", format!("method {method}: {e}")))?;
        let response = grpc
            .unary(request, path, DynamicCodec { output: descriptor.output() })
            .await
            .map_err(|status| status_failure(&status, spec.id(), &host))?;
        response.into_inner().map_err(|e| {
            Failure::permanent(
                "invalid_response",
                format!("{} answer cannot be written as JSON: {e}", descriptor.full_name()),
            )
        })
    }
}

/// The scheme and authority calls go to: `grpc://` is plaintext HTTP/2, as `http://`.
fn origin(url: &str) -> Result<Uri, Failure> {
    let invalid = |e: &dyn fmt::Display| Failure::permanent("invalid_url", format!("url {url:?}: {e}"));
    let uri: Uri = url.parse().map_err(|e| invalid(&e))?;
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        Some("http" | "grpc") => "http",
        _ => return Err(invalid(&"scheme must be http, https or grpc")),
    };
    let authority = uri.authority().ok_or_else(|| invalid(&"no host"))?;
    format!("{scheme}://{authority}").parse().map_err(|e| invalid(&e))
}

/// The metadata entry that carries `credentials`.
fn credential_metadata(metadata: &mut MetadataMap, credentials: &Credentials, secret: &Secret) -> Result<(), String> {
    let (name, text) = match credentials {
        Credentials::Bearer { .. } => ("authorization".to_owned(), format!("Bearer {}", secret.expose())),
        Credentials::Basic { username, .. } => {
            let pair = format!("{username}:{}", secret.expose());
            ("authorization".to_owned(), format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
        }
        Credentials::Header { header, .. } => (header.clone(), secret.expose().to_owned()),
    };
    // Neither parse error quotes the value.
    let value = AsciiMetadataValue::try_from(text.as_str())
        .map_err(|_| format!("secret {} is not a valid metadata value", credentials.secret()))?;
    let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid metadata key {name}"))?;
    metadata.insert(key, value);
    Ok(())
}

/// A status as a failure: transport errors as the transport classifies them (a certificate
/// not trusted stays permanent), codes as documented.
fn status_failure(status: &Status, service: &ServiceId, host: &str) -> Failure {
    use std::error::Error as _;
    if let Some(source) = status.source()
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled)
    {
        return transport::classify(source, host);
    }
    let code = status.code();
    let class = format!("grpc_{}", grpc_code_name(code).to_ascii_lowercase());
    let message = format!("{}: {}", grpc_code_name(code), status.message());
    let retryable = matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    );
    let _ = service;
    if retryable { Failure::retryable(&class, message) } else { Failure::permanent(&class, message) }
}

/// The names of the gRPC status codes as the specification writes them, by number.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code as the gRPC specification writes it, e.g. `DEADLINE_EXCEEDED`.
pub fn grpc_code_name(code: Code) -> &'static str {
    // tonic's codes are the specification's numbers, 0 to 16.
    usize::try_from(code as i32).ok().and_then(|n| GRPC_CODE_NAMES.get(n)).copied().unwrap_or("UNKNOWN")
}

/// Encodes request messages, dynamic, and decodes responses of `output` to JSON.
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = Result<Value, serde_json::Error>;
    type Encoder = DynamicEncoder;
    type Decoder = JsonDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> JsonDecoder {
        JsonDecoder(self.output.clone())
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("cannot encode the request: {e}")))
    }
}

/// Reads an answer straight to JSON, or through a `DynamicMessage` for what that reader does
/// not take on. An answer that is not the message is a status, as tonic's decoders make it; one
/// that has no JSON is the item's error.
struct JsonDecoder(MessageDescriptor);

impl Decoder for JsonDecoder {
    type Item = Result<Value, serde_json::Error>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        use prost::bytes::Buf as _;
        // The message is one contiguous chunk, read in place.
        let copied;
        let bytes = if src.chunk().len() == src.remaining() {
            src.chunk()
        } else {
            copied = src.copy_to_bytes(src.remaining());
            &copied[..]
        };
        let answer = proto_json::to_json(&self.0, bytes).or_else(|_| proto_json::to_json_via_message(&self.0, bytes));
        let consumed = src.remaining();
        src.advance(consumed);
        match answer {
            Ok(json) => Ok(Some(Ok(json))),
            Err(proto_json::ViaMessageError::Serialize(e)) => Ok(Some(Err(e))),
            Err(proto_json::ViaMessageError::Decode(e)) => {
                Err(Status::internal(format!("the answer is not a valid {}: {e}", self.0.full_name())))
            }
        }
    }
}

/// Descriptor pools by service, version and gRPC service name: fetched once per version,
/// concurrent first calls waiting for one fetch.
#[derive(Default)]
struct Descriptors {
    pools: Mutex<HashMap<(ServiceId, String, String), Entry>>,
}

#[derive(Clone)]
struct Entry {
    /// The registered set the pool came from, so a new registration of it is noticed.
    registered: Option<baton_core::DescriptorSet>,
    pool: Arc<OnceCell<Arc<DescriptorPool>>>,
}

impl Descriptors {
    async fn pool(
        &self,
        spec: &ServiceSpec,
        method: &GrpcMethod,
        client: &GrpcClient,
        origin: &Uri,
        host: &str,
        credentials: &MetadataMap,
    ) -> Result<Arc<DescriptorPool>, Failure> {
        let Endpoint::Grpc { descriptor_set, .. } = spec.endpoint() else { unreachable!("a gRPC endpoint") };
        let key = (spec.id().clone(), spec.version().to_owned(), method.service().to_owned());
        let entry = {
            let mut pools = self.pools.lock();
            match pools.get(&key) {
                Some(entry) if entry.registered == *descriptor_set => entry.clone(),
                _ => {
                    if pools.len() >= MAX_POOLS {
                        pools.clear();
                    }
                    let entry = Entry { registered: descriptor_set.clone(), pool: Arc::default() };
                    pools.insert(key, entry.clone());
                    entry
                }
            }
        };
        let pool = entry
            .pool
            .get_or_try_init(|| async {
                let pool = match descriptor_set {
                    Some(set) => DescriptorPool::decode(set.bytes()).map_err(|e| {
                        Failure::permanent(
                            "invalid_descriptors",
                            format!("the descriptor set of service {} does not build: {e}", spec.id()),
                        )
                    })?,
                    None => reflect(spec.id(), client, origin, host, credentials, method.service()).await?,
                };
                Ok::<_, Failure>(Arc::new(pool))
            })
            .await?;
        Ok(Arc::clone(pool))
    }
}

/// The descriptors of `symbol` and every file it needs, by server reflection: v1 first, then
/// v1alpha for servers that speak only that.
async fn reflect(
    service: &ServiceId,
    client: &GrpcClient,
    origin: &Uri,
    host: &str,
    credentials: &MetadataMap,
    symbol: &str,
) -> Result<DescriptorPool, Failure> {
    let files = match reflect_v1::files(client, origin, credentials, symbol).await {
        Err(status) if status.code() == Code::Unimplemented => {
            reflect_v1alpha::files(client, origin, credentials, symbol).await
        }
        other => other,
    };
    let files = files.map_err(|status| match status.code() {
        Code::Unimplemented => Failure::permanent(
            "no_descriptors",
            format!(
                "service {service} serves no reflection (v1 or v1alpha) and registered no descriptor_set, so its \
                 messages are unknown"
            ),
        ),
        Code::NotFound => Failure::permanent(
            "unknown_method",
            format!("service {service} does not know gRPC service {symbol}: {}", status.message()),
        ),
        _ => {
            let mut failure = status_failure(&status, service, host);
            failure.message = format!("reflection: {}", failure.message);
            failure
        }
    })?;
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files).map_err(|e| {
        Failure::permanent(
            "invalid_descriptors",
            format!("the descriptors service {service} reflects do not build: {e}"),
        )
    })?;
    Ok(pool)
}

/// The file descriptors a reflection conversation brings: the file defining the symbol, then
/// any dependency not yet seen, by name. Generated once per reflection version, whose
/// messages are the same but distinct types.
macro_rules! reflection_client {
    ($module:ident, $pb:path) => {
        mod $module {
            use super::*;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;

            async fn ask(
                client: &GrpcClient,
                origin: &Uri,
                credentials: &MetadataMap,
                question: MessageRequest,
            ) -> Result<Vec<Vec<u8>>, Status> {
                let mut reflection =
                    pb::server_reflection_client::ServerReflectionClient::with_origin(client.clone(), origin.clone())
                        .max_decoding_message_size(MAX_REFLECTION_BYTES);
                let request = pb::ServerReflectionRequest { host: String::new(), message_request: Some(question) };
                let mut request = tonic::Request::new(futures_util::stream::iter([request]));
                *request.metadata_mut() = credentials.clone();
                request.set_timeout(Duration::from_secs(10));
                let mut answers = reflection.server_reflection_info(request).await?.into_inner();
                let mut files = Vec::new();
                while let Some(answer) = answers.message().await? {
                    match answer.message_response {
                        Some(MessageResponse::FileDescriptorResponse(found)) => {
                            files.extend(found.file_descriptor_proto)
                        }
                        Some(MessageResponse::ErrorResponse(error)) => {
                            return Err(Status::new(Code::from_i32(error.error_code), error.error_message));
                        }
                        _ => {}
                    }
                }
                Ok(files)
            }

            pub(super) async fn files(
                client: &GrpcClient,
                origin: &Uri,
                credentials: &MetadataMap,
                symbol: &str,
            ) -> Result<Vec<prost_types::FileDescriptorProto>, Status> {
                let mut files: HashMap<String, prost_types::FileDescriptorProto> = HashMap::new();
                let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.to_owned())];
                let mut asked: HashSet<String> = HashSet::new();
                while let Some(question) = wanted.pop() {
                    for bytes in ask(client, origin, credentials, question).await? {
                        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                            .map_err(|e| Status::internal(format!("reflection sent a broken file descriptor: {e}")))?;
                        files.insert(file.name().to_owned(), file);
                    }
                    if files.len() > MAX_REFLECTED_FILES {
                        return Err(Status::resource_exhausted(format!(
                            "reflection brought more than {MAX_REFLECTED_FILES} files"
                        )));
                    }
                    for file in files.values() {
                        for dependency in &file.dependency {
                            if !files.contains_key(dependency) && asked.insert(dependency.clone()) {
                                wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                            }
                        }
                    }
                }
                Ok(files.into_values().collect())
            }
        }
    };
}

reflection_client!(reflect_v1, tonic_reflection::pb::v1);
reflection_client!(reflect_v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_specification_name() {
        let names: Vec<&str> = (0..17).map(|n| grpc_code_name(Code::from_i32(n))).collect();
        assert_eq!(names, GRPC_CODE_NAMES);
        assert_eq!((grpc_code_name(Code::Ok), grpc_code_name(Code::DataLoss)), ("OK", "DATA_LOSS"));
        assert_eq!(grpc_code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn status_codes_map_to_documented_retry_behaviour() {
        let service = ServiceId::new("svc").unwrap();
        let check = |code: Code, retryable: bool, class: &str| {
            let failure = status_failure(&Status::new(code, "why"), &service, "h");
            assert_eq!((failure.retryable, failure.class.as_str()), (retryable, class), "{code:?}");
            assert_eq!(failure.message, format!("{}: why", grpc_code_name(code)));
        };
        check(Code::Unavailable, true, "grpc_unavailable");
        check(Code::DeadlineExceeded, true, "grpc_deadline_exceeded");
        check(Code::ResourceExhausted, true, "grpc_resource_exhausted");
        check(Code::Aborted, true, "grpc_aborted");
        check(Code::InvalidArgument, false, "grpc_invalid_argument");
        check(Code::NotFound, false, "grpc_not_found");
        check(Code::PermissionDenied, false, "grpc_permission_denied");
        check(Code::Unauthenticated, false, "grpc_unauthenticated");
        check(Code::Unimplemented, false, "grpc_unimplemented");
        check(Code::FailedPrecondition, false, "grpc_failed_precondition");
        check(Code::Internal, true, "grpc_internal");
    }

    #[test]
    fn grpc_urls_are_plaintext_http2_origins() {
        assert_eq!(origin("grpc://h:50051/x").unwrap().to_string(), "http://h:50051/");
        assert_eq!(origin("https://h/").unwrap().to_string(), "https://h/");
        assert_eq!(origin("ftp://h").unwrap_err().class, "invalid_url");
    }
}
