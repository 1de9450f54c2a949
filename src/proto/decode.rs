//! Requests from their protobuf form into domain values, validated here, once, on
//! their way in; error fields use the proto field names.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::pb;
use crate::domain::{
    Attributes, DEFAULT_MESSAGE_LIMIT, DetachReason, Draft, HistoryRange, MAX_MESSAGE_LIMIT,
    MemberEvents, MessageKind, MessageLimits, NewRoom, Role, RoomFilter, RoomId, RoomMove,
    RoomPatch, RoomSettings, UserId, check_attributes, check_name, check_no_nul,
};
use crate::error::{Error, Result};

/// Parses a room id that arrives in the request field `field`.
pub fn room_id(field: &str, id: String) -> Result<RoomId> {
    RoomId::parse(id).map_err(|e| e.in_field(field))
}

/// A SetMemberRole request: the room, the member, and the role to give
/// (ROLE_MODERATOR or ROLE_MEMBER; the owner changes with TransferOwnership).
pub fn member_role(req: pb::SetMemberRoleRequest) -> Result<(RoomId, UserId, Role)> {
    let room_id = room_id("room_id", req.room_id)?;
    let user_id = UserId::parse(req.user_id)?;
    let role = match pb::Role::try_from(req.role) {
        Ok(pb::Role::Moderator) => Role::Moderator,
        Ok(pb::Role::Member) => Role::Member,
        Ok(pb::Role::Owner) => {
            return Err(Error::invalid(
                "role",
                "a room's owner changes with TransferOwnership",
            ));
        }
        Ok(pb::Role::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "role",
                "must be ROLE_MODERATOR or ROLE_MEMBER",
            ));
        }
    };
    Ok((room_id, user_id, role))
}

/// The room and the member a moderation request (TransferOwnership, KickMember,
/// UnbanMember) is aimed at.
pub fn room_member(room: String, user_id: String) -> Result<(RoomId, UserId)> {
    Ok((room_id("room_id", room)?, UserId::parse(user_id)?))
}

/// A BanMember or MuteMember request: the room, the user, and how long (`None`:
/// until lifted; whole milliseconds, at most 10 years, as settings durations).
pub fn sanction(
    room: String,
    user_id: String,
    length: Option<prost_types::Duration>,
) -> Result<(RoomId, UserId, Option<Duration>)> {
    let (room_id, user_id) = room_member(room, user_id)?;
    let length = match length {
        Some(d) => Some(duration("duration", d)?).filter(|d| !d.is_zero()),
        None => None,
    };
    Ok((room_id, user_id, length))
}

/// A SwitchRoom request's two rooms (different ones).
pub fn room_move(from_room_id: String, to_room_id: String) -> Result<RoomMove> {
    let from = room_id("from_room_id", from_room_id)?;
    let to = room_id("to_room_id", to_room_id)?;
    RoomMove::new(from, to)
}

/// ListRooms' filter: an exact name or a name prefix (each empty for any).
pub fn room_filter(name: String, name_prefix: String) -> Result<RoomFilter> {
    check_name("name", &name)?;
    check_name("name_prefix", &name_prefix)?;
    Ok(RoomFilter { name, name_prefix })
}

/// A new room from the create fields shared by CreateRoom and EnterRoom.
pub fn new_room(
    room_id_field: String,
    name: String,
    attributes: std::collections::HashMap<String, String>,
    settings: Option<pb::RoomSettings>,
) -> Result<NewRoom> {
    let id = if room_id_field.is_empty() {
        RoomId::generate()
    } else {
        room_id("room_id", room_id_field)?
    };
    check_name("name", &name)?;
    check_attributes("attributes", &attributes)?;
    Ok(NewRoom {
        id,
        name,
        attributes: attributes.into_iter().collect(),
        settings: room_settings("settings", settings)?,
    })
}

/// Checks a display name.
pub fn display_name(name: String) -> Result<String> {
    check_name("display_name", &name)?;
    Ok(name)
}

