//! Mutes: MuteMember, UnmuteMember and ListMutes, and the room-wide
//! `settings.muted` — who may mute whom, what a mute refuses (every kind, by
//! SendMessage and on a stream, attached before the mute or after it), for how
//! long, and that mutes are stored.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::common::{
    Backend, Client, Ev, TestApp, assert_bad_request, assert_error, chat, history, test_clock,
};
use crate::{moderator, on_both_stores};
use chatroom::pb;

on_both_stores!(
    a_muted_member_sends_nothing_until_the_mute_ends,
    mutes_follow_rank_and_hold_on_streams_attached_later,
    a_muted_room_hears_only_its_owner_moderators_and_admins,
);

fn mute(room: &str, user: &str, seconds: i64) -> pb::MuteMemberRequest {
    pb::MuteMemberRequest {
        room_id: room.into(),
        user_id: user.into(),
        duration: (seconds != 0).then_some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

fn unmute(room: &str, user: &str) -> pb::UnmuteMemberRequest {
    pb::UnmuteMemberRequest {
        room_id: room.into(),
        user_id: user.into(),
    }
}

fn barrage(room: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        kind: pb::MessageKind::Barrage as i32,
        ..chat(room, text)
    }
}

/// Asserts `status` is PERMISSION_DENIED MUTED, of `scope` ("member" or "room"),
/// with `expires_at` (a member's mute only) in its metadata.
#[track_caller]
fn assert_muted(status: &Status, scope: &str, expires_at: Option<&str>) {
    assert_error(status, Code::PermissionDenied, "MUTED");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["scope"], scope, "{status:?}");
    assert_eq!(
        info.metadata.get("expires_at").map(String::as_str),
        expires_at,
        "{status:?}"
    );
}

/// Asserts a stream's answer is a MUTED refusal, of a room-wide mute or not.
#[track_caller]
fn assert_muted_frame(answer: &Ev, room_wide: bool) {
    match answer {
        Ev::Error(e) => {
            assert_eq!(
                (e.code, e.reason.as_str()),
                (Code::PermissionDenied as i32, "MUTED"),
                "{e:?}"
            );
            assert_eq!(e.message.contains("is muted"), room_wide, "{e:?}");
        }
        other => panic!("expected MUTED, got {other:?}"),
    }
}

/// Asserts a stream's answer is a sent message.
#[track_caller]
fn assert_sent_frame(answer: &Ev) {
    assert!(
        matches!(answer, Ev::SendAck(_)),
        "expected sent, got {answer:?}"
    );
}

