//! Who is an admin is the caller's, on every node and in every repair: an admin by
//! token (`roles: ["admin"]`, with `--auth jwt`) who watches a room without being a
//! member keeps the stream, while a user who is no longer a member loses it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatroom::config::AuthMode;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::Cluster;
use crate::common::{Ev, Sub, chat, create, join};

const SECRET: &str = "the cluster's shared test secret";

/// An HS256 token for `sub` with `roles`, an hour to live.
fn token(sub: &str, roles: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "sub": sub, "exp": now + 3600, "roles": roles });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_by_token_keeps_watching_a_room_through_repairs_on_both_nodes() {
    // Repairs every 50 ms: streams are checked against membership every 0.5 s.
    let cluster = Cluster::start_with(50, |c| {
        c.auth = AuthMode::Jwt;
        c.jwt_secret = Some(SECRET.into());
    })
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let mut owner = a.token_client(&token("owner", &[]));
    owner.create_room(create("r")).await.unwrap();
    // The admin is a member nowhere; a member who leaves is repaired away meanwhile.
    let mut watchers = Vec::new();
    for node in [a, b] {
        let mut admin = node.token_client(&token("moderator", &["admin"]));
        let mut sub = Sub::open(&mut admin).await;
        sub.attached("r", None).await;
        watchers.push(sub);
    }
    let mut leaver = b.token_client(&token("leaver", &[]));
    leaver.join_room(join("r")).await.unwrap();
    let mut leaver_sub = Sub::open(&mut leaver).await;
    leaver_sub.attached("r", None).await;

    // Four membership checks pass on each node.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    owner.send_message(chat("r", "still there?")).await.unwrap();
    for (node, watcher) in ["A", "B"].iter().zip(&mut watchers) {
        loop {
            match watcher.event().await {
                Ev::Message(m) => {
                    assert_eq!(m.text, "still there?");
                    break;
                }
                Ev::MembersJoined(_) | Ev::MembersLeft(_) => continue,
                other => panic!("the admin's stream on node {node} got {other:?}"),
            }
        }
    }
    // The same repair still detaches a non-member: the leaver's membership is
    // removed in the database behind the nodes' backs (as if a LeaveRoom's detach
    // were lost on the bus), and its stream goes within a round.
    cluster
        .db
        .execute("DELETE FROM members WHERE user_id = 'leaver'")
        .await;
    loop {
        match leaver_sub.event().await {
            Ev::Detached(d) => {
                assert_eq!(d.room_id, "r");
                break;
            }
            Ev::Message(_) | Ev::MembersJoined(_) | Ev::MembersLeft(_) => continue,
            other => panic!("expected the leaver detached, got {other:?}"),
        }
    }
    cluster.stop().await;
}
