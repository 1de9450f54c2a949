//! Requests, calls and assertions tests share: request builders, reads that page
//! through everything, polling until a state is reached, error assertions, and the
//! bench runner.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use chatroom::pb;

use super::Client;

/// Asserts `status` has `code` and an ErrorInfo with `reason` in domain `chatroom`.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "chatroom");
}

/// Asserts `status` is INVALID_ARGUMENT with a BadRequest violation naming `field`.
#[track_caller]
pub fn assert_bad_request(status: &Status, field: &str) {
    assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "expected a violation of {field} in {status:?}"
    );
}

/// A CreateRoom request for `room_id` with defaults.
pub fn create(room_id: &str) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        room_id: room_id.into(),
        name: format!("room {room_id}"),
        ..Default::default()
    }
}

/// An EnterRoom request for `room_id` with defaults.
pub fn enter(room_id: &str) -> pb::EnterRoomRequest {
    pb::EnterRoomRequest {
        room_id: room_id.into(),
        name: format!("room {room_id}"),
        ..Default::default()
    }
}

pub fn leave(room_id: &str) -> pb::LeaveRoomRequest {
    pb::LeaveRoomRequest {
        room_id: room_id.into(),
    }
}

pub fn join(room_id: &str) -> pb::JoinRoomRequest {
    pb::JoinRoomRequest {
        room_id: room_id.into(),
        display_name: String::new(),
    }
}

pub async fn get_room(client: &mut Client, room_id: &str) -> Result<pb::Room, Status> {
    client
        .get_room(pb::GetRoomRequest {
            room_id: room_id.into(),
        })
        .await
        .map(|r| r.into_inner().room.expect("room"))
}

/// Every member of a room, across pages.
pub async fn all_members(client: &mut Client, room_id: &str) -> Vec<pb::Member> {
    let mut members = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_members(pb::ListMembersRequest {
                room_id: room_id.into(),
                online_only: false,
                page_size: 100,
                page_token: token,
            })
            .await
            .expect("list members")
            .into_inner();
        members.extend(page.members);
        if page.next_page_token.is_empty() {
            return members;
        }
        token = page.next_page_token;
    }
}

/// The user ids of every member of a room, in id order.
pub async fn member_ids(client: &Client, room_id: &str) -> Vec<String> {
    all_members(&mut client.clone(), room_id)
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect()
}

/// Runs `chatroom-bench` against `target` with `args` and returns its JSON report
/// (the last line), failing unless it exits 0.
pub async fn bench(target: &str, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(crate::binary("chatroom-bench"))
        .args(["--target", target, "--json"])
        .args(args)
        .output()
        .await
        .expect("run chatroom-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chatroom-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a report")).expect("a JSON report")
}

/// How long a test waits for an expected frame or state before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `value` until it equals `expected` (within [`WAIT`]); fails with `what`.
pub async fn eventually<T, F, Fut>(what: &str, expected: T, mut value: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = value().await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {now:?}, expected {expected:?}"
        );
        // Polls: what is waited for has no event of its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A clock for a server under test (`config.clock`): it starts at the system's time,
/// so what the server stores looks like any other run's, and moves only when the
/// test advances it.
pub fn test_clock() -> chatroom::domain::Clock {
    let clock = chatroom::domain::Clock::system();
    chatroom::domain::Clock::manual(clock.now())
}

/// Advances `clock` a `step` at a time until `done` says yes, giving the server a
/// moment of real time after each step to act on it; returns how far the clock
/// moved. A timer's test asserts on that: "removed once the clock passed the
/// timeout, not before". (Stepping, not one jump: what starts a timer — a stream
/// gone, its offline time written — happens when the server gets to it, and a
/// jump made before that would be lost to it.) Fails after [`WAIT`] of real time.
pub async fn advance_until<F, Fut>(
    clock: &chatroom::domain::Clock,
    step: Duration,
    what: &str,
    mut done: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut moved = Duration::ZERO;
    loop {
        if done().await {
            return moved;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not after the clock moved {moved:?}"
        );
        clock.advance(step);
        moved += step;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `room_id` as `client` sees it until `field` of it equals `expected`.
pub async fn eventually_room<T>(
    client: &Client,
    room_id: &str,
    what: &str,
    expected: T,
    field: impl Fn(pb::Room) -> T,
) where
    T: PartialEq + std::fmt::Debug,
{
    eventually(what, expected, || {
        let mut client = client.clone();
        let field = &field;
        async move { field(get_room(&mut client, room_id).await.unwrap()) }
    })
    .await;
}

/// A duration of `ms` milliseconds, as the proto carries it.
pub fn millis(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    })
}

/// A CHAT message with `text`.
pub fn chat(room_id: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        room_id: room_id.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// Every stored message of a room, oldest first, across pages.
pub async fn history(client: &mut Client, room_id: &str) -> Vec<pb::Message> {
    let mut all: Vec<pb::Message> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.seq);
        let page = client
            .list_messages(pb::ListMessagesRequest {
                room_id: room_id.into(),
                after_seq: Some(after),
                before_seq: None,
                limit: 500,
            })
            .await
            .expect("list messages")
            .into_inner();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// Asserts a `chatroom-bench fanout` report lost, duplicated and reordered nothing.
#[track_caller]
pub fn assert_fanout_clean(report: &serde_json::Value) {
    assert_eq!(
        (
            report["lost"].as_u64(),
            report["duplicated"].as_u64(),
            report["out_of_order"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "the fanout run was not clean: {report}"
    );
}
