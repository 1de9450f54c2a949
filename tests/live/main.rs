//! Live rooms over a real gRPC connection: the Subscribe stream, messages, history,
//! room events, presence and shutdown — on SQLite and on PostgreSQL. One test binary,
//! a module per topic.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

mod amendments;
mod broadcast;
mod listen;
mod messages;
mod presence;
mod retention;
mod room_events;
mod stream;
mod watch;
