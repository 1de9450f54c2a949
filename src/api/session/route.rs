//! What one hub event means for one stream. Pure — it reads and updates the stream's
//! delivery state and says what else must happen — so it is tested on its own.

use std::sync::Arc;

use super::attached::AttachedRooms;
use super::frames::detached_frame;
use super::outbox::Outbox;
use crate::domain::{DetachReason, RoomId};
use crate::live::Event;
use crate::live::hub::{Delivery, Held, RoomState, Switch};
use crate::proto::Frame;
use crate::proto::encode::event;

/// What one hub event asks of the stream besides its frames.
#[derive(Debug, Default)]
pub(super) struct Routed {
    /// A seq was skipped (or its frame was already evicted): read from the store.
    pub gap: bool,
    /// The stream stops receiving the room (its frames are in the outbox already).
    pub detach: Option<DetachReason>,
    /// The user switched rooms: attach this one.
    pub switched_to: Option<Box<Switch>>,
    /// The room gained a presence timeout: record the user online.
    pub now_present: bool,
}

/// Routes one event of `room_id` for a stream of `user` (`admin`: the stream's caller
/// is an admin): its frames (if any are for this stream) go to `outbox`. `latest`
/// gives the room's latest state, read only for an update.
pub(super) fn route(
    attached: &mut AttachedRooms,
    user: &str,
    admin: bool,
    room_id: &RoomId,
    event: &Event,
    latest: impl FnOnce() -> Option<Arc<RoomState>>,
    outbox: &mut Outbox,
) -> Routed {
    let mut routed = Routed::default();
    match event {
        Event::Message { seq, held } => {
            message(attached, user, room_id, *seq, held, outbox, &mut routed);
        }
        Event::Broadcast(frame) => outbox.push_back(frame.clone()),
        Event::Updated { version } => {
            updated(attached, room_id, *version, latest, outbox, &mut routed);
        }
        Event::Detach {
            user: leaver,
            reason,
            switched_to,
            unless_admin,
        } => {
            if leaver == user && !(*unless_admin && admin) && attached.contains(room_id) {
                outbox.push_back(detached_frame(String::new(), room_id, *reason));
                routed.detach = Some(*reason);
                routed.switched_to = switched_to.clone();
            }
        }
        Event::Deleted => {
            if attached.contains(room_id) {
                outbox.push_back(Frame::event(event::room_deleted(room_id)));
                outbox.push_back(detached_frame(
                    String::new(),
                    room_id,
                    DetachReason::RoomDeleted,
                ));
                routed.detach = Some(DetachReason::RoomDeleted);
            }
        }
        Event::Behind { seq } => {
            // Stored messages this node never saw: read like any other gap.
            routed.gap = attached.get(room_id).is_some_and(|a| *seq > a.delivered);
        }
    }
    routed
}

/// A message: sent if it is for this user and the next seq the stream expects; a
/// gap if a seq was skipped or its frame already evicted.
fn message(
    attached: &mut AttachedRooms,
    user: &str,
    room_id: &RoomId,
    seq: u64,
    held: &Held,
    outbox: &mut Outbox,
    routed: &mut Routed,
) {
    let upgraded;
    let delivery: &Delivery = match held {
        Held::Inline(delivery) => delivery,
        Held::Weak(weak) => {
            upgraded = weak.upgrade();
            match upgraded.as_deref() {
                Some(delivery) => delivery,
                None => {
                    // Evicted by the room's byte budget: CHAT is read from the store,
                    // the other kinds are gone for this stream.
                    routed.gap =
                        seq > 0 && attached.get(room_id).is_some_and(|a| seq > a.delivered);
                    return;
                }
            }
        }
    };
    if delivery
        .targets
        .as_ref()
        .is_some_and(|t| !t.iter().any(|u| u == user))
    {
        return;
    }
    if seq == 0 {
        outbox.push_back(delivery.frame.clone());
    } else if let Some(a) = attached.get_mut(room_id) {
        if seq == a.delivered + 1 {
            a.delivered = seq;
            outbox.push_back(delivery.frame.clone());
        } else if seq > a.delivered + 1 {
            routed.gap = true;
        }
    }
}

