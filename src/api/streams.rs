//! The two streaming calls, Subscribe and Listen, defined here and only here: the
//! caller from the request's metadata, one of its stream slots, the client's frames
//! decoded from the request body, and the session's frames as the response body
//! ([`super::body`]). A Listen call is the same stream, its one request turned into
//! the frames a Subscribe client would send.

use std::pin::Pin;

use http::header::{CONTENT_TYPE, HeaderValue};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;

use super::ChatRoomApi;
use super::body::FrameBody;
use super::codec::LeanDecoder;
use super::inbound::Inbound;
use super::status::too_large;
use crate::domain::Caller;
use crate::proto::Frame;
use crate::proto::pb;
use crate::rooms::streams::StreamSlot;

/// Which streaming call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streaming {
    Subscribe,
    Listen,
}

/// Opens a stream for `request`: its answer carries the session's frames, or is the
/// status that refused it (trailers only).
pub async fn open(
    api: &ChatRoomApi,
    max_request_bytes: usize,
    request: http::Request<Body>,
    call: Streaming,
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
        otel.name = match call {
            Streaming::Subscribe => "Subscribe stream",
            Streaming::Listen => "Listen stream",
        },
        user_id = caller.user_id.as_str()
    );
    span.follows_from(tracing::Span::current());
    let body = request.into_inner();
    // The session runs when its frames are polled, and [`FrameBody`] polls them in
    // the span.
    let frames = match session(api, call, caller, slot, body, max_request_bytes).await {
        Ok(frames) => frames,
        Err(status) => return status.into_http(),
    };
    let mut response = http::Response::new(Body::new(FrameBody::new(frames, progress, span)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A session's frames, as its stream sends them.
type Frames = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// The session of a `call` over the request's `body`: Subscribe reads its frames as
/// they come, Listen its one request first (refused if it does not come).
async fn session(
    api: &ChatRoomApi,
    call: Streaming,
    caller: Caller,
    slot: StreamSlot,
    body: Body,
    max_request_bytes: usize,
) -> Result<Frames, Status> {
    match call {
        Streaming::Listen => {
            let mut body = tonic::Streaming::new_request(
                LeanDecoder::<pb::ListenRequest>::default(),
                body,
                None,
                Some(max_request_bytes),
            );
            match body.message().await {
                Ok(Some(listen)) => Ok(Box::pin(
                    api.listen_session(caller, slot, listen)
                        .map_err(Status::from)?,
                )),
                Ok(None) => Err(Status::from(crate::error::Error::invalid(
                    "request",
                    "a Listen call needs its ListenRequest",
                ))),
                Err(status) => Err(too_large(status, max_request_bytes)),
            }
        }
        Streaming::Subscribe => {
            let inbound = Inbound::<pb::SubscribeRequest>::new(body, max_request_bytes);
            Ok(Box::pin(api.session(caller, slot, inbound)))
        }
    }
}
