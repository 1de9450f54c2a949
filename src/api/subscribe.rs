//! The Subscribe route: the session's frames go to HTTP/2 as they are.
//!
//! Tonic encodes every response message of a call into a buffer of the call's own and
//! keeps that buffer, at its largest size, for as long as the call lives: after a
//! burst of messages every idle stream would hold kilobytes it no longer needs.
//! Subscribe's responses are encoded once per event already ([`Frame`], gRPC's
//! length prefix included), and the same bytes go to every subscriber, so this route
//! hands them over as they are: a lone frame is a shared `Bytes`, several ready at once
//! are gathered into one buffer that is freed as soon as it is written. Between
//! bursts a stream holds no buffer at all.
//!
//! Everything else is tonic's: requests are decoded by its `Streaming`, errors become
//! trailers with its `Status`. [`WithSubscribe`] wraps the generated service and
//! answers the Subscribe path itself; every other call goes to the generated service.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::ChatRoomApi;
use super::codec::LeanCodec;
use super::server::chat_room_service_server::ChatRoomServiceServer;
use crate::proto::Frame;
use crate::proto::pb;
use crate::transport::Progress;

/// The routes this module serves.
const SUBSCRIBE_PATH: &str = "/chatroom.v1.ChatRoomService/Subscribe";
const LISTEN_PATH: &str = "/chatroom.v1.ChatRoomService/Listen";
/// Most bytes of ready frames gathered into one write.
const GATHER_LIMIT: usize = 16 * 1024;

/// The generated service, with Subscribe answered by this module (`subscribe`).
#[derive(Clone)]
pub struct WithSubscribe {
    api: ChatRoomApi,
    inner: ChatRoomServiceServer<ChatRoomApi>,
    /// The largest request message decoded, unary or stream frame; a bigger one is
    /// refused (RESOURCE_EXHAUSTED) before it is buffered whole.
    max_request_bytes: usize,
}

impl WithSubscribe {
    pub fn new(api: ChatRoomApi, max_request_bytes: usize) -> Self {
        WithSubscribe {
            inner: ChatRoomServiceServer::new(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            max_request_bytes,
        }
    }
}

impl NamedService for WithSubscribe {
    const NAME: &'static str = <ChatRoomServiceServer<ChatRoomApi> as NamedService>::NAME;
}

impl tower_service::Service<http::Request<Body>> for WithSubscribe {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = method_name(request.uri().path());
        let started = std::time::Instant::now();
        // The call's span: the handler records the caller and the room into it
        // (`ChatRoomApi::caller`, `super::in_room`), and everything logged meanwhile carries them.
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            method,
            user_id = tracing::field::Empty,
            room_id = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        let path = request.uri().path();
        if path == SUBSCRIBE_PATH || path == LISTEN_PATH {
            let listen = path == LISTEN_PATH;
            // Boxed because verifying a token may wait for a JWKS fetch; the box is
            // freed once the stream's response is made.
            let api = self.api.clone();
            let max_request_bytes = self.max_request_bytes;
            Box::pin(
                async move {
                    let response = subscribe(&api, max_request_bytes, request, listen).await;
                    Ok(metered(method, started, response))
                }
                .instrument(span),
            )
        } else {
            let call = tower_service::Service::call(&mut self.inner, request);
            let max_request_bytes = self.max_request_bytes;
            Box::pin(
                async move {
                    let response = sized(call.await?, max_request_bytes);
                    Ok(metered(method, started, response))
                }
                .instrument(span),
            )
        }
    }
}

/// A request refused by its size is RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE` with its
/// `ErrorInfo`, as every other refusal: tonic's decoder says OUT_OF_RANGE, with no
/// details, and gRPC's own table of codes gives RESOURCE_EXHAUSTED to a message over
/// the receiver's limit. Nothing of this service answers OUT_OF_RANGE otherwise.
fn too_large(status: Status, limit: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::from(crate::error::Error::RequestTooLarge { limit })
    } else {
        status
    }
}

/// A unary answer with [`too_large`] applied: tonic refuses an oversized request
/// before the handler runs, in a trailers-only answer (its status in the headers).
fn sized(response: http::Response<Body>, limit: usize) -> http::Response<Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status) => too_large(status, limit).into_http(),
        None => response,
    }
}

