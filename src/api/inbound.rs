//! A Subscribe call's client frames, decoded from the request body as they arrive.
//!
//! Tonic's `Streaming` decodes any call's requests, with room for compression,
//! trailers and a boxed decoder: 232 bytes that every Subscribe stream kept for as
//! long as it lived. A Subscribe request body is uncompressed length-prefixed
//! messages (a stream that names another encoding is refused when it opens), so this
//! keeps the body, the bytes of a message not yet whole, and the size limit.
//!
//! It answers what tonic would: INTERNAL for a compressed-flag or a message cut off
//! by the end of the body, INVALID_ARGUMENT for bytes that are not the message
//! (`ErrorInfo` like every bad input), RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE` past
//! the limit; a body the client cancelled simply ends.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use http_body::Body as _;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::error::Error;

/// A gRPC message's prefix: the compressed flag and the length.
const PREFIX: usize = 5;
/// A buffer this large or larger is freed once drained, not kept for the next frame.
const KEPT_CAPACITY: usize = 1024;

/// The messages of a request body.
pub struct Inbound<T> {
    body: Body,
    /// Received bytes not yet decoded (a message not yet whole, or several).
    buf: BytesMut,
    /// Most bytes one message may have.
    limit: usize,
    /// The body ended, or failed: nothing more comes.
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T> Inbound<T> {
    /// The messages of `body`, each at most `limit` bytes.
    pub fn new(body: Body, limit: usize) -> Self {
        Inbound {
            body,
            buf: BytesMut::new(),
            limit,
            ended: false,
            _message: PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Inbound<T> {
    /// The next whole message in the buffer, if there is one.
    fn decode_one(&mut self) -> Result<Option<T>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        match self.buf[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: a message has its compressed flag set, but the call named no grpc-encoding",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: a message has compressed flag {flag} (valid flags are 0 and 1)"
                )));
            }
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limit {
            return Err(Status::from(Error::RequestTooLarge { limit: self.limit }));
        }
        if self.buf.len() < PREFIX + len {
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX);
        let decoded = T::decode(&self.buf[..len]);
        self.buf.advance(len);
        if self.buf.is_empty() && self.buf.capacity() >= KEPT_CAPACITY {
            self.buf = BytesMut::new();
        }
        decoded.map(Some).map_err(|error| {
            Status::from(Error::invalid(
                "request",
                format!("is not a valid message: {error}"),
            ))
        })
    }
}

impl<T: prost::Message + Default> Stream for Inbound<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.decode_one() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers from a client mean nothing here.
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => {
                    this.ended = true;
                    // A client that cancels its call has simply gone.
                    if status.code() == Code::Cancelled {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.ended = true;
                    if this.buf.has_remaining() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "the request body ended inside a message",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use prost::Message as _;

    use crate::proto::pb;

    /// DATA frames, one per chunk.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            let chunk = self.0.pop_front();
            Poll::Ready(chunk.map(|c| Ok(http_body::Frame::data(Bytes::from(c)))))
        }
    }

    /// A request body of these chunks, as the client's DATA frames.
    fn body(chunks: Vec<Vec<u8>>) -> Body {
        Body::new(Chunks(chunks.into()))
    }

    fn framed(message: &pb::SubscribeRequest) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn ping(id: &str) -> pb::SubscribeRequest {
        pb::SubscribeRequest {
            request_id: id.into(),
            frame: Some(pb::subscribe_request::Frame::Ping(pb::Ping {})),
        }
    }

    async fn all(chunks: Vec<Vec<u8>>, limit: usize) -> Vec<Result<String, Code>> {
        Inbound::<pb::SubscribeRequest>::new(body(chunks), limit)
            .map(|r| r.map(|m| m.request_id).map_err(|s| s.code()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames_come_out_whole_and_in_order() {
        let (a, b, c) = (framed(&ping("a")), framed(&ping("b")), framed(&ping("c")));
        let mut joined = a.clone();
        joined.extend_from_slice(&b[..3]);
        let chunks = vec![joined, b[3..].to_vec(), c[..1].to_vec(), c[1..].to_vec()];
        let ok = |id: &str| Ok(id.to_string());
        assert_eq!(all(chunks, 1024).await, vec![ok("a"), ok("b"), ok("c")]);
    }

    #[tokio::test]
    async fn bad_input_ends_the_stream_with_its_status() {
        let message = framed(&ping("a"));
        let mut compressed = message.clone();
        compressed[0] = 1;
        assert_eq!(all(vec![compressed], 1024).await, vec![Err(Code::Internal)]);
        assert_eq!(
            all(vec![message.clone()], message.len() - PREFIX - 1).await,
            vec![Err(Code::ResourceExhausted)],
            "one byte over the limit"
        );
        let garbage = vec![0, 0, 0, 0, 2, 0xff, 0xff];
        assert_eq!(
            all(vec![garbage], 1024).await,
            vec![Err(Code::InvalidArgument)]
        );
        let cut = message[..message.len() - 1].to_vec();
        assert_eq!(all(vec![cut], 1024).await, vec![Err(Code::Internal)]);
    }
}
