//! Room events across nodes: joins, updates, handovers, leaves, kicks, bans, mutes,
//! switches and deletes, also when the bus loses them.

use std::time::{Duration, Instant};

use chatroom::pb;

use tonic::Code;

use crate::common::{Ev, Sub, assert_error, chat, create, join};
use crate::{Cluster, attached, next_room_event};

/// Joins, updates, leaves, switches and deletes made through node A reach the
/// streams attached on node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_made_on_one_node_reach_streams_on_another() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    owner.create_room(create("other")).await.unwrap();
    let mut watcher = attached(b, "watcher").await;

    // A join through A: members_joined on B.
    let mut bob = a.client("bob").await;
    bob.join_room(join("r")).await.unwrap();
    loop {
        if let Ev::MembersJoined(j) = watcher.event().await
            && j.members.iter().any(|m| m.user_id == "bob")
        {
            break;
        }
    }

    // An update through A: room_updated on B.
    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "r".into(),
            name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let Ev::RoomUpdated(u) = next_room_event(&mut watcher).await else {
        panic!("expected room_updated");
    };
    assert_eq!(u.room.unwrap().name, "renamed");

    // A handover through A: room_updated on B, with the new owner; the member list
    // read through B has the roles.
    owner
        .transfer_ownership(pb::TransferOwnershipRequest {
            room_id: "r".into(),
            user_id: "bob".into(),
        })
        .await
        .unwrap();
    let Ev::RoomUpdated(u) = next_room_event(&mut watcher).await else {
        panic!("expected room_updated");
    };
    assert_eq!(u.room.unwrap().owner_id, "bob");
    let mut reader = b.client("watcher").await;
    let roles: Vec<(String, pb::Role)> = crate::common::all_members(&mut reader, "r")
        .await
        .into_iter()
        .map(|m| (m.user_id.clone(), m.role()))
        .collect();
    assert_eq!(
        roles,
        [
            ("bob".to_string(), pb::Role::Owner),
            ("owner".to_string(), pb::Role::Member),
            ("watcher".to_string(), pb::Role::Member),
        ]
    );

    // bob's stream on B; bob leaves through A: detached{LEFT} on B, and nothing more
    // of the room reaches it.
    let mut bob_on_b = {
        let mut client = b.client("bob").await;
        let mut sub = Sub::open(&mut client).await;
        sub.attached("r", None).await;
        sub
    };
    bob.leave_room(pb::LeaveRoomRequest {
        room_id: "r".into(),
    })
    .await
    .unwrap();
    let Ev::Detached(d) = next_room_event(&mut bob_on_b).await else {
        panic!("expected detached");
    };
    assert_eq!(d.reason, pb::DetachReason::Left as i32);

    // The watcher switches through A: detached{SWITCHED} on B, then attached to the
    // new room, where messages reach it.
    let mut watcher_client = a.client("watcher").await;
    watcher_client
        .switch_room(pb::SwitchRoomRequest {
            from_room_id: "r".into(),
            to_room_id: "other".into(),
            display_name: String::new(),
        })
        .await
        .unwrap();
    let Ev::Detached(d) = next_room_event(&mut watcher).await else {
        panic!("expected detached");
    };
    assert_eq!(
        (d.room_id.as_str(), d.reason),
        ("r", pb::DetachReason::Switched as i32)
    );
    let Ev::Attached(att) = next_room_event(&mut watcher).await else {
        panic!("expected attached");
    };
    assert_eq!(att.room.unwrap().room_id, "other");
    owner.send_message(chat("other", "hello")).await.unwrap();
    assert_eq!(watcher.chat_seqs_until(1).await, [1]);

    // A delete through A: room_deleted, then detached{ROOM_DELETED} on B.
    owner
        .delete_room(pb::DeleteRoomRequest {
            room_id: "other".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(next_room_event(&mut watcher).await, Ev::RoomDeleted(r) if r.room_id == "other")
    );
    let Ev::Detached(d) = next_room_event(&mut watcher).await else {
        panic!("expected detached");
    };
    assert_eq!(d.reason, pb::DetachReason::RoomDeleted as i32);

    cluster.stop().await;
}

