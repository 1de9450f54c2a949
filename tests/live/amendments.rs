//! Recall and edit: RecallMessage and EditMessage store an entry of the room's log
//! (RECALL, EDIT) naming the message they amend — seen live, on resume, and in
//! ListMessages, with a recalled message's text gone from the database; who may,
//! and for how long.

use std::time::Duration;

use tonic::{Code, Status};

use crate::common::{
    Backend, Client, Ev, Sub, TestApp, assert_bad_request, assert_error, chat, history, test_clock,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    recalls_and_edits_are_entries_of_the_log,
    who_may_recall_and_edit_and_for_how_long,
);

fn recall(seq: u64) -> pb::RecallMessageRequest {
    pb::RecallMessageRequest {
        room_id: "r".into(),
        seq,
    }
}

fn edit(seq: u64, text: &str) -> pb::EditMessageRequest {
    pb::EditMessageRequest {
        room_id: "r".into(),
        seq,
        text: text.into(),
        payload: Vec::new(),
    }
}

async fn recalled(client: &mut Client, seq: u64) -> Result<pb::Message, Status> {
    client
        .recall_message(recall(seq))
        .await
        .map(|r| r.into_inner().message.unwrap())
}

async fn edited(client: &mut Client, seq: u64, text: &str) -> Result<pb::Message, Status> {
    client
        .edit_message(edit(seq, text))
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// The next `n` messages `sub` receives, skipping member events.
async fn messages(sub: &mut Sub, n: usize) -> Vec<pb::Message> {
    let mut got = Vec::new();
    while got.len() < n {
        if let Ev::Message(m) = sub.event().await {
            got.push(m);
        }
    }
    got
}

/// A room as a client builds it from the log: each CHAT message by seq, with the
/// RECALL and EDIT entries applied — (seq, text, recalled).
fn applied(log: &[pb::Message]) -> Vec<(u64, String, bool)> {
    let mut room: Vec<(u64, String, bool)> = Vec::new();
    for m in log {
        match m.kind() {
            pb::MessageKind::Recall => {
                let target = room.iter_mut().find(|t| t.0 == m.target_seq).unwrap();
                target.1.clear();
                target.2 = true;
            }
            pb::MessageKind::Edit => {
                let target = room.iter_mut().find(|t| t.0 == m.target_seq).unwrap();
                target.1 = m.text.clone();
            }
            _ => room.push((m.seq, m.text.clone(), m.recalled)),
        }
    }
    room
}

async fn recalls_and_edits_are_entries_of_the_log(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;
    let mut live = app.attached("carol", "r").await;
    let mut bob = app.client("bob").await;
    let send = |text: &'static str| {
        let mut bob = bob.clone();
        async move {
            let request = pb::SendMessageRequest {
                payload: b"attachment".to_vec(),
                content_type: "text/plain".into(),
                ..chat("r", text)
            };
            bob.send_message(request)
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap()
        }
    };
    let first = send("a secret").await;
    let second = send("a tpyo").await;
    assert_eq!((first.seq, second.seq), (1, 2));

    let fixed = edited(&mut bob, 2, "a typo").await.unwrap();
    assert_eq!(
        (
            fixed.seq,
            fixed.kind(),
            fixed.target_seq,
            fixed.text.as_str()
        ),
        (3, pb::MessageKind::Edit, 2, "a typo")
    );
    assert_eq!(
        fixed.content_type, "text/plain",
        "an edit keeps the content type"
    );
    let taken = recalled(&mut bob, 1).await.unwrap();
    assert_eq!(
        (
            taken.seq,
            taken.kind(),
            taken.target_seq,
            taken.text.as_str()
        ),
        (4, pb::MessageKind::Recall, 1, "")
    );
    // Edited, then recalled: its edits go too.
    edited(&mut bob, 2, "a secret again").await.unwrap();
    recalled(&mut bob, 2).await.unwrap();

    // Live: every entry in seq order, once.
    let seen = messages(&mut live, 6).await;
    let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // Resumed from the start, or from the middle: the same room once applied.
    let mut resumed = app.subscribe("carol").await;
    resumed.attached("r", Some(0)).await;
    let replayed = messages(&mut resumed, 6).await;
    assert_eq!(applied(&replayed), applied(&seen));
    assert_eq!(
        applied(&seen),
        [(1, String::new(), true), (2, String::new(), true)]
    );
    // The stored entries themselves show it: the targets recalled, emptied.
    assert!(replayed[0].recalled && replayed[0].text.is_empty() && replayed[0].payload.is_empty());
    let mut late = app.subscribe("carol").await;
    late.attached("r", Some(2)).await;
    let tail = messages(&mut late, 4).await;
    assert_eq!(tail.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);

    // ListMessages: the targets as stored, the entries after them.
    let mut owner = app.client("owner").await;
    let stored = history(&mut owner, "r").await;
    let kinds: Vec<(u64, pb::MessageKind, u64, bool)> = stored
        .iter()
        .map(|m| (m.seq, m.kind(), m.target_seq, m.recalled))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, pb::MessageKind::Chat, 0, true),
            (2, pb::MessageKind::Chat, 0, true),
            (3, pb::MessageKind::Edit, 2, false),
            (4, pb::MessageKind::Recall, 1, false),
            (5, pb::MessageKind::Edit, 2, false),
            (6, pb::MessageKind::Recall, 2, false),
        ]
    );
    assert!(stored[1].edited_at.is_some());
    // Gone from storage, not only from the answers: both messages were recalled, the
    // second with its edits, so no row holds a text or a payload any more.
    let left = app
        .db()
        .count(
            "SELECT COUNT(*) FROM messages WHERE room_id = 'r' \
             AND (body <> '' OR length(payload) > 0)",
        )
        .await;
    assert_eq!(
        left, 0,
        "a recalled message's text or payload is still stored"
    );
}

