//! The membership writer under concurrency: every kind of membership change —
//! CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom — goes through one writer
//! that applies many at once in one transaction. Whatever lands in one batch, each
//! change must be decided as if it ran alone, in arrival order, and the counts must
//! stay exact.

use tonic::Code;

use crate::common::{
    Backend, Client, TestApp, all_members, assert_error, create, enter, get_room, join,
};
use crate::{limited, on_both_stores, switch};
use chatroom::pb;

on_both_stores!(
    concurrent_enter_room_creates_exactly_once,
    concurrent_joins_respect_max_members,
    concurrent_joins_and_leaves_keep_counts_exact,
    concurrent_create_room_creates_exactly_once,
    switches_and_joins_racing_for_the_last_places_keep_counts_exact,
    create_room_beyond_the_room_limit_creates_nothing,
);

async fn concurrent_enter_room_creates_exactly_once(backend: Backend) {
    let app = TestApp::start(backend).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut client = app.client(&format!("user{i:02}")).await;
        tasks.spawn(async move { client.enter_room(enter("hot")).await });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        let response = result.unwrap().expect("no EnterRoom fails").into_inner();
        created += usize::from(response.created);
    }
    assert_eq!(created, 1, "exactly one call creates the room");
    let mut observer = app.client("user00").await;
    assert_eq!(
        get_room(&mut observer, "hot").await.unwrap().member_count,
        50
    );
    assert_eq!(all_members(&mut observer, "hot").await.len(), 50);
}

async fn concurrent_joins_respect_max_members(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room_with("owner", limited("five", 5)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = app.client(&format!("joiner{i:02}")).await;
        tasks.spawn(async move { client.join_room(join("five")).await });
    }
    let (mut admitted, mut full) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL");
                full += 1;
            }
        }
    }
    assert_eq!((admitted, full), (4, 16));
    assert_eq!(get_room(&mut owner, "five").await.unwrap().member_count, 5);
    assert_eq!(all_members(&mut owner, "five").await.len(), 5);
}

/// Joins, leaves and enters of many users at once are applied in batches; whatever
/// the batching, the counts stay exact: the room's member count matches its member
/// rows and never passes `max_members`, each user's room slots match the rooms it is
/// in, and a user with two changes in flight gets both applied.
async fn concurrent_joins_and_leaves_keep_counts_exact(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 2).await;
    let mut owner = app.client("owner").await;
    app.create_room_with("owner", limited("busy", 10)).await;
    for i in 0..9 {
        app.join(&format!("m{i}"), "busy").await;
    }
    // n0..n4 are in two rooms already: no slot left.
    for i in 0..5 {
        let full = format!("n{i:02}");
        app.create_room(&full, &format!("n{i}-a")).await;
        app.create_room(&full, &format!("n{i}-b")).await;
    }

    #[derive(Debug)]
    enum Call {
        Leave,
        Join(usize),
        Enter(usize),
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..9 {
        let mut member = app.client(&format!("m{i}")).await;
        tasks.spawn(async move {
            let r = member
                .leave_room(pb::LeaveRoomRequest {
                    room_id: "busy".into(),
                })
                .await
                .map(drop);
            (Call::Leave, r.map(|_| false))
        });
    }
    for i in 0..30 {
        let mut newcomer = app.client(&format!("n{i:02}")).await;
        tasks.spawn(async move {
            let r = newcomer.join_room(join("busy")).await.map(|_| false);
            (Call::Join(i), r)
        });
        // n25..n29 also enter a new room at the same time.
        if i >= 25 {
            let mut newcomer = app.client(&format!("n{i:02}")).await;
            tasks.spawn(async move {
                let r = newcomer
                    .enter_room(enter("fresh"))
                    .await
                    .map(|r| r.into_inner().created);
                (Call::Enter(i), r)
            });
        }
    }
    let mut in_busy = [false; 30];
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (Call::Leave, r) => {
                r.expect("a leave succeeds");
            }
            (Call::Join(i), Ok(_)) => {
                assert!(i >= 5, "n{i:02} has no slot left but joined");
                in_busy[i] = true;
            }
            (Call::Join(i), Err(status)) if i < 5 => {
                assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ROOMS")
            }
            (Call::Join(_), Err(status)) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL")
            }
            (Call::Enter(i), r) => {
                created += usize::from(r.unwrap_or_else(|s| panic!("n{i} enter: {s:?}")));
            }
        }
    }
    let admitted = in_busy.iter().filter(|&&x| x).count();
    let busy = get_room(&mut owner, "busy").await.unwrap();
    assert_eq!(busy.member_count as usize, 1 + admitted);
    assert!(busy.member_count <= 10, "max_members passed: {busy:?}");
    assert_eq!(all_members(&mut owner, "busy").await.len(), 1 + admitted);
    assert_eq!(created, 1, "exactly one EnterRoom creates the room");
    let mut observer = app.client("n25").await;
    assert_eq!(
        get_room(&mut observer, "fresh").await.unwrap().member_count,
        5
    );
    assert_eq!(all_members(&mut observer, "fresh").await.len(), 5);

    // Room slots: each newcomer may create exactly as many rooms as it has left.
    for (i, &in_room) in in_busy.iter().enumerate().skip(5) {
        let mut newcomer = app.client(&format!("n{i:02}")).await;
        let used = usize::from(in_room) + usize::from(i >= 25);
        for k in 0..=(2 - used) {
            let r = newcomer.create_room(create(&format!("n{i}-{k}"))).await;
            if k < 2 - used {
                r.unwrap_or_else(|s| panic!("n{i:02} should have a slot: {s:?}"));
            } else {
                let status = r.expect_err("no slot left");
                assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ROOMS");
            }
        }
    }
}

