//! One batch of CHAT messages, stored in one transaction: the rules of sending — who
//! may send and under which name, idempotency, seq assignment — each written once.
//! The store executes the reads and writes it is handed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use crate::domain::{Message, MessageKind, RoomId, Speaker, UnixMicros};
use crate::error::{Error, Result};
use crate::rooms::authority::{Standing, check_amend, check_voice};
use crate::rooms::sender_name;
use crate::store::{Store, Tx};

/// A message handed to the writer.
pub struct Submission {
    pub message: Message,
    /// Admins may send to rooms they are not members of.
    pub admin: bool,
}

/// What happened to one message of a batch.
#[derive(Clone, Debug)]
pub enum Appended {
    /// Stored now, with its seq.
    New(Message),
    /// Its idempotency key was already stored: the stored message.
    Existing(Message),
    /// The room no longer exists.
    RoomGone,
    /// The sender is not a member of the room.
    NotAMember,
    /// Refused by a rule of sending — a mute, slow mode, who may recall or edit
    /// which message — as the error says, for the sender's answer.
    Refused(Error),
}

/// A sender in a room: `(room, user)`.
type SenderKey = (String, String);

/// An idempotency key: `(room, sender, client_msg_id)`.
type Key = (String, String, String);

fn key(m: &Message) -> Key {
    (
        m.room_id.to_string(),
        m.sender_id.clone(),
        m.client_msg_id.clone(),
    )
}

/// Stores a batch of accepted CHAT messages in one transaction: senders are checked
/// to be members (their display names come from the same rows), each room's next
/// seqs are taken from its `last_seq` (rooms locked in id order, so concurrent
/// batches cannot deadlock), and all rows go in together.
///
/// A message whose idempotency key is already stored — or appears earlier in the
/// batch — is not stored again: its answer is the first one. One answer per message,
/// in order. On `Err` nothing was stored and the batch may be tried again (its
/// messages' names and seqs are filled in afresh); on `Ok` the stored messages have
/// moved into their answers and `batch` is empty.
pub(super) async fn append(
    store: &Store,
    batch: &mut Vec<Submission>,
    recall_window: Duration,
) -> Result<Vec<Appended>> {
    let mut answers: Vec<Option<Appended>> = vec![None; batch.len()];
    let mut tx = store.begin().await?;
    // 1. Who may send, and under which name: members, and admins.
    let speakers = check_senders(&mut tx, batch, &mut answers).await?;
    // 2. Idempotency: keys seen before (stored, or earlier in this batch).
    let copies = find_copies(&mut tx, batch, &mut answers).await?;
    let is_copy: HashSet<usize> = copies.iter().map(|&(i, _)| i).collect();
    // 3. Recalls and edits: who may, of which message.
    check_amendments(&mut tx, batch, &mut answers, &speakers, recall_window).await?;
    // 4. Mutes, the member's own and the room's (a retry of a message stored before
    //    a mute is answered with it, as above).
    check_voices(batch, &mut answers, &is_copy, &speakers);
    // 5. Slow mode: one CHAT per interval per plain member.
    let turns = check_slow_mode(&mut tx, batch, &mut answers, &is_copy, speakers).await?;
    // 6. Seqs: each room's next ones, in arrival order, rooms in id order.
    let new_rows = take_seqs(&mut tx, batch, &mut answers, &is_copy).await?;

    // 7. The rows, together, the amendments applied to what they name, and slow
    //    mode's turns taken.
    if !new_rows.is_empty() {
        let rows: Vec<&Message> = new_rows.iter().map(|&i| &batch[i].message).collect();
        tx.insert_messages(&rows).await?;
        let amendments: Vec<&Message> =
            rows.into_iter().filter(|m| m.kind.is_amendment()).collect();
        if !amendments.is_empty() {
            tx.apply_amendments(&amendments).await?;
        }
    }
    let turns: Vec<(&str, &str, UnixMicros)> = turns
        .iter()
        .map(|((room, user), at)| (room.as_str(), user.as_str(), *at))
        .collect();
    tx.set_last_chats(&turns).await?;
    tx.commit().await?;

    // Committed: the stored messages move into their answers (no copy per message).
    let mut messages: Vec<Option<Message>> = std::mem::take(batch)
        .into_iter()
        .map(|s| Some(s.message))
        .collect();
    for &i in &new_rows {
        answers[i] = messages[i].take().map(Appended::New);
    }
    for (i, first) in copies {
        answers[i] = Some(match &answers[first] {
            Some(Appended::New(m) | Appended::Existing(m)) => Appended::Existing(m.clone()),
            Some(other) => other.clone(),
            None => Appended::RoomGone,
        });
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every message has an answer"))
        .collect())
}