/// A room update: the latest state, once, if it is newer than what the stream sent.
fn updated(
    attached: &mut AttachedRooms,
    room_id: &RoomId,
    version: u64,
    latest: impl FnOnce() -> Option<Arc<RoomState>>,
    outbox: &mut Outbox,
    routed: &mut Routed,
) {
    let Some(a) = attached.get_mut(room_id) else {
        return;
    };
    if version <= a.version {
        return;
    }
    // The latest state, once: several updates this stream has not sent yet go out as
    // the newest of them.
    if let Some(latest) = latest()
        && latest.version > a.version
    {
        let timeout = latest.presence_timeout;
        // Online all along: a presence timeout starts when the stream goes away.
        routed.now_present = timeout && !a.presence_timeout;
        a.presence_timeout = timeout;
        a.room_muted = latest.muted;
        a.version = latest.version;
        outbox.push_back(latest.frame.clone());
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use crate::proto::pb;
    use crate::proto::pb::subscribe_response::Event as PbEvent;

    use super::super::attached::AttachedRoom;
    use super::*;
    use crate::domain::{Room, RoomSettings, UnixMicros};

    fn room_id() -> RoomId {
        RoomId::parse("r").unwrap()
    }

    /// A stream of "bob" attached to "r", delivered up to seq 5, at room version 1.
    fn attached() -> AttachedRooms {
        let mut rooms = AttachedRooms::default();
        rooms.insert(AttachedRoom {
            room_id: room_id(),
            sender_name: "Bob".into(),
            delivered: 5,
            version: 1,
            presence_timeout: false,
            room_muted: false,
            mute: None,
        });
        rooms
    }

    fn message(seq: u64, text: &str, targets: Option<Vec<String>>) -> Event {
        let frame = Frame::event(PbEvent::Message(pb::Message {
            seq,
            text: text.into(),
            ..Default::default()
        }));
        Event::Message {
            seq,
            held: Held::Inline(Delivery { frame, targets }),
        }
    }

    fn decoded(frame: &Frame) -> PbEvent {
        pb::SubscribeResponse::decode(&frame.wire()[5..])
            .unwrap()
            .event
            .unwrap()
    }

    /// Routes `event` of "r" for bob's stream, with no room state to send.
    fn to_bob(rooms: &mut AttachedRooms, event: &Event, outbox: &mut Outbox) -> Routed {
        route(rooms, "bob", false, &room_id(), event, || None, outbox)
    }

    #[test]
    fn chat_is_delivered_in_seq_order_and_a_skip_is_a_gap() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        let next = to_bob(&mut rooms, &message(6, "six", None), &mut outbox);
        assert!(!next.gap);
        assert_eq!(outbox.len(), 1);
        assert_eq!(rooms.get(&room_id()).unwrap().delivered, 6);
        // Already delivered: nothing.
        let old = to_bob(&mut rooms, &message(6, "six", None), &mut outbox);
        assert!(!old.gap);
        assert_eq!(outbox.len(), 1);
        // Seq 8 after 6: a gap, nothing delivered.
        let skip = to_bob(&mut rooms, &message(8, "eight", None), &mut outbox);
        assert!(skip.gap);
        assert_eq!(outbox.len(), 1);
        assert_eq!(rooms.get(&room_id()).unwrap().delivered, 6);
    }

    #[test]
    fn a_room_behind_the_store_is_a_gap_for_streams_behind_it() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        assert!(!to_bob(&mut rooms, &Event::Behind { seq: 5 }, &mut outbox).gap);
        assert!(to_bob(&mut rooms, &Event::Behind { seq: 7 }, &mut outbox).gap);
        assert!(outbox.is_empty());
        assert_eq!(rooms.get(&room_id()).unwrap().delivered, 5);
    }

    #[test]
    fn targets_limit_who_receives_and_unstored_kinds_carry_no_seq() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        let to_carol = message(0, "psst", Some(vec!["carol".into()]));
        to_bob(&mut rooms, &to_carol, &mut outbox);
        assert!(outbox.is_empty());
        let hi_bob = message(0, "hi bob", Some(vec!["carol".into(), "bob".into()]));
        to_bob(&mut rooms, &hi_bob, &mut outbox);
        assert_eq!(outbox.len(), 1);
        assert_eq!(rooms.get(&room_id()).unwrap().delivered, 5);
    }

    #[test]
    fn an_evicted_frame_is_a_gap_for_chat_and_gone_otherwise() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        let evicted = |seq| Event::Message {
            seq,
            held: Held::Weak(std::sync::Weak::new()),
        };
        assert!(to_bob(&mut rooms, &evicted(6), &mut outbox).gap);
        assert!(!to_bob(&mut rooms, &evicted(0), &mut outbox).gap);
        assert!(!to_bob(&mut rooms, &evicted(4), &mut outbox).gap);
        assert!(outbox.is_empty());
    }

    fn state(version: u64, timeout: bool) -> Arc<RoomState> {
        let room = Room {
            id: room_id(),
            name: format!("v{version}"),
            attributes: Default::default(),
            owner_id: "owner".into(),
            settings: RoomSettings {
                presence_timeout: timeout.then(|| std::time::Duration::from_secs(1)),
                ..Default::default()
            },
            member_count: 2,
            online_count: 0,
            last_seq: 5,
            version,
            created_at: UnixMicros(0),
            updated_at: UnixMicros(0),
        };
        let frame = Frame::event(PbEvent::RoomUpdated(pb::RoomUpdated {
            room: Some(room.clone().into()),
        }));
        Arc::new(RoomState {
            version,
            presence_timeout: timeout,
            muted: false,
            frame,
        })
    }

    #[test]
    fn updates_send_the_latest_state_once() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        // Two updates missed: the first event sends the latest (v3), the second nothing.
        let latest = state(3, true);
        let first = route(
            &mut rooms,
            "bob",
            false,
            &room_id(),
            &Event::Updated { version: 2 },
            || Some(latest.clone()),
            &mut outbox,
        );
        assert!(first.now_present, "the room gained a presence timeout");
        let second = route(
            &mut rooms,
            "bob",
            false,
            &room_id(),
            &Event::Updated { version: 3 },
            || Some(latest.clone()),
            &mut outbox,
        );
        assert!(!second.now_present);
        assert_eq!(outbox.len(), 1);
        match decoded(&outbox[0]) {
            PbEvent::RoomUpdated(u) => assert_eq!(u.room.unwrap().version, 3),
            other => panic!("expected a room update, got {other:?}"),
        }
        let a = rooms.get(&room_id()).unwrap();
        assert_eq!((a.version, a.presence_timeout), (3, true));
    }

    #[test]
    fn a_detach_concerns_its_user_only_and_a_delete_everyone() {
        let (mut rooms, mut outbox) = (attached(), Outbox::default());
        let detach = |user: &str| Event::Detach {
            user: user.into(),
            reason: DetachReason::Left,
            switched_to: None,
            unless_admin: false,
        };
        let other = to_bob(&mut rooms, &detach("carol"), &mut outbox);
        assert_eq!(other.detach, None);
        assert!(outbox.is_empty());
        let own = to_bob(&mut rooms, &detach("bob"), &mut outbox);
        assert_eq!(own.detach, Some(DetachReason::Left));
        assert!(
            matches!(decoded(&outbox[0]), PbEvent::Detached(d) if d.reason == pb::DetachReason::Left as i32)
        );
        outbox.clear();
        // A repair's detach spares a stream whose caller is an admin, not another.
        let repair = Event::Detach {
            user: "bob".into(),
            reason: DetachReason::Left,
            switched_to: None,
            unless_admin: true,
        };
        let admin = route(
            &mut rooms,
            "bob",
            true,
            &room_id(),
            &repair,
            || None,
            &mut outbox,
        );
        assert_eq!(admin.detach, None);
        assert!(outbox.is_empty());
        let (mut member_rooms, mut member_outbox) = (attached(), Outbox::default());
        let member = to_bob(&mut member_rooms, &repair, &mut member_outbox);
        assert_eq!(member.detach, Some(DetachReason::Left));
        let deleted = to_bob(&mut rooms, &Event::Deleted, &mut outbox);
        assert_eq!(deleted.detach, Some(DetachReason::RoomDeleted));
        assert!(matches!(decoded(&outbox[0]), PbEvent::RoomDeleted(_)));
        assert!(matches!(decoded(&outbox[1]), PbEvent::Detached(_)));
    }

    mod properties {
        //! The router under any order of events: whatever the hub (and the bus, in a
        //! cluster) hands a stream — repeats, reordering, skips, evicted frames,
        //! "behind" notices — the stream delivers CHAT in seq order, each seq once,
        //! with no hole, and asks for the store whenever it is behind.
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Incoming {
            Chat(u64),
            Evicted(u64),
            Behind(u64),
            Unstored,
        }

        fn incoming() -> impl Strategy<Value = Incoming> {
            prop_oneof![
                6 => (1u64..40).prop_map(Incoming::Chat),
                1 => (1u64..40).prop_map(Incoming::Evicted),
                1 => (1u64..40).prop_map(Incoming::Behind),
                1 => Just(Incoming::Unstored),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn chat_goes_out_in_order_once_with_no_hole(
                events in proptest::collection::vec(incoming(), 0..80),
            ) {
                let (mut rooms, mut outbox) = (attached(), Outbox::default());
                let mut delivered = 5u64;
                for event in &events {
                    let event = match *event {
                        Incoming::Chat(seq) => message(seq, "m", None),
                        Incoming::Evicted(seq) => Event::Message {
                            seq,
                            held: Held::Weak(std::sync::Weak::new()),
                        },
                        Incoming::Behind(seq) => Event::Behind { seq },
                        Incoming::Unstored => message(0, "barrage", None),
                    };
                    let routed = to_bob(&mut rooms, &event, &mut outbox);
                    let seq = match &event {
                        Event::Message { seq, .. } | Event::Behind { seq } => *seq,
                        _ => 0,
                    };
                    for frame in std::iter::from_fn(|| outbox.pop_front()) {
                        if let PbEvent::Message(m) = decoded(&frame)
                            && m.seq > 0
                        {
                            prop_assert_eq!(m.seq, delivered + 1, "in order, once, no hole");
                            delivered = m.seq;
                        }
                    }
                    prop_assert_eq!(rooms.get(&room_id()).unwrap().delivered, delivered);
                    // Ahead of what was delivered and not delivered now: the store
                    // is asked.
                    if seq > delivered {
                        prop_assert!(routed.gap, "seq {} after {}: a gap", seq, delivered);
                    }
                }
            }
        }
    }
}
