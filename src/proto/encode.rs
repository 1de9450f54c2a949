//! Domain values in their protobuf form, for answers and for events encoded once.

use std::time::Duration;

use super::pb;
use crate::domain::{
    Ban, DetachReason, FeedEntry, FeedEvent, FeedKind, Member, MemberEvents, Message, MessageKind,
    Mute, Role, Room, RoomId, RoomSettings, UnixMicros,
};

/// What every page token starts with, once base64 is taken off (a version: tokens
/// of another form can come later and still be told apart).
pub(super) const PAGE_TOKEN_PREFIX: &str = "k1:";

/// The token of a next page: the key it starts after (none: no next page).
pub fn page_token(after: Option<String>) -> String {
    use base64::Engine;
    after.map_or_else(String::new, |key| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{key}"))
    })
}

pub fn timestamp(t: UnixMicros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000),
        nanos: (t.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl From<RoomSettings> for pb::RoomSettings {
    fn from(s: RoomSettings) -> Self {
        pb::RoomSettings {
            max_members: s.max_members,
            member_events: match s.member_events {
                MemberEvents::All => pb::MemberEvents::All,
                MemberEvents::None => pb::MemberEvents::None,
            } as i32,
            destroy_when_empty_after: s.destroy_when_empty_after.map(proto_duration),
            presence_timeout: s.presence_timeout.map(proto_duration),
            slow_mode_interval: s.slow_mode_interval.map(proto_duration),
            muted: s.muted,
        }
    }
}

impl From<Room> for pb::Room {
    fn from(r: Room) -> Self {
        pb::Room {
            room_id: r.id.to_string(),
            name: r.name,
            attributes: r.attributes.into_iter().collect(),
            owner_id: r.owner_id,
            settings: Some(r.settings.into()),
            member_count: r.member_count,
            online_count: r.online_count,
            last_seq: r.last_seq,
            version: r.version,
            created_at: Some(timestamp(r.created_at)),
            updated_at: Some(timestamp(r.updated_at)),
        }
    }
}

impl From<Member> for pb::Member {
    fn from(m: Member) -> Self {
        pb::Member {
            user_id: m.user_id,
            display_name: m.display_name,
            role: role(m.role) as i32,
            online: m.online,
            joined_at: Some(timestamp(m.joined_at)),
        }
    }
}

fn role(role: Role) -> pb::Role {
    match role {
        Role::Owner => pb::Role::Owner,
        Role::Member => pb::Role::Member,
        Role::Moderator => pb::Role::Moderator,
    }
}

impl From<FeedKind> for pb::RoomFeedEventKind {
    fn from(kind: FeedKind) -> Self {
        match kind {
            FeedKind::Created => pb::RoomFeedEventKind::Created,
            FeedKind::Updated => pb::RoomFeedEventKind::Updated,
            FeedKind::Deleted => pb::RoomFeedEventKind::Deleted,
            FeedKind::Occupied => pb::RoomFeedEventKind::Occupied,
            FeedKind::Empty => pb::RoomFeedEventKind::Empty,
            FeedKind::MemberJoined => pb::RoomFeedEventKind::MemberJoined,
            FeedKind::MemberLeft => pb::RoomFeedEventKind::MemberLeft,
            FeedKind::MemberKicked => pb::RoomFeedEventKind::MemberKicked,
            FeedKind::MemberBanned => pb::RoomFeedEventKind::MemberBanned,
            FeedKind::RoleChanged => pb::RoomFeedEventKind::MemberRoleChanged,
        }
    }
}

impl From<FeedEvent> for pb::RoomFeedEvent {
    fn from(event: FeedEvent) -> Self {
        let FeedEntry {
            room_id,
            kind,
            user_id,
            by,
            role: member_role,
        } = event.entry;
        pb::RoomFeedEvent {
            position: event.position,
            kind: pb::RoomFeedEventKind::from(kind) as i32,
            room_id: room_id.to_string(),
            user_id,
            by_user_id: by,
            role: member_role.map_or(pb::Role::Unspecified, role) as i32,
            at: Some(timestamp(event.at)),
        }
    }
}

impl From<MessageKind> for pb::MessageKind {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Chat => pb::MessageKind::Chat,
            MessageKind::Barrage => pb::MessageKind::Barrage,
            MessageKind::Command => pb::MessageKind::Command,
            MessageKind::Recall => pb::MessageKind::Recall,
            MessageKind::Edit => pb::MessageKind::Edit,
        }
    }
}

impl From<&Message> for pb::Message {
    fn from(m: &Message) -> Self {
        pb::Message {
            room_id: m.room_id.to_string(),
            seq: m.seq,
            message_id: m.message_id.clone(),
            sender_id: m.sender_id.clone(),
            sender_name: m.sender_name.clone(),
            kind: pb::MessageKind::from(m.kind) as i32,
            text: m.text.clone(),
            payload: m.payload.clone(),
            content_type: m.content_type.clone(),
            to_user_ids: m.to_user_ids.clone(),
            client_msg_id: m.client_msg_id.clone(),
            sent_at: Some(timestamp(m.sent_at)),
            target_seq: m.target_seq,
            recalled: m.recalled,
            edited_at: m.edited_at.map(timestamp),
        }
    }
}

