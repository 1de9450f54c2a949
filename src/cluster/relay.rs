//! A cluster node's [`Broker`]: the queue between the hubs and the engine that carries
//! their events to the other nodes (one today: NATS, [`super::bus`]).
//!
//! A node publishes each message it sends to its own hubs and, through its [`Relay`],
//! to the other nodes, which publish it to theirs; room events (member changes,
//! updates, detaches, deletion) go the same way, best effort. The bus is allowed to lose
//! messages: a node never trusts it for completeness. A stream that sees a seq gap
//! reads the missing messages from the store, and a node checks its live rooms
//! against the store's `last_seq` every repair interval ([`super::repair`]), so a lost
//! tail is read too. The relay itself never blocks the message writer: when the engine falls behind
//! by more than [`QUEUE`] events or [`QUEUE_BYTES`], it drops them, and the same
//! repairs apply.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::domain::RoomId;
use crate::live::{Broker, Relayed, RoomEvent};

/// Events that may wait for the engine before the relay drops new ones.
pub const QUEUE: usize = 16 * 1024;
/// Bytes of frames that may wait for the engine (while NATS is away, large messages
/// would otherwise pile up: 16 k of 64 KiB payloads is a GiB).
pub const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// The sending side: hands events to the engine's task.
#[derive(Clone, Debug)]
pub struct Relay {
    sender: mpsc::Sender<Relayed>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Owns the waits for a switch's commit (the server awaits them when it stops).
    tasks: TaskTracker,
}

/// The engine's side: the events waiting for it, in order.
#[derive(Debug)]
pub struct Queue {
    receiver: mpsc::Receiver<Relayed>,
    queued: Arc<AtomicUsize>,
}

impl Relay {
    /// A relay and the queue its engine reads, bounded by [`QUEUE`] and [`QUEUE_BYTES`].
    pub fn new(tasks: TaskTracker) -> (Relay, Queue) {
        Relay::bounded(QUEUE, QUEUE_BYTES, tasks)
    }

    fn bounded(events: usize, max_bytes: usize, tasks: TaskTracker) -> (Relay, Queue) {
        let (sender, receiver) = mpsc::channel(events);
        let queued = Arc::new(AtomicUsize::new(0));
        let relay = Relay {
            sender,
            queued: queued.clone(),
            max_bytes,
            tasks,
        };
        (relay, Queue { receiver, queued })
    }

    /// Hands an event to the engine; dropped when its queue is full, in events or in
    /// bytes (see the module docs for why that is safe).
    pub fn send(&self, event: Relayed) {
        let bytes = event.bytes();
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max_bytes || self.sender.try_send(event).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            crate::telemetry::bus(crate::telemetry::BusEvent::Dropped);
            tracing::debug!("relay queue full: an event did not go to the other nodes");
        }
    }
}

impl Broker for Relay {
    fn publish(&self, room: &RoomId, event: &mut dyn FnMut() -> RoomEvent) {
        self.send(Relayed {
            room: room.clone(),
            event: event(),
        });
    }

    fn publish_once_committed(
        &self,
        room: &RoomId,
        event: RoomEvent,
        mut committed: tokio::sync::watch::Receiver<Option<bool>>,
    ) {
        let relay = self.clone();
        let relayed = Relayed {
            room: room.clone(),
            event,
        };
        // It ends as soon as the switch is decided, and the writer that decides it
        // always does (or drops the sender, which ends it too).
        self.tasks.spawn(async move {
            let outcome = committed.wait_for(Option::is_some).await.map(|o| *o);
            if let Ok(Some(true)) = outcome {
                relay.send(relayed);
            }
        });
    }
}

impl Queue {
    /// The next event; `None` once every relay is gone.
    pub async fn recv(&mut self) -> Option<Relayed> {
        let event = self.receiver.recv().await?;
        self.queued.fetch_sub(event.bytes(), Ordering::Relaxed);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Frame;

    fn message(seq: u64, text_bytes: usize) -> Relayed {
        let frame = Frame::event(crate::proto::pb::subscribe_response::Event::Message(
            crate::proto::pb::Message {
                seq,
                text: "x".repeat(text_bytes),
                ..Default::default()
            },
        ));
        Relayed {
            room: RoomId::parse("r").unwrap(),
            event: RoomEvent::Message {
                seq,
                frame,
                targets: None,
            },
        }
    }

    fn seq(relayed: Option<Relayed>) -> u64 {
        match relayed.map(|r| r.event) {
            Some(RoomEvent::Message { seq, .. }) => seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_frees_what_is_read() {
        let size = message(1, 1000).bytes();
        let (relay, mut queue) = Relay::bounded(100, 2 * size, TaskTracker::new());
        for s in 1..=3 {
            relay.send(message(s, 1000));
        }
        // The third did not fit; once one is read, a fourth does.
        assert_eq!(seq(queue.recv().await), 1);
        relay.send(message(4, 1000));
        assert_eq!(seq(queue.recv().await), 2);
        assert_eq!(seq(queue.recv().await), 4);
        assert_eq!(queue.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_events() {
        let (relay, mut queue) = Relay::bounded(2, usize::MAX, TaskTracker::new());
        for s in 1..=3 {
            relay.send(message(s, 10));
        }
        assert_eq!(seq(queue.recv().await), 1);
        assert_eq!(seq(queue.recv().await), 2);
        drop(relay);
        assert!(queue.recv().await.is_none());
        assert_eq!(queue.queued.load(Ordering::Relaxed), 0);
    }
}
