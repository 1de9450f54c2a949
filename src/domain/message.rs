//! Messages: as a sender submits them, as accepted, and which stored ones to read.

use super::{RoomId, UnixMicros, UserId, check_no_nul};
use crate::error::{Error, Result};

/// Longest `content_type`, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;
/// Most `to_user_ids` on one COMMAND.
pub const MAX_TARGETS: usize = 1000;
/// ListMessages' default and largest `limit`.
pub const DEFAULT_MESSAGE_LIMIT: u32 = 50;
pub const MAX_MESSAGE_LIMIT: u32 = 500;

/// How a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Stored, sequenced, delivered reliably.
    Chat,
    /// Not stored, best-effort, dropped first under load.
    Barrage,
    /// Not stored, delivered only to its targets.
    Command,
    /// A log entry taking back the CHAT message at its `target_seq` (RecallMessage).
    Recall,
    /// A log entry correcting the CHAT message at its `target_seq` (EditMessage).
    Edit,
}

impl MessageKind {
    /// Stored with a seq by the message writer: CHAT and the entries that amend it.
    pub fn is_stored(self) -> bool {
        matches!(
            self,
            MessageKind::Chat | MessageKind::Recall | MessageKind::Edit
        )
    }

    /// An entry that amends an earlier message.
    pub fn is_amendment(self) -> bool {
        matches!(self, MessageKind::Recall | MessageKind::Edit)
    }
}

/// Limits on message contents.
#[derive(Clone, Copy, Debug)]
pub struct MessageLimits {
    pub max_text_bytes: usize,
    pub max_payload_bytes: usize,
}

/// A message as a sender submits it, validated.
#[derive(Clone, Debug)]
pub struct Draft {
    pub room_id: RoomId,
    pub kind: MessageKind,
    pub text: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub to_user_ids: Vec<String>,
    /// Empty: no idempotency key.
    pub client_msg_id: String,
}

impl Draft {
    /// Checks a draft's contents against the limits (the room id is already parsed).
    pub fn check(&self, limits: &MessageLimits) -> Result<()> {
        if self.text.len() > limits.max_text_bytes {
            return Err(Error::invalid(
                "text",
                format!("must be at most {} bytes", limits.max_text_bytes),
            ));
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(Error::invalid(
                "payload",
                format!("must be at most {} bytes", limits.max_payload_bytes),
            ));
        }
        if self.text.is_empty() && self.payload.is_empty() {
            return Err(Error::invalid("text", "a message needs text or a payload"));
        }
        check_no_nul("text", &self.text)?;
        check_no_nul("content_type", &self.content_type)?;
        check_no_nul("client_msg_id", &self.client_msg_id)?;
        if self.content_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(Error::invalid(
                "content_type",
                format!("must be at most {MAX_CONTENT_TYPE_LEN} bytes"),
            ));
        }
        if self.client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
            return Err(Error::invalid(
                "client_msg_id",
                format!("must be at most {MAX_CLIENT_MSG_ID_LEN} bytes"),
            ));
        }
        if self.to_user_ids.len() > MAX_TARGETS {
            return Err(Error::invalid(
                "to_user_ids",
                format!("at most {MAX_TARGETS} users"),
            ));
        }
        if !self.to_user_ids.is_empty() && self.kind != MessageKind::Command {
            return Err(Error::invalid(
                "to_user_ids",
                "only COMMAND messages have targets",
            ));
        }
        for user in &self.to_user_ids {
            UserId::parse(user.as_str()).map_err(|e| e.in_field("to_user_ids"))?;
        }
        Ok(())
    }
}

/// A message as accepted: stored ones have a `seq` (1, 2, 3, … per room), others 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub room_id: RoomId,
    pub seq: u64,
    pub message_id: String,
    pub sender_id: String,
    pub sender_name: String,
    pub kind: MessageKind,
    pub text: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub to_user_ids: Vec<String>,
    pub client_msg_id: String,
    pub sent_at: UnixMicros,
    /// For RECALL and EDIT entries, the seq they amend; 0 otherwise.
    pub target_seq: u64,
    /// As stored: taken back (its text and payload are gone).
    pub recalled: bool,
    /// As stored: when last edited.
    pub edited_at: Option<UnixMicros>,
}

impl Message {
    /// A draft accepted at `sent_at` from `sender`, with a fresh UUIDv7 and no seq
    /// yet.
    pub fn accept(
        draft: Draft,
        sender_id: &str,
        sender_name: &str,
        sent_at: UnixMicros,
    ) -> Message {
        Message {
            room_id: draft.room_id,
            seq: 0,
            message_id: uuid::Uuid::now_v7().to_string(),
            sender_id: sender_id.to_string(),
            sender_name: sender_name.to_string(),
            kind: draft.kind,
            text: draft.text,
            payload: draft.payload,
            content_type: draft.content_type,
            to_user_ids: draft.to_user_ids,
            client_msg_id: draft.client_msg_id,
            sent_at,
            target_seq: 0,
            recalled: false,
            edited_at: None,
        }
    }

    /// An entry of `kind` (RECALL or EDIT) by `sender_id`, amending the message at
    /// `target_seq` in `room_id`; an edit carries the new `text` and `payload`.
    pub fn amendment(
        room_id: RoomId,
        kind: MessageKind,
        target_seq: u64,
        text: String,
        payload: Vec<u8>,
        sender_id: &str,
        sent_at: UnixMicros,
    ) -> Message {
        Message {
            room_id,
            seq: 0,
            message_id: uuid::Uuid::now_v7().to_string(),
            sender_id: sender_id.to_string(),
            sender_name: String::new(),
            kind,
            text,
            payload,
            content_type: String::new(),
            to_user_ids: Vec::new(),
            client_msg_id: String::new(),
            sent_at,
            target_seq,
            recalled: false,
            edited_at: None,
        }
    }
}

/// Which stored messages ListMessages reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryRange {
    /// Oldest first, seq > after.
    After(u64),
    /// Newest first, seq < before (`None`: from the newest).
    Before(Option<u64>),
}
