//! Domain values in their protobuf form, for answers and for events encoded once.

use std::time::Duration;

use crate::domain::{
    DetachReason, Member, MemberEvents, Message, MessageKind, Role, Room, RoomSettings, UnixMicros,
};
use crate::pb;

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
            role: match m.role {
                Role::Owner => pb::Role::Owner,
                Role::Member => pb::Role::Member,
            } as i32,
            online: m.online,
            joined_at: Some(timestamp(m.joined_at)),
        }
    }
}

impl From<MessageKind> for pb::MessageKind {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Chat => pb::MessageKind::Chat,
            MessageKind::Barrage => pb::MessageKind::Barrage,
            MessageKind::Command => pb::MessageKind::Command,
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
        }
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
}