/// Settings from the wire; unset means the defaults.
pub fn room_settings(field: &str, settings: Option<pb::RoomSettings>) -> Result<RoomSettings> {
    let Some(s) = settings else {
        return Ok(RoomSettings::default());
    };
    let member_events = match pb::MemberEvents::try_from(s.member_events) {
        Ok(pb::MemberEvents::Unspecified | pb::MemberEvents::All) => MemberEvents::All,
        Ok(pb::MemberEvents::None) => MemberEvents::None,
        Err(_) => {
            return Err(Error::invalid(
                format!("{field}.member_events"),
                format!("unknown value {}", s.member_events),
            ));
        }
    };
    let destroy = s
        .destroy_when_empty_after
        .map(|d| duration(&format!("{field}.destroy_when_empty_after"), d))
        .transpose()?;
    let presence = s
        .presence_timeout
        .map(|d| duration(&format!("{field}.presence_timeout"), d))
        .transpose()?
        .filter(|d| !d.is_zero());
    let slow_mode = s
        .slow_mode_interval
        .map(|d| duration(&format!("{field}.slow_mode_interval"), d))
        .transpose()?
        .filter(|d| !d.is_zero());
    Ok(RoomSettings {
        max_members: s.max_members,
        member_events,
        destroy_when_empty_after: destroy,
        presence_timeout: presence,
        slow_mode_interval: slow_mode,
        muted: s.muted,
    })
}

/// Longest duration accepted in settings (about 10 years).
const MAX_SETTING_SECS: i64 = 10 * 365 * 24 * 3600;

/// A settings duration. The store keeps whole milliseconds, so the value is made one
/// here and the room answers exactly what is stored: a fraction of a millisecond is
/// rounded up, and a non-zero duration below one millisecond is refused (rounded
/// down it would read as 0, which means "unset", while acting at once).
fn duration(field: &str, d: prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    if d.seconds > MAX_SETTING_SECS {
        return Err(Error::invalid(field, "must be at most 10 years"));
    }
    let exact = Duration::new(d.seconds as u64, d.nanos as u32);
    if !exact.is_zero() && exact < Duration::from_millis(1) {
        return Err(Error::invalid(field, "must be 0 or at least 1 millisecond"));
    }
    let millis = exact.as_nanos().div_ceil(1_000_000);
    Ok(Duration::from_millis(
        u64::try_from(millis).expect("at most 10 years"),
    ))
}

/// An UpdateRoom request as a patch.
pub fn room_patch(req: pb::UpdateRoomRequest) -> Result<(RoomId, RoomPatch)> {
    let id = room_id("room_id", req.room_id)?;
    if let Some(name) = &req.name {
        check_name("name", name)?;
    }
    check_attributes("set_attributes", &req.set_attributes)?;
    for key in &req.remove_attribute_keys {
        check_no_nul("remove_attribute_keys", key)?;
    }
    if req.remove_attribute_keys.len() > crate::domain::MAX_ATTRIBUTES {
        return Err(Error::invalid(
            "remove_attribute_keys",
            "at most 64 keys may be removed at once",
        ));
    }
    let settings = match req.settings {
        Some(s) => Some(room_settings("settings", Some(s))?),
        None => None,
    };
    Ok((
        id,
        RoomPatch {
            name: req.name,
            settings,
            set_attributes: req.set_attributes.into_iter().collect::<Attributes>(),
            remove_attribute_keys: req.remove_attribute_keys,
            expected_version: req.expected_version,
        },
    ))
}

/// A message to send, validated against the limits.
pub fn draft(req: pb::SendMessageRequest, limits: &MessageLimits) -> Result<Draft> {
    let room_id = room_id("room_id", req.room_id)?;
    let kind = match pb::MessageKind::try_from(req.kind) {
        Ok(pb::MessageKind::Unspecified | pb::MessageKind::Chat) => MessageKind::Chat,
        Ok(pb::MessageKind::Barrage) => MessageKind::Barrage,
        Ok(pb::MessageKind::Command) => MessageKind::Command,
        Ok(pb::MessageKind::Recall | pb::MessageKind::Edit) => {
            return Err(Error::invalid(
                "kind",
                "RECALL and EDIT entries are made by RecallMessage and EditMessage",
            ));
        }
        Err(_) => {
            return Err(Error::invalid(
                "kind",
                format!("unknown value {}", req.kind),
            ));
        }
    };
    let draft = Draft {
        room_id,
        kind,
        text: req.text,
        payload: req.payload,
        content_type: req.content_type,
        to_user_ids: req.to_user_ids,
        client_msg_id: req.client_msg_id,
    };
    draft.check(limits)?;
    Ok(draft)
}

