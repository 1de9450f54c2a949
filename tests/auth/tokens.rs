//! Every way a bearer token is refused — each UNAUTHENTICATED with its own reason, on
//! unary calls and on Subscribe alike — and what a valid one grants.

use chatroom::pb;
use serde_json::json;
use tonic::Code;

use crate::common::{self, Backend, Client, Sub, assert_error, create};
use crate::{claims, hs256, jwt_app, now, token, with};

/// The reason `client`'s GetRoom and Subscribe are both refused with.
async fn refused_with(mut client: Client, reason: &str) {
    let status = client
        .get_room(pb::GetRoomRequest {
            room_id: "r".into(),
        })
        .await
        .expect_err("a refused token gets nothing");
    assert_error(&status, Code::Unauthenticated, reason);
    let (_frames, rx) = tokio::sync::mpsc::channel::<pb::SubscribeRequest>(1);
    let status = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("no stream for a refused token");
    assert_error(&status, Code::Unauthenticated, reason);
}

/// A token whose header says `alg: none`, unsigned.
fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_token_has_its_reason() {
    let app = jwt_app(Backend::Sqlite).await;
    let server = app.server();
    let alice = claims("alice");
    let cases: Vec<(&str, String, &str)> = vec![
        ("not a JWT", "not-a-jwt".into(), "TOKEN_MALFORMED"),
        ("three garbage parts", "a.b.c".into(), "TOKEN_MALFORMED"),
        (
            "expired beyond the leeway",
            token(&with(alice.clone(), json!({"exp": now() - 60}))),
            "TOKEN_EXPIRED",
        ),
        (
            "not valid yet",
            token(&with(alice.clone(), json!({"nbf": now() + 600}))),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "signed with another secret",
            hs256(&alice, b"some other secret"),
            "TOKEN_SIGNATURE_INVALID",
        ),
        ("alg none", unsigned(&alice), "TOKEN_ALGORITHM_REFUSED"),
        (
            "another issuer",
            token(&with(alice.clone(), json!({"iss": "https://evil.test"}))),
            "TOKEN_ISSUER_INVALID",
        ),
        (
            "no issuer",
            token(&with(alice.clone(), json!({"iss": null}))),
            "TOKEN_ISSUER_INVALID",
        ),
        (
            "no audience",
            token(&with(alice.clone(), json!({"aud": null}))),
            "TOKEN_AUDIENCE_INVALID",
        ),
        (
            "another audience",
            token(&with(alice.clone(), json!({"aud": "billing"}))),
            "TOKEN_AUDIENCE_INVALID",
        ),
        (
            "no exp",
            token(&with(alice.clone(), json!({"exp": null}))),
            "TOKEN_CLAIMS_INVALID",
        ),
        (
            "no sub",
            token(&with(alice.clone(), json!({"sub": null}))),
            "TOKEN_CLAIMS_INVALID",
        ),
        (
            "a sub that is no user id",
            token(&with(alice.clone(), json!({"sub": "has space"}))),
            "TOKEN_CLAIMS_INVALID",
        ),
        (
            "a rooms claim with a bad id",
            token(&with(
                alice.clone(),
                json!({"rooms": ["no spaces allowed"]}),
            )),
            "TOKEN_CLAIMS_INVALID",
        ),
    ];
    for (what, token, reason) in cases {
        eprintln!("case: {what}");
        refused_with(server.token_client(&token), reason).await;
    }

    // No token at all (x-user-id is not an identity here), and other schemes.
    refused_with(server.client("alice").await, "TOKEN_MISSING").await;
    let mut basic = server.client("alice").await;
    let mut request = tonic::Request::new(pb::GetRoomRequest {
        room_id: "r".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    let status = basic.get_room(request).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_MALFORMED");

    // Within the leeway, an expired token still passes (clocks disagree a little).
    let mut late = server.token_client(&token(&with(alice.clone(), json!({"exp": now() - 3}))));
    late.create_room(create("r")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_its_subject_with_its_name_and_roles() {
    let app = jwt_app(Backend::Sqlite).await;
    let server = app.server();
    let mut alice = server.token_client(&token(&with(claims("alice"), json!({"name": "Alice"}))));
    let room = alice
        .create_room(create("r"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.owner_id, "alice");
    // An empty display_name takes the token's name; a requested one wins.
    let mut bob = server.token_client(&token(&with(claims("bob"), json!({"name": "Bobby"}))));
    bob.join_room(pb::JoinRoomRequest {
        room_id: "r".into(),
        display_name: "Robert".into(),
    })
    .await
    .unwrap();
    let members = common::all_members(&mut alice, "r").await;
    let names: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.display_name.as_str()))
        .collect();
    assert_eq!(names, [("alice", "Alice"), ("bob", "Robert")]);

    // A stream with the token: attached as alice, its sends are alice's.
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    bob.send_message(common::chat("r", "hi")).await.unwrap();
    let sent = alice
        .send_message(common::chat("r", "hello"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(
        (sent.sender_id.as_str(), sent.sender_name.as_str()),
        ("alice", "Alice")
    );

    // `roles: ["admin"]` acts in a room it is not a member of; without it, no.
    let mut carol = server.token_client(&token(&claims("carol")));
    let status = common::get_room(&mut carol, "r").await.map(drop);
    assert!(status.is_ok(), "anyone may read a room");
    let status = carol
        .list_members(pb::ListMembersRequest {
            room_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "NOT_A_MEMBER");
    let mut admin = server.token_client(&token(&with(
        claims("ops"),
        json!({"roles": ["support", "admin"]}),
    )));
    assert_eq!(common::all_members(&mut admin, "r").await.len(), 2);
    admin
        .send_message(common::chat("r", "from ops"))
        .await
        .expect("an admin sends anywhere");
}

/// Flags that cannot work stop the server before it opens anything.
#[tokio::test]
async fn bad_auth_flags_are_refused_at_start() {
    use chatroom::Config;
    use chatroom::config::AuthMode;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("not-a-key.pem");
    std::fs::write(
        &pem,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    type Configure = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(&str, Configure)> = vec![
        ("no key", Box::new(|c| c.auth = AuthMode::Jwt)),
        (
            "two keys",
            Box::new(|c| {
                c.auth = AuthMode::Jwt;
                c.jwt_secret = Some("s".into());
                c.jwt_secret_file = Some("/etc/hostname".into());
            }),
        ),
        (
            "an unreadable key file",
            Box::new(|c| {
                c.auth = AuthMode::Jwt;
                c.jwt_public_key = Some("/nonexistent/key.pem".into());
            }),
        ),
        (
            "a key file that is no key",
            Box::new(move |c| {
                c.auth = AuthMode::Jwt;
                c.jwt_public_key = Some(pem.clone());
            }),
        ),
        (
            "a JWT flag without --auth jwt",
            Box::new(|c| c.jwt_secret = Some("s".into())),
        ),
    ];
    for (what, configure) in cases {
        let url = format!("sqlite://{}", dir.path().join("chatroom.db").display());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::new(listener.local_addr().unwrap(), url);
        configure(&mut config);
        let error = chatroom::serve(config, listener, async {})
            .await
            .expect_err(what);
        assert!(
            error.to_string().contains("auth") || error.to_string().contains("jwt"),
            "{what}: {error}"
        );
        assert!(
            !dir.path().join("chatroom.db").exists(),
            "{what}: nothing opened"
        );
    }
}
