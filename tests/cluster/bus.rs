//! The bus on a NATS server that others share: two deployments with databases of their
//! own never hear each other — not on the subjects each picks by itself, and not when
//! an operator gives both the same subject prefix (events are authenticated with the
//! deployment's key); events forged by anyone else who can publish are dropped; and
//! nodes authenticate to a NATS server that requires a token, a user and password,
//! an NKey, a creds file (decentralized auth) or TLS with a client certificate.
//!
//! Repairs are set far apart here (10 minutes), so whatever reaches a stream on the
//! other node came over the bus.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chatroom::{Config, pb};
use prost::Message as _;
use tokio_stream::StreamExt;

use crate::common::{self, Backend, Ev, Sub, TestDb, chat, create, join};
use crate::{Nats, node_with};

/// Repairs this far apart never happen within a test.
const NO_REPAIR_MS: u64 = 600_000;

/// The bus's wire format as a spy on the subject reads it, and a forger writes it
/// (written here again from `cluster/bus.rs`, as an outsider would have to): a
/// signed envelope, of which the spy reads the node, and whether it is a deletion.
#[derive(Clone, PartialEq, prost::Message)]
struct Signed {
    #[prost(bytes = "vec", tag = "1")]
    envelope: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(string, tag = "2")]
    room: String,
    #[prost(message, optional, tag = "3")]
    message: Option<MessageEvent>,
    #[prost(message, optional, tag = "7")]
    deleted: Option<Deleted>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MessageEvent {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    frame: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Deleted {}

/// The envelope of an event seen on the bus (`None`: not one of the bus's).
fn envelope(event: &async_nats::Message) -> Option<Envelope> {
    let signed = Signed::decode(event.payload.clone()).ok()?;
    Envelope::decode(signed.envelope.as_slice()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_a_nats_never_hear_each_other() {
    two_deployments_on_one_nats(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_given_one_subject_prefix_still_never_hear_each_other() {
    two_deployments_on_one_nats(Some("acme.chat")).await;
}

/// Deployment X (two nodes) and deployment Y (one node), each over a database of its
/// own, on one NATS server; both have a room "r". Y sends every kind of message,
/// updates and deletes its "r", and a stranger publishes forged events on X's subject;
/// a stream of X's "r" then receives X's next message and nothing of all that before.
async fn two_deployments_on_one_nats(prefix: Option<&'static str>) {
    let nats = Nats::start();
    let spy = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = spy.subscribe(">").await.unwrap();
    let (x_db, y_db) = (
        TestDb::new(Backend::Postgres).await,
        TestDb::new(Backend::Postgres).await,
    );
    let named = |id: &'static str| {
        move |c: &mut Config| {
            c.node_id = Some(id.into());
            c.nats_subject_prefix = prefix.map(Into::into);
        }
    };
    let xa = node_with(&x_db, &nats, NO_REPAIR_MS, named("x-a")).await;
    let xb = node_with(&x_db, &nats, NO_REPAIR_MS, named("x-b")).await;
    let ya = node_with(&y_db, &nats, NO_REPAIR_MS, named("y-a")).await;

    let mut x_owner = xa.client("owner").await;
    x_owner.create_room(create("r")).await.unwrap();
    let mut watcher = {
        let mut client = xb.client("watcher").await;
        client.join_room(join("r")).await.unwrap();
        let mut sub = Sub::open(&mut client).await;
        sub.attached("r", None).await;
        sub
    };

    // Y, in its own room "r": every kind of message, an update, a deletion.
    let mut y_owner = ya.client("owner").await;
    y_owner.create_room(create("r")).await.unwrap();
    let mut y_watcher = {
        let mut client = ya.client("watcher").await;
        client.join_room(join("r")).await.unwrap();
        client
    };
    for kind in [
        pb::MessageKind::Barrage,
        pb::MessageKind::Command,
        pb::MessageKind::Chat,
    ] {
        y_owner
            .send_message(pb::SendMessageRequest {
                kind: kind as i32,
                ..chat("r", "from Y")
            })
            .await
            .unwrap();
    }
    y_owner
        .update_room(pb::UpdateRoomRequest {
            room_id: "r".into(),
            name: Some("Y's room".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    y_watcher
        .leave_room(pb::LeaveRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();
    y_owner
        .delete_room(pb::DeleteRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();

    // What went over the bus: each deployment's subject, and Y's deletion.
    let (mut x_subject, mut y_subject, mut y_deleted) = (None, None, false);
    while x_subject.is_none() || y_subject.is_none() || !y_deleted {
        let event = next_on_bus(&mut seen).await;
        let Some(envelope) = envelope(&event) else {
            continue;
        };
        match envelope.node.as_str() {
            "x-a" | "x-b" => x_subject = Some(event.subject.to_string()),
            "y-a" => {
                y_subject = Some(event.subject.to_string());
                y_deleted |= envelope.deleted.is_some();
            }
            _ => {}
        }
    }
    let (x_subject, y_subject) = (x_subject.unwrap(), y_subject.unwrap());
    match prefix {
        Some(prefix) => {
            assert_eq!(x_subject, format!("{prefix}.events"));
            assert_eq!(y_subject, x_subject, "one prefix, one subject");
        }
        None => assert_ne!(
            x_subject, y_subject,
            "each deployment has subjects of its own"
        ),
    }

    // Forged on X's subject: a message with a made-up MAC, and one with none.
    let forged_frame = {
        let body = pb::SubscribeResponse {
            request_id: String::new(),
            event: Some(Ev::Message(pb::Message {
                room_id: "r".into(),
                text: "forged".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        bytes::Bytes::from(framed)
    };
    let forged = Envelope {
        node: "mallory".into(),
        room: "r".into(),
        message: Some(MessageEvent {
            seq: 0,
            frame: forged_frame.to_vec(),
        }),
        deleted: None,
    }
    .encode_to_vec();
    for mac in [b"not a mac".to_vec(), Vec::new()] {
        let signed = Signed {
            envelope: forged.clone(),
            mac,
        };
        spy.publish(x_subject.clone(), signed.encode_to_vec().into())
            .await
            .unwrap();
    }
    // The server has handled them once they come back to the spy; what it handled
    // before X's next message, it hands X's nodes before that message.
    let mut forged_back = 0;
    while forged_back < 2 {
        let event = next_on_bus(&mut seen).await;
        let from_mallory = envelope(&event).is_some_and(|e| e.node == "mallory");
        forged_back += usize::from(from_mallory);
    }

    // X's next message, sent through node A, reaches the stream on node B over the
    // bus — and nothing of Y's or the forger's came before it.
    x_owner.send_message(chat("r", "from X")).await.unwrap();
    loop {
        match watcher.event().await {
            Ev::Message(m) if m.text == "from X" => {
                assert_eq!(m.seq, 1);
                break;
            }
            Ev::MembersJoined(j) if j.members.iter().all(|m| m.user_id == "watcher") => continue,
            other => panic!("deployment X's stream received {other:?}"),
        }
    }
    // X's room is as X left it.
    let room = common::get_room(&mut x_owner, "r").await.unwrap();
    assert_eq!((room.name.as_str(), room.member_count), ("room r", 2));

    for node in [xa, xb, ya] {
        node.stop().await;
    }
}

/// The next event the spy sees on the bus.
async fn next_on_bus(seen: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(common::WAIT, seen.next())
        .await
        .expect("an event on the bus")
        .expect("the spy's subscription is open")
}

/// How a node authenticates, as a test case: the nats-server configuration that
/// requires it, and the node options that meet it.
struct Case {
    name: &'static str,
    server_config: String,
    configure: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// Two nodes that authenticate as `case` says deliver to each other over the bus; a
/// node that does not is refused by the server, and its health says NOT_SERVING.
async fn authenticated(case: Case, dir: &Path) {
    let config = dir.join(format!("{}.conf", case.name));
    std::fs::write(&config, &case.server_config).unwrap();
    let nats = Nats::start_with(config);
    let db = TestDb::new(Backend::Postgres).await;
    let configure = &case.configure;
    let a = node_with(&db, &nats, NO_REPAIR_MS, |c| configure(c)).await;
    let b = node_with(&db, &nats, NO_REPAIR_MS, |c| configure(c)).await;
    let mut owner = a.client("owner").await;
    owner.create_room(create("r")).await.unwrap();
    let mut watcher = {
        let mut client = b.client("watcher").await;
        client.join_room(join("r")).await.unwrap();
        let mut sub = Sub::open(&mut client).await;
        sub.attached("r", None).await;
        sub
    };
    owner.send_message(chat("r", case.name)).await.unwrap();
    loop {
        match watcher.event().await {
            Ev::Message(m) => {
                assert_eq!(m.text, case.name, "{}", case.name);
                break;
            }
            Ev::MembersJoined(_) => continue,
            other => panic!("{}: expected the message, got {other:?}", case.name),
        }
    }
    // A node without the credentials is refused: the bus never comes up for it.
    let outsider = node_with(&db, &nats, NO_REPAIR_MS, |_| {}).await;
    common::eventually(
        &format!("{}: a node without credentials is NOT_SERVING", case.name),
        2,
        || common::health_status(&outsider, ""),
    )
    .await;
    assert_eq!(common::health_status(&a, "").await, 1, "{}", case.name);
    for node in [a, b, outsider] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_authenticate_to_a_nats_that_requires_a_token_a_password_or_an_nkey() {
    let dir = tempfile::tempdir().unwrap();
    authenticated(
        Case {
            name: "token",
            server_config: "authorization { token: \"t0ken-for-the-bus\" }\n".into(),
            configure: Box::new(|c| c.nats_token = Some("t0ken-for-the-bus".into())),
        },
        dir.path(),
    )
    .await;
    authenticated(
        Case {
            name: "password",
            server_config: "authorization { user: chatroom, password: \"pa55-word\" }\n".into(),
            configure: Box::new(|c| {
                c.nats_user = Some("chatroom".into());
                c.nats_password = Some("pa55-word".into());
            }),
        },
        dir.path(),
    )
    .await;
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.path().join("node.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    authenticated(
        Case {
            name: "nkey",
            server_config: format!(
                "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
                user.public_key()
            ),
            configure: Box::new(move |c| c.nats_nkey = Some(seed_file.clone())),
        },
        dir.path(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_authenticate_to_a_nats_with_a_creds_file_or_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_config, creds) = decentralized_auth(dir.path());
    authenticated(
        Case {
            name: "creds",
            server_config,
            configure: Box::new(move |c| c.nats_creds = Some(creds.clone())),
        },
        dir.path(),
    )
    .await;

    let d = dir.path();
    common::certs::ca(d, "ca");
    common::certs::leaf(d, "server", "ca", "serverAuth");
    common::certs::leaf(d, "client", "ca", "clientAuth");
    let file = |name: &str| d.join(name);
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    authenticated(
        Case {
            name: "tls",
            server_config: format!(
                "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}\n",
                file("server.pem"),
                file("server.key"),
                file("ca.pem"),
            ),
            configure: Box::new(move |c| {
                c.nats_tls_ca = Some(ca.clone());
                c.nats_tls_cert = Some(cert.clone());
                c.nats_tls_key = Some(key.clone());
            }),
        },
        dir.path(),
    )
    .await;
}

/// A nats-server configuration for decentralized auth — an operator, an account it
/// signs, preloaded — and a creds file of a user the account signs.
fn decentralized_auth(dir: &Path) -> (String, PathBuf) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1
    });
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "chat",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "node",
        serde_json::json!({
            "type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1
        }),
    );
    let operator_file = dir.join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let config = format!(
        "operator: {operator_file:?}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n}}\n",
        account.public_key()
    );
    let creds = dir.join("node.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (config, creds)
}

/// A NATS JWT: `claims` about `subject` (`nats` as its `nats` claim), signed by
/// `issuer`'s NKey.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = serde_json::json!({
        "jti": format!("{:X}", now ^ 0x5EED),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_options_are_checked_before_anything_starts() {
    let db = TestDb::new(Backend::Postgres).await;
    let refused = |configure: fn(&mut Config), field: &'static str| {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), db.url.clone());
        config.nats_url = Some("nats://127.0.0.1:1".into());
        configure(&mut config);
        let field = field.to_string();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let error = chatroom::serve(config, listener, std::future::pending())
                .await
                .expect_err("refused");
            assert!(error.to_string().contains(&field), "{field}: {error}");
        }
    };
    refused(
        |c| {
            c.nats_url = None;
            c.nats_token = Some("x".into());
        },
        "nats_token",
    )
    .await;
    refused(
        |c| {
            c.nats_token = Some("x".into());
            c.nats_user = Some("u".into());
            c.nats_password = Some("p".into());
        },
        "nats_creds",
    )
    .await;
    refused(|c| c.nats_user = Some("u".into()), "nats_user").await;
    refused(
        |c| c.nats_tls_cert = Some("/nonexistent/cert.pem".into()),
        "nats_tls_cert",
    )
    .await;
    refused(
        |c| c.nats_creds = Some("/nonexistent/node.creds".into()),
        "nats_creds",
    )
    .await;
    refused(
        |c| {
            c.nats_url = None;
            c.nats_subject_prefix = Some("acme".into());
        },
        "nats_subject_prefix",
    )
    .await;
    for bad in ["", "a..b", "a.*", "a.>", "has space", "a."] {
        assert!(
            chatroom::config::parse_subject_prefix(bad).is_err(),
            "{bad:?} is no prefix"
        );
    }
    assert_eq!(
        chatroom::config::parse_subject_prefix("acme_1.chat-prod").unwrap(),
        "acme_1.chat-prod"
    );
}