/// What a RecallMessage or EditMessage request names: the room and the seq of the
/// message (1 or more).
pub fn amended(room: String, seq: u64) -> Result<(RoomId, u64)> {
    let room_id = room_id("room_id", room)?;
    if seq == 0 {
        return Err(Error::invalid(
            "seq",
            "must be a stored message's seq (1 or more)",
        ));
    }
    Ok((room_id, seq))
}

/// An EditMessage's new contents, within SendMessage's limits.
pub fn edit(
    req: pb::EditMessageRequest,
    limits: &MessageLimits,
) -> Result<(RoomId, u64, String, Vec<u8>)> {
    let (room_id, seq) = amended(req.room_id, req.seq)?;
    let draft = Draft {
        room_id,
        kind: MessageKind::Edit,
        text: req.text,
        payload: req.payload,
        content_type: String::new(),
        to_user_ids: Vec::new(),
        client_msg_id: String::new(),
    };
    draft.check(limits)?;
    Ok((draft.room_id, seq, draft.text, draft.payload))
}

/// Most rooms one BroadcastMessage reaches.
pub const MAX_BROADCAST_ROOMS: usize = 1000;

/// A BroadcastMessage request: its rooms (1 to 1,000, each once, in order) and the
/// message, checked as SendMessage checks one (its room the first of them).
pub fn broadcast(
    req: pb::BroadcastMessageRequest,
    limits: &MessageLimits,
) -> Result<(Vec<RoomId>, Draft)> {
    if req.room_ids.is_empty() || req.room_ids.len() > MAX_BROADCAST_ROOMS {
        return Err(Error::invalid(
            "room_ids",
            format!("name 1 to {MAX_BROADCAST_ROOMS} rooms"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.room_ids.len());
    let mut rooms = Vec::with_capacity(req.room_ids.len());
    for id in req.room_ids {
        let room = room_id("room_ids", id)?;
        if !seen.insert(room.clone()) {
            return Err(Error::invalid("room_ids", format!("{room} is named twice")));
        }
        rooms.push(room);
    }
    let draft = draft(
        pb::SendMessageRequest {
            room_id: rooms[0].to_string(),
            kind: req.kind,
            text: req.text,
            payload: req.payload,
            content_type: req.content_type,
            to_user_ids: Vec::new(),
            client_msg_id: String::new(),
        },
        limits,
    )?;
    Ok((rooms, draft))
}

/// ListMessages' range and limit.
pub fn history(req: &pb::ListMessagesRequest) -> Result<(HistoryRange, u32)> {
    let range = match (req.after_seq, req.before_seq) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "before_seq",
                "set after_seq or before_seq, not both",
            ));
        }
        (Some(after), None) => HistoryRange::After(after),
        (None, before) => HistoryRange::Before(before),
    };
    let limit = match req.limit {
        0 => DEFAULT_MESSAGE_LIMIT,
        n => n.min(MAX_MESSAGE_LIMIT),
    };
    Ok((range, limit))
}

/// A detach reason as the contract numbers it; `None` for unspecified or unknown.
pub fn detach_reason(reason: i32) -> Option<DetachReason> {
    match pb::DetachReason::try_from(reason).ok()? {
        pb::DetachReason::Unspecified => None,
        pb::DetachReason::Requested => Some(DetachReason::Requested),
        pb::DetachReason::Left => Some(DetachReason::Left),
        pb::DetachReason::Switched => Some(DetachReason::Switched),
        pb::DetachReason::RoomDeleted => Some(DetachReason::RoomDeleted),
        pb::DetachReason::PresenceTimeout => Some(DetachReason::PresenceTimeout),
        pb::DetachReason::Kicked => Some(DetachReason::Kicked),
    }
}

