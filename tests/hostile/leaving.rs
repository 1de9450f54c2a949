//! Leaving while far behind: nothing committed after a leave or a switch reaches
//! the member's stream.

use crate::common::{Backend, Client, Ev, Sub, TestApp, TestServer, chat, create, get_room, join};
use crate::{fill, on_both_stores};
use chatroom::pb;

on_both_stores!(
    a_member_who_left_gets_nothing_committed_after,
    a_member_who_switched_while_behind_follows,
);

/// A new room of `owner` with 2,000 messages, and the stream of bob, a member, that
/// attached it from the start and read only a few of them: far behind, catching up.
async fn far_behind(server: &TestServer, owner: &mut Client, room: &str) -> (Client, Sub) {
    owner.create_room(create(room)).await.unwrap();
    fill(owner, room, 2000, |i| format!("before {i}")).await;
    let mut bob = server.small_window_client("bob");
    bob.join_room(join(room)).await.unwrap();
    let mut sub = Sub::open(&mut bob).await;
    sub.attached(room, Some(0)).await;
    for _ in 0..5 {
        sub.event().await;
    }
    (bob, sub)
}

/// Once the stream's user has left `room` (the last seq then: `at`), 20 more messages
/// are sent to it: the stream reads on until it is detached with `reason`, and none of
/// what it got from the room was committed after the leave.
async fn nothing_after_the_detach(
    owner: &mut Client,
    sub: &mut Sub,
    room: &str,
    reason: pb::DetachReason,
) {
    let at = get_room(owner, room).await.unwrap().last_seq;
    for i in 0..20 {
        owner
            .send_message(chat(room, &format!("after {i}")))
            .await
            .unwrap();
    }
    loop {
        match sub.event().await {
            Ev::Message(m) => assert!(
                m.room_id == room && m.seq <= at,
                "message {} of {} committed after the leave reached the leaver",
                m.seq,
                m.room_id
            ),
            Ev::Detached(d) => {
                assert_eq!(d.room_id, room);
                assert_eq!(d.reason, reason as i32);
                return;
            }
            _ => {}
        }
    }
}

/// A stream catching up slowly when its user leaves gets nothing committed after the
/// leave: catch-up stops, and the stream is told it left.
async fn a_member_who_left_gets_nothing_committed_after(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let (mut bob, mut sub) = far_behind(&app, &mut owner, "r").await;
    bob.leave_room(pb::LeaveRoomRequest {
        room_id: "r".into(),
    })
    .await
    .unwrap();
    nothing_after_the_detach(&mut owner, &mut sub, "r", pb::DetachReason::Left).await;
}

/// The same for a switch: a stream catching up slowly on `from` when its user switches
/// gets nothing of `from` committed after the switch, is told it switched, and
/// follows into `to`.
async fn a_member_who_switched_while_behind_follows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "to").await;
    let (mut bob, mut sub) = far_behind(&app, &mut owner, "from").await;
    bob.switch_room(pb::SwitchRoomRequest {
        from_room_id: "from".into(),
        to_room_id: "to".into(),
        display_name: "Bob".into(),
    })
    .await
    .unwrap();
    nothing_after_the_detach(&mut owner, &mut sub, "from", pb::DetachReason::Switched).await;
    loop {
        match sub.event().await {
            Ev::Attached(a) => {
                assert_eq!(a.room.unwrap().room_id, "to");
                break;
            }
            Ev::Message(m) => panic!("message {} of {} after the detach", m.seq, m.room_id),
            _ => {}
        }
    }
    app.send("owner", "to", "welcome").await;
    loop {
        if let Ev::Message(m) = sub.event().await {
            assert_eq!((m.room_id.as_str(), m.text.as_str()), ("to", "welcome"));
            break;
        }
    }
}
