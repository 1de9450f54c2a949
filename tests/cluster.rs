//! Several nodes over one PostgreSQL database and one NATS: a message sent through any
//! node reaches the streams attached on every node, in seq order, exactly once — also
//! while the bus loses messages. Each test runs its nodes in process, on port 0, and
//! a nats-server of its own on a free port.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatroom::Config;
use chatroom::pb;
use common::{Backend, Ev, Sub, TestDb, TestServer, chat, create, join};

/// A nats-server process of the test's own, killed on drop.
struct Nats {
    port: u16,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats { port, child: None };
        nats.start_again();
        nats
    }

    /// Starts the server (again) on its port, and waits until it accepts.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is running already");
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cluster tests need nats-server ({e}); scripts/test.sh installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two nodes over a fresh PostgreSQL database and a nats-server of their own, each
/// checking its rooms against the store every `repair_ms`.
struct Cluster {
    a: TestServer,
    b: TestServer,
    nats: Nats,
    db: TestDb,
}

impl Cluster {
    async fn start(repair_ms: u64) -> Cluster {
        let db = TestDb::new(Backend::Postgres).await;
        let nats = Nats::start();
        let node = || {
            let url = nats.url();
            TestServer::start(&db, move |c| {
                c.nats_url = Some(url);
                c.cluster_repair_interval_ms = repair_ms;
            })
        };
        let (a, b) = (node().await, node().await);
        Cluster { a, b, nats, db }
    }

    /// Stops both nodes gracefully, then drops the database.
    async fn stop(self) {
        let Cluster { a, b, nats, mut db } = self;
        a.stop().await;
        b.stop().await;
        drop(nats);
        db.remove_now().await;
    }
}

/// A member `user` of "r" with a stream attached to it through `node`.
async fn attached(node: &TestServer, user: &str) -> Sub {
    let mut client = node.client(user).await;
    client.join_room(join("r")).await.unwrap();
    let mut sub = Sub::open(&mut client).await;
    sub.attached("r", None).await;
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_through_any_node_reach_every_node_in_order_once() {
    // No repair from the store within the test: every message crosses the bus (a
    // stream that gets them out of order reads the missing ones by their gap).
    let cluster = Cluster::start(600_000).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut on_a = attached(a, "watcher-a").await;
    let mut on_b = attached(b, "watcher-b").await;

    // Ten publishers, half through each node, 20 messages each.
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..10 {
        let through = if p % 2 == 0 { a } else { b };
        let mut client = through.client(&format!("p{p}")).await;
        client.join_room(join("r")).await.unwrap();
        publishers.spawn(async move {
            for i in 0..20 {
                client
                    .send_message(chat("r", &format!("p{p}-{i}")))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }
    let all: Vec<u64> = (1..=200).collect();
    assert_eq!(on_a.chat_seqs_until(200).await, all, "the stream on node A");
    assert_eq!(on_b.chat_seqs_until(200).await, all, "the stream on node B");

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_bus_lost_are_read_from_the_store() {
    let mut cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut sender = a.client("sender").await;
    sender.create_room(create("r")).await.unwrap();
    let mut on_b = attached(b, "watcher").await;

    // The bus is down: nothing crosses it, and the last message leaves no gap behind
    // it. The stream on B gets every message anyway, soon after the last was sent.
    cluster.nats.stop();
    for i in 0..20 {
        sender
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    let sent = Instant::now();
    assert_eq!(on_b.chat_seqs_until(20).await, (1..=20).collect::<Vec<_>>());
    let healed = sent.elapsed();
    assert!(healed <= Duration::from_secs(2), "healed after {healed:?}");

    // The bus is back: what follows arrives too, in order, nothing twice.
    cluster.nats.start_again();
    for i in 20..40 {
        sender
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        on_b.chat_seqs_until(40).await,
        (21..=40).collect::<Vec<_>>()
    );

    cluster.stop().await;
}

/// The next event of `sub` that is not a message or a member event (those may come
/// in between, in any number).
async fn next_room_event(sub: &mut Sub) -> Ev {
    loop {
        match sub.event().await {
            Ev::Message(_) | Ev::MembersJoined(_) | Ev::MembersLeft(_) => continue,
            other => return other,
        }
    }
}

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

/// The same idempotency key sent through two nodes at once is stored once, and both
/// answers carry that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_through_two_nodes_at_once_is_stored_once() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut on_a = a.client("alice").await;
    let mut on_b = b.client("alice").await;
    on_a.create_room(create("r")).await.unwrap();
    for round in 0..20 {
        let keyed = pb::SendMessageRequest {
            client_msg_id: format!("key-{round}"),
            ..chat("r", &format!("round {round}"))
        };
        let (first, second) =
            tokio::join!(on_a.send_message(keyed.clone()), on_b.send_message(keyed));
        let first = first.expect("node A answers").into_inner().message.unwrap();
        let second = second
            .expect("node B answers")
            .into_inner()
            .message
            .unwrap();
        assert_eq!(
            (first.seq, &first.message_id),
            (second.seq, &second.message_id),
            "round {round}"
        );
    }
    let stored = common::history(&mut on_a, "r").await;
    assert_eq!(stored.len(), 20, "one message per key");

    cluster.stop().await;
}

/// Joins racing through two nodes for a room's last places: `max_members` holds, and
/// the count matches the member rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_limit_holds_for_joins_through_two_nodes() {
    let cluster = Cluster::start(500).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.client("owner").await;
    owner
        .create_room(pb::CreateRoomRequest {
            settings: Some(pb::RoomSettings {
                max_members: 5,
                ..Default::default()
            }),
            ..create("five")
        })
        .await
        .unwrap();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..20 {
        let through = if i % 2 == 0 { a } else { b };
        let mut client = through.client(&format!("joiner{i:02}")).await;
        joins.spawn(async move { client.join_room(join("five")).await });
    }
    let mut admitted = 0;
    while let Some(joined) = joins.join_next().await {
        match joined.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                common::assert_error(&status, tonic::Code::ResourceExhausted, "ROOM_FULL")
            }
        }
    }
    assert_eq!(admitted, 4);
    assert_eq!(
        common::get_room(&mut owner, "five")
            .await
            .unwrap()
            .member_count,
        5
    );
    assert_eq!(common::all_members(&mut owner, "five").await.len(), 5);

    cluster.stop().await;
}

#[tokio::test]
async fn a_cluster_needs_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chatroom.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::new(listener.local_addr().unwrap(), url);
    config.nats_url = Some("nats://127.0.0.1:4222".into());
    let error = chatroom::serve(config, listener, async {})
        .await
        .expect_err("a cluster on SQLite is refused");
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
    assert!(
        !dir.path().join("chatroom.db").exists(),
        "nothing was created before the refusal"
    );
}