/// Decodes a page token (empty: the first page).
pub fn page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    // Keys are ids, which never hold a NUL (the database could not compare one).
    text.strip_prefix(super::encode::PAGE_TOKEN_PREFIX)
        .filter(|k| !k.contains('\0'))
        .map(|k| Some(k.to_string()))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = super::super::encode::page_token(Some("room-7".into()));
        assert_eq!(page_token(&token).unwrap(), Some("room-7".into()));
        assert_eq!(super::super::encode::page_token(None), "");
        assert_eq!(page_token("").unwrap(), None);
        assert!(page_token("not base64!").is_err());
        assert!(page_token(&URL_SAFE_NO_PAD.encode("x:room")).is_err());
    }

    #[test]
    fn negative_and_zero_durations() {
        let neg = pb::RoomSettings {
            presence_timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        };
        let err = room_settings("settings", Some(neg)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { field, .. } if field == "settings.presence_timeout")
        );
        let zero = pb::RoomSettings {
            presence_timeout: Some(prost_types::Duration::default()),
            ..Default::default()
        };
        assert_eq!(
            room_settings("settings", Some(zero))
                .unwrap()
                .presence_timeout,
            None
        );
    }

    #[test]
    fn durations_are_whole_milliseconds() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert!(duration("f", d(0, 999_999)).is_err());
        assert!(duration("f", d(0, 1)).is_err());
        assert_eq!(duration("f", d(0, 0)).unwrap(), Duration::ZERO);
        assert_eq!(
            duration("f", d(0, 1_000_000)).unwrap(),
            Duration::from_millis(1)
        );
        assert_eq!(
            duration("f", d(1, 1_000_001)).unwrap(),
            Duration::from_millis(1002)
        );
    }

    mod properties {
        //! Hostile input, generated: whatever bytes arrive, decoding and validation
        //! either accept a value that keeps every rule or refuse it with
        //! INVALID_ARGUMENT — never a panic, never anything else. Bounded cases here
        //! (`scripts/test.sh`); `PROPTEST_CASES=100000 cargo test --lib properties`
        //! is the longer run.
        use super::*;
        use proptest::prelude::*;
        use prost::Message as _;

        fn limits() -> MessageLimits {
            MessageLimits {
                max_text_bytes: 64,
                max_payload_bytes: 64,
            }
        }

        fn refused_as_bad_input(result: Result<impl Sized>) {
            if let Err(error) = result {
                assert!(
                    matches!(error, Error::InvalidArgument { .. }),
                    "refused as something else: {error:?}"
                );
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn any_bytes_decode_and_validate_or_are_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                if let Ok(req) = pb::SendMessageRequest::decode(&bytes[..]) {
                    refused_as_bad_input(draft(req, &limits()));
                }
                if let Ok(req) = pb::CreateRoomRequest::decode(&bytes[..]) {
                    refused_as_bad_input(new_room(req.room_id, req.name, req.attributes, req.settings));
                }
                if let Ok(req) = pb::UpdateRoomRequest::decode(&bytes[..]) {
                    refused_as_bad_input(room_patch(req));
                }
                if let Ok(req) = pb::ListMessagesRequest::decode(&bytes[..]) {
                    refused_as_bad_input(history(&req));
                }
                if let Ok(req) = pb::ListRoomsRequest::decode(&bytes[..]) {
                    refused_as_bad_input(page_token(&req.page_token));
                }
                let _ = pb::SubscribeRequest::decode(&bytes[..]);
            }

            #[test]
            fn accepted_messages_keep_the_rules(
                room in "\\PC{0,8}|[a-z.:_-]{1,140}",
                text in "\\PC{0,80}|[\\x00-\\x1f]{0,4}",
                payload in proptest::collection::vec(any::<u8>(), 0..100),
                kind in -1i32..5,
                targets in proptest::collection::vec("\\PC{0,6}", 0..4),
            ) {
                let req = pb::SendMessageRequest {
                    room_id: room.clone(),
                    kind,
                    text: text.clone(),
                    payload: payload.clone(),
                    to_user_ids: targets,
                    ..Default::default()
                };
                match draft(req, &limits()) {
                    Ok(d) => {
                        prop_assert!(RoomId::parse(room).is_ok());
                        prop_assert!(d.text.len() <= 64 && d.payload.len() <= 64);
                        prop_assert!(!d.text.contains('\0'), "a NUL never reaches the store");
                    }
                    Err(error) => {
                        let bad_input = matches!(error, Error::InvalidArgument { .. });
                        prop_assert!(bad_input, "refused as {:?}", error);
                    }
                }
            }

            #[test]
            fn accepted_room_ids_are_in_the_contract(id in "\\PC{0,200}") {
                if let Ok(room) = room_id("room_id", id) {
                    prop_assert!((1..=128).contains(&room.as_str().len()));
                    prop_assert!(room.as_str().chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)));
                }
            }
        }
    }
}
