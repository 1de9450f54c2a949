//! A `SubscribeResponse` encoded once.
//!
//! Fan-out sends the same event to every subscriber of a room. Encoding it per
//! subscriber would repeat the same work thousands of times, so events are encoded
//! once into a [`Frame`] and every stream writes those bytes. The server's codegen maps
//! `SubscribeResponse` to this type (see `build.rs`); prost's codec asks it for its
//! length and bytes, which it already has. Clients decode the ordinary message.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};

use crate::pb;

/// An encoded `SubscribeResponse`. Cloning shares the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Encodes a response.
    pub fn encode(response: &pb::SubscribeResponse) -> Frame {
        Frame(Bytes::from(response.encode_to_vec()))
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

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Message for Frame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Frames are only ever encoded, on the server; decoding skips every field.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_decodes_as_the_response_it_encodes() {
        let response = pb::SubscribeResponse {
            request_id: "r1".into(),
            event: Some(pb::subscribe_response::Event::Pong(pb::Pong {})),
        };
        let frame = Frame::encode(&response);
        // Through prost's own framing, as the codec writes it.
        let wire = frame.encode_to_vec();
        assert_eq!(
            pb::SubscribeResponse::decode(wire.as_slice()).unwrap(),
            response
        );
        assert_eq!(frame.encoded_len(), response.encoded_len());
    }
}