async fn send(client: &mut Client, request: pb::SendMessageRequest) -> Result<pb::Message, Status> {
    client
        .send_message(request)
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// Every mute in force in `room`, by user id (read page by page as `user`).
async fn muted(app: &TestApp, user: &str, room: &str) -> Vec<String> {
    let mut client = app.client(user).await;
    let mut users = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_mutes(pb::ListMutesRequest {
                room_id: room.into(),
                page_size: 1,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        users.extend(page.mutes.into_iter().map(|m| m.user_id));
        if page.next_page_token.is_empty() {
            return users;
        }
        page_token = page.next_page_token;
    }
}

/// The texts `user` has stored in `room`, oldest first.
async fn stored_texts(client: &mut Client, room: &str, user: &str) -> Vec<String> {
    history(client, room)
        .await
        .into_iter()
        .filter(|m| m.sender_id == user)
        .map(|m| m.text)
        .collect()
}

async fn a_muted_member_sends_nothing_until_the_mute_ends(backend: Backend) {
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |_| {}).await;
    app.create_room("owner", "r").await;
    for user in ["bob", "carol", "mod"] {
        app.join(user, "r").await;
    }
    let mut owner = app.client("owner").await;
    owner.set_member_role(moderator("r", "mod")).await.unwrap();
    // Attached before the mute: the stream hears of it.
    let mut stream = app.attached("bob", "r").await;
    assert_sent_frame(&stream.send(barrage("r", "before")).await);

    let mut moderator = app.client("mod").await;
    let placed = moderator
        .mute_member(mute("r", "bob", 60))
        .await
        .unwrap()
        .into_inner()
        .mute
        .unwrap();
    assert_eq!(
        (placed.user_id.as_str(), placed.muted_by.as_str()),
        ("bob", "mod")
    );
    let (at, until) = (placed.muted_at.unwrap(), placed.expires_at.unwrap());
    assert_eq!(until.seconds - at.seconds, 60);
    let until = until.to_string();

    // Every kind, by SendMessage and on the stream, is refused; bob still receives.
    let mut bob = app.client("bob").await;
    for request in [chat("r", "no"), barrage("r", "no")] {
        let err = send(&mut bob, request.clone()).await.unwrap_err();
        assert_muted(&err, "member", Some(&until));
        assert_muted_frame(&stream.send(request).await, false);
    }
    let mut carol = app.client("carol").await;
    send(&mut carol, chat("r", "carol speaks")).await.unwrap();
    // A muted member still receives.
    while !matches!(stream.event().await, Ev::Message(m) if m.text == "carol speaks") {}
    assert_eq!(muted(&app, "mod", "r").await, ["bob"]);

    // Leaving and joining again does not end it.
    app.leave("bob", "r").await;
    app.join("bob", "r").await;
    let err = send(&mut bob, chat("r", "rejoined")).await.unwrap_err();
    assert_muted(&err, "member", Some(&until));

    // It ends by itself: the stream attached before sends again too.
    let mut stream = app.attached("bob", "r").await;
    clock.advance(Duration::from_secs(60));
    send(&mut bob, chat("r", "one")).await.unwrap();
    assert_sent_frame(&stream.send(barrage("r", "again")).await);
    assert!(muted(&app, "mod", "r").await.is_empty());

    // Until lifted: then it is lifted, and bob sends again at once.
    moderator.mute_member(mute("r", "bob", 0)).await.unwrap();
    let err = send(&mut bob, chat("r", "no")).await.unwrap_err();
    assert_muted(&err, "member", Some("never"));
    assert_muted_frame(&stream.send(barrage("r", "no")).await, false);
    moderator.unmute_member(unmute("r", "bob")).await.unwrap();
    // Lifting one that is not there succeeds.
    moderator.unmute_member(unmute("r", "bob")).await.unwrap();
    assert_sent_frame(&stream.send(barrage("r", "free")).await);
    assert_sent_frame(&stream.send(chat("r", "two")).await);

    // Nothing refused was stored.
    assert_eq!(stored_texts(&mut owner, "r", "bob").await, ["one", "two"]);
}

async fn mutes_follow_rank_and_hold_on_streams_attached_later(backend: Backend) {
    let mut app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    app.create_room("owner", "r").await;
    for user in ["bob", "mod", "mod2"] {
        app.join(user, "r").await;
    }
    let mut owner = app.client("owner").await;
    for user in ["mod", "mod2"] {
        owner.set_member_role(moderator("r", user)).await.unwrap();
    }
    let mut moderator = app.client("mod").await;
    let mut bob = app.client("bob").await;

    // Moderators mute plain members, not each other or the owner; members no one.
    let err = moderator
        .mute_member(mute("r", "mod2", 0))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "OUTRANKED");
    let err = moderator
        .mute_member(mute("r", "owner", 0))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "OUTRANKED");
    let err = bob.mute_member(mute("r", "mod", 0)).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let err = bob.unmute_member(unmute("r", "mod")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let err = bob
        .list_mutes(pb::ListMutesRequest {
            room_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let err = moderator
        .mute_member(mute("r", "mod", 0))
        .await
        .unwrap_err();
    assert_bad_request(&err, "user_id");
    let err = moderator.mute_member(mute("r", "", 0)).await.unwrap_err();
    assert_bad_request(&err, "user_id");
    let err = moderator
        .mute_member(mute("r", "bob", -1))
        .await
        .unwrap_err();
    assert_bad_request(&err, "duration");
    let err = moderator
        .mute_member(mute("nowhere", "bob", 0))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    assert!(
        muted(&app, "owner", "r").await.is_empty(),
        "nothing was stored"
    );

    // The owner mutes a moderator, whose own mute then holds (the room is not muted);
    // an admin mutes anyone, the owner too, and is never muted.
    owner.mute_member(mute("r", "mod2", 0)).await.unwrap();
    let err = send(&mut app.client("mod2").await, chat("r", "x"))
        .await
        .unwrap_err();
    assert_muted(&err, "member", Some("never"));
    let mut root = app.client("root").await;
    root.mute_member(mute("r", "owner", 0)).await.unwrap();
    let err = send(&mut owner, chat("r", "x")).await.unwrap_err();
    assert_muted(&err, "member", Some("never"));
    send(&mut root, chat("r", "the admin speaks"))
        .await
        .unwrap();

    // A user who is not a member is muted ahead; with no stream attached, the hub
    // that hears of mutes is gone, so a stream attached later reads it as it attaches.
    moderator.mute_member(mute("r", "dave", 0)).await.unwrap();
    app.join("dave", "r").await;
    let mut dave = app.attached("dave", "r").await;
    for request in [barrage("r", "no"), chat("r", "no")] {
        assert_muted_frame(&dave.send(request).await, false);
    }
    assert_eq!(muted(&app, "mod", "r").await, ["dave", "mod2", "owner"]);

    // Stored: every mute holds after a restart.
    drop(dave);
    app.restart().await;
    let mut dave = app.attached("dave", "r").await;
    assert_muted_frame(&dave.send(barrage("r", "no")).await, false);
    assert_eq!(muted(&app, "root", "r").await, ["dave", "mod2", "owner"]);
}

async fn a_muted_room_hears_only_its_owner_moderators_and_admins(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    app.create_room("owner", "r").await;
    for user in ["bob", "mod"] {
        app.join(user, "r").await;
    }
    let mut owner = app.client("owner").await;
    owner.set_member_role(moderator("r", "mod")).await.unwrap();
    let mut bob_stream = app.attached("bob", "r").await;
    let mut mod_stream = app.attached("mod", "r").await;
    let settings = |muted| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: Some(pb::RoomSettings {
            muted,
            ..Default::default()
        }),
        ..Default::default()
    };
    let room = owner
        .update_room(settings(true))
        .await
        .unwrap()
        .into_inner();
    assert!(room.room.unwrap().settings.unwrap().muted);
    // A moderator may not change settings.
    let err = app
        .client("mod")
        .await
        .update_room(settings(false))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");

    // A plain member is refused every kind, by SendMessage and on a stream attached
    // before the change as on one attached after it.
    let mut bob = app.client("bob").await;
    for request in [chat("r", "no"), barrage("r", "no")] {
        let err = send(&mut bob, request.clone()).await.unwrap_err();
        assert_muted(&err, "room", None);
        assert_muted_frame(&bob_stream.send(request).await, true);
    }
    app.join("carol", "r").await;
    let mut carol_stream = app.attached("carol", "r").await;
    assert_muted_frame(&carol_stream.send(barrage("r", "no")).await, true);

    // The owner, a moderator and an admin speak.
    for user in ["owner", "mod", "root"] {
        send(&mut app.client(user).await, chat("r", user))
            .await
            .unwrap();
    }
    for request in [chat("r", "mod"), barrage("r", "mod")] {
        assert_sent_frame(&mod_stream.send(request).await);
    }

    // Unmuted: everyone speaks again, on the streams too.
    owner.update_room(settings(false)).await.unwrap();
    assert_sent_frame(&bob_stream.send(barrage("r", "free")).await);
    assert_sent_frame(&carol_stream.send(chat("r", "free")).await);
    send(&mut bob, chat("r", "yes")).await.unwrap();
    assert_eq!(stored_texts(&mut owner, "r", "bob").await, ["yes"]);
}
