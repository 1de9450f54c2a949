//! Domain values and their protobuf form, both ways, in one place.
//!
//! - [`decode`]: requests as they arrive, validated into domain values once — every
//!   rule about the shape of input (ids, sizes, durations, page tokens) is decided
//!   there, and errors name the proto field;
//! - [`encode`]: domain values as answers and as the events fan-out encodes once.
//!
//! `api/` calls both; `live/` encodes with [`encode`] (it builds frames); neither
//! direction knows tonic.

pub mod decode;
pub mod encode;

/// The contract's service, as gRPC (and the health service) names it.
pub const SERVICE_NAME: &str = "chatroom.v1.ChatRoomService";
