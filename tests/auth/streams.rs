//! A stream's token lifetime: a stream ends UNAUTHENTICATED `TOKEN_EXPIRED` when its
//! token expires (with the same clock leeway unary calls get) unless it presented a
//! fresh one with a `refresh_token` frame; a refresh must be for the same user and
//! reach every room the stream has attached, and is refused for the same reasons a
//! token is refused anywhere.

use std::time::{Duration, Instant};

use chatroom::pb;
use serde_json::json;
use tonic::Code;

use crate::common::{self, Backend, Ev, Sub, TestApp, assert_error, chat, create, join};
use crate::{claims, hs256, jwt_app, jwt_app_on, now, token, with};

/// Seconds of clock leeway the server allows past `exp` (`auth::LEEWAY_SECS`).
const LEEWAY: u64 = 10;

crate::on_both_stores!(
    a_stream_ends_when_its_token_expires_unrefreshed,
    a_refreshed_stream_outlives_its_first_token,
);

/// A token for `sub` that the server accepts for about `left` more seconds.
fn token_with_left(sub: &str, left: u64) -> String {
    token(&with(claims(sub), json!({ "exp": now() + left - LEEWAY })))
}

async fn a_stream_ends_when_its_token_expires_unrefreshed(backend: Backend) {
    let app = jwt_app(backend).await;
    let server = app.server();
    let short = token_with_left("alice", 2);
    let mut alice = server.token_client(&short);
    alice.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    let opened = Instant::now();
    let ended = sub.end().await;
    assert_error(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");
    assert!(
        opened.elapsed() < Duration::from_secs(6),
        "ended {:?} after opening, with about 2 s left",
        opened.elapsed()
    );
    // Unary calls with that token are refused too by now.
    let status = common::get_room(&mut alice, "r").await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_EXPIRED");
}

async fn a_refreshed_stream_outlives_its_first_token(backend: Backend) {
    let clock = common::test_clock();
    let app = jwt_app_on(backend, clock.clone()).await;
    let server = app.server();
    let mut bob = server.token_client(&token(&claims("bob")));
    bob.create_room(create("r")).await.unwrap();
    bob.create_room(create("other")).await.unwrap();
    let mut alice = server.token_client(&token_with_left("alice", 3));
    alice.join_room(join("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;
    let refresh =
        |token: String| pb::subscribe_request::Frame::RefreshToken(pb::RefreshToken { token });

    // Refused refreshes leave the stream as it was.
    let refusals = [
        (token(&claims("mallory")), "TOKEN_SUBJECT_CHANGED"),
        (
            token(&with(claims("alice"), json!({"rooms": ["other"]}))),
            "ROOM_NOT_IN_TOKEN",
        ),
        (
            hs256(&claims("alice"), b"not the server's secret"),
            "TOKEN_SIGNATURE_INVALID",
        ),
        (
            token(&with(claims("alice"), json!({"exp": now() - 3600}))),
            "TOKEN_EXPIRED",
        ),
        ("not a token".to_string(), "TOKEN_MALFORMED"),
    ];
    for (bad, reason) in refusals {
        let id = sub.request(refresh(bad)).await;
        match sub.reply(&id).await {
            Ev::Error(e) => assert_eq!(e.reason, reason, "{e:?}"),
            other => panic!("expected {reason}, got {other:?}"),
        }
    }

    // A fresh token for the same user: accepted, with its expiry.
    let fresh_exp = now() + 3600;
    let fresh = token(&with(claims("alice"), json!({"exp": fresh_exp})));
    let id = sub.request(refresh(fresh)).await;
    match sub.reply(&id).await {
        Ev::TokenRefreshed(r) => {
            assert_eq!(r.expires_at.unwrap().seconds, fresh_exp as i64);
        }
        other => panic!("expected token_refreshed, got {other:?}"),
    }

    // Past the first token's end, the stream goes on.
    clock.advance(Duration::from_secs(4));
    bob.send_message(chat("r", "still here")).await.unwrap();
    loop {
        match sub.event().await {
            Ev::Message(m) => {
                assert_eq!(m.text, "still here");
                break;
            }
            Ev::MembersJoined(_) => continue,
            other => panic!("expected the message, got {other:?}"),
        }
    }
    let id = sub
        .request(pb::subscribe_request::Frame::Ping(pb::Ping {}))
        .await;
    assert!(matches!(sub.reply(&id).await, Ev::Pong(_)));
}

/// With `--auth header` there is no token to refresh: INVALID_ARGUMENT, the stream
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_without_tokens_is_invalid() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut sub = app.subscribe("alice").await;
    let id = sub
        .request(pb::subscribe_request::Frame::RefreshToken(
            pb::RefreshToken { token: "x".into() },
        ))
        .await;
    match sub.reply(&id).await {
        Ev::Error(e) => assert_eq!(e.reason, "INVALID_ARGUMENT", "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let id = sub
        .request(pb::subscribe_request::Frame::Ping(pb::Ping {}))
        .await;
    assert!(matches!(sub.reply(&id).await, Ev::Pong(_)));
}
