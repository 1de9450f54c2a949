//! The room domain's types. Values that come from outside are parsed into these once,
//! at the edge (`api/`), so everything inward can trust them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Longest room id, in bytes (ids are ASCII).
pub const MAX_ROOM_ID_LEN: usize = 128;
/// Longest user id, in bytes (ids are visible ASCII).
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest room name or display name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Most attributes a room may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, in characters.
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 128;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 4096;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: u32 = 100;

/// A room's id: 1–128 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    /// Validates a client-supplied id. The error names the field `room_id`; use
    /// [`Error::in_field`] where the id arrives under another name.
    pub fn parse(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::invalid("room_id", "must not be empty"));
        }
        if id.len() > MAX_ROOM_ID_LEN {
            return Err(Error::invalid(
                "room_id",
                format!("must be at most {MAX_ROOM_ID_LEN} characters"),
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(Error::invalid(
                "room_id",
                format!("may contain only A-Z a-z 0-9 . _ : - (found {bad:?})"),
            ));
        }
        Ok(RoomId(id))
    }

    /// A fresh server-made id (a UUIDv7, so ids sort by creation time).
    pub fn generate() -> Self {
        RoomId(uuid::Uuid::now_v7().to_string())
    }

    /// An id read back from the store, which only ever holds validated ids.
    pub(crate) fn from_stored(id: String) -> Self {
        RoomId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's id: 1–128 visible ASCII characters (it travels in request metadata).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_USER_ID_LEN {
            return Err(Error::invalid(
                "user_id",
                format!("must be 1 to {MAX_USER_ID_LEN} characters"),
            ));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "user_id",
                "must be visible ASCII characters without spaces",
            ));
        }
        Ok(UserId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is making a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: UserId,
    /// Admins may act in any room without being a member.
    pub admin: bool,
}

/// Checks a room name or display name.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Refuses a NUL character. PostgreSQL cannot store one in a text column (SQLite
/// can), so the rule is made here, once, for both stores: a NUL is bad input.
pub fn check_no_nul(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(field, "must not contain a NUL character"));
    }
    Ok(())
}

/// A room's free-form metadata, kept sorted so it reads back the same everywhere.
pub type Attributes = BTreeMap<String, String>;

/// Checks attribute keys and values, and that there are at most [`MAX_ATTRIBUTES`].
pub fn check_attributes<'a>(
    field: &str,
    attributes: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    let mut count = 0;
    for (key, value) in attributes {
        count += 1;
        check_no_nul(field, key)?;
        check_no_nul(field, value)?;
        let keys = key.chars().count();
        if keys == 0 || keys > MAX_ATTRIBUTE_KEY_CHARS {
            return Err(Error::invalid(
                field,
                format!("keys must be 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters"),
            ));
        }
        if value.chars().count() > MAX_ATTRIBUTE_VALUE_CHARS {
            return Err(Error::invalid(
                field,
                format!("value of {key:?} must be at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"),
            ));
        }
    }
    if count > MAX_ATTRIBUTES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_ATTRIBUTES} attributes are allowed"),
        ));
    }
    Ok(())
}

/// Which member join/leave events a room emits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemberEvents {
    #[default]
    All,
    None,
}

/// A room's behaviour settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSettings {
    /// 0 means unlimited.
    pub max_members: u32,
    pub member_events: MemberEvents,
    /// Delete the room this long after it becomes empty; `None` keeps it forever.
    pub destroy_when_empty_after: Option<Duration>,
    /// Remove a member with no attached stream for this long; `None` (or zero on the
    /// wire) means membership lasts until LeaveRoom.
    pub presence_timeout: Option<Duration>,
}

/// A point in time, in microseconds since the Unix epoch (what the store keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMicros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A room as stored, with live presence counts filled in by [`super::Rooms`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub attributes: Attributes,
    pub owner_id: String,
    pub settings: RoomSettings,
    pub member_count: u32,
    pub online_count: u32,
    pub last_seq: u64,
    pub version: u64,
    pub created_at: UnixMicros,
    pub updated_at: UnixMicros,
}

/// What a new room starts with.
#[derive(Clone, Debug)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub attributes: Attributes,
    pub settings: RoomSettings,
}

