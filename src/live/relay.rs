//! Messages between the nodes of a cluster: what a node hands its broker, whatever the
//! engine (one today: NATS, [`super::nats`]).
//!
//! A node publishes each message it sends to its own hubs and, through its [`Relay`],
//! to the other nodes, which publish it to theirs; room events (member changes,
//! updates, detaches, deletion) go the same way, best effort. The bus is allowed to lose
//! messages: a node never trusts it for completeness. A stream that sees a seq gap
//! reads the missing messages from the store, and a node checks its live rooms
//! against the store's `last_seq` every second (`rooms::tail`), so a lost tail is read
//! too. The relay itself never blocks the message writer: when the engine falls behind
//! by more than [`QUEUE`] messages, it drops them, and the same repairs apply.

use tokio::sync::mpsc;

use super::frame::Frame;
use crate::domain::{DetachReason, RoomId};

/// Messages that may wait for the engine before the relay drops new ones.
pub const QUEUE: usize = 16 * 1024;

/// A room's event on its way to or from the other nodes; frames as encoded once by
/// the node that made them.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub room: RoomId,
    pub event: RoomEvent,
}

/// What happened in the room (the hub's events, as another node needs them).
#[derive(Clone, Debug)]
pub enum RoomEvent {
    /// A message; `seq` 0 for unstored kinds, `targets` `None` for every stream.
    Message {
        seq: u64,
        frame: Frame,
        targets: Option<Vec<String>>,
    },
    /// Member events, coalesced by the node where they happened.
    Broadcast(Frame),
    /// The room's new state (name, attributes, settings) at `version`.
    Updated {
        version: u64,
        presence_timeout: bool,
        frame: Frame,
    },
    /// `user` left (or was removed, or switched to `switched_to` — committed — from
    /// its seq on): the user's streams stop receiving the room.
    Detach {
        user: String,
        reason: DetachReason,
        switched_to: Option<(RoomId, u64)>,
    },
    /// The room is gone.
    Deleted,
}

/// The sending side: hands messages to the engine's task.
#[derive(Clone, Debug)]
pub struct Relay(mpsc::Sender<Relayed>);

impl Relay {
    /// A relay and the queue its engine reads.
    pub fn new() -> (Relay, mpsc::Receiver<Relayed>) {
        let (sender, queue) = mpsc::channel(QUEUE);
        (Relay(sender), queue)
    }

    /// Hands a message to the engine; dropped when its queue is full (see the module
    /// docs for why that is safe).
    pub fn send(&self, message: Relayed) {
        if self.0.try_send(message).is_err() {
            tracing::debug!("relay queue full: an event did not go to the other nodes");
        }
    }
}
