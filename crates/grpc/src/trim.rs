//! Keeps the status message of every response small enough for any client to read.
//!
//! A status message travels in the `grpc-message` header or trailer, and an HTTP/2 client
//! bounds the header blocks it accepts (`SETTINGS_MAX_HEADER_LIST_SIZE`: 16 KiB for tonic and
//! hyper, 8 KiB of metadata for grpc-java). h2 does not hold a server to the client's bound: a
//! longer block is sent, and the client answers it by closing the whole connection
//! (`GOAWAY ENHANCE_YOUR_CALM`), failing every other call on it. Messages often name what the
//! request got wrong, and so can grow with the request: the planner's "unsatisfiable" lists every
//! wanted concept, megabytes for a goal of 100,000. So the last layer of the server cuts every
//! message to [`MAX_MESSAGE_BYTES`], saying that it did; the code is kept.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The longest status message sent, in bytes before percent-encoding; encoded, it is at most
/// three times as long, well within what clients accept.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts the `grpc-message` of `headers` (a response's headers or trailers) to
/// [`MAX_MESSAGE_BYTES`], on a character boundary, followed by how long it was.
fn trim(headers: &mut HeaderMap) {
    // Encoding never shortens a message: an encoded value this short needs no decoding.
    if headers.get(tonic::Status::GRPC_MESSAGE).is_none_or(|value| value.len() <= MAX_MESSAGE_BYTES) {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else { return };
    let message = status.message();
    if message.len() <= MAX_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}… (cut from {} bytes)", &message[..end], message.len());
    // tonic encodes the cut message as it encodes every other.
    let mut encoded = HeaderMap::new();
    match tonic::Status::new(status.code(), cut).add_header(&mut encoded) {
        Ok(()) => {
            if let Some(value) = encoded.remove(tonic::Status::GRPC_MESSAGE) {
                headers.insert(tonic::Status::GRPC_MESSAGE, value);
            }
        }
        // Unreachable, as the encoding leaves only visible ASCII; a message not sent is still
        // better than a connection lost.
        Err(_) => {
            headers.remove(tonic::Status::GRPC_MESSAGE);
        }
    }
}

/// The layer that puts a [`Trimmed`] around the server's services.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrimLayer;

impl<S> tower_layer::Layer<S> for TrimLayer {
    type Service = Trimmed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trimmed { inner }
    }
}

/// A service whose responses carry status messages of at most [`MAX_MESSAGE_BYTES`], in a
/// trailers-only response (how tonic answers an error) and in a body's trailers alike.
#[derive(Debug, Clone)]
pub(crate) struct Trimmed<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Trimmed<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TrimmedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrimmedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        TrimmedFuture { inner: self.inner.call(request) }
    }
}

pin_project! {
    /// The response future of a [`Trimmed`] service.
    #[derive(Debug)]
    pub(crate) struct TrimmedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for TrimmedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrimmedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        trim(response.headers_mut());
        Poll::Ready(Ok(response.map(|inner| TrimmedBody { inner })))
    }
}

pin_project! {
    /// A response body whose trailers are trimmed as they pass.
    #[derive(Debug)]
    pub(crate) struct TrimmedBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for TrimmedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut frame = ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(frame)) = &mut frame
            && let Some(trailers) = frame.trailers_mut()
        {
            trim(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    /// The message a client reads from `headers`, once trimmed.
    fn trimmed(message: &str) -> (String, usize) {
        let mut headers = HeaderMap::new();
        Status::new(Code::FailedPrecondition, message).add_header(&mut headers).unwrap();
        headers.insert("x-other", "kept".parse().unwrap());
        trim(&mut headers);
        assert_eq!(headers.get("x-other").unwrap(), "kept");
        let encoded = headers.get(Status::GRPC_MESSAGE).map_or(0, http::HeaderValue::len);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::FailedPrecondition);
        (status.message().to_owned(), encoded)
    }

    #[test]
    fn short_messages_pass_unchanged() {
        let longest = "x".repeat(MAX_MESSAGE_BYTES);
        for message in ["", "unknown execution 0189", "spaces and 100% \"symbols\" {}", &longest] {
            assert_eq!(trimmed(message).0, message);
        }
        // Encoded, this is three times the limit; decoded, it is within it.
        let wide = "é".repeat(MAX_MESSAGE_BYTES / 2);
        assert_eq!(trimmed(&wide).0, wide);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_say_so() {
        let ascii = format!("unsatisfiable: {}", "wanted capability; ".repeat(500_000));
        let (message, encoded) = trimmed(&ascii);
        assert!(message.starts_with("unsatisfiable: wanted capability; "), "{message}");
        assert!(message.ends_with(&format!("… (cut from {} bytes)", ascii.len())), "{message}");
        assert!(message.len() < MAX_MESSAGE_BYTES + 40, "{}", message.len());
        assert!(encoded <= 3 * (MAX_MESSAGE_BYTES + 40), "{encoded}");

        // A three-byte character straddles the limit.
        let wide = format!("a{}", "€".repeat(MAX_MESSAGE_BYTES));
        let (message, encoded) = trimmed(&wide);
        let kept = message.split('…').next().unwrap();
        assert_eq!(kept, format!("a{}", "€".repeat((MAX_MESSAGE_BYTES - 1) / 3)));
        assert!(encoded <= 3 * (MAX_MESSAGE_BYTES + 40), "{encoded}");
    }
}