fn member_ids(members: Vec<pb::Member>) -> Vec<String> {
    members.into_iter().map(|m| m.user_id).collect()
}

/// Of many CreateRoom calls for one id at once (likely in one batch), exactly one
/// creates the room and owns it; every other is told ROOM_EXISTS and joins nothing.
async fn concurrent_create_room_creates_exactly_once(backend: Backend) {
    let app = TestApp::start(backend).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let user = format!("user{i:02}");
        let mut client = app.client(&user).await;
        tasks.spawn(async move { (user, client.create_room(create("taken")).await) });
    }
    let mut owners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (user, Ok(response)) => {
                let room = response.into_inner().room.unwrap();
                assert_eq!((room.owner_id.as_str(), room.member_count), (&*user, 1));
                owners.push(user);
            }
            (_, Err(status)) => assert_error(&status, Code::AlreadyExists, "ROOM_EXISTS"),
        }
    }
    assert_eq!(
        owners.len(),
        1,
        "exactly one CreateRoom succeeds: {owners:?}"
    );
    let mut owner = app.client(&owners[0]).await;
    let room = get_room(&mut owner, "taken").await.unwrap();
    assert_eq!(
        (room.owner_id.as_str(), room.member_count),
        (&*owners[0], 1)
    );
    let members = all_members(&mut owner, "taken").await;
    assert_eq!(member_ids(members.clone()), [owners[0].clone()]);
    assert_eq!(members[0].role, pb::Role::Owner as i32);
}

/// Switches into a room and joins of it race for its last places. The room never
/// passes `max_members`, its count matches its rows, a switch that found the room
/// full left its user where it was, and one that got in left its old room.
async fn switches_and_joins_racing_for_the_last_places_keep_counts_exact(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                max_members: 6,
                ..Default::default()
            }),
            ..create("target")
        })
        .await
        .unwrap();
    // Ten movers, each in a room of its own (with the owner, so it outlives them).
    let mut movers: Vec<(String, Client)> = Vec::new();
    for i in 0..10 {
        let user = format!("mover{i}");
        let from = format!("from{i}");
        owner.create_room(create(&from)).await.unwrap();
        let mut client = app.client(&user).await;
        client.join_room(join(&from)).await.unwrap();
        movers.push((user, client));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (i, (user, mut client)) in movers.into_iter().enumerate() {
        tasks.spawn(async move {
            let result = client
                .switch_room(switch(&format!("from{i}"), "target"))
                .await
                .map(drop);
            (user, Some(i), result)
        });
    }
    for i in 0..10 {
        let user = format!("joiner{i}");
        let mut client = app.client(&user).await;
        tasks.spawn(async move { (user, None, client.join_room(join("target")).await.map(drop)) });
    }
    let mut inside = vec!["owner".to_string()];
    while let Some(result) = tasks.join_next().await {
        let (user, from, result) = result.unwrap();
        let from_members = match &from {
            Some(i) => member_ids(all_members(&mut owner, &format!("from{i}")).await),
            None => Vec::new(),
        };
        match result {
            Ok(()) => {
                if from.is_some() {
                    assert_eq!(from_members, ["owner"], "{user} moved out of its room");
                }
                inside.push(user);
            }
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "ROOM_FULL");
                if from.is_some() {
                    assert_eq!(from_members, [user.as_str(), "owner"], "{user} stayed");
                }
            }
        }
    }
    inside.sort();
    assert_eq!(inside.len(), 6, "the room filled exactly: {inside:?}");
    let room = get_room(&mut owner, "target").await.unwrap();
    assert_eq!(room.member_count, 6);
    assert_eq!(member_ids(all_members(&mut owner, "target").await), inside);
}

/// A CreateRoom the per-user room limit refuses leaves no room behind, and the id
/// stays free for someone else.
async fn create_room_beyond_the_room_limit_creates_nothing(backend: Backend) {
    let app = TestApp::with(backend, |c| c.max_rooms_per_user = 1).await;
    let mut alice = app.client("alice").await;
    let mut bob = app.client("bob").await;
    alice.create_room(create("first")).await.unwrap();

    let err = alice.create_room(create("second")).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ROOMS");
    let err = get_room(&mut alice, "second").await.unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");

    let room = bob
        .create_room(create("second"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!((room.owner_id.as_str(), room.member_count), ("bob", 1));
}