/// A member's role in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Member,
}

/// A member of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub display_name: String,
    pub role: Role,
    pub online: bool,
    pub joined_at: UnixMicros,
}

/// A change to a room; `None` and empty fields leave things as they are.
#[derive(Clone, Debug, Default)]
pub struct RoomPatch {
    pub name: Option<String>,
    pub settings: Option<RoomSettings>,
    pub set_attributes: Attributes,
    pub remove_attribute_keys: Vec<String>,
    pub expected_version: Option<u64>,
}

impl RoomPatch {
    /// Whether the patch touches what only the owner or an admin may change.
    pub fn needs_owner(&self) -> bool {
        self.name.is_some() || self.settings.is_some()
    }

    fn is_empty(&self) -> bool {
        !self.needs_owner()
            && self.set_attributes.is_empty()
            && self.remove_attribute_keys.is_empty()
    }

    /// Applies the patch to `room` (in place), checking the result's attribute count.
    pub(crate) fn apply(self, room: &mut Room) -> Result<bool> {
        if self.is_empty() {
            return Ok(false);
        }
        if let Some(name) = self.name {
            room.name = name;
        }
        if let Some(settings) = self.settings {
            room.settings = settings;
        }
        for key in &self.remove_attribute_keys {
            room.attributes.remove(key);
        }
        room.attributes.extend(self.set_attributes);
        if room.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid(
                "set_attributes",
                format!("the room would have more than {MAX_ATTRIBUTES} attributes"),
            ));
        }
        Ok(true)
    }
}

/// Which rooms ListRooms returns.
#[derive(Clone, Debug, Default)]
pub struct RoomFilter {
    /// Exact name; empty: any.
    pub name: String,
    /// Name prefix; empty: any.
    pub name_prefix: String,
}

/// One page request: at most `size` items after the key `after` (exclusive).
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<String>,
}

impl PageRequest {
    /// A page of `requested` items (0: the default; above the maximum: the maximum).
    pub fn new(requested: u32, after: Option<String>) -> Self {
        let size = match requested {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        PageRequest { size, after }
    }
}

/// One page of results; `next_after` is the key to continue after, if there is more.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` fetched items: the extra one only says
    /// that another page exists.
    pub fn from_overfetch(mut items: Vec<T>, size: u32, key: impl Fn(&T) -> String) -> Self {
        let more = items.len() > size as usize;
        items.truncate(size as usize);
        let next_after = if more { items.last().map(key) } else { None };
        Page { items, next_after }
    }
}

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
}

impl MessageKind {
    pub fn is_stored(self) -> bool {
        self == MessageKind::Chat
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
}

impl Message {
    /// A draft accepted now from `sender`, with a fresh UUIDv7 and no seq yet.
    pub fn accept(draft: Draft, sender_id: &str, sender_name: &str) -> Message {
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
            sent_at: UnixMicros::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_follow_the_contract() {
        assert!(RoomId::parse("lobby.main:1_a-b").is_ok());
        assert!(RoomId::parse("a".repeat(128)).is_ok());
        assert!(RoomId::parse("a".repeat(129)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("has space").is_err());
        assert!(RoomId::parse("ünïcode").is_err());
        assert!(RoomId::parse("slash/no").is_err());
    }

    #[test]
    fn generated_room_ids_are_valid() {
        let id = RoomId::generate();
        assert_eq!(RoomId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(PageRequest::new(0, None).size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::new(7, None).size, 7);
        assert_eq!(PageRequest::new(1000, None).size, MAX_PAGE_SIZE);
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(check_name("name", &"é".repeat(256)).is_ok());
        assert!(check_name("name", &"é".repeat(257)).is_err());
        assert!(check_name("name", "tab\there").is_err());
    }

    #[test]
    fn attribute_limits() {
        let mut attrs = Attributes::new();
        for i in 0..64 {
            attrs.insert(format!("k{i}"), "v".into());
        }
        assert!(check_attributes("attributes", &attrs).is_ok());
        attrs.insert("one-more".into(), "v".into());
        assert!(check_attributes("attributes", &attrs).is_err());
        let empty_key = Attributes::from([(String::new(), "v".into())]);
        assert!(check_attributes("attributes", &empty_key).is_err());
    }
}
