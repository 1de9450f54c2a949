//! The writers of CHAT messages: group commit across rooms.
//!
//! Senders hand accepted messages to the [`Sequencer`] and wait. The writer task that
//! owns the message's room takes every message waiting for it (up to [`MAX_BATCH`]),
//! stores them in one transaction — which assigns each room its next seqs — publishes
//! each room's new messages in seq order, and only then answers the senders. A
//! thousand concurrent senders cost one commit, not a thousand; an answer always
//! means the message is stored; and since a room has one writer, which publishes in
//! commit order, every stream sees a room's seqs in order.

mod batch;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::writer::{self, Writer};

use crate::domain::{Message, RoomId};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::store::Store;
pub use batch::{Appended, Submission};

/// Most messages stored by one transaction.
pub const MAX_BATCH: usize = 2000;
/// Messages that may wait for the writer before senders wait to hand theirs over.
const QUEUE: usize = 8192;

type Job = writer::Job<Submission, Appended>;

/// The writer's answer for one message.
pub type Answer = writer::Answer<Appended>;

/// The handle senders use; cheap to clone. Each writer task ends once every handle
/// is dropped and the messages already handed over are stored.
///
/// There may be several writers ("lanes"), each owning the rooms whose id hashes to
/// it: one lane's transaction commits while the next lane's is being built, so the
/// database and this process work at once instead of in turn. A room has one lane,
/// so its seqs are still assigned and published in order; lanes lock disjoint rooms,
/// so they never wait on each other.
#[derive(Clone)]
pub struct Sequencer(Arc<[Writer<Submission, Appended>]>);

