//! The frames a session answers with.

use crate::domain::{DetachReason, Message, Room, RoomId};
use crate::error::{Error, Result};
use crate::live::Frame;
use crate::pb;
use crate::pb::subscribe_response::Event as PbEvent;

/// An `attached` event; `history_truncated`: the resume point is older than the
/// history still stored.
pub(super) fn attached_event(room: Room, history_truncated: bool) -> PbEvent {
    PbEvent::Attached(pb::RoomAttached {
        room: Some(room.into()),
        history_truncated,
    })
}

/// A `history_truncated` event: the room's history resumes at `resumes_at_seq`.
pub(super) fn history_truncated_frame(room_id: &RoomId, resumes_at_seq: u64) -> Frame {
    Frame::event(PbEvent::HistoryTruncated(pb::HistoryTruncated {
        room_id: room_id.to_string(),
        resumes_at_seq,
    }))
}

pub(super) fn detached_frame(request_id: String, room_id: &RoomId, reason: DetachReason) -> Frame {
    Frame::reply(
        request_id,
        PbEvent::Detached(pb::RoomDetached {
            room_id: room_id.to_string(),
            reason: pb::DetachReason::from(reason) as i32,
        }),
    )
}

pub(super) fn send_answer(request_id: String, result: Result<Message>) -> Frame {
    match result {
        Ok(message) => Frame::reply(
            request_id,
            PbEvent::SendAck(pb::SendAck {
                message: Some((&message).into()),
            }),
        ),
        Err(error) => error_frame(request_id, error),
    }
}

/// A failed client frame, as a `StreamError` event (the stream goes on). Clients get
/// the code, the reason and the same message a unary call would carry.
pub(super) fn error_frame(request_id: String, error: Error) -> Frame {
    let (code, reason) = error.code_and_reason();
    let retry_after = match &error {
        Error::RateLimited { retry_after } => prost_types::Duration::try_from(*retry_after).ok(),
        _ => None,
    };
    Frame::reply(
        request_id,
        PbEvent::Error(pb::StreamError {
            code: code as i32,
            reason: reason.to_string(),
            message: error.public_message(),
            retry_after,
        }),
    )
}
