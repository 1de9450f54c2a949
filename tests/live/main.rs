//! Live rooms over a real gRPC connection: the Subscribe stream, messages, history,
//! room events, presence and shutdown — on SQLite and on PostgreSQL. One test binary,
//! a module per topic.

#[path = "../common/mod.rs"]
mod common;

mod listen;
mod messages;
mod presence;
mod retention;
mod room_events;
mod stream;
