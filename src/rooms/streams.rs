//! What Subscribe streams need from the rules: a slot per stream, access to a room,
//! and presence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::check_in_token;
use super::presence::Online;
use super::readers::Readers;
use crate::domain::{Caller, MutedUntil, Room, RoomId};
use crate::error::{Error, Result};

/// The streams handle.
#[derive(Clone)]
pub struct Streams {
    /// Every user's open streams, against `--max-streams-per-user`.
    pub(super) open: Arc<OpenStreams>,
    pub(super) readers: Readers,
    pub(super) online: Online,
}

/// What checking a caller's access to a room found: the room as stored, and the
/// name the caller's messages carry in it.
#[derive(Clone, Debug)]
pub struct Access {
    pub room: Room,
    /// The name messages from this stream carry.
    pub sender_name: String,
    /// In a cluster, the room's online count over every node, the caller included;
    /// `None` on a single node, which counts its streams in memory.
    pub online: Option<u32>,
    /// The seq of the oldest message still stored (`last_seq + 1` when none is): a
    /// stream resuming from before it missed history that retention deleted.
    pub history_from: u64,
    /// The caller's mute in the room when attached, expired or not.
    pub mute: Option<MutedUntil>,
}

impl Access {
    /// Whether resuming after `after_seq` misses messages that are no longer stored.
    pub fn history_truncated(&self, after_seq: u64) -> bool {
        after_seq.saturating_add(1) < self.history_from
    }
}

/// How many Subscribe streams each user has open on this node, bounded by
/// `--max-streams-per-user` (0: unbounded).
#[derive(Debug, Default)]
pub struct OpenStreams {
    limit: u32,
    per_user: Mutex<HashMap<Arc<str>, u32>>,
}

impl OpenStreams {
    pub fn new(limit: u32) -> Self {
        OpenStreams {
            limit,
            per_user: Mutex::default(),
        }
    }
}

/// One open stream of a user; dropping it (the stream ended, however) frees it.
/// Without a limit nothing is counted, and the slot is empty.
#[derive(Debug)]
pub struct StreamSlot(Option<(Arc<OpenStreams>, Arc<str>)>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Some((streams, user)) = self.0.take() else {
            return;
        };
        let mut per_user = streams.per_user.lock().expect("open streams lock");
        if let Some(n) = per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&user);
            }
        }
    }
}

impl Streams {
    /// A slot for one more Subscribe stream of the caller, or `TOO_MANY_STREAMS`.
    pub fn open_stream(&self, caller: &Caller) -> Result<StreamSlot> {
        let streams = &self.open;
        if streams.limit == 0 {
            return Ok(StreamSlot(None));
        }
        let user = caller.user_id.as_str();
        let mut per_user = streams.per_user.lock().expect("open streams lock");
        let (user, open) = match per_user.get_key_value(user) {
            Some((key, &open)) => (key.clone(), open),
            None => (Arc::<str>::from(user), 0),
        };
        if open >= streams.limit {
            return Err(Error::TooManyStreams {
                limit: streams.limit,
            });
        }
        per_user.insert(user.clone(), open + 1);
        Ok(StreamSlot(Some((streams.clone(), user))))
    }

    /// Checks that the caller may attach a room (a member or an admin, and the room
    /// in its token) and returns it, as stored, with the caller's name there.
    pub async fn access(&self, caller: &Caller, room_id: &RoomId) -> Result<Access> {
        check_in_token(caller, room_id)?;
        let reading = self.readers.readable(caller, room_id).await?;
        let user = caller.user_id.as_str();
        // In a cluster the count is the database's, read now; on one node it is
        // read from memory once the stream has registered (see `presence_at_attach`).
        let online = self.online.count_at_attach(room_id, user).await?;
        Ok(Access {
            room: reading.room,
            sender_name: reading.sender_name,
            online,
            history_from: reading.history_from,
            mute: reading.mute,
        })
    }

    /// The room a stream just attached to, with its online count: in a cluster as
    /// [`Streams::access`] read it, on one node from memory (the stream counted).
    pub fn presence_at_attach(&self, mut room: Room, online: Option<u32>) -> Room {
        room.online_count = online.unwrap_or_else(|| self.online.here(&room.id));
        room
    }

    /// Records a stream of `user` attached to `room`; a member of a room with a
    /// presence timeout (of any room, in a cluster: other nodes count it) is online
    /// from now on. Synchronous: the stream records the
    /// room in the same step, so no cancellation can fall between the two.
    pub fn stream_attached(&self, room: &Room, user: &str) {
        let first = self.online.memory.attach(&room.id, user);
        if first && (room.settings.presence_timeout.is_some() || self.online.records_every_room()) {
            self.online.record(&room.id, user);
        }
    }

    /// Records a stream of `user` detached from `room` (synchronously, so it can run
    /// while a stream is being dropped); when it was the user's last one in a room
    /// with a presence timeout (`timeout`: as the room is now), the timeout starts;
    /// in a cluster the node's presence row goes in any room.
    pub fn stream_detached(&self, room_id: &RoomId, user: &str, timeout: bool) {
        let last = self.online.memory.detach(room_id, user);
        if last && (timeout || self.online.records_every_room()) {
            self.online.record(room_id, user);
        }
    }

    /// Records an attached member as online in a room that just gained a presence
    /// timeout, so its timeout starts only when its streams go away.
    pub fn stream_now_present(&self, room_id: &RoomId, user: &str) {
        self.online.record(room_id, user);
    }
}