async fn who_may_recall_and_edit_and_for_how_long(backend: Backend) {
    let clock = test_clock();
    let app = TestApp::with_clock(backend, &clock, |c| {
        c.admin_users = vec!["root".into()];
        c.recall_window = Duration::from_secs(120);
    })
    .await;
    app.create_room("owner", "r").await;
    for user in ["bob", "carol", "mod"] {
        app.join(user, "r").await;
    }
    let mut owner = app.client("owner").await;
    owner
        .set_member_role(pb::SetMemberRoleRequest {
            room_id: "r".into(),
            user_id: "mod".into(),
            role: pb::Role::Moderator as i32,
        })
        .await
        .unwrap();
    let (mut bob, mut carol) = (app.client("bob").await, app.client("carol").await);
    for text in ["one", "two", "three", "four", "five"] {
        bob.send_message(chat("r", text)).await.unwrap();
    }

    // Another member may not; the sender may, within the window.
    let err = recalled(&mut carol, 1).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    let err = edited(&mut carol, 1, "mine now").await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MODERATOR");
    clock.advance(Duration::from_secs(119));
    edited(&mut bob, 1, "one!").await.unwrap();
    clock.advance(Duration::from_secs(1));
    let err = recalled(&mut bob, 2).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "RECALL_WINDOW_PASSED");
    let err = edited(&mut bob, 2, "late").await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "RECALL_WINDOW_PASSED");

    // The owner, a moderator and an admin (not a member) may at any time.
    clock.advance(Duration::from_secs(3600));
    recalled(&mut owner, 2).await.unwrap();
    recalled(&mut app.client("mod").await, 3).await.unwrap();
    edited(&mut app.client("root").await, 4, "moderated")
        .await
        .unwrap();

    // What cannot be amended: a recalled message, an entry, a seq never stored.
    let err = recalled(&mut owner, 2).await.unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "MESSAGE_RECALLED");
    let err = edited(&mut owner, 2, "back").await.unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "MESSAGE_RECALLED");
    let entry = history(&mut owner, "r").await.last().unwrap().seq;
    let err = recalled(&mut owner, entry).await.unwrap_err();
    assert_error(&err, Code::NotFound, "MESSAGE_NOT_FOUND");
    let err = recalled(&mut owner, 999).await.unwrap_err();
    assert_error(&err, Code::NotFound, "MESSAGE_NOT_FOUND");
    // Bad input, refused before anything is stored; a non-member; a muted sender
    // may still take a message back but not edit one.
    let err = recalled(&mut owner, 0).await.unwrap_err();
    assert_bad_request(&err, "seq");
    let err = edited(&mut owner, 5, "").await.unwrap_err();
    assert_bad_request(&err, "text");
    let err = bob
        .send_message(pb::SendMessageRequest {
            kind: pb::MessageKind::Recall as i32,
            ..chat("r", "x")
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "kind");
    let err = recalled(&mut app.client("stranger").await, 5)
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");
    let err = app
        .client("owner")
        .await
        .recall_message(pb::RecallMessageRequest {
            room_id: "nowhere".into(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    owner
        .mute_member(pb::MuteMemberRequest {
            room_id: "r".into(),
            user_id: "mod".into(),
            duration: None,
        })
        .await
        .unwrap();
    let mut moderator = app.client("mod").await;
    let err = edited(&mut moderator, 5, "quiet").await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "MUTED");
    recalled(&mut moderator, 5).await.unwrap();

    let texts: Vec<(u64, String, bool)> = history(&mut owner, "r")
        .await
        .into_iter()
        .filter(|m| m.kind() == pb::MessageKind::Chat)
        .map(|m| (m.seq, m.text, m.recalled))
        .collect();
    assert_eq!(
        texts,
        [
            (1, "one!".into(), false),
            (2, String::new(), true),
            (3, String::new(), true),
            (4, "moderated".into(), false),
            (5, String::new(), true),
        ]
    );
}
