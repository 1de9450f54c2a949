//! Presence and timers: online, presence timeouts, destroy-when-empty, and both
//! across a restart.

use std::time::Duration;

use tonic::Code;

use crate::common::{
    self, Backend, Ev, Sub, TestApp, advance_until, create, eventually, eventually_room, get_room,
    history, member_ids, test_clock,
};
use crate::on_both_stores;
use chatroom::domain::Clock;
use chatroom::pb;

/// A server on `clock`, with member events sent within 10 ms.
async fn app_on(backend: Backend, clock: &Clock) -> TestApp {
    TestApp::with_clock(backend, clock, |c| c.member_event_window_ms = 10).await
}

/// The clock's step while a test waits for a timer.
const STEP: Duration = Duration::from_millis(50);

on_both_stores!(
    presence_timeout_set_while_attached_applies,
    presence_timeout_switched_off_and_on_applies_to_who_left_meanwhile,
    online_follows_attached_streams,
    presence_timeout_removes_absent_members,
    destroy_when_empty_with_and_without_rejoin,
    timers_survive_a_restart,
);

/// A presence timeout added by UpdateRoom while a member's stream is attached applies
/// once that stream goes away.
async fn presence_timeout_set_while_attached_applies(backend: Backend) {
    let clock = test_clock();
    let app = app_on(backend, &clock).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    let mut watcher = app.attached("owner", "r").await;
    let mut bob_sub = app.attached("bob", "r").await;

    owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "r".into(),
            settings: Some(pb::RoomSettings {
                presence_timeout: common::millis(500),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Bob's stream learns of the change before it goes away.
    let frames = bob_sub.until_pong().await;
    assert!(
        frames.iter().any(|e| matches!(e, Ev::RoomUpdated(_))),
        "{frames:?}"
    );
    // He was online all along: his timeout counts from when his stream went away.
    // (The clock moves past the 500 ms timeout first on purpose.)
    clock.advance(Duration::from_millis(700));
    drop(bob_sub);
    let moved = advance_until(&clock, STEP, "bob removed", || async {
        member_ids(&owner, "r").await == ["owner"]
    })
    .await;
    assert!(
        moved >= Duration::from_millis(500),
        "removed {moved:?} after leaving, before the 500 ms timeout"
    );
    assert_eq!(watcher.members_left().await, ["bob"]);
}

/// A presence timeout switched off and on again applies to a member who went offline
/// while it was off (from when it came back on), and not to one attached all along.
async fn presence_timeout_switched_off_and_on_applies_to_who_left_meanwhile(backend: Backend) {
    let clock = test_clock();
    let app = app_on(backend, &clock).await;
    let mut owner = app.client("owner").await;
    let set_timeout = |ms: i64| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: Some(pb::RoomSettings {
            presence_timeout: (ms > 0).then(|| common::millis(ms)).flatten(),
            ..Default::default()
        }),
        ..Default::default()
    };
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                presence_timeout: common::millis(60_000),
                ..Default::default()
            }),
            ..create("r")
        })
        .await
        .unwrap();
    app.join("bob", "r").await;
    let mut watcher = app.attached("owner", "r").await;
    // Bob is online when the timeout goes off, and goes away while it is off.
    let mut bob_sub = app.attached("bob", "r").await;
    owner.update_room(set_timeout(0)).await.unwrap();
    bob_sub.until_pong().await;
    drop(bob_sub);
    eventually_room(&app.client("owner").await, "r", "bob offline", 1, |r| {
        r.online_count
    })
    .await;
    // Back on: bob's timeout starts now; the owner, attached, stays.
    owner.update_room(set_timeout(300)).await.unwrap();
    let moved = advance_until(&clock, STEP, "bob removed", || async {
        member_ids(&owner, "r").await == ["owner"]
    })
    .await;
    assert!(
        moved >= Duration::from_millis(300),
        "removed after {moved:?}"
    );
    assert_eq!(watcher.members_left().await, ["bob"]);
    // The owner, attached all along, outlives the timeout.
    clock.advance(Duration::from_millis(600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(member_ids(&owner, "r").await, ["owner"]);
}

async fn online_follows_attached_streams(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    app.create_room("alice", "r").await;
    app.create_room("alice", "elsewhere").await;
    app.join("bob", "r").await;
    app.join("bob", "elsewhere").await;

    let mut first = Sub::open(&mut bob).await;
    first.attached("r", None).await;
    let mut second = Sub::open(&mut bob).await;
    second.attached("r", None).await;
    // Only `first` has bob in `elsewhere`: a marker of its going away (below).
    first.attached("elsewhere", None).await;
    assert_eq!(get_room(&mut alice, "r").await.unwrap().online_count, 1);
    let online = alice
        .list_members(pb::ListMembersRequest {
            room_id: "r".into(),
            online_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(online.members.len(), 1);
    assert_eq!(
        (online.members[0].user_id.as_str(), online.members[0].online),
        ("bob", true)
    );

    drop(first);
    // A stream that goes away detaches all its rooms in one step, so once bob is
    // offline in `elsewhere`, `first` is gone from `r` too.
    eventually_room(&alice, "elsewhere", "first's stream is gone", 0, |r| {
        r.online_count
    })
    .await;
    assert_eq!(
        get_room(&mut alice, "r").await.unwrap().online_count,
        1,
        "one stream left"
    );
    drop(second);
    eventually_room(&alice, "r", "offline once every stream is gone", 0, |r| {
        r.online_count
    })
    .await;
}

fn presence_room(id: &str, timeout_ms: i64) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            presence_timeout: common::millis(timeout_ms),
            ..Default::default()
        }),
        ..create(id)
    }
}

