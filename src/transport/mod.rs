//! How connections are accepted and served, below the gRPC services.
//!
//! - [`serve`]: the accept loop and each connection's task. HTTP/2 or HTTP/1.1
//!   (gRPC-Web) is told apart by the connection's first bytes. One task per
//!   connection writes every one of its streams' frames, so a room event that reaches
//!   many streams of one connection leaves in one write.
//! - [`stall`]: connections that stop reading a Subscribe stream are closed
//!   (`--stalled-stream-timeout`).

mod serve;
mod stall;

pub use serve::{Settings, serve};
pub use stall::{ConnectionInfo, Guarded, Progress, incoming};
