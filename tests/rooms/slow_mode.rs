//! Slow mode (`settings.slow_mode_interval`): one CHAT per interval per plain member,
//! refused RESOURCE_EXHAUSTED SLOW_MODE with a RetryInfo; the owner, moderators and
//! admins exempt; other kinds not counted; idempotent retries answered as before.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::common::{
    Backend, Client, Ev, TestApp, assert_error, chat, create, get_room, history, test_clock,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    slow_mode_spaces_a_plain_members_chats,
    slow_mode_is_changed_and_lifted_with_the_settings,
);

fn slow(seconds: i64) -> Option<pb::RoomSettings> {
    Some(pb::RoomSettings {
        slow_mode_interval: Some(prost_types::Duration { seconds, nanos: 0 }),
        ..Default::default()
    })
}

/// The RetryInfo delay of a SLOW_MODE status.
#[track_caller]
fn retry_delay(status: &Status) -> Duration {
    assert_error(status, Code::ResourceExhausted, "SLOW_MODE");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        status.get_details_error_info().unwrap().metadata["room_id"] == "r",
        "{status:?}"
    );
    delay
}

async fn send(client: &mut Client, request: pb::SendMessageRequest) -> Result<pb::Message, Status> {
    client
        .send_message(request)
        .await
        .map(|r| r.into_inner().message.unwrap())
}

async fn slow_mode_spaces_a_plain_members_chats(backend: Backend) {
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |c| c.admin_users = vec!["root".into()]).await;
    app.create_room_with(
        "owner",
        pb::CreateRoomRequest {
            settings: slow(10),
            ..create("r")
        },
    )
    .await;
    app.join("bob", "r").await;
    app.join("mod", "r").await;
    let mut owner = app.client("owner").await;
    owner
        .set_member_role(pb::SetMemberRoleRequest {
            room_id: "r".into(),
            user_id: "mod".into(),
            role: pb::Role::Moderator as i32,
        })
        .await
        .unwrap();
    let mut bob = app.client("bob").await;

    // bob's first CHAT goes; the second within the interval is refused, with how long
    // to wait.
    let keyed = pb::SendMessageRequest {
        client_msg_id: "first".into(),
        ..chat("r", "one")
    };
    let first = send(&mut bob, keyed.clone()).await.unwrap();
    clock.advance(Duration::from_secs(3));
    let err = send(&mut bob, chat("r", "too soon")).await.unwrap_err();
    assert_eq!(retry_delay(&err), Duration::from_secs(7));
    // A retry of the first (its idempotency key) is answered with it, not refused.
    let again = send(&mut bob, keyed).await.unwrap();
    assert_eq!(again.seq, first.seq);
    // Other kinds are not counted.
    send(
        &mut bob,
        pb::SendMessageRequest {
            kind: pb::MessageKind::Barrage as i32,
            ..chat("r", "barrage")
        },
    )
    .await
    .unwrap();
    // On a stream: the same refusal, with retry_after.
    let mut stream = app.attached("bob", "r").await;
    match stream.send(chat("r", "from the stream")).await {
        Ev::Error(e) => {
            assert_eq!(
                (e.code, e.reason.as_str()),
                (Code::ResourceExhausted as i32, "SLOW_MODE")
            );
            assert_eq!(e.retry_after.unwrap().seconds, 7);
        }
        other => panic!("expected SLOW_MODE, got {other:?}"),
    }

    // The owner, a moderator and an admin are exempt.
    for user in ["owner", "mod", "root"] {
        let mut client = app.client(user).await;
        for text in ["a", "b"] {
            send(&mut client, chat("r", text)).await.unwrap();
        }
    }

    // Once the interval has passed, bob sends again (and the interval starts anew).
    clock.advance(Duration::from_secs(7));
    send(&mut bob, chat("r", "two")).await.unwrap();
    let err = send(&mut bob, chat("r", "too soon again"))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&err), Duration::from_secs(10));

    // Nothing refused was stored.
    let texts: Vec<String> = history(&mut owner, "r")
        .await
        .into_iter()
        .filter(|m| m.sender_id == "bob")
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["one", "two"]);
}

async fn slow_mode_is_changed_and_lifted_with_the_settings(backend: Backend) {
    let clock = test_clock();
    let mut app = TestApp::with_clock(backend, &clock, |_| {}).await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    let mut owner = app.client("owner").await;
    let mut bob = app.client("bob").await;
    // Off by default.
    for text in ["a", "b"] {
        send(&mut bob, chat("r", text)).await.unwrap();
    }
    let update = |seconds| pb::UpdateRoomRequest {
        room_id: "r".into(),
        settings: slow(seconds),
        ..Default::default()
    };
    let room = owner.update_room(update(60)).await.unwrap().into_inner();
    let interval = room.room.unwrap().settings.unwrap().slow_mode_interval;
    assert_eq!(interval.map(|d| d.seconds), Some(60));
    send(&mut bob, chat("r", "c")).await.unwrap();
    let err = send(&mut bob, chat("r", "d")).await.unwrap_err();
    assert_eq!(retry_delay(&err), Duration::from_secs(60));

    // Stored: it holds after a restart.
    app.restart().await;
    let mut bob = app.client("bob").await;
    let err = send(&mut bob, chat("r", "d")).await.unwrap_err();
    assert_eq!(retry_delay(&err), Duration::from_secs(60));
    let mut owner = app.client("owner").await;
    let settings = get_room(&mut owner, "r").await.unwrap().settings.unwrap();
    assert_eq!(settings.slow_mode_interval.map(|d| d.seconds), Some(60));

    // Zero lifts it.
    owner.update_room(update(0)).await.unwrap();
    for text in ["e", "f"] {
        send(&mut bob, chat("r", text)).await.unwrap();
    }
    let settings = get_room(&mut owner, "r").await.unwrap().settings.unwrap();
    assert_eq!(settings.slow_mode_interval, None);
}