async fn presence_timeout_removes_absent_members(backend: Backend) {
    let clock = test_clock();
    let app = app_on(backend, &clock).await;
    let mut alice = app.client("alice").await;
    app.create_room_with("alice", presence_room("p", 800)).await;
    let mut alice_sub = app.attached("alice", "p").await;
    app.join("bob", "p").await;
    app.join("carol", "p").await;
    let bob_sub = app.attached("bob", "p").await;
    // Carol never attached: gone once the clock passes her 800 ms. Bob is attached:
    // stays. So is alice.
    let moved = advance_until(&clock, STEP, "carol removed", || async {
        member_ids(&alice, "p").await == ["alice", "bob"]
    })
    .await;
    assert!(
        moved >= Duration::from_millis(800),
        "removed after {moved:?}"
    );
    assert_eq!(alice_sub.members_left().await, ["carol"]);
    // Past the timeout on purpose: what an attached member outlives.
    clock.advance(Duration::from_millis(400));
    assert_eq!(get_room(&mut alice, "p").await.unwrap().member_count, 2);
    drop(bob_sub);
    let moved = advance_until(&clock, STEP, "bob removed", || async {
        member_ids(&alice, "p").await == ["alice"]
    })
    .await;
    assert!(
        moved >= Duration::from_millis(800),
        "removed {moved:?} after its stream was gone, before the timeout"
    );
    assert_eq!(alice_sub.members_left().await, ["bob"]);
    let room = get_room(&mut alice, "p").await.unwrap();
    assert_eq!(room.member_count, 1);
    // Bob's room slot was freed and he may join again.
    app.join("bob", "p").await;
}

fn destroy_room(id: &str, after_ms: i64) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            destroy_when_empty_after: common::millis(after_ms),
            ..Default::default()
        }),
        ..create(id)
    }
}

async fn wait_gone(client: &mut common::Client, room: &str) {
    eventually(
        &format!("room {room} destroyed"),
        Some(Code::NotFound),
        || {
            let mut client = client.clone();
            async move { get_room(&mut client, room).await.err().map(|e| e.code()) }
        },
    )
    .await;
}

async fn destroy_when_empty_with_and_without_rejoin(backend: Backend) {
    let clock = test_clock();
    let app = app_on(backend, &clock).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    app.create_room_with("alice", destroy_room("gone", 500))
        .await;
    app.create_room_with("alice", destroy_room("kept", 800))
        .await;
    // Due 300 ms after `kept`, by the same timer task: once it is gone, `kept`
    // would be too, had the rejoin not cancelled its delay.
    app.create_room_with("alice", destroy_room("later", 1100))
        .await;
    app.send("alice", "gone", "history too").await;
    let mut bob_watch = Sub::open(&mut bob).await;

    app.leave("alice", "gone").await;
    app.leave("alice", "kept").await;
    app.leave("alice", "later").await;
    // The rejoin falls in the middle of `kept`'s delay.
    clock.advance(Duration::from_millis(300));
    app.join("bob", "kept").await;
    bob_watch.attached("kept", None).await;
    let moved = advance_until(&clock, STEP, "`gone` and `later` destroyed", || async {
        let mut bob = bob.clone();
        get_room(&mut bob, "gone").await.is_err() && get_room(&mut bob, "later").await.is_err()
    })
    .await;
    assert!(
        moved >= Duration::from_millis(800),
        "destroyed after {moved:?}"
    );
    wait_gone(&mut bob, "gone").await;
    wait_gone(&mut bob, "later").await;
    assert_eq!(
        get_room(&mut bob, "kept").await.unwrap().member_count,
        1,
        "a rejoin cancels it"
    );

    // Once bob leaves too, it goes (its delay starting again); the id is free
    // again, with no history left.
    app.leave("bob", "kept").await;
    let moved = advance_until(&clock, STEP, "`kept` destroyed", || async {
        get_room(&mut bob.clone(), "kept").await.is_err()
    })
    .await;
    assert!(
        moved >= Duration::from_millis(800),
        "destroyed after {moved:?}"
    );
    wait_gone(&mut bob, "kept").await;
    app.create_room("alice", "gone").await;
    assert!(history(&mut alice, "gone").await.is_empty());
}

async fn timers_survive_a_restart(backend: Backend) {
    let clock = test_clock();
    let mut app = app_on(backend, &clock).await;
    app.create_room_with("alice", destroy_room("empty-soon", 600))
        .await;
    app.create_room_with("alice", presence_room("present", 600))
        .await;
    app.join("bob", "present").await;
    // Attached when the server goes down.
    let _alice_sub = app.attached("alice", "present").await;
    app.leave("alice", "empty-soon").await;
    app.stop_server().await;
    // Both 600 ms timers come due while no server runs: what this test is about.
    clock.advance(Duration::from_millis(900));

    // Overdue while the server was down: applied right after it starts, with the
    // clock standing still.
    app.start_again().await;
    let mut alice = app.client("alice").await;
    wait_gone(&mut alice, "empty-soon").await;
    // Bob never attached; alice's stream ended with the old process (offline from
    // its stop, or from the restart if the stop could not write it down).
    advance_until(&clock, STEP, "both members removed", || async {
        get_room(&mut alice.clone(), "present")
            .await
            .unwrap()
            .member_count
            == 0
    })
    .await;
}
