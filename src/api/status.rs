//! The one mapping from the domain [`Error`] to a gRPC status with rich details:
//! every status carries a `google.rpc.ErrorInfo` (domain `chatroom`, a stable
//! `reason`), and bad input also a `google.rpc.BadRequest` naming the field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "chatroom";

/// What clients are told when storage is unavailable (the call may be retried).
pub const UNAVAILABLE_MESSAGE: &str = "the service is temporarily unavailable; retry shortly";

impl Error {
    /// The gRPC code and `ErrorInfo.reason` of this error.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Error::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::TokenRefused { reason, .. } => (Code::Unauthenticated, reason),
            Error::RoomNotInToken { .. } => (Code::PermissionDenied, "ROOM_NOT_IN_TOKEN"),
            Error::RoomNotFound { .. } => (Code::NotFound, "ROOM_NOT_FOUND"),
            Error::RoomExists { .. } => (Code::AlreadyExists, "ROOM_EXISTS"),
            Error::RoomFull { .. } => (Code::ResourceExhausted, "ROOM_FULL"),
            Error::TooManyRooms { .. } => (Code::ResourceExhausted, "TOO_MANY_ROOMS"),
            Error::NotAMember { .. } => (Code::PermissionDenied, "NOT_A_MEMBER"),
            Error::NotRoomOwner { .. } => (Code::PermissionDenied, "NOT_ROOM_OWNER"),
            Error::NotAModerator { .. } => (Code::PermissionDenied, "NOT_A_MODERATOR"),
            Error::NotAnAdmin => (Code::PermissionDenied, "NOT_AN_ADMIN"),
            Error::Outranked { .. } => (Code::PermissionDenied, "OUTRANKED"),
            Error::Banned { .. } => (Code::PermissionDenied, "BANNED"),
            Error::Muted { .. } => (Code::PermissionDenied, "MUTED"),
            Error::SlowMode { .. } => (Code::ResourceExhausted, "SLOW_MODE"),
            Error::MemberNotFound { .. } => (Code::NotFound, "MEMBER_NOT_FOUND"),
            Error::MessageNotFound { .. } => (Code::NotFound, "MESSAGE_NOT_FOUND"),
            Error::MessageRecalled { .. } => (Code::FailedPrecondition, "MESSAGE_RECALLED"),
            Error::RecallWindowPassed { .. } => (Code::PermissionDenied, "RECALL_WINDOW_PASSED"),
            Error::PositionExpired { .. } => (Code::OutOfRange, "POSITION_EXPIRED"),
            Error::PositionAhead { .. } => (Code::OutOfRange, "POSITION_AHEAD"),
            Error::VersionConflict { .. } => (Code::Aborted, "VERSION_CONFLICT"),
            Error::AlreadyAttached { .. } => (Code::FailedPrecondition, "ALREADY_ATTACHED"),
            Error::NotAttached { .. } => (Code::FailedPrecondition, "NOT_ATTACHED"),
            Error::TooManyPendingFrames { .. } => {
                (Code::ResourceExhausted, "TOO_MANY_PENDING_FRAMES")
            }
            Error::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
            Error::TooManyStreams { .. } => (Code::ResourceExhausted, "TOO_MANY_STREAMS"),
            Error::RequestTooLarge { .. } => (Code::ResourceExhausted, "REQUEST_TOO_LARGE"),
            Error::Unavailable(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
            Error::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }

