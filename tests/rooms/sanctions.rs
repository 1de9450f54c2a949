//! Kicks and bans: KickMember, BanMember, UnbanMember and ListBans — who may act on
//! whom, what attached streams see, what a ban keeps out and for how long, and that
//! bans are stored.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::common::{
    self, Backend, Ev, TestApp, assert_bad_request, assert_error, enter, join, member_ids,
    test_clock,
};
use crate::{moderator, on_both_stores, switch};
use chatroom::pb;

on_both_stores!(
    kicks_detach_and_tell_the_room,
    kicks_follow_rank,
    bans_keep_users_out_until_lifted,
    timed_bans_end_by_themselves,
    bans_survive_a_restart_and_list_in_pages,
);

fn kick(room: &str, user: &str) -> pb::KickMemberRequest {
    pb::KickMemberRequest {
        room_id: room.into(),
        user_id: user.into(),
    }
}

fn ban(room: &str, user: &str, seconds: i64) -> pb::BanMemberRequest {
    pb::BanMemberRequest {
        room_id: room.into(),
        user_id: user.into(),
        duration: (seconds != 0).then_some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

fn unban(room: &str, user: &str) -> pb::UnbanMemberRequest {
    pb::UnbanMemberRequest {
        room_id: room.into(),
        user_id: user.into(),
    }
}

/// Reads `sub` until it is detached from a room; the room and the reason.
async fn detached(sub: &mut common::Sub) -> (String, pb::DetachReason) {
    loop {
        match sub.event().await {
            Ev::Detached(d) => return (d.room_id.clone(), d.reason()),
            Ev::MembersJoined(_) | Ev::MembersLeft(_) | Ev::RoomUpdated(_) => continue,
            other => panic!("expected a detach, got {other:?}"),
        }
    }
}

/// Asserts `status` is PERMISSION_DENIED BANNED with `expires_at` in its metadata.
#[track_caller]
fn assert_banned(status: &Status, expires_at: &str) {
    assert_error(status, Code::PermissionDenied, "BANNED");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("expires_at").map(String::as_str),
        Some(expires_at),
        "{status:?}"
    );
}

/// Every ban in force in `room`, by user id (read page by page as `user`).
async fn banned(app: &TestApp, user: &str, room: &str) -> Vec<pb::Ban> {
    let mut client = app.client(user).await;
    let mut bans = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_bans(pb::ListBansRequest {
                room_id: room.into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        bans.extend(page.bans);
        if page.next_page_token.is_empty() {
            return bans;
        }
        page_token = page.next_page_token;
    }
}

fn users(bans: &[pb::Ban]) -> Vec<&str> {
    bans.iter().map(|b| b.user_id.as_str()).collect()
}

async fn kicks_detach_and_tell_the_room(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.create_room("owner", "other").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;
    app.join("carol", "other").await;
    owner.set_member_role(moderator("r", "bob")).await.unwrap();
    let mut watcher = app.attached("owner", "r").await;
    let mut carol_stream = app.attached("carol", "r").await;
    carol_stream.attached("other", None).await;

    let mut bob = app.client("bob").await;
    let member = bob
        .kick_member(kick("r", "carol"))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(member.user_id, "carol");

    // Carol's stream leaves the room, KICKED, and stays in the other one.
    assert_eq!(
        detached(&mut carol_stream).await,
        ("r".to_string(), pb::DetachReason::Kicked)
    );
    app.send("owner", "other", "still here").await;
    let Ev::Message(m) = carol_stream.event().await else {
        panic!("expected the other room's message")
    };
    assert_eq!(m.room_id, "other");
    // The room learns who went and who sent them.
    let left = loop {
        match watcher.event().await {
            Ev::MembersLeft(l) => break l,
            Ev::MembersJoined(_) => continue,
            other => panic!("expected members left, got {other:?}"),
        }
    };
    assert_eq!(
        (left.members.len(), left.members[0].user_id.as_str()),
        (1, "carol")
    );
    assert_eq!((left.kicked_by.as_str(), left.member_count), ("bob", 2));
    assert_eq!(member_ids(&owner, "r").await, ["bob", "owner"]);

    // Kicked is not banned: carol may come back.
    app.join("carol", "r").await;
    assert_eq!(member_ids(&owner, "r").await, ["bob", "carol", "owner"]);

    // Bad targets: oneself (LeaveRoom is for that), a non-member, no such room.
    let err = bob.kick_member(kick("r", "bob")).await.unwrap_err();
    assert_bad_request(&err, "user_id");
    let err = bob.kick_member(kick("r", "stranger")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let err = owner.kick_member(kick("nowhere", "bob")).await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let err = owner.kick_member(kick("r", "")).await.unwrap_err();
    assert_bad_request(&err, "user_id");
}

async fn kicks_follow_rank(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    for user in ["mod1", "mod2", "carol", "dave"] {
        app.join(user, "r").await;
    }
    owner.set_member_role(moderator("r", "mod1")).await.unwrap();
    owner.set_member_role(moderator("r", "mod2")).await.unwrap();

    // A plain member may not; an outsider is no member at all.
    let mut carol = app.client("carol").await;
    let err = carol.kick_member(kick("r", "dave")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let err = carol.ban_member(ban("r", "dave", 0)).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let mut stranger = app.client("stranger").await;
    let err = stranger.kick_member(kick("r", "dave")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");

    // A moderator acts on plain members only: not on a moderator, not on the owner.
    let mut mod1 = app.client("mod1").await;
    for target in ["mod2", "owner"] {
        let err = mod1.kick_member(kick("r", target)).await.unwrap_err();
        assert_error(&err, Code::PermissionDenied, "OUTRANKED");
        let err = mod1.ban_member(ban("r", target, 0)).await.unwrap_err();
        assert_error(&err, Code::PermissionDenied, "OUTRANKED");
    }
    mod1.kick_member(kick("r", "dave")).await.unwrap();

    // The owner acts on moderators; an admin on anyone, the owner included.
    owner.kick_member(kick("r", "mod2")).await.unwrap();
    let mut root = app.client("root").await;
    root.kick_member(kick("r", "owner")).await.unwrap();
    // Nothing refused above changed anything.
    assert_eq!(member_ids(&root, "r").await, ["carol", "mod1"]);
}

async fn bans_keep_users_out_until_lifted(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.create_room("owner", "elsewhere").await;
    app.join("carol", "r").await;
    app.join("carol", "elsewhere").await;
    app.join("mod", "r").await;
    owner.set_member_role(moderator("r", "mod")).await.unwrap();
    let mut carol_stream = app.attached("carol", "r").await;

    // A member is banned: removed, and their stream detached as if kicked.
    let mut moderator_client = app.client("mod").await;
    let placed = moderator_client
        .ban_member(ban("r", "carol", 0))
        .await
        .unwrap()
        .into_inner()
        .ban
        .unwrap();
    assert_eq!(
        (placed.user_id.as_str(), placed.banned_by.as_str()),
        ("carol", "mod")
    );
    assert!(placed.banned_at.is_some() && placed.expires_at.is_none());
    assert_eq!(
        detached(&mut carol_stream).await,
        ("r".to_string(), pb::DetachReason::Kicked)
    );
    assert_eq!(member_ids(&owner, "r").await, ["mod", "owner"]);

    // Every way in is refused, with when the ban ends ("never": until lifted).
    let mut carol = app.client("carol").await;
    let err = carol.join_room(join("r")).await.unwrap_err();
    assert_banned(&err, "never");
    let err = carol.enter_room(enter("r")).await.unwrap_err();
    assert_banned(&err, "never");
    let err = carol
        .switch_room(switch("elsewhere", "r"))
        .await
        .unwrap_err();
    assert_banned(&err, "never");
    match carol_stream.attach("r", None).await {
        Ev::Error(e) => assert_eq!(
            (e.code, e.reason.as_str()),
            (Code::PermissionDenied as i32, "BANNED")
        ),
        other => panic!("expected BANNED, got {other:?}"),
    }
    // The refused switch left carol where she was.
    assert_eq!(member_ids(&owner, "elsewhere").await, ["carol", "owner"]);

    // Someone who never joined may be banned too; banning again replaces the ban.
    moderator_client
        .ban_member(ban("r", "stranger", 0))
        .await
        .unwrap();
    let replaced = owner
        .ban_member(ban("r", "stranger", 3600))
        .await
        .unwrap()
        .into_inner()
        .ban
        .unwrap();
    assert_eq!(replaced.banned_by, "owner");
    let bans = banned(&app, "mod", "r").await;
    assert_eq!(users(&bans), ["carol", "stranger"]);
    assert_eq!(bans[1].expires_at, replaced.expires_at);
    let mut stranger = app.client("stranger").await;
    let err = stranger.join_room(join("r")).await.unwrap_err();
    assert_banned(&err, &replaced.expires_at.unwrap().to_string());

    // Only moderators and the owner see and lift bans.
    let err = carol
        .list_bans(pb::ListBansRequest {
            room_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = carol.unban_member(unban("r", "carol")).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");

    // Lifted: carol joins again. Lifting twice is no error.
    moderator_client
        .unban_member(unban("r", "carol"))
        .await
        .unwrap();
    owner.unban_member(unban("r", "carol")).await.unwrap();
    app.join("carol", "r").await;
    assert_eq!(users(&banned(&app, "owner", "r").await), ["stranger"]);

    // Bad input is refused before anything is written.
    for seconds in [-1, 3651 * 86_400] {
        let err = owner
            .ban_member(ban("r", "dave", seconds))
            .await
            .unwrap_err();
        assert_bad_request(&err, "duration");
    }
    let err = owner.ban_member(ban("r", "owner", 0)).await.unwrap_err();
    assert_bad_request(&err, "user_id");
    let err = owner
        .ban_member(ban("nowhere", "dave", 0))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    assert_eq!(users(&banned(&app, "owner", "r").await), ["stranger"]);
}

async fn timed_bans_end_by_themselves(backend: Backend) {
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |_| {}).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    let placed = owner
        .ban_member(ban("r", "carol", 60))
        .await
        .unwrap()
        .into_inner()
        .ban
        .unwrap();
    let (at, until) = (placed.banned_at.unwrap(), placed.expires_at.unwrap());
    assert_eq!(until.seconds - at.seconds, 60);
    assert_eq!(until.nanos, at.nanos);

    let mut carol = app.client("carol").await;
    clock.advance(Duration::from_secs(59));
    let err = carol.join_room(join("r")).await.unwrap_err();
    assert_banned(&err, &until.to_string());
    assert_eq!(users(&banned(&app, "owner", "r").await), ["carol"]);

    // Past its end the ban is gone: not listed, not in the way.
    clock.advance(Duration::from_secs(2));
    assert!(banned(&app, "owner", "r").await.is_empty());
    carol.join_room(join("r")).await.unwrap();
}

async fn bans_survive_a_restart_and_list_in_pages(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.create_room("owner", "s").await;
    for user in ["u5", "u3", "u1", "u4", "u2"] {
        owner.ban_member(ban("r", user, 0)).await.unwrap();
    }
    owner.ban_member(ban("s", "u1", 0)).await.unwrap();
    app.stop_server().await;
    app.start_again().await;

    let mut owner = app.client("owner").await;
    let first = owner
        .list_bans(pb::ListBansRequest {
            room_id: "r".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users(&first.bans), ["u1", "u2"]);
    assert!(!first.next_page_token.is_empty());
    assert_eq!(
        users(&banned(&app, "owner", "r").await),
        ["u1", "u2", "u3", "u4", "u5"]
    );
    assert_eq!(users(&banned(&app, "owner", "s").await), ["u1"]);
    let mut u3 = app.client("u3").await;
    let err = u3.join_room(join("r")).await.unwrap_err();
    assert_banned(&err, "never");
    // A ban is of one room: u3 may join another.
    u3.join_room(join("s")).await.unwrap();

    // Deleting the room takes its bans with it: a new room of the same id has none.
    owner
        .delete_room(pb::DeleteRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();
    app.create_room("owner", "r").await;
    assert!(banned(&app, "owner", "r").await.is_empty());
    u3.join_room(join("r")).await.unwrap();
}
