//! The domain error: every way a request can fail, independent of gRPC and SQL.
//!
//! `api::status` holds its one mapping to `tonic::Status` (code, `ErrorInfo` reason,
//! `BadRequest` field); `store` converts database errors into it.

/// Why a request failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of bounds. Nothing was written.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The request field, as named in the proto (`room_id`, `settings.max_members`).
        field: String,
        /// What is wrong with it.
        description: String,
    },
    /// The caller's identity is missing or invalid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's bearer token was refused; `reason` says why, as a stable
    /// `ErrorInfo.reason` (`TOKEN_EXPIRED`, `TOKEN_SIGNATURE_INVALID`, ...).
    #[error("{description}")]
    TokenRefused {
        reason: &'static str,
        description: String,
    },
    /// The caller's token does not list the room (its `rooms` claim).
    #[error("this token does not allow room {room_id:?}")]
    RoomNotInToken { room_id: String },
    /// The room does not exist.
    #[error("room {room_id:?} not found")]
    RoomNotFound { room_id: String },
    /// A room with this id already exists.
    #[error("room {room_id:?} already exists")]
    RoomExists { room_id: String },
    /// The room has reached its `max_members`.
    #[error("room {room_id:?} is full ({max_members} members)")]
    RoomFull { room_id: String, max_members: u32 },
    /// The user (or stream) is already in as many rooms as allowed.
    #[error("already in {limit} rooms, the most allowed")]
    TooManyRooms { limit: u32 },
    /// The caller must be a member of the room (or an admin).
    #[error("not a member of room {room_id:?}")]
    NotAMember { room_id: String },
    /// The caller must own the room (or be an admin).
    #[error("only the owner of room {room_id:?} may do this")]
    NotRoomOwner { room_id: String },
    /// The call is for admins only (a backend's).
    #[error("only admins may do this")]
    NotAnAdmin,
    /// The caller must be a moderator of the room, its owner, or an admin.
    #[error("only the owner, moderators and admins of room {room_id:?} may do this")]
    NotAModerator { room_id: String },
    /// The user an action is aimed at has a role at or above the caller's.
    #[error("{user_id:?} has a role at or above yours in room {room_id:?}")]
    Outranked { room_id: String, user_id: String },
    /// The caller is banned from the room until `expires_at_us` (microseconds since
    /// the Unix epoch, as `domain::UnixMicros` holds them — a plain number here, for
    /// the error sits below the domain; `None`: until lifted).
    #[error("banned from room {room_id:?}")]
    Banned {
        room_id: String,
        expires_at_us: Option<i64>,
    },
    /// The caller may not send to the room: muted there until `expires_at_us` (as
    /// `Banned`'s; `None`: until lifted), or, with `room_wide`, the room is muted for
    /// all but its owner, moderators and admins.
    #[error("{}", muted_text(room_id, *room_wide))]
    Muted {
        room_id: String,
        room_wide: bool,
        expires_at_us: Option<i64>,
    },
    /// No CHAT message at `seq` in the room (never, or deleted by history retention).
    #[error("no message {seq} in room {room_id:?}")]
    MessageNotFound { room_id: String, seq: u64 },
    /// The message at `seq` was recalled: it cannot be recalled or edited again.
    #[error("message {seq} in room {room_id:?} was recalled")]
    MessageRecalled { room_id: String, seq: u64 },
    /// The sender may recall or edit a message only within `window` of sending it.
    #[error("message {seq} in room {room_id:?} was sent more than {} s ago", window.as_secs())]
    RecallWindowPassed {
        room_id: String,
        seq: u64,
        window: std::time::Duration,
    },
    /// Slow mode: the caller may send a CHAT to the room again after `retry_after`.
    #[error("slow mode in room {room_id:?}: retry in {} ms", retry_after.as_millis())]
    SlowMode {
        room_id: String,
        retry_after: std::time::Duration,
    },
    /// WatchRooms: the feed no longer keeps the events right after the position
    /// asked for (retention deleted them); `oldest` is the oldest it keeps.
    #[error(
        "the room feed no longer keeps the events after this position; the oldest kept is {oldest}"
    )]
    PositionExpired { oldest: u64 },
    /// WatchRooms: the position asked for is past the feed's `last`.
    #[error("the room feed has not reached this position; its last is {last}")]
    PositionAhead { last: u64 },
    /// The user an action is aimed at is not a member of the room.
    #[error("{user_id:?} is not a member of room {room_id:?}")]
    MemberNotFound { room_id: String, user_id: String },
    /// `expected_version` does not match the room's version.
    #[error("room {room_id:?} is at version {actual}, not {expected}")]
    VersionConflict {
        room_id: String,
        expected: u64,
        actual: u64,
    },
    /// The room is already attached to this stream.
    #[error("room {room_id:?} is already attached to this stream")]
    AlreadyAttached { room_id: String },
    /// The room is not attached to this stream.
    #[error("room {room_id:?} is not attached to this stream")]
    NotAttached { room_id: String },
    /// A stream has as many client frames waiting for their turn as it may hold.
    #[error("{limit} frames are already waiting on this stream; wait for their answers")]
    TooManyPendingFrames { limit: u32 },
    /// The caller sends faster than `--send-rate` allows; it may again after
    /// `retry_after`.
    #[error("sending too fast: retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    /// The user has as many Subscribe streams open as `--max-streams-per-user` allows.
    #[error("already {limit} streams open for this user, the most allowed")]
    TooManyStreams { limit: u32 },
    /// A request message is larger than any valid one can be (`limit` bytes), refused
    /// by its size before it is buffered whole.
    #[error("the request is larger than {limit} bytes, the most any valid request needs")]
    RequestTooLarge { limit: usize },
    /// The database cannot be reached; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected database answer.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The same failure for each caller of a batch that failed as a whole: storage
    /// trouble stays retryable, anything else is internal.
    pub fn shared(&self) -> Error {
        match self {
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            other => Error::Internal(other.to_string()),
        }
    }

    /// How long the caller should wait before trying again, where the error says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited { retry_after } | Error::SlowMode { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// A malformed request field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same error with its `InvalidArgument` field renamed, for values that are
    /// validated by a shared parser but arrive under different request fields.
    pub fn in_field(self, field: &str) -> Self {
        match self {
            Error::InvalidArgument { description, .. } => Error::invalid(field, description),
            other => other,
        }
    }
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a MUTED refusal says.
fn muted_text(room_id: &str, room_wide: bool) -> String {
    if room_wide {
        format!("room {room_id:?} is muted: only its owner, moderators and admins may send")
    } else {
        format!("muted in room {room_id:?}")
    }
}