/// A kick and a ban made through A detach the streams on B; the ban keeps the user
/// out through B until it is lifted through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_bans_made_on_one_node_hold_on_another() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner_on_a = a.client("owner").await;
    owner_on_a.create_room(create("r")).await.unwrap();
    let mut watcher = attached(b, "watcher").await;
    let mut carol_on_b = attached(b, "carol").await;

    // A kick through A: detached{KICKED} on B; the room hears who did it.
    owner_on_a
        .kick_member(pb::KickMemberRequest {
            room_id: "r".into(),
            user_id: "carol".into(),
        })
        .await
        .unwrap();
    let Ev::Detached(d) = next_room_event(&mut carol_on_b).await else {
        panic!("expected detached");
    };
    assert_eq!(d.reason, pb::DetachReason::Kicked as i32);
    let left = loop {
        if let Ev::MembersLeft(l) = watcher.event().await {
            break l;
        }
    };
    assert_eq!(
        (left.members[0].user_id.as_str(), left.kicked_by.as_str()),
        ("carol", "owner")
    );

    // Back through B, then banned through A: detached again, and kept out through B.
    let mut carol_on_b = attached(b, "carol").await;
    owner_on_a
        .ban_member(pb::BanMemberRequest {
            room_id: "r".into(),
            user_id: "carol".into(),
            duration: None,
        })
        .await
        .unwrap();
    let Ev::Detached(d) = next_room_event(&mut carol_on_b).await else {
        panic!("expected detached");
    };
    assert_eq!(d.reason, pb::DetachReason::Kicked as i32);
    let mut carol = b.client("carol").await;
    let err = carol.join_room(join("r")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "BANNED");
    match carol_on_b.attach("r", None).await {
        Ev::Error(e) => assert_eq!(e.reason, "BANNED"),
        other => panic!("expected BANNED, got {other:?}"),
    }

    // Lifted through B: carol joins through A.
    let mut owner_on_b = b.client("owner").await;
    owner_on_b
        .unban_member(pb::UnbanMemberRequest {
            room_id: "r".into(),
            user_id: "carol".into(),
        })
        .await
        .unwrap();
    a.client("carol").await.join_room(join("r")).await.unwrap();

    cluster.stop().await;
}

/// With the bus down, a leave and a delete made through A still reach the streams on
/// B: each node checks its streams against the store every ten repair intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaches_the_bus_lost_happen_anyway() {
    let mut cluster = Cluster::start(200).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    owner.create_room(create("gone")).await.unwrap();
    let mut bob_on_b = attached(b, "bob").await;
    let mut watcher = {
        let mut client = b.client("watcher").await;
        client.join_room(join("gone")).await.unwrap();
        let mut sub = Sub::open(&mut client).await;
        sub.attached("gone", None).await;
        sub
    };

    cluster.nats.stop();
    let mut bob = a.client("bob").await;
    bob.leave_room(pb::LeaveRoomRequest {
        room_id: "r".into(),
    })
    .await
    .unwrap();
    owner
        .delete_room(pb::DeleteRoomRequest {
            room_id: "gone".into(),
        })
        .await
        .unwrap();
    let changed = Instant::now();

    let Ev::Detached(d) = next_room_event(&mut bob_on_b).await else {
        panic!("expected detached");
    };
    assert_eq!(
        (d.room_id.as_str(), d.reason),
        ("r", pb::DetachReason::Left as i32)
    );
    assert!(
        matches!(next_room_event(&mut watcher).await, Ev::RoomDeleted(r) if r.room_id == "gone")
    );
    let Ev::Detached(d) = next_room_event(&mut watcher).await else {
        panic!("expected detached");
    };
    assert_eq!(d.reason, pb::DetachReason::RoomDeleted as i32);
    // Ten intervals of 200 ms, and a round of reads.
    let took = changed.elapsed();
    assert!(took <= Duration::from_secs(5), "converged after {took:?}");

    cluster.stop().await;
}

