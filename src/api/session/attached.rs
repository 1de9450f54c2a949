//! The rooms a stream receives, and what attaching and detaching one records.

use std::sync::Arc;

use tokio_stream::StreamMap;

use crate::domain::{MutedUntil, RoomId, UnixMicros};
use crate::live::MuteNews;
use crate::live::hub::Subscription;
use crate::rooms::{Access, Rooms};

/// A room this stream receives.
pub(super) struct AttachedRoom {
    pub(super) room_id: RoomId,
    pub(super) sender_name: String,
    /// Highest CHAT seq delivered (or the attach point).
    pub(super) delivered: u64,
    /// The room's version this stream last sent or was attached at.
    pub(super) version: u64,
    /// Whether the room had a presence timeout at that version.
    pub(super) presence_timeout: bool,
    /// Whether the room was muted (`settings.muted`) at that version.
    pub(super) room_muted: bool,
    /// The user's mute in the room when attached, expired or not.
    pub(super) mute: Option<MutedUntil>,
}

impl AttachedRoom {
    /// Whether a mute may keep this stream's user from sending here at `now`, by what
    /// the stream read when it attached and what the room's hub heard since (`news`,
    /// newer): if so, a send of a kind the writer does not check asks the store.
    pub(super) fn may_be_muted(&self, news: &MuteNews, now: UnixMicros) -> bool {
        let room_muted = news
            .room
            .as_ref()
            .filter(|state| state.version > self.version)
            .map_or(self.room_muted, |state| state.muted);
        let mute = news.member.unwrap_or(self.mute);
        room_muted || mute.is_some_and(|m| m.holds_at(now))
    }
}

/// The rooms a stream receives: a handful at most (`--max-rooms-per-stream`), so a
/// vector searched by id, which costs one entry's size per room where a hash map
/// starts at a table of four.
#[derive(Default)]
pub(super) struct AttachedRooms(Vec<AttachedRoom>);

impl AttachedRooms {
    pub(super) fn get(&self, room_id: &RoomId) -> Option<&AttachedRoom> {
        self.0.iter().find(|a| a.room_id == *room_id)
    }

    pub(super) fn get_mut(&mut self, room_id: &RoomId) -> Option<&mut AttachedRoom> {
        self.0.iter_mut().find(|a| a.room_id == *room_id)
    }

    pub(super) fn contains(&self, room_id: &RoomId) -> bool {
        self.get(room_id).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn insert(&mut self, attached: AttachedRoom) {
        self.0.reserve_exact(1);
        self.0.push(attached);
    }

    pub(super) fn remove(&mut self, room_id: &RoomId) -> Option<AttachedRoom> {
        let i = self.0.iter().position(|a| a.room_id == *room_id)?;
        Some(self.0.swap_remove(i))
    }

    pub(super) fn room_ids(&self) -> impl Iterator<Item = &RoomId> {
        self.0.iter().map(|a| &a.room_id)
    }

    pub(super) fn ids(&self) -> Vec<RoomId> {
        self.0.iter().map(|a| a.room_id.clone()).collect()
    }
}

/// The stream's rooms. A room is recorded here in the same synchronous step that
/// counts the user online in it, and dropping this (the client went away, or the
/// stream ended) detaches every room, so presence is right whichever way the stream
/// ends. A subscription whose attach is still being checked is held by the
/// [`Work`] doing it, and forgets its hub if that is abandoned.
pub(super) struct StreamRooms {
    pub(super) rooms: Rooms,
    pub(super) user: String,
    pub(super) attached: AttachedRooms,
    /// Keyed by a shared id: the map hands out a clone of the key with every event,
    /// and a `RoomId` clone would be an allocation per delivery.
    pub(super) events: StreamMap<Arc<RoomId>, Subscription>,
}

impl StreamRooms {
    pub(super) fn detach(&mut self, room_id: &RoomId) -> Option<AttachedRoom> {
        let attached = self.attached.remove(room_id)?;
        // Whether the presence timeout applies is the room's latest word on it, which
        // this stream may not have read yet (it may be far behind).
        let timeout = self
            .rooms
            .hubs()
            .room_state(room_id)
            .filter(|state| state.version > attached.version)
            .map_or(attached.presence_timeout, |state| state.presence_timeout);
        self.events.remove(room_id);
        self.rooms
            .streams
            .stream_detached(room_id, &self.user, timeout);
        Some(attached)
    }

    /// Records an attach whose check passed: the stream receives the room from now on.
    pub(super) fn record(
        &mut self,
        subscription: Subscription,
        attachment: Access,
        delivered: u64,
    ) {
        let room = &attachment.room;
        self.rooms.streams.stream_attached(room, &self.user);
        self.events
            .insert(Arc::clone(subscription.room()), subscription);
        self.attached.insert(AttachedRoom {
            room_id: room.id.clone(),
            sender_name: attachment.sender_name,
            delivered,
            version: room.version,
            presence_timeout: room.settings.presence_timeout.is_some(),
            room_muted: room.settings.muted,
            mute: attachment.mute,
        });
    }
}

impl Drop for StreamRooms {
    fn drop(&mut self) {
        let ids = self.attached.ids();
        for id in ids {
            self.detach(&id);
        }
    }
}