impl From<Ban> for pb::Ban {
    fn from(b: Ban) -> Self {
        pb::Ban {
            user_id: b.user_id,
            banned_by: b.by,
            banned_at: Some(timestamp(b.at)),
            expires_at: b.expires_at.map(timestamp),
        }
    }
}

impl From<Mute> for pb::Mute {
    fn from(m: Mute) -> Self {
        pb::Mute {
            user_id: m.user_id,
            muted_by: m.by,
            muted_at: Some(timestamp(m.at)),
            expires_at: m.expires_at.map(timestamp),
        }
    }
}

impl From<DetachReason> for pb::DetachReason {
    fn from(r: DetachReason) -> Self {
        match r {
            DetachReason::Requested => pb::DetachReason::Requested,
            DetachReason::Left => pb::DetachReason::Left,
            DetachReason::Switched => pb::DetachReason::Switched,
            DetachReason::RoomDeleted => pb::DetachReason::RoomDeleted,
            DetachReason::PresenceTimeout => pb::DetachReason::PresenceTimeout,
            DetachReason::Kicked => pb::DetachReason::Kicked,
        }
    }
}

/// Every event a stream receives, as the `SubscribeResponse` event it is — built
/// here and nowhere else ([`super::Frame`] then encodes it once).
pub mod event {
    use super::*;
    pub use pb::subscribe_response::Event;

    /// A message, as streams receive it live, in catch-up and in a send's ack.
    pub fn message(message: &Message) -> Event {
        Event::Message(message.into())
    }

    /// A sent message's ack (the message as stored, seq and all).
    pub fn send_ack(message: &Message) -> Event {
        Event::SendAck(pb::SendAck {
            message: Some(message.into()),
        })
    }

    /// The room's new state.
    pub fn room_updated(room: &Room) -> Event {
        Event::RoomUpdated(pb::RoomUpdated {
            room: Some(room.clone().into()),
        })
    }

    /// The room is gone.
    pub fn room_deleted(room_id: &RoomId) -> Event {
        Event::RoomDeleted(pb::RoomDeleted {
            room_id: room_id.to_string(),
        })
    }

    /// A run of joins (`joined`) or of leaves, announced together; leaves by a kick or
    /// a ban name who did it (`kicked_by`, empty otherwise).
    pub fn members_changed(
        room_id: &RoomId,
        joined: bool,
        members: Vec<pb::Member>,
        member_count: u32,
        kicked_by: String,
    ) -> Event {
        let room_id = room_id.to_string();
        if joined {
            Event::MembersJoined(pb::MembersJoined {
                room_id,
                members,
                member_count,
            })
        } else {
            Event::MembersLeft(pb::MembersLeft {
                room_id,
                members,
                member_count,
                kicked_by,
            })
        }
    }

    /// A stream attached the room; `history_truncated`: the resume point is older
    /// than the history still stored.
    pub fn attached(room: Room, history_truncated: bool) -> Event {
        Event::Attached(pb::RoomAttached {
            room: Some(room.into()),
            history_truncated,
        })
    }

    /// The room's history resumes at `resumes_at_seq` (retention deleted the rest).
    pub fn history_truncated(room_id: &RoomId, resumes_at_seq: u64) -> Event {
        Event::HistoryTruncated(pb::HistoryTruncated {
            room_id: room_id.to_string(),
            resumes_at_seq,
        })
    }

    /// The stream no longer receives the room, and why.
    pub fn detached(room_id: &RoomId, reason: DetachReason) -> Event {
        Event::Detached(pb::RoomDetached {
            room_id: room_id.to_string(),
            reason: pb::DetachReason::from(reason) as i32,
        })
    }

    /// A client frame failed (the stream goes on): the gRPC code, the reason and the
    /// message a unary call would carry, and when to retry a rate-limited one.
    pub fn stream_error(error: pb::StreamError) -> Event {
        Event::Error(error)
    }

    /// The answer to a ping.
    pub fn pong() -> Event {
        Event::Pong(pb::Pong {})
    }

    /// A refreshed token was accepted: the stream now lasts until `expires_at` (Unix
    /// seconds, as the token's `exp` says; `None`: the token does not expire).
    pub fn token_refreshed(expires_at: Option<u64>) -> Event {
        Event::TokenRefreshed(pb::TokenRefreshed {
            expires_at: expires_at.map(|exp| prost_types::Timestamp {
                seconds: i64::try_from(exp).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_micros() {
        let t = timestamp(UnixMicros(1_700_000_000_123_456));
        assert_eq!(t.seconds, 1_700_000_000);
        assert_eq!(t.nanos, 123_456_000);
    }

    /// The feed's kinds are stored by number: the contract numbers them the same, so
    /// a number read from the database means what its name says on the wire.
    #[test]
    fn feed_kinds_keep_their_numbers_on_the_wire() {
        for kind in FeedKind::ALL {
            assert_eq!(pb::RoomFeedEventKind::from(kind) as i32, kind.number());
        }
    }
}