/// Mutes bob in "r" until lifted.
fn mute_bob() -> pb::MuteMemberRequest {
    pb::MuteMemberRequest {
        room_id: "r".into(),
        user_id: "bob".into(),
        duration: None,
    }
}

/// What a stream's BARRAGE send (the kind no writer checks) is answered: `None` sent,
/// else the refusal's reason.
async fn barrage_refusal(sub: &mut Sub, text: &str) -> Option<String> {
    let request = pb::SendMessageRequest {
        kind: pb::MessageKind::Barrage as i32,
        ..chat("r", text)
    };
    match sub.send(request).await {
        Ev::SendAck(_) => None,
        Ev::Error(e) => Some(e.reason),
        other => panic!("expected an answer to the send, got {other:?}"),
    }
}

/// Sends BARRAGE on `sub` until its answer is `refusal` (`None`: sent), within `limit`;
/// how long it took.
async fn until_barrage_answered(sub: &mut Sub, refusal: Option<&str>, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = barrage_refusal(sub, "try").await;
        if got.as_deref() == refusal {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {got:?} after {limit:?}, expected {refusal:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member's mute and a room-wide mute made through A hold on bob's stream attached
/// on B — its BARRAGE refused once the bus brings the news, and its CHAT at once (the
/// message writer reads mutes in its transaction, through any node) — and end there
/// when lifted through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutes_made_on_one_node_hold_on_another() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner_on_a = a.client("owner").await;
    owner_on_a.create_room(create("r")).await.unwrap();
    let mut bob_on_b = attached(b, "bob").await;
    assert_eq!(barrage_refusal(&mut bob_on_b, "before").await, None);

    owner_on_a.mute_member(mute_bob()).await.unwrap();
    match bob_on_b.send(chat("r", "no")).await {
        Ev::Error(e) => assert_eq!(e.reason, "MUTED"),
        other => panic!("expected MUTED, got {other:?}"),
    }
    let took = until_barrage_answered(&mut bob_on_b, Some("MUTED"), Duration::from_secs(2)).await;
    assert!(
        took < Duration::from_secs(1),
        "the bus told B after {took:?}"
    );
    owner_on_a
        .unmute_member(pb::UnmuteMemberRequest {
            room_id: "r".into(),
            user_id: "bob".into(),
        })
        .await
        .unwrap();
    until_barrage_answered(&mut bob_on_b, None, Duration::from_secs(2)).await;

    // The whole room, through A.
    let muted = |muted| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: Some(pb::RoomSettings {
            muted,
            ..Default::default()
        }),
        ..Default::default()
    };
    owner_on_a.update_room(muted(true)).await.unwrap();
    until_barrage_answered(&mut bob_on_b, Some("MUTED"), Duration::from_secs(2)).await;
    let err = b
        .client("bob")
        .await
        .send_message(chat("r", "no"))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "MUTED");
    owner_on_a.update_room(muted(false)).await.unwrap();
    until_barrage_answered(&mut bob_on_b, None, Duration::from_secs(2)).await;

    cluster.stop().await;
}

/// With the bus down, a mute made through A still holds on a stream attached on B:
/// each node tells its hubs the mutes in force every ten repair intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutes_the_bus_lost_hold_anyway() {
    let mut cluster = Cluster::start(200).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut bob_on_b = attached(b, "bob").await;

    cluster.nats.stop();
    owner.mute_member(mute_bob()).await.unwrap();
    // Ten intervals of 200 ms, and a round of reads.
    until_barrage_answered(&mut bob_on_b, Some("MUTED"), Duration::from_secs(5)).await;

    cluster.stop().await;
}