/// Fills in each sender's display name from their member row; a sender who is neither
/// a member nor an admin is answered NotAMember (RoomGone where the room is gone).
/// Returns the member rows read, by sender.
async fn check_senders(
    tx: &mut Tx,
    batch: &mut [Submission],
    answers: &mut [Option<Appended>],
) -> Result<HashMap<SenderKey, Speaker>> {
    let pairs: Vec<(&str, &str)> = batch
        .iter()
        .map(|s| (s.message.room_id.as_str(), s.message.sender_id.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let speakers = read_speakers(tx, &pairs).await?;
    let mut refused_rooms = BTreeSet::new();
    for (i, s) in batch.iter_mut().enumerate() {
        let m = &mut s.message;
        let speaker = speakers.get(&(m.room_id.to_string(), m.sender_id.clone()));
        let name = speaker.map(|sp| sp.member.display_name.as_str());
        match sender_name(s.admin, &m.sender_id, name) {
            Some(name) => m.sender_name = name,
            None => {
                answers[i] = Some(Appended::NotAMember);
                refused_rooms.insert(m.room_id.clone());
            }
        }
    }
    // A refused sender in a room that does not exist is told so.
    for room_id in refused_rooms {
        if tx.lock_room(&room_id).await?.is_none() {
            for (i, s) in batch.iter().enumerate() {
                if s.message.room_id == room_id {
                    answers[i] = Some(Appended::RoomGone);
                }
            }
        }
    }
    Ok(speakers)
}

/// Judges each RECALL and EDIT entry (still unanswered) against the message it
/// names, read in this transaction: a CHAT message (MESSAGE_NOT_FOUND otherwise) not
/// recalled, before or earlier in this batch (MESSAGE_RECALLED), which the sender may
/// amend ([`check_amend`]). An edit takes its target's content type.
async fn check_amendments(
    tx: &mut Tx,
    batch: &mut [Submission],
    answers: &mut [Option<Appended>],
    speakers: &HashMap<SenderKey, Speaker>,
    window: Duration,
) -> Result<()> {
    let amending: Vec<usize> = (0..batch.len())
        .filter(|&i| answers[i].is_none() && batch[i].message.kind.is_amendment())
        .collect();
    if amending.is_empty() {
        return Ok(());
    }
    let keys: Vec<(&str, u64)> = amending
        .iter()
        .map(|&i| {
            (
                batch[i].message.room_id.as_str(),
                batch[i].message.target_seq,
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let targets: HashMap<(String, u64), Message> = tx
        .messages_at(&keys)
        .await?
        .into_iter()
        .map(|m| ((m.room_id.to_string(), m.seq), m))
        .collect();
    let mut recalled: HashSet<(String, u64)> = HashSet::new();
    for i in amending {
        let (admin, m) = (batch[i].admin, &mut batch[i].message);
        let (room_id, seq) = (m.room_id.to_string(), m.target_seq);
        let key = (room_id.clone(), seq);
        let target = targets.get(&key).filter(|t| t.kind == MessageKind::Chat);
        let verdict = match target {
            None => Err(Error::MessageNotFound { room_id, seq }),
            Some(t) if t.recalled || recalled.contains(&key) => {
                Err(Error::MessageRecalled { room_id, seq })
            }
            Some(t) => {
                let role = speakers
                    .get(&(room_id, m.sender_id.clone()))
                    .map(|sp| sp.member.role);
                let own = t.sender_id == m.sender_id;
                let standing = Standing::of(admin, role);
                check_amend(standing, own, t.sent_at, m.sent_at, window, &m.room_id, seq)
                    .map(|()| t.content_type.clone())
            }
        };
        match verdict {
            Ok(content_type) => {
                if m.kind == MessageKind::Recall {
                    recalled.insert(key);
                } else {
                    m.content_type = content_type;
                }
            }
            Err(error) => answers[i] = Some(Appended::Refused(error)),
        }
    }
    Ok(())
}

/// Refuses MUTED each message (still unanswered, not a copy) whose sender a mute
/// keeps quiet at its time: their own, or the room's (see [`check_voice`]).
fn check_voices(
    batch: &[Submission],
    answers: &mut [Option<Appended>],
    is_copy: &HashSet<usize>,
    speakers: &HashMap<SenderKey, Speaker>,
) {
    // Most batches have no mute in them: no lookup per message.
    if !speakers
        .values()
        .any(|sp| sp.room_muted || sp.mute.is_some())
    {
        return;
    }
    for (i, s) in batch.iter().enumerate() {
        // Taking a message back is not speaking.
        if answers[i].is_some() || is_copy.contains(&i) || s.message.kind == MessageKind::Recall {
            continue;
        }
        let m = &s.message;
        let Some(sp) = speakers.get(&(m.room_id.to_string(), m.sender_id.clone())) else {
            continue; // an admin who is not a member
        };
        let standing = Standing::of(s.admin, Some(sp.member.role));
        if let Err(muted) = check_voice(standing, sp.room_muted, sp.mute, m.sent_at, &m.room_id) {
            answers[i] = Some(Appended::Refused(muted));
        }
    }
}

/// The member rows among `(room, user)` keys, by key.
async fn read_speakers(tx: &mut Tx, pairs: &[(&str, &str)]) -> Result<HashMap<SenderKey, Speaker>> {
    Ok(tx
        .speakers_among(pairs)
        .await?
        .into_iter()
        .map(|(room, sp)| ((room, sp.member.user_id.clone()), sp))
        .collect())
}

/// Slow mode: refuses SLOW_MODE each CHAT (still unanswered, not a copy) of a plain
/// member whose last one in a slow-mode room is more recent than its interval — the
/// last stored, or one earlier in this batch. Returns the turns taken, by sender.
///
/// Last CHAT times are read again with the batch's rooms locked (in id order, as
/// every writer locks rooms), so two nodes' writers cannot both let one member's
/// message through; batches with no one in slow mode lock nothing here.
async fn check_slow_mode(
    tx: &mut Tx,
    batch: &[Submission],
    answers: &mut [Option<Appended>],
    is_copy: &HashSet<usize>,
    mut speakers: HashMap<SenderKey, Speaker>,
) -> Result<HashMap<SenderKey, UnixMicros>> {
    let slowed = |s: &Submission, speakers: &HashMap<SenderKey, Speaker>| {
        let k = (s.message.room_id.to_string(), s.message.sender_id.clone());
        let speaker = speakers.get(&k)?;
        let exempt =
            s.admin || Standing::of(false, Some(speaker.member.role)) >= Standing::Moderator;
        let interval = speaker.slow_mode_interval.filter(|_| !exempt)?;
        Some((k, interval))
    };
    let candidates: Vec<usize> = (0..batch.len())
        .filter(|&i| answers[i].is_none() && !is_copy.contains(&i))
        .filter(|&i| batch[i].message.kind == MessageKind::Chat)
        .filter(|&i| slowed(&batch[i], &speakers).is_some())
        .collect();
    let mut turns: HashMap<SenderKey, UnixMicros> = HashMap::new();
    if candidates.is_empty() {
        return Ok(turns);
    }
    let rooms: Vec<&RoomId> = batch.iter().map(|s| &s.message.room_id).collect();
    tx.lock_rooms(&rooms).await?;
    let pairs: Vec<(&str, &str)> = candidates
        .iter()
        .map(|&i| {
            (
                batch[i].message.room_id.as_str(),
                batch[i].message.sender_id.as_str(),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    speakers = read_speakers(tx, &pairs).await?;
    for i in candidates {
        let Some((k, interval)) = slowed(&batch[i], &speakers) else {
            continue;
        };
        let now = batch[i].message.sent_at;
        let last = turns.get(&k).copied().or(speakers[&k].last_chat_at);
        match last
            .map(|last| last.plus(interval))
            .filter(|&next| next > now)
        {
            Some(next) => {
                answers[i] = Some(Appended::Refused(Error::SlowMode {
                    room_id: batch[i].message.room_id.to_string(),
                    retry_after: next.since(now),
                }));
            }
            None => {
                turns.insert(k, now);
            }
        }
    }
    Ok(turns)
}

/// Answers the messages whose idempotency key is stored already; returns the copies
/// of a key earlier in the batch, as `(copy, first)` indexes.
async fn find_copies(
    tx: &mut Tx,
    batch: &[Submission],
    answers: &mut [Option<Appended>],
) -> Result<Vec<(usize, usize)>> {
    let keyed: Vec<usize> = (0..batch.len())
        .filter(|&i| answers[i].is_none() && !batch[i].message.client_msg_id.is_empty())
        .collect();
    let lookups: Vec<&Message> = keyed.iter().map(|&i| &batch[i].message).collect();
    let stored: HashMap<Key, Message> = tx
        .messages_by_keys(&lookups)
        .await?
        .into_iter()
        .map(|m| (key(&m), m))
        .collect();
    let mut first_with_key: HashMap<Key, usize> = HashMap::new();
    let mut copies: Vec<(usize, usize)> = Vec::new();
    for i in keyed {
        let k = key(&batch[i].message);
        if let Some(existing) = stored.get(&k) {
            answers[i] = Some(Appended::Existing(existing.clone()));
        } else if let Some(&first) = first_with_key.get(&k) {
            copies.push((i, first));
        } else {
            first_with_key.insert(k, i);
        }
    }
    Ok(copies)
}

/// Reserves each room's next seqs for the messages still unanswered (copies aside),
/// in arrival order, rooms in id order; returns the indexes of the rows to insert.
async fn take_seqs(
    tx: &mut Tx,
    batch: &mut [Submission],
    answers: &mut [Option<Appended>],
    is_copy: &HashSet<usize>,
) -> Result<Vec<usize>> {
    let mut by_room: BTreeMap<RoomId, Vec<usize>> = BTreeMap::new();
    for (i, s) in batch.iter().enumerate() {
        if answers[i].is_none() && !is_copy.contains(&i) {
            by_room
                .entry(s.message.room_id.clone())
                .or_default()
                .push(i);
        }
    }
    let counts: Vec<(&RoomId, i64)> = by_room.iter().map(|(r, ix)| (r, ix.len() as i64)).collect();
    let last_seqs = tx.advance_seqs(&counts).await?;
    let mut new_rows = Vec::new();
    for (room_id, indexes) in &by_room {
        match last_seqs.get(room_id.as_str()) {
            None => {
                for &i in indexes {
                    answers[i] = Some(Appended::RoomGone);
                }
            }
            Some(&last) => {
                // `last` is the room's last seq after reserving these: they end there.
                let first = (last - indexes.len() as i64 + 1) as u64;
                for (offset, &i) in indexes.iter().enumerate() {
                    batch[i].message.seq = first + offset as u64;
                    new_rows.push(i);
                }
            }
        }
    }
    Ok(new_rows)
}
