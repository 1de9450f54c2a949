//! A `SubscribeResponse` encoded once.
//!
//! Fan-out sends the same event to every subscriber of a room. Encoding it per
//! subscriber would repeat the same work thousands of times, so events are encoded
//! once into a [`Frame`] and every stream writes those bytes. A frame holds the message
//! as it goes on the wire, behind gRPC's 5-byte length prefix, so a stream's body
//! (`api::body`) hands it to HTTP/2 without a copy. Clients decode the ordinary
//! message.

use bytes::Bytes;
use prost::Message;

use super::pb;

/// gRPC's message prefix: a compression flag and a big-endian `u32` length.
const PREFIX: usize = 5;

/// An encoded `SubscribeResponse`, with its gRPC prefix. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Encodes a response.
    pub fn encode(response: &pb::SubscribeResponse) -> Frame {
        let len = response.encoded_len();
        let mut wire = Vec::with_capacity(PREFIX + len);
        wire.push(0); // not compressed
        wire.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        response
            .encode(&mut wire)
            .expect("a Vec grows to fit the message");
        Frame(Bytes::from(wire))
    }

    /// Encodes an event (a response that answers no particular request).
    pub fn event(event: pb::subscribe_response::Event) -> Frame {
        Frame::encode(&pb::SubscribeResponse {
            request_id: String::new(),
            event: Some(event),
        })
    }

    /// Encodes the answer to the client frame `request_id`.
    pub fn reply(request_id: String, event: pb::subscribe_response::Event) -> Frame {
        Frame::encode(&pb::SubscribeResponse {
            request_id,
            event: Some(event),
        })
    }

    /// A frame from its wire bytes (as another node encoded it); `None` unless the
    /// prefix says exactly the bytes that follow, uncompressed.
    pub fn from_wire(wire: Bytes) -> Option<Frame> {
        let (prefix, body) = wire.split_at_checked(PREFIX)?;
        let len = u32::from_be_bytes(prefix[1..].try_into().ok()?);
        (prefix[0] == 0 && usize::try_from(len).ok()? == body.len()).then_some(Frame(wire))
    }

    /// The message as it goes on the wire, prefix included.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }

    /// The wire bytes, without a copy.
    pub fn into_wire(self) -> Bytes {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_the_grpc_prefix() {
        let response = pb::SubscribeResponse {
            request_id: "r2".into(),
            event: Some(pb::subscribe_response::Event::Pong(pb::Pong {})),
        };
        let wire = Frame::encode(&response).into_wire();
        let len = response.encoded_len();
        assert_eq!(wire[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize,
            len
        );
        assert_eq!(wire.len(), 5 + len);
        assert_eq!(pb::SubscribeResponse::decode(&wire[5..]).unwrap(), response);
    }
}
