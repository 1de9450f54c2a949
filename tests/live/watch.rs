//! WatchRooms: a backend's resumable feed of every room's lifecycle — each event in
//! order with its position, resumed after a disconnect and after a restart with
//! nothing missed and nothing repeated, an expired or unreached position refused with
//! its reason, and the watch for admins only.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    Backend, TestApp, Watch, advance_until, assert_error, create, enter, join, leave, seen,
    seen_all, test_clock,
};
use crate::on_both_stores;
use chatroom::pb;
use pb::Role as R;
use pb::RoomFeedEventKind as K;

on_both_stores!(
    a_watch_sees_every_change_of_a_room_in_order,
    a_watch_resumes_after_a_disconnect_and_a_restart_with_nothing_missed,
    an_expired_or_unreached_position_is_refused_with_its_reason,
);

async fn a_watch_sees_every_change_of_a_room_in_order(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["backend".into()]).await;
    let backend_client = app.client("backend").await;
    let mut watch = Watch::open(&backend_client, None).await.unwrap();
    let (mut owner, mut bob, mut carol) = (
        app.client("owner").await,
        app.client("bob").await,
        app.client("carol").await,
    );
    owner.create_room(create("lobby")).await.unwrap();
    bob.join_room(join("lobby")).await.unwrap();
    let role = |user: &str, role: R| pb::SetMemberRoleRequest {
        room_id: "lobby".into(),
        user_id: user.into(),
        role: role as i32,
    };
    owner
        .set_member_role(role("bob", R::Moderator))
        .await
        .unwrap();
    // The same role again changes nothing, and says nothing.
    owner
        .set_member_role(role("bob", R::Moderator))
        .await
        .unwrap();
    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "lobby".into(),
            name: Some("The lobby".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    carol.join_room(join("lobby")).await.unwrap();
    let target = |user: &str| ("lobby".to_string(), user.to_string());
    let (room_id, user_id) = target("carol");
    bob.kick_member(pb::KickMemberRequest { room_id, user_id })
        .await
        .unwrap();
    let (room_id, user_id) = target("dave");
    owner
        .ban_member(pb::BanMemberRequest {
            room_id,
            user_id,
            duration: None,
        })
        .await
        .unwrap();
    let (room_id, user_id) = target("bob");
    owner
        .transfer_ownership(pb::TransferOwnershipRequest { room_id, user_id })
        .await
        .unwrap();
    owner.leave_room(leave("lobby")).await.unwrap();
    bob.leave_room(leave("lobby")).await.unwrap();
    bob.delete_room(pb::DeleteRoomRequest {
        room_id: "lobby".into(),
    })
    .await
    .unwrap();

    let u = R::Unspecified;
    let expected = vec![
        seen(K::Created, "lobby", "owner", "", u),
        seen(K::MemberJoined, "lobby", "owner", "", R::Owner),
        seen(K::Occupied, "lobby", "", "", u),
        seen(K::MemberJoined, "lobby", "bob", "", R::Member),
        seen(K::MemberRoleChanged, "lobby", "bob", "owner", R::Moderator),
        seen(K::Updated, "lobby", "", "owner", u),
        seen(K::MemberJoined, "lobby", "carol", "", R::Member),
        seen(K::MemberKicked, "lobby", "carol", "bob", u),
        seen(K::MemberBanned, "lobby", "dave", "owner", u),
        seen(K::MemberRoleChanged, "lobby", "bob", "owner", R::Owner),
        seen(K::MemberRoleChanged, "lobby", "owner", "owner", R::Member),
        seen(K::Updated, "lobby", "", "owner", u),
        seen(K::MemberLeft, "lobby", "owner", "", u),
        seen(K::MemberLeft, "lobby", "bob", "", u),
        seen(K::Empty, "lobby", "", "", u),
        seen(K::Deleted, "lobby", "", "bob", u),
    ];
    let events = watch.take(expected.len()).await;
    assert_eq!(seen_all(&events), expected);
    assert!(events.iter().all(|e| e.at.is_some()));
    watch.says_nothing_for(Duration::from_millis(500)).await;
    app.stop().await;
}