/// The contract's RPC names, read once from its descriptor set (so a new RPC is
/// named in the metrics without a list to keep in step), kept for the process's life.
static METHODS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    use prost::Message as _;
    let files = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built into the binary decodes");
    files
        .file
        .into_iter()
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "ChatRoomService")
        .flat_map(|s| s.method)
        .map(|m| &*Box::leak(m.name().to_string().into_boxed_str()))
        .collect()
});

/// The method a path calls, as the metrics name it ("unknown" for no RPC of the
/// contract, so that a client cannot make up label values).
fn method_name(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("unknown")
}

/// Records a call answered with `response`: its code is the `grpc-status` of a
/// trailers-only answer (an error), else OK (a unary call's answer is made once its
/// handler is done; a Subscribe stream's once it is open).
fn metered(
    method: &'static str,
    started: std::time::Instant,
    response: http::Response<Body>,
) -> http::Response<Body> {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    let elapsed = started.elapsed();
    crate::telemetry::rpc(method, code, elapsed);
    tracing::Span::current().record("code", code as i32);
    tracing::debug!(
        code = code as i32,
        elapsed_us = elapsed.as_micros() as u64,
        "answered"
    );
    response
}

/// Starts a Subscribe stream: the caller from the request's metadata, the client's
/// frames decoded from its body, and the session's frames as the response body. A
/// Listen call (`listen`) is the same stream, its one request turned into the frames.
async fn subscribe(
    api: &ChatRoomApi,
    max_request_bytes: usize,
    request: http::Request<Body>,
    listen: bool,
) -> http::Response<Body> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Status::unimplemented(format!(
            "compressed requests ({encoding:?}) are not supported"
        ))
        .into_http();
    }
    let request = tonic::Request::from_http(request);
    let progress = request
        .extensions()
        .get::<crate::transport::ConnectionInfo>()
        .and_then(|c| c.0.watch_stream());
    let opened = match api.caller(request.metadata()).await {
        Ok(caller) => api.stream_slot(caller),
        Err(error) => Err(error),
    };
    let (caller, slot) = match opened {
        Ok(opened) => opened,
        Err(error) => return Status::from(error).into_http(),
    };
    // The stream's span, entered whenever the session runs: what it logs (attaches,
    // detaches, failures) carries the user, and its database work is its child. At
    // DEBUG, because it lives as long as the stream: at INFO it cost 0.8 KiB per idle
    // stream (BENCHMARKS.md), so it exists only with `--log debug` or an OTLP export.
    // Not a child of the call's span, which would then stay open as long as the
    // stream; it follows from it instead.
    let span = tracing::debug_span!(
        parent: None,
        "stream",
        otel.name = if listen { "Listen stream" } else { "Subscribe stream" },
        user_id = caller.user_id.as_str()
    );
    span.follows_from(tracing::Span::current());
    let frames: Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>> = if listen {
        let decoder =
            tonic::codec::Codec::decoder(&mut LeanCodec::<Frame, pb::ListenRequest>::default());
        let mut body =
            Streaming::new_request(decoder, request.into_inner(), None, Some(max_request_bytes));
        let listened = match body.message().await {
            Ok(Some(listen)) => api
                .listen_session(caller, slot, listen)
                .map_err(Status::from),
            Ok(None) => Err(Status::from(crate::error::Error::invalid(
                "request",
                "a Listen call needs its ListenRequest",
            ))),
            Err(status) => Err(too_large(status, max_request_bytes)),
        };
        match listened {
            Ok(frames) => Box::pin(span.in_scope(|| frames)),
            Err(status) => return status.into_http(),
        }
    } else {
        let decoder =
            tonic::codec::Codec::decoder(&mut LeanCodec::<Frame, pb::SubscribeRequest>::default());
        let inbound =
            Streaming::new_request(decoder, request.into_inner(), None, Some(max_request_bytes))
                .map(move |frame| frame.map_err(|status| too_large(status, max_request_bytes)));
        Box::pin(span.in_scope(|| api.session(caller, slot, inbound)))
    };
    crate::telemetry::streams_open(1.0);
    let mut response = http::Response::new(Body::new(FrameBody {
        frames,
        end: None,
        done: false,
        progress,
        span,
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The response body: the session's frames, then its status as trailers.
struct FrameBody<S: ?Sized> {
    frames: Pin<Box<S>>,
    /// How the stream ended, when that was learnt while gathering: sent as trailers
    /// after what was gathered.
    end: Option<Status>,
    /// The trailers went out.
    done: bool,
    /// Told of every poll, for the stall watch of the connection (`transport`).
    progress: Option<Arc<Progress>>,
    /// The stream's span.
    span: tracing::Span,
}

impl<S: ?Sized> Drop for FrameBody<S> {
    fn drop(&mut self) {
        crate::telemetry::streams_open(-1.0);
    }
}

impl<S: ?Sized> FrameBody<S> {
    /// The trailers that end the body.
    fn finish(&mut self, status: &Status) -> http_body::Frame<Bytes> {
        self.done = true;
        trailers(status)
    }
}

impl<S: ?Sized> http_body::Body for FrameBody<S>
where
    S: Stream<Item = Result<Frame, Status>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let span = self.span.clone();
        let _entered = span.enter();
        let polled = self.as_mut().poll_frames(cx);
        if let Some(progress) = &self.progress {
            progress.polled(polled.is_ready());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<S: ?Sized> FrameBody<S>
where
    S: Stream<Item = Result<Frame, Status>>,
{
    fn poll_frames(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(status) = self.end.take() {
            return Poll::Ready(Some(Ok(self.finish(&status))));
        }
        let first = match ready!(self.frames.as_mut().poll_next(cx)) {
            Some(Ok(frame)) => frame.into_wire(),
            Some(Err(status)) => return Poll::Ready(Some(Ok(self.finish(&status)))),
            None => return Poll::Ready(Some(Ok(self.finish(&Status::ok(""))))),
        };
        // Whatever else is ready goes in the same write (one HTTP/2 DATA frame instead
        // of one per message), in a buffer freed once written.
        let mut gathered: Option<BytesMut> = None;
        while gathered.as_ref().map_or(first.len(), BytesMut::len) < GATHER_LIMIT {
            match self.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(next))) => {
                    let buf = gathered.get_or_insert_with(|| {
                        let mut buf = BytesMut::with_capacity(
                            GATHER_LIMIT.min((first.len() + next.wire().len()).next_power_of_two()),
                        );
                        buf.extend_from_slice(&first);
                        buf
                    });
                    buf.extend_from_slice(next.wire());
                }
                Poll::Ready(Some(Err(status))) => {
                    self.end = Some(status);
                    break;
                }
                Poll::Ready(None) => {
                    self.end = Some(Status::ok(""));
                    break;
                }
                Poll::Pending => break,
            }
        }
        let data = gathered.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }
}

/// A status as gRPC trailers.
fn trailers(status: &Status) -> http_body::Frame<Bytes> {
    let mut headers = http::HeaderMap::new();
    if let Err(unsendable) = status.add_header(&mut headers) {
        headers.clear();
        let _ = unsendable.add_header(&mut headers);
    }
    http_body::Frame::trailers(headers)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    /// The service's name as the health service reports it is the generated one.
    #[test]
    fn the_service_name_is_the_contracts() {
        use tonic::server::NamedService;
        assert_eq!(
            <super::ChatRoomServiceServer<super::ChatRoomApi> as NamedService>::NAME,
            crate::proto::SERVICE_NAME
        );
    }

    /// Every RPC of the contract is named in the metrics by its own name, and
    /// nothing else is.
    #[test]
    fn every_method_of_the_contract_has_a_metrics_name() {
        let files =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = files
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "ChatRoomService")
            .expect("the service");
        assert!(service.method.len() >= 14);
        for method in &service.method {
            let path = format!("/chatroom.v1.ChatRoomService/{}", method.name());
            assert_eq!(super::method_name(&path), method.name());
        }
        assert_eq!(
            super::method_name("/chatroom.v1.ChatRoomService/Nope"),
            "unknown"
        );
    }
}
