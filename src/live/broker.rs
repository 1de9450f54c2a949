//! Where a room's events go besides this node's own streams: the broker interface
//! the hubs publish through. One node has nobody else to tell ([`Alone`]); a node of
//! a cluster hands every event to the other nodes (`cluster::relay`), which apply it
//! to their hubs with [`super::Hubs::apply_relayed`]. The hubs never ask which it
//! is: they publish, and the broker decides.

use tokio::sync::watch;

use crate::domain::{DetachReason, MutedUntil, RoomId};
use crate::proto::Frame;

/// What the hubs publish through besides delivering to this node's streams.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Hands a room's event to the other nodes. `event` is made only if some other
    /// node may receive it (a room nobody here receives costs one node nothing).
    fn publish(&self, room: &RoomId, event: &mut dyn FnMut() -> RoomEvent);

    /// Hands `event` to the other nodes once `committed` turns `Some(true)` (a switch:
    /// the other nodes cannot wait on this node's commit); nothing if it fails.
    fn publish_once_committed(
        &self,
        room: &RoomId,
        event: RoomEvent,
        committed: watch::Receiver<Option<bool>>,
    );
}

/// One node: nobody else to tell.
#[derive(Debug, Default)]
pub struct Alone;

impl Broker for Alone {
    fn publish(&self, _: &RoomId, _: &mut dyn FnMut() -> RoomEvent) {}

    fn publish_once_committed(&self, _: &RoomId, _: RoomEvent, _: watch::Receiver<Option<bool>>) {}
}

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
        muted: bool,
        frame: Frame,
    },
    /// `user` was muted until `mute` says, or (`None`) no longer is.
    MuteChanged {
        user: String,
        mute: Option<MutedUntil>,
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

impl Relayed {
    /// The bytes it holds, as a queue of them counts them.
    pub fn bytes(&self) -> usize {
        match &self.event {
            RoomEvent::Message { frame, targets, .. } => {
                frame.wire().len() + targets.iter().flatten().map(String::len).sum::<usize>()
            }
            RoomEvent::Broadcast(frame) | RoomEvent::Updated { frame, .. } => frame.wire().len(),
            RoomEvent::Detach { user, .. } | RoomEvent::MuteChanged { user, .. } => user.len(),
            RoomEvent::Deleted => 0,
        }
    }
}
