//! The frames a session answers with (their events are built in `proto::encode`).

use crate::domain::{DetachReason, Message, Room, RoomId};
use crate::error::{Error, Result};
use crate::proto::Frame;
use crate::proto::encode::event;

/// An `attached` event; `history_truncated`: the resume point is older than the
/// history still stored.
pub(super) fn attached_event(room: Room, history_truncated: bool) -> event::Event {
    event::attached(room, history_truncated)
}

/// A `history_truncated` event: the room's history resumes at `resumes_at_seq`.
pub(super) fn history_truncated_frame(room_id: &RoomId, resumes_at_seq: u64) -> Frame {
    Frame::event(event::history_truncated(room_id, resumes_at_seq))
}

pub(super) fn detached_frame(request_id: String, room_id: &RoomId, reason: DetachReason) -> Frame {
    Frame::reply(request_id, event::detached(room_id, reason))
}

pub(super) fn send_answer(request_id: String, result: Result<Message>) -> Frame {
    match result {
        Ok(message) => Frame::reply(request_id, event::send_ack(&message)),
        Err(error) => error_frame(request_id, error),
    }
}

/// A failed client frame, as a `StreamError` event (the stream goes on). Clients get
/// the code, the reason and the same message a unary call would carry.
pub(super) fn error_frame(request_id: String, error: Error) -> Frame {
    let error = crate::api::status::stream_error(&error);
    Frame::reply(request_id, event::stream_error(error))
}