impl Sequencer {
    /// Starts `lanes` writer tasks (returned, for their supervision; at least one).
    pub fn start(
        store: Store,
        hubs: Arc<Hubs>,
        recall_window: Duration,
        lanes: usize,
    ) -> (Sequencer, Vec<JoinHandle<()>>) {
        let (writers, tasks) = (0..lanes.max(1))
            .map(|_| {
                let (store, hubs) = (store.clone(), hubs.clone());
                Writer::start("message writer", QUEUE, move |queue| {
                    write_batches(store, hubs, recall_window, queue)
                })
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        (Sequencer(writers.into()), tasks)
    }

    /// The lane that owns `room`.
    fn lane(&self, room: &RoomId) -> usize {
        if self.0.len() == 1 {
            return 0;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        room.as_str().hash(&mut hasher);
        (hasher.finish() % self.0.len() as u64) as usize
    }

    /// Hands a CHAT message to the writer, in the order of calls; the returned
    /// [`Answer`] resolves once it is committed and published.
    /// The writer checks that the sender is a member (unless `admin`) in the same
    /// transaction, and fills in its display name.
    pub async fn submit(&self, message: Message, admin: bool) -> Result<Answer> {
        let lane = &self.0[self.lane(&message.room_id)];
        lane.hand_over(Submission { message, admin }).await
    }

    /// Hands a CHAT message to its writer like [`Sequencer::submit`] if the writer's
    /// queue has room now; gives the message back if not (`submit` then waits).
    pub fn try_submit(
        &self,
        message: Message,
        admin: bool,
    ) -> Result<std::result::Result<Answer, Message>> {
        let lane = &self.0[self.lane(&message.room_id)];
        let handed = lane.try_hand_over(Submission { message, admin })?;
        Ok(handed.map_err(|submission| submission.message))
    }

    /// Hands over messages of an admin (a broadcast) back to back, each lane its
    /// own: a lane takes them in one batch while they fit. An answer each, in order.
    pub async fn submit_all(&self, messages: Vec<Message>) -> Result<Vec<Answer>> {
        let count = messages.len();
        let mut by_lane: Vec<(Vec<usize>, Vec<Submission>)> =
            (0..self.0.len()).map(|_| Default::default()).collect();
        for (i, message) in messages.into_iter().enumerate() {
            let (places, submissions) = &mut by_lane[self.lane(&message.room_id)];
            places.push(i);
            submissions.push(Submission {
                message,
                admin: true,
            });
        }
        let mut answers: Vec<Option<Answer>> = (0..count).map(|_| None).collect();
        for (lane, (places, submissions)) in self.0.iter().zip(by_lane) {
            if submissions.is_empty() {
                continue;
            }
            for (i, answer) in places
                .into_iter()
                .zip(lane.hand_over_all(submissions).await?)
            {
                answers[i] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every message was handed to its lane"))
            .collect())
    }
}

async fn write_batches(
    store: Store,
    hubs: Arc<Hubs>,
    recall_window: Duration,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // The messages move into the batch; only the answer channels stay behind.
        let (batch, answers): (Vec<Submission>, Vec<_>) =
            jobs.drain(..).map(|j| (j.change, j.answer)).unzip();
        let (size, started) = (batch.len(), std::time::Instant::now());
        let stored = store_batch(&store, &hubs, recall_window, batch).await;
        crate::telemetry::batch(crate::telemetry::Writer::Messages, size, started.elapsed());
        crate::telemetry::messages_stored(
            stored
                .iter()
                .filter(|s| matches!(s, Ok(Appended::New(_))))
                .count(),
        );
        for (answer, stored) in answers.into_iter().zip(stored) {
            let _ = answer.send(stored);
        }
    }
}

/// Stores a batch and publishes what it stored; one answer per message, in order.
///
/// A batch is one transaction, so one entry the database refuses would fail every
/// other sender's message with it. When a batch fails for any reason but the store
/// being unavailable (which fails every part alike), it is split in halves and each
/// is tried on its own, down to the entry at fault: a bad entry costs its batch a
/// few more transactions (log2 of its size), and fails alone.
async fn store_batch(
    store: &Store,
    hubs: &Hubs,
    window: Duration,
    mut batch: Vec<Submission>,
) -> Vec<Result<Appended>> {
    let size = batch.len();
    match batch::append(store, &mut batch, window).await {
        Ok(appended) => published(hubs, appended),
        Err(error) if size > 1 && !matches!(error, Error::Unavailable(_)) => {
            tracing::warn!(%error, batch = size, "a batch of messages failed; storing it in parts");
            let second = batch.split_off(size / 2);
            let mut answers = Box::pin(store_batch(store, hubs, window, batch)).await;
            answers.extend(Box::pin(store_batch(store, hubs, window, second)).await);
            answers
        }
        Err(error) if !matches!(error, Error::Unavailable(_)) => {
            // Alone, it is tried once more: another node's writer may have stored the
            // same idempotency key between this transaction's read of the keys and
            // its insert (the unique index refused it); the second try finds the key
            // and answers with the stored message.
            match batch::append(store, &mut batch, window).await {
                Ok(appended) => published(hubs, appended),
                Err(error) => failed(error, size),
            }
        }
        Err(error) => failed(error, size),
    }
}

/// Publishes what a batch stored; its answers.
fn published(hubs: &Hubs, appended: Vec<Appended>) -> Vec<Result<Appended>> {
    publish(hubs, &appended);
    appended.into_iter().map(Ok).collect()
}

/// The answers of a batch of `size` that failed with `error`.
fn failed(error: Error, size: usize) -> Vec<Result<Appended>> {
    tracing::warn!(%error, batch = size, "storing a batch of messages failed");
    (0..size).map(|_| Err(error.shared())).collect()
}

/// Publishes the new messages of a batch, room by room, in seq order.
fn publish(hubs: &Hubs, answers: &[Appended]) {
    let mut new: Vec<&Message> = answers
        .iter()
        .filter_map(|a| match a {
            Appended::New(m) => Some(m),
            _ => None,
        })
        .collect();
    new.sort_by(|a, b| (&a.room_id, a.seq).cmp(&(&b.room_id, b.seq)));
    for room in new.chunk_by(|a, b| a.room_id == b.room_id) {
        hubs.publish_messages(&room[0].room_id, room.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Clock, Draft, MessageKind};

    fn message(room: &str) -> Message {
        let draft = Draft {
            room_id: RoomId::parse(room).unwrap(),
            kind: MessageKind::Chat,
            text: "x".into(),
            payload: Vec::new(),
            content_type: String::new(),
            to_user_ids: Vec::new(),
            client_msg_id: String::new(),
        };
        Message::accept(draft, "admin", "", Clock::system().now())
    }

    /// Lanes that store nothing: each answers with the message, its seq set to the
    /// lane's number, so that a test sees which lane took it.
    fn echo_lanes(count: u64) -> Sequencer {
        let writers: Vec<_> = (0..count)
            .map(|lane| {
                let (writer, _task) = Writer::start(
                    "echo",
                    64,
                    move |mut queue: mpsc::Receiver<Job>| async move {
                        while let Some(job) = queue.recv().await {
                            let mut message = job.change.message;
                            message.seq = lane;
                            let _ = job.answer.send(Ok(Appended::New(message)));
                        }
                    },
                );
                writer
            })
            .collect();
        Sequencer(writers.into())
    }

    #[tokio::test]
    async fn a_room_keeps_its_lane_and_a_broadcast_is_answered_in_order() {
        let sequencer = echo_lanes(4);
        let rooms: Vec<String> = (0..40).map(|i| format!("room-{i}")).collect();
        let answers = sequencer
            .submit_all(rooms.iter().map(|r| message(r)).collect())
            .await
            .unwrap();
        let mut lanes_used = std::collections::HashSet::new();
        for (room, answer) in rooms.iter().zip(answers) {
            let Appended::New(m) = answer.await.unwrap() else {
                panic!("echoed")
            };
            assert_eq!(m.room_id.as_str(), room, "answers come back in order");
            // Every message of a room goes to the lane its broadcast entry went to.
            let again = sequencer.submit(message(room), false).await.unwrap();
            let Appended::New(single) = again.await.unwrap() else {
                panic!("echoed")
            };
            assert_eq!(single.seq, m.seq, "{room} has one lane");
            lanes_used.insert(m.seq);
        }
        assert_eq!(lanes_used.len(), 4, "40 rooms spread over every lane");
    }
}