async fn a_watch_resumes_after_a_disconnect_and_a_restart_with_nothing_missed(backend: Backend) {
    let mut app = TestApp::with(backend, |c| c.admin_users = vec!["backend".into()]).await;
    let backend_client = app.client("backend").await;
    let mut watch = Watch::open(&backend_client, Some(0)).await.unwrap();
    let mut alice = app.client("alice").await;
    alice.enter_room(enter("a")).await.unwrap();
    let first = watch.take(3).await;
    assert_eq!(first[0].position, 1, "the feed starts at 1");
    let resume_at = watch.position;
    drop(watch);

    // Changed while nobody watched, then the server restarts.
    alice.enter_room(enter("b")).await.unwrap();
    alice
        .switch_room(pb::SwitchRoomRequest {
            from_room_id: "a".into(),
            to_room_id: "b".into(),
            display_name: String::new(),
        })
        .await
        .unwrap();
    app.restart().await;
    let mut alice = app.client("alice").await;
    alice.leave_room(leave("b")).await.unwrap();

    let backend_client = app.client("backend").await;
    let mut resumed = Watch::open(&backend_client, Some(resume_at)).await.unwrap();
    let u = R::Unspecified;
    let missed = vec![
        seen(K::Created, "b", "alice", "", u),
        seen(K::MemberJoined, "b", "alice", "", R::Owner),
        seen(K::Occupied, "b", "", "", u),
        // A switch to a room the user is in already only leaves the first.
        seen(K::MemberLeft, "a", "alice", "", u),
        seen(K::Empty, "a", "", "", u),
        seen(K::MemberLeft, "b", "alice", "", u),
        seen(K::Empty, "b", "", "", u),
    ];
    let events = resumed.take(missed.len()).await;
    assert_eq!(events[0].position, resume_at + 1, "nothing missed");
    assert_eq!(seen_all(&events), missed);
    resumed.says_nothing_for(Duration::from_millis(300)).await;

    // A watch from the start reads the same feed, once.
    let mut again = Watch::open(&backend_client, Some(0)).await.unwrap();
    let all = again.take(first.len() + missed.len()).await;
    assert_eq!(all[..first.len()], first[..]);
    assert_eq!(all[first.len()..], events[..]);
    // A watch from now starts at the end, and hears what comes next.
    let mut fresh = Watch::open(&backend_client, None).await.unwrap();
    assert_eq!(fresh.position, resumed.position);
    alice.join_room(join("b")).await.unwrap();
    let next = fresh.take(2).await;
    assert_eq!(next[0].position, resumed.position + 1);
    app.stop().await;
}

async fn an_expired_or_unreached_position_is_refused_with_its_reason(backend: Backend) {
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |c| {
        c.admin_users = vec!["backend".into()];
        c.room_feed_retention = Duration::from_secs(60);
    })
    .await;
    let backend_client = app.client("backend").await;
    // Not an admin: refused before anything is sent.
    let refused = Watch::open(&app.client("alice").await, None)
        .await
        .err()
        .unwrap();
    assert_error(&refused, Code::PermissionDenied, "NOT_AN_ADMIN");

    let mut live = Watch::open(&backend_client, Some(0)).await.unwrap();
    app.create_room("alice", "old").await;
    live.take(3).await;
    let ahead = Watch::open(&backend_client, Some(4)).await.err().unwrap();
    assert_error(&ahead, Code::OutOfRange, "POSITION_AHEAD");
    assert_eq!(metadata(&ahead, "last_position"), "3");

    // Past the retention, the first three go; a newer event stays.
    clock.advance(Duration::from_secs(90));
    app.create_room("alice", "new").await;
    let expired = |after: u64| {
        let client = backend_client.clone();
        async move { Watch::open(&client, Some(after)).await.err() }
    };
    advance_until(
        &clock,
        Duration::from_secs(5),
        "the old events pruned",
        || async { expired(0).await.is_some() },
    )
    .await;
    let status = expired(0).await.unwrap();
    assert_error(&status, Code::OutOfRange, "POSITION_EXPIRED");
    assert_eq!(metadata(&status, "oldest_position"), "4");
    assert!(expired(2).await.is_some(), "2 is gone too");
    // From the oldest kept on, nothing is missing: the watch resumes.
    let mut resumed = Watch::open(&backend_client, Some(3)).await.unwrap();
    assert_eq!(resumed.take(3).await[0].position, 4);
    // The watch that kept up read every event and goes on.
    assert_eq!(live.take(3).await[0].position, 4);
    app.stop().await;
}

/// A value of the status's `ErrorInfo` metadata.
fn metadata(status: &tonic::Status, key: &str) -> String {
    let info = status.get_details_error_info().expect("an ErrorInfo");
    info.metadata.get(key).cloned().unwrap_or_default()
}
