//! The wire format, at the bottom of the house: the code generated from the contract
//! (`proto/chatroom/v1/chatroom.proto`), its descriptor set, and every conversion
//! between domain values and their protobuf form, both ways.
//!
//! - [`pb`]: the generated messages and client (the server's traits are generated
//!   into `api`, which knows tonic);
//! - [`decode`]: requests as they arrive, validated into domain values once — every
//!   rule about the shape of input (ids, sizes, durations, page tokens) is decided
//!   there, and errors name the proto field;
//! - [`encode`]: domain values as answers, and every event a stream receives;
//! - [`Frame`]: a `SubscribeResponse` encoded once, with its gRPC prefix, so fan-out
//!   writes the same bytes to every subscriber.
//!
//! It imports only [`crate::domain`] and [`crate::error`]: every other layer may
//! import it, and it imports none of them.

pub mod decode;
pub mod encode;
mod frame;

pub use frame::Frame;

/// Code generated from the proto contract (package `chatroom.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("chatroom.v1");
}

/// The encoded descriptor set of the contract and its imports, for server reflection
/// and for the method names metrics are labelled with.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chatroom_descriptor.bin"));

/// The contract's service, as gRPC (and the health service) names it.
pub const SERVICE_NAME: &str = "chatroom.v1.ChatRoomService";
