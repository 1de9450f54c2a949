//! Rows as the database returns them, and their conversion to domain types.

use std::time::Duration;

use crate::domain::{
    Attributes, Member, MemberEvents, Message, MessageKind, MutedUntil, Role, Room, RoomId,
    RoomSettings, Sanction, Speaker, UnixMicros,
};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
pub(super) struct RoomRow {
    room_id: String,
    name: String,
    attributes: String,
    owner_id: String,
    max_members: i64,
    member_events: i64,
    destroy_after_ms: Option<i64>,
    presence_timeout_ms: Option<i64>,
    slow_mode_ms: Option<i64>,
    muted: bool,
    member_count: i64,
    last_seq: i64,
    version: i64,
    created_at_us: i64,
    updated_at_us: i64,
}

impl TryFrom<RoomRow> for Room {
    type Error = Error;

    fn try_from(row: RoomRow) -> Result<Room> {
        let attributes: Attributes =
            serde_json::from_str(&row.attributes).map_err(|e| corrupt("rooms.attributes", e))?;
        Ok(Room {
            id: RoomId::from_stored(row.room_id),
            name: row.name,
            attributes,
            owner_id: row.owner_id,
            settings: RoomSettings {
                max_members: to_u32("rooms.max_members", row.max_members)?,
                member_events: match row.member_events {
                    1 => MemberEvents::None,
                    _ => MemberEvents::All,
                },
                destroy_when_empty_after: row.destroy_after_ms.map(millis),
                presence_timeout: row.presence_timeout_ms.map(millis),
                slow_mode_interval: row.slow_mode_ms.map(millis),
                muted: row.muted,
            },
            member_count: to_u32("rooms.member_count", row.member_count)?,
            online_count: 0,
            last_seq: to_u64("rooms.last_seq", row.last_seq)?,
            version: to_u64("rooms.version", row.version)?,
            created_at: UnixMicros(row.created_at_us),
            updated_at: UnixMicros(row.updated_at_us),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MemberRow {
    user_id: String,
    display_name: String,
    role: i64,
    joined_at_us: i64,
}

/// A room row with the display name and role of one user in it, if a member, and
/// their mute there, if any (`mute_until_us` as in `speaker_columns!`).
#[derive(sqlx::FromRow)]
pub(super) struct RoomAndNameRow {
    #[sqlx(flatten)]
    pub room: RoomRow,
    pub display_name: Option<String>,
    pub role: Option<i64>,
    pub mute_until_us: Option<i64>,
    pub first_seq: Option<i64>,
}

/// A mute as `mute_until_us` holds it (see `speaker_columns!`).
pub(super) fn mute_of(mute_until_us: Option<i64>) -> Option<MutedUntil> {
    mute_until_us.map(|until| MutedUntil((until >= 0).then_some(UnixMicros(until))))
}

/// A message row of a catch-up page, with how many rows the page had before it was
/// cut to its byte budget.
#[derive(sqlx::FromRow)]
pub(super) struct PagedMessageRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    pub firsts: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct SanctionRow {
    user_id: String,
    by_user: String,
    at_us: i64,
    until_us: Option<i64>,
}

impl From<SanctionRow> for Sanction {
    fn from(row: SanctionRow) -> Sanction {
        Sanction {
            user_id: row.user_id,
            by: row.by_user,
            at: UnixMicros(row.at_us),
            expires_at: row.until_us.map(UnixMicros),
        }
    }
}

/// A sanction row with its room's id.
#[derive(sqlx::FromRow)]
pub(super) struct KeyedSanctionRow {
    pub room_id: String,
    #[sqlx(flatten)]
    pub sanction: SanctionRow,
}

/// What the message writer reads of a sender (`speaker_columns!`).
#[derive(sqlx::FromRow)]
pub(super) struct SpeakerRow {
    pub room_id: String,
    #[sqlx(flatten)]
    member: MemberRow,
    slow_mode_ms: Option<i64>,
    last_chat_us: Option<i64>,
    room_muted: bool,
    /// -1: until lifted (see `speaker_columns!`).
    mute_until_us: Option<i64>,
}

impl TryFrom<SpeakerRow> for Speaker {
    type Error = Error;

    fn try_from(row: SpeakerRow) -> Result<Speaker> {
        Ok(Speaker {
            member: Member::try_from(row.member)?,
            slow_mode_interval: row.slow_mode_ms.map(millis),
            last_chat_at: row.last_chat_us.map(UnixMicros),
            room_muted: row.room_muted,
            mute: mute_of(row.mute_until_us),
        })
    }
}

/// A room after a batch's member writes, with how many member rows the batch
/// deleted (the same on every row).
#[derive(sqlx::FromRow)]
pub(super) struct WrittenRoomRow {
    pub removed: i64,
    #[sqlx(flatten)]
    pub room: RoomRow,
}

/// A member row with its room's id.
#[derive(sqlx::FromRow)]
pub(super) struct KeyedMemberRow {
    pub room_id: String,
    #[sqlx(flatten)]
    pub member: MemberRow,
}

impl TryFrom<MemberRow> for Member {
    type Error = Error;

    fn try_from(row: MemberRow) -> Result<Member> {
        Ok(Member {
            user_id: row.user_id,
            display_name: row.display_name,
            role: role_of(row.role),
            online: false,
            joined_at: UnixMicros(row.joined_at_us),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MessageRow {
    room_id: String,
    seq: i64,
    message_id: String,
    sender_id: String,
    sender_name: String,
    kind: i64,
    body: String,
    payload: Vec<u8>,
    content_type: String,
    client_msg_id: Option<String>,
    sent_at_us: i64,
    target_seq: Option<i64>,
    recalled: bool,
    edited_at_us: Option<i64>,
}

impl TryFrom<MessageRow> for Message {
    type Error = Error;

    fn try_from(row: MessageRow) -> Result<Message> {
        Ok(Message {
            room_id: RoomId::from_stored(row.room_id),
            seq: to_u64("messages.seq", row.seq)?,
            message_id: row.message_id,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            kind: match row.kind {
                2 => MessageKind::Barrage,
                3 => MessageKind::Command,
                4 => MessageKind::Recall,
                5 => MessageKind::Edit,
                _ => MessageKind::Chat,
            },
            text: row.body,
            payload: row.payload,
            content_type: row.content_type,
            to_user_ids: Vec::new(),
            client_msg_id: row.client_msg_id.unwrap_or_default(),
            sent_at: UnixMicros(row.sent_at_us),
            target_seq: row
                .target_seq
                .map_or(Ok(0), |seq| to_u64("messages.target_seq", seq))?,
            recalled: row.recalled,
            edited_at: row.edited_at_us.map(UnixMicros),
        })
    }
}

/// A role as the `role` column holds it.
pub(super) fn role_of(column: i64) -> Role {
    match column {
        1 => Role::Owner,
        3 => Role::Moderator,
        _ => Role::Member,
    }
}

pub(super) fn role_column(role: Role) -> i64 {
    match role {
        Role::Owner => 1,
        Role::Member => 2,
        Role::Moderator => 3,
    }
}

pub(super) fn kind_column(kind: MessageKind) -> i64 {
    match kind {
        MessageKind::Chat => 1,
        MessageKind::Barrage => 2,
        MessageKind::Command => 3,
        MessageKind::Recall => 4,
        MessageKind::Edit => 5,
    }
}

/// Settings as the columns hold them.
pub(super) struct SettingsColumns {
    pub max_members: i64,
    pub member_events: i64,
    pub destroy_after_ms: Option<i64>,
    pub presence_timeout_ms: Option<i64>,
    pub slow_mode_ms: Option<i64>,
    pub muted: bool,
}

impl From<&RoomSettings> for SettingsColumns {
    fn from(s: &RoomSettings) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        SettingsColumns {
            max_members: i64::from(s.max_members),
            member_events: match s.member_events {
                MemberEvents::All => 0,
                MemberEvents::None => 1,
            },
            destroy_after_ms: s.destroy_when_empty_after.map(ms),
            presence_timeout_ms: s.presence_timeout.map(ms),
            slow_mode_ms: s.slow_mode_interval.map(ms),
            muted: s.muted,
        }
    }
}

pub(super) fn attributes_json(attributes: &Attributes) -> String {
    serde_json::to_string(attributes).expect("a map of strings always serializes")
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn to_u32(column: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(column, format!("{v} is out of range")))
}

fn to_u64(column: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(column, format!("{v} is out of range")))
}

fn corrupt(column: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("unexpected value in {column}: {e}"))
}
