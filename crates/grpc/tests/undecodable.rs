//! Requests that do not decode as their message, sent raw to a real server over the fakes: a
//! string field that is not UTF-8 (the JSON fields first) or a malformed body is the caller's
//! mistake, answered `INVALID_ARGUMENT` naming the field, never `INTERNAL`.

mod common;

use baton_grpc::{Config, pb};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends message bodies as raw bytes, so that a body need not be a valid message.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = prost::bytes::Buf::copy_to_bytes(src, prost::bytes::Buf::remaining(src));
        Ok(Some(bytes.to_vec()))
    }
}

/// `message` encoded, with the length-delimited field `number` (appended last) holding bytes
/// that are not UTF-8.
fn with_bad_utf8(message: &impl prost::Message, number: u32) -> Vec<u8> {
    let mut body = message.encode_to_vec();
    body.push(u8::try_from(number << 3 | 2).expect("a small field number"));
    body.extend_from_slice(&[4, b'{', 0xff, 0xfe, b'}']);
    body
}

/// The status a unary call of `path` with `body` is answered with.
async fn call(channel: &tonic::transport::Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
        Ok(answer) => panic!("expected a refusal, got an answer of {} bytes", answer.into_inner().len()),
        Err(status) => status,
    }
}

#[tokio::test]
async fn json_fields_that_are_not_utf8_are_invalid_arguments_naming_the_field() {
    let (_fakes, backends) = common::fake_backends();
    let server = common::serve(backends, Config::default()).await;
    let start = pb::StartExecutionRequest { workflow: "checkout".into(), ..Default::default() };
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        ("/baton.v1.ExecutionService/StartExecution", with_bad_utf8(&start, 3), "input_json"),
        (
            "/baton.v1.OrchestratorService/Orchestrate",
            with_bad_utf8(&pb::OrchestrateRequest::default(), 2),
            "input_json",
        ),
        ("/baton.v1.WorkerService/CompleteTask", with_bad_utf8(&pb::CompleteTaskRequest::default(), 2), "output_json"),
        (
            "/baton.v1.WorkflowService/ApplyDefinition",
            with_bad_utf8(&pb::ApplyDefinitionRequest::default(), 1),
            "source",
        ),
        (
            "/baton.v1.ExecutionService/CancelExecution",
            with_bad_utf8(&pb::CancelExecutionRequest::default(), 2),
            "reason",
        ),
        ("/baton.v1.WorkerService/FailTask", with_bad_utf8(&pb::FailTaskRequest::default(), 2), "error"),
        // Not a message at all: a length past the end of the body.
        ("/baton.v1.ExecutionService/GetExecution", vec![0x0a, 0x7f, 0x41], "GetExecutionRequest"),
    ];
    for (path, body, field) in cases {
        let status = call(&server.channel, path, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains(field), "{path}: {:?} should name {field}", status.message());
    }
    // The server carries on.
    let mut executions = pb::execution_service_client::ExecutionServiceClient::new(server.channel.clone());
    let listed = executions.list_executions(pb::ListExecutionsRequest::default()).await.unwrap();
    assert!(listed.into_inner().executions.is_empty());
    server.shutdown().await;
}
