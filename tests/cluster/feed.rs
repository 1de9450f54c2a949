//! WatchRooms across nodes: changes made through both nodes at once are one feed, in
//! one order, the same on either node, and a watch resumed on the other node goes on
//! where it stopped.

use chatroom::pb::RoomFeedEventKind as K;

use crate::Cluster;
use crate::common::{Watch, create, leave, seen_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_watch_one_feed_and_a_watch_resumes_on_the_other_node() {
    let cluster = Cluster::start_with(500, |c| c.admin_users = vec!["ops".into()]).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut on_a = Watch::open(&a.client("ops").await, None).await.unwrap();
    let mut on_b = Watch::open(&b.client("ops").await, None).await.unwrap();
    assert_eq!(on_a.position, on_b.position, "one feed");
    let start = on_a.position;

    // Twenty users, half through each node at once, each creates a room and leaves it.
    let mut users = tokio::task::JoinSet::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { a } else { b };
        let mut client = node.client(&format!("user-{i}")).await;
        users.spawn(async move {
            let room = format!("room-{i:02}");
            client.create_room(create(&room)).await.unwrap();
            client.leave_room(leave(&room)).await.unwrap();
        });
    }
    while let Some(done) = users.join_next().await {
        done.unwrap();
    }

    // Half of the feed on B; the rest by a watch resumed on A from where B stopped.
    let first_half = on_b.take(50).await;
    drop(on_b);
    let mut resumed = Watch::open(&a.client("ops").await, Some(start + 50))
        .await
        .unwrap();
    let second_half = resumed.take(50).await;
    let everything = on_a.take(100).await;
    assert_eq!(
        everything[..50],
        first_half[..],
        "the same order on both nodes"
    );
    assert_eq!(
        everything[50..],
        second_half[..],
        "resumed with nothing missed"
    );
    resumed
        .says_nothing_for(std::time::Duration::from_millis(500))
        .await;

    // Each room's own events are in the order they happened.
    for i in 0..20 {
        let room = format!("room-{i:02}");
        let kinds: Vec<K> = seen_all(&everything)
            .into_iter()
            .filter(|e| e.1 == room)
            .map(|e| e.0)
            .collect();
        assert_eq!(
            kinds,
            [
                K::Created,
                K::MemberJoined,
                K::Occupied,
                K::MemberLeft,
                K::Empty
            ],
            "{room}"
        );
    }
    cluster.stop().await;
}
