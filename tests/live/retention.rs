//! History retention: `--history-max-per-room` and `--history-retention` delete the
//! oldest stored messages in the background; what is kept stays correct for
//! ListMessages and for streams resuming with `after_seq`, which are told when they
//! resume from before what is kept (`attached.history_truncated`), and streams that
//! fell behind while their next messages were deleted (a `history_truncated` event).

use std::time::{Duration, Instant};

use crate::common::{Backend, Client, Ev, Sub, TestApp, chat, history};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    count_limit_keeps_the_newest_and_tells_resumers,
    age_limit_deletes_old_history_and_numbering_goes_on,
    a_stream_behind_pruned_history_is_told_before_the_next_message,
);

/// The issue's bound: a room past its limit is pruned within this long.
const PRUNED_WITHIN: Duration = Duration::from_secs(10);

/// Waits until the room's stored seqs are `expected`, at most [`PRUNED_WITHIN`].
async fn pruned_to(client: &Client, room_id: &str, expected: Vec<u64>) {
    let started = Instant::now();
    loop {
        let seqs: Vec<u64> = history(&mut client.clone(), room_id)
            .await
            .iter()
            .map(|m| m.seq)
            .collect();
        if seqs == expected {
            return;
        }
        assert!(
            started.elapsed() < PRUNED_WITHIN,
            "{room_id} still holds {seqs:?} after {PRUNED_WITHIN:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Attaches from `after_seq`: whether the history was truncated for it, and the
/// seqs it is caught up with, up to `last`.
async fn resume(
    client: &mut Client,
    room_id: &str,
    after_seq: Option<u64>,
    last: u64,
) -> (bool, Vec<u64>) {
    let mut sub = Sub::open(client).await;
    let truncated = match sub.attach(room_id, after_seq).await {
        Ev::Attached(a) => a.history_truncated,
        other => panic!("expected attached, got {other:?}"),
    };
    let seqs = if after_seq.is_some_and(|a| a < last) {
        sub.chat_seqs_until(last).await
    } else {
        Vec::new()
    };
    (truncated, seqs)
}

fn newest_first(room_id: &str, before_seq: Option<u64>, limit: u32) -> pb::ListMessagesRequest {
    pb::ListMessagesRequest {
        room_id: room_id.into(),
        before_seq,
        after_seq: None,
        limit,
    }
}

async fn count_limit_keeps_the_newest_and_tells_resumers(backend: Backend) {
    let app = TestApp::with(backend, |c| c.history_max_per_room = Some(5)).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "busy").await;
    app.create_room("alice", "quiet").await;
    for i in 1..=12 {
        alice
            .send_message(chat("busy", &format!("m{i}")))
            .await
            .unwrap();
    }
    for i in 1..=3 {
        alice
            .send_message(chat("quiet", &format!("q{i}")))
            .await
            .unwrap();
    }
    pruned_to(&alice, "busy", (8..=12).collect()).await;
    // A room under the limit keeps everything.
    pruned_to(&alice, "quiet", vec![1, 2, 3]).await;

    // Resuming from before what is kept: told so, then given what is kept, in order.
    assert_eq!(
        resume(&mut alice, "busy", Some(2), 12).await,
        (true, (8..=12).collect())
    );
    // From just before the oldest kept message, or from the start of a room that
    // lost nothing, nothing is missing.
    assert_eq!(
        resume(&mut alice, "busy", Some(7), 12).await,
        (false, (8..=12).collect())
    );
    assert_eq!(
        resume(&mut alice, "quiet", Some(0), 3).await,
        (false, vec![1, 2, 3])
    );
    // Without after_seq nothing is resumed, so nothing is missing either.
    assert_eq!(resume(&mut alice, "busy", None, 12).await, (false, vec![]));

    // ListMessages pages newest first over what is kept, and knows where it ends.
    let page = alice
        .list_messages(newest_first("busy", None, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![12, 11, 10]
    );
    assert!(page.has_more);
    let page = alice
        .list_messages(newest_first("busy", Some(10), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![9, 8]
    );
    assert!(!page.has_more);
    assert_eq!(page.messages[1].text, "m8");

    // Numbering goes on from the room's last seq, and the limit keeps applying.
    let sent = alice
        .send_message(chat("busy", "m13"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.message.unwrap().seq, 13);
    pruned_to(&alice, "busy", (9..=13).collect()).await;
}

async fn age_limit_deletes_old_history_and_numbering_goes_on(backend: Backend) {
    let mut app = TestApp::with(backend, |c| {
        c.history_retention = Some(Duration::from_secs(3));
    })
    .await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    for i in 1..=4 {
        alice
            .send_message(chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    // Kept while younger than the retention…
    assert_eq!(history(&mut alice, "r").await.len(), 4);
    // …and deleted within the bound once older (3 s of age, then a round).
    pruned_to(&alice, "r", vec![]).await;
    let mut sub = Sub::open(&mut alice).await;
    match sub.attach("r", Some(0)).await {
        Ev::Attached(a) => {
            assert!(
                a.history_truncated,
                "resuming from 0 after everything was deleted"
            );
            assert_eq!(a.room.unwrap().last_seq, 4);
        }
        other => panic!("expected attached, got {other:?}"),
    }
    // A restart renumbers nothing: seqs continue from the room's last one even though
    // no message of the room is stored.
    app.restart().await;
    let mut alice = app.client("alice").await;
    let sent = alice
        .send_message(chat("r", "m5"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.message.unwrap().seq, 5);
    assert_eq!(
        history(&mut alice, "r")
            .await
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![5]
    );
    // Resuming from 4 misses nothing; from 3 it misses message 4.
    assert_eq!(resume(&mut alice, "r", Some(4), 5).await, (false, vec![5]));
    assert_eq!(resume(&mut alice, "r", Some(3), 5).await, (true, vec![5]));
    pruned_to(&alice, "r", vec![]).await;
}

/// A stream that stops reading while the room's history is pruned past what it
/// received gets a `history_truncated` event with the seq history resumes at before
/// the next message — every jump in its seqs is announced — and then everything up to
/// the last message.
async fn a_stream_behind_pruned_history_is_told_before_the_next_message(backend: Backend) {
    const SENT: u64 = 300;
    let app = TestApp::with(backend, |c| {
        c.history_max_per_room = Some(10);
        c.room_buffer = 16;
    })
    .await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;
    // A reader with HTTP/2's smallest window, which then reads nothing for a while.
    let mut reader_client = app.server().small_window_client("alice");
    let mut reader = Sub::open(&mut reader_client).await;
    reader.attached("r", None).await;
    let filler = "x".repeat(2_000);
    for i in 1..=SENT {
        alice
            .send_message(chat("r", &format!("{i} {filler}")))
            .await
            .unwrap();
    }
    pruned_to(&alice, "r", (SENT - 9..=SENT).collect()).await;

    let (mut expected, mut told) = (1, 0);
    while expected <= SENT {
        match reader.event().await {
            Ev::Message(m) => {
                assert_eq!(m.seq, expected, "a jump to {} with no notice", m.seq);
                expected += 1;
            }
            Ev::HistoryTruncated(t) => {
                assert_eq!(t.room_id, "r");
                assert!(
                    t.resumes_at_seq > expected,
                    "{t:?} while expecting {expected}"
                );
                assert!(
                    t.resumes_at_seq > SENT - 10,
                    "history resumes in what is kept: {t:?}"
                );
                expected = t.resumes_at_seq;
                told += 1;
            }
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(told, 1, "one notice for one jump");
}
