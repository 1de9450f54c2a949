//! A stream's HTTP response body: the session's frames go to HTTP/2 as they are.
//!
//! Tonic encodes every response message of a call into a buffer of the call's own and
//! keeps that buffer, at its largest size, for as long as the call lives: after a
//! burst of messages every idle stream would hold kilobytes it no longer needs.
//! Subscribe's responses are encoded once per event already ([`Frame`], gRPC's
//! length prefix included), and the same bytes go to every subscriber, so this body
//! hands them over as they are: a lone frame is a shared `Bytes`, several ready at
//! once are gathered into one buffer that is freed as soon as it is written. Between
//! bursts a stream holds no buffer at all. The stream's status goes out as trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio_stream::Stream;
use tonic::Status;

use super::gate::Gated;
use crate::proto::Frame;
use crate::transport::Progress;

/// Most bytes of ready frames gathered into one write.
const GATHER_LIMIT: usize = 16 * 1024;

/// The response body: the session's frames, then its status as trailers.
pub struct FrameBody<S: ?Sized> {
    /// Polled only when something the session waits on woke it: h2 wakes a stream's
    /// task each time it takes one of its frames, and hyper polls the body again after
    /// each frame on its own; both would otherwise run the whole session to find
    /// nothing (two of its four polls per delivery at a low rate).
    frames: Gated<Pin<Box<S>>>,
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

impl<S: ?Sized> FrameBody<S> {
    /// The body of `frames`, told to the stall watch through `progress` and run in
    /// the stream's `span`; counted as an open stream until dropped.
    pub fn new(frames: Pin<Box<S>>, progress: Option<Arc<Progress>>, span: tracing::Span) -> Self {
        crate::telemetry::streams_open(1.0);
        FrameBody {
            frames: Gated::new(frames),
            end: None,
            done: false,
            progress,
            span,
        }
    }
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
        let first = match ready!(Pin::new(&mut self.frames).poll_next(cx)) {
            Some(Ok(frame)) => frame.into_wire(),
            Some(Err(status)) => return Poll::Ready(Some(Ok(self.finish(&status)))),
            None => return Poll::Ready(Some(Ok(self.finish(&Status::ok(""))))),
        };
        // Whatever else is ready goes in the same write (one HTTP/2 DATA frame instead
        // of one per message), in a buffer freed once written.
        let mut gathered: Option<BytesMut> = None;
        while gathered.as_ref().map_or(first.len(), BytesMut::len) < GATHER_LIMIT {
            match Pin::new(&mut self.frames).poll_next(cx) {
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
