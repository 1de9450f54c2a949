//! Presence under races: stale last-seen times, streams cancelled mid-attach, a
//! timeout removed and added again.

use std::time::Duration;

use crate::common::{
    self, Backend, Ev, Sub, TestApp, TestDb, create, eventually_room, get_room, join, millis,
};
use crate::{fill, on_both_stores};
use chatroom::pb;

on_both_stores!(
    online_members_with_a_stale_last_seen_do_not_block_timeouts,
    a_stream_cancelled_mid_attach_leaves_nobody_online,
    a_presence_timeout_removed_and_added_again_applies,
);

/// Runs one SQL statement against the test's database from outside the server.
async fn execute(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    if db.backend() == Backend::Sqlite {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

/// Hundreds of attached members whose stored last-seen is long past (as a lost race
/// between a detach and an attach can leave it) must not keep other rooms' presence
/// timeouts from firing.
async fn online_members_with_a_stale_last_seen_do_not_block_timeouts(backend: Backend) {
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 10).await;
    let mut owner = app.client("owner").await;
    let mut crowded = create("crowded");
    crowded.settings = Some(pb::RoomSettings {
        presence_timeout: millis(60_000),
        ..Default::default()
    });
    owner.create_room(crowded).await.unwrap();
    let mut subs = Vec::new();
    let mut client = app.client("u0").await;
    for i in 0..230 {
        let user = format!("u{i}");
        let mut c = app.client(&user).await;
        c.join_room(join("crowded")).await.unwrap();
        let mut sub = Sub::open(&mut c).await;
        sub.attached("crowded", None).await;
        subs.push(sub);
        client = c;
    }
    drop(client);
    execute(
        app.db(),
        "UPDATE members SET last_seen_us = 1 WHERE room_id = 'crowded' AND user_id <> 'owner'",
    )
    .await;

    let mut quick = create("quick");
    quick.settings = Some(pb::RoomSettings {
        presence_timeout: millis(200),
        ..Default::default()
    });
    owner.create_room(quick).await.unwrap();
    // The owner stays, attached; bob goes away.
    let owner_sub = app.attached("owner", "quick").await;
    app.join("bob", "quick").await;
    let sub = app.attached("bob", "quick").await;
    drop(sub);
    eventually_room(&owner, "quick", "bob's presence timeout fired", 1, |r| {
        r.member_count
    })
    .await;
    // The crowded room's attached members stay.
    assert_eq!(
        get_room(&mut owner, "crowded").await.unwrap().member_count,
        231
    );
    drop((subs, owner_sub));
}

/// Streams dropped at every moment of an attach leave nobody online.
async fn a_stream_cancelled_mid_attach_leaves_nobody_online(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let mut room = create("r");
    room.settings = Some(pb::RoomSettings {
        presence_timeout: millis(600_000),
        ..Default::default()
    });
    owner.create_room(room).await.unwrap();
    let mut bob = app.client("bob").await;
    app.join("bob", "r").await;
    for i in 0..120u64 {
        let mut sub = Sub::open(&mut bob).await;
        sub.request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
            room_id: "r".into(),
            after_seq: None,
        }))
        .await;
        // Each stream goes away at another moment of its attach: what is tested.
        tokio::time::sleep(Duration::from_micros(50 * (i % 40))).await;
        drop(sub);
    }
    eventually_room(
        &owner,
        "r",
        "nobody online after every stream went away",
        0,
        |r| r.online_count,
    )
    .await;
}

/// A presence timeout removed and then added again while a member is attached applies
/// once the member's stream goes away — also when the stream goes away before it has
/// read the second change (the detach used the stream's own, stale copy of the room).
async fn a_presence_timeout_removed_and_added_again_applies(backend: Backend) {
    let app = TestApp::with(backend, |c| c.member_event_window_ms = 10).await;
    let mut owner = app.client("owner").await;
    let with_timeout = |ms| pb::RoomSettings {
        presence_timeout: ms,
        ..Default::default()
    };
    app.create_room("owner", "big").await;
    fill(&owner, "big", 2000, |i| format!("m{i}")).await;
    let mut room = create("r");
    room.settings = Some(with_timeout(millis(300)));
    owner.create_room(room).await.unwrap();
    // The owner stays, attached: only bob may go.
    let owner_sub = app.attached("owner", "r").await;
    let mut bob = app.small_window_client("bob");
    bob.join_room(join("r")).await.unwrap();
    bob.join_room(join("big")).await.unwrap();
    let mut sub = Sub::open(&mut bob).await;
    sub.attached("r", None).await;
    let update = |settings| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: Some(settings),
        ..Default::default()
    };
    owner.update_room(update(with_timeout(None))).await.unwrap();
    // The stream has seen the removal...
    loop {
        if let Ev::RoomUpdated(_) = sub.event().await {
            break;
        }
    }
    sub.until_pong().await;
    // ...but then falls behind (a long catch-up it does not read) and goes away
    // before it has read that the timeout is back.
    sub.request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
        room_id: "big".into(),
        after_seq: Some(0),
    }))
    .await;
    // Time to fall behind on the catch-up it does not read (nothing it reads can say so).
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner
        .update_room(update(with_timeout(millis(300))))
        .await
        .unwrap();
    drop(sub);
    eventually_room(&owner, "r", "bob's presence timeout fired", 1, |r| {
        r.member_count
    })
    .await;
    let members = common::all_members(&mut owner, "r").await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "owner");
    drop(owner_sub);
}