    /// What a client is told: the error itself for bad requests and rule violations; a
    /// fixed text for storage and internal failures, whose details (database error
    /// texts, pool state) are logged here instead — they help an operator, they tell a
    /// client nothing it can act on, and they describe the server's insides.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                "internal error".to_string()
            }
            Error::Unavailable(_) => {
                tracing::warn!(error = %self, "storage unavailable");
                UNAVAILABLE_MESSAGE.to_string()
            }
            _ => self.to_string(),
        }
    }

    /// Facts a client may act on, as `ErrorInfo.metadata`.
    fn metadata(&self) -> HashMap<String, String> {
        let pairs: Vec<(&str, String)> = match self {
            Error::InvalidArgument { field, .. } => vec![("field", field.clone())],
            Error::RoomNotFound { room_id }
            | Error::RoomExists { room_id }
            | Error::NotAMember { room_id }
            | Error::NotRoomOwner { room_id }
            | Error::NotAModerator { room_id }
            | Error::AlreadyAttached { room_id }
            | Error::NotAttached { room_id }
            | Error::RoomNotInToken { room_id } => vec![("room_id", room_id.clone())],
            Error::RoomFull {
                room_id,
                max_members,
            } => vec![
                ("room_id", room_id.clone()),
                ("max_members", max_members.to_string()),
            ],
            Error::TooManyRooms { limit }
            | Error::TooManyPendingFrames { limit }
            | Error::TooManyStreams { limit } => vec![("limit", limit.to_string())],
            Error::RequestTooLarge { limit } => vec![("limit", limit.to_string())],
            Error::PositionExpired { oldest } => vec![("oldest_position", oldest.to_string())],
            Error::PositionAhead { last } => vec![("last_position", last.to_string())],
            Error::RateLimited { retry_after } => {
                vec![("retry_after_ms", retry_after.as_millis().to_string())]
            }
            Error::Banned { .. }
            | Error::Muted { .. }
            | Error::SlowMode { .. }
            | Error::MessageNotFound { .. }
            | Error::MessageRecalled { .. }
            | Error::RecallWindowPassed { .. } => self.room_rule_metadata(),
            Error::MemberNotFound { room_id, user_id } | Error::Outranked { room_id, user_id } => {
                vec![("room_id", room_id.clone()), ("user_id", user_id.clone())]
            }
            Error::VersionConflict {
                room_id,
                expected,
                actual,
            } => vec![
                ("room_id", room_id.clone()),
                ("expected_version", expected.to_string()),
                ("actual_version", actual.to_string()),
            ],
            Error::Unauthenticated(_)
            | Error::NotAnAdmin
            | Error::TokenRefused { .. }
            | Error::Unavailable(_)
            | Error::Internal(_) => vec![],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// What a refusal by one of a room's rules (bans, mutes, slow mode, recall and
    /// edit) tells: the room, and the fact of the rule the client can act on.
    fn room_rule_metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::Banned {
                room_id,
                expires_at_us,
            } => vec![
                ("room_id", room_id.clone()),
                ("expires_at", until(*expires_at_us)),
            ],
            Error::Muted {
                room_id,
                room_wide,
                expires_at_us,
            } => {
                let scope = if *room_wide { "room" } else { "member" };
                let mut pairs = vec![("room_id", room_id.clone()), ("scope", scope.into())];
                // A room's mute has no end; a member's says when.
                pairs.extend((!room_wide).then(|| ("expires_at", until(*expires_at_us))));
                pairs
            }
            Error::SlowMode {
                room_id,
                retry_after,
            } => vec![
                ("room_id", room_id.clone()),
                ("retry_after_ms", retry_after.as_millis().to_string()),
            ],
            Error::MessageNotFound { room_id, seq } | Error::MessageRecalled { room_id, seq } => {
                vec![("room_id", room_id.clone()), ("seq", seq.to_string())]
            }
            Error::RecallWindowPassed {
                room_id,
                seq,
                window,
            } => vec![
                ("room_id", room_id.clone()),
                ("seq", seq.to_string()),
                ("window_ms", window.as_millis().to_string()),
            ],
            _ => vec![],
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let (code, reason) = error.code_and_reason();
        let message = error.public_message();
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, error.metadata());
        if let Error::InvalidArgument { field, description } = &error {
            details.add_bad_request_violation(field.clone(), description.clone());
        }
        if let Some(retry_after) = error.retry_after() {
            details.set_retry_info(Some(retry_after));
        }
        Status::with_error_details(code, message, details)
    }
}

/// When a sanction ends, for `ErrorInfo` metadata: RFC 3339, or "never" for one
/// that lasts until lifted.
fn until(expires_at_us: Option<i64>) -> String {
    expires_at_us.map_or_else(
        || "never".to_string(),
        |us| crate::proto::encode::timestamp(crate::domain::UnixMicros(us)).to_string(),
    )
}

/// A request refused by its size is RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE` with its
/// `ErrorInfo`, as every other refusal: tonic's decoder says OUT_OF_RANGE, with no
/// details, and gRPC's own table of codes gives RESOURCE_EXHAUSTED to a message over
/// the receiver's limit. The service's own OUT_OF_RANGE (WatchRooms' positions)
/// always carries its `ErrorInfo`, so a status with details is left as it is.
pub(super) fn too_large(status: Status, limit: usize) -> Status {
    if status.code() == Code::OutOfRange && status.details().is_empty() {
        Status::from(Error::RequestTooLarge { limit })
    } else {
        status
    }
}

/// An error as a `StreamError`: what a stream frame, or one room of a broadcast, that
/// failed is answered with — the code, reason and message a unary call would carry.
pub(super) fn stream_error(error: &Error) -> crate::proto::pb::StreamError {
    let (code, reason) = error.code_and_reason();
    crate::proto::pb::StreamError {
        code: code as i32,
        reason: reason.to_string(),
        message: error.public_message(),
        retry_after: error
            .retry_after()
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_and_internal_details_stay_in_the_log() {
        let internal = Status::from(Error::Internal("relation \"rooms\" is corrupt".into()));
        assert_eq!(internal.message(), "internal error");
        let unavailable = Status::from(Error::Unavailable("pool timed out".into()));
        assert_eq!(unavailable.message(), UNAVAILABLE_MESSAGE);
        assert_eq!(unavailable.code(), Code::Unavailable);
        let bad = Status::from(Error::invalid("text", "too long"));
        assert_eq!(bad.message(), "invalid text: too long");
    }
}
