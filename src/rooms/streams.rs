//! What Subscribe streams need from the rules: a slot per stream, access to a room,
//! and presence.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

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

impl Rooms {
    /// A slot for one more Subscribe stream of the caller, or `TOO_MANY_STREAMS`.
    pub fn open_stream(&self, caller: &Caller) -> Result<StreamSlot> {
        let streams = &self.open_streams;
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
        let (room, sender_name, history_from) = self.readable(caller, room_id).await?;
        let user = caller.user_id.as_str();
        // In a cluster the count is the database's, read now; on one node it is
        // read from memory once the stream has registered (see `presence_at_attach`).
        let online = self.live.ledger.count_at_attach(room_id, user).await?;
        Ok(Access {
            room,
            sender_name,
            online,
            history_from,
        })
    }

    /// The room, if the caller may receive it (a member or an admin), the name the
    /// caller goes by there, and the seq its kept history starts from.
    pub(super) async fn readable(
        &self,
        caller: &Caller,
        room_id: &RoomId,
    ) -> Result<(Room, String, u64)> {
        let user = caller.user_id.as_str();
        let found = self
            .store
            .room_for_reader(room_id, user)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        let sender_name = sender_name(caller.admin, user, found.display_name.as_deref())
            .ok_or_else(|| Error::NotAMember {
                room_id: room_id.to_string(),
            })?;
        Ok((found.room, sender_name, found.kept_from))
    }

    /// Records a stream of `user` attached to `room`; a member of a room with a
    /// presence timeout (of any room, in a cluster: other nodes count it) is online
    /// from now on. Synchronous: the stream records the
    /// room in the same step, so no cancellation can fall between the two.
    pub fn stream_attached(&self, room: &Room, user: &str) {
        let first = self.live.presence.attach(&room.id, user);
        if first
            && (room.settings.presence_timeout.is_some() || self.live.ledger.records_every_room())
        {
            self.record_presence(&room.id, user);
        }
    }

    /// Records a stream of `user` detached from `room` (synchronously, so it can run
    /// while a stream is being dropped); when it was the user's last one in a room
    /// with a presence timeout (`timeout`: as the room is now), the timeout starts;
    /// in a cluster the node's presence row goes in any room.
    pub fn stream_detached(&self, room_id: &RoomId, user: &str, timeout: bool) {
        let last = self.live.presence.detach(room_id, user);
        if last && (timeout || self.live.ledger.records_every_room()) {
            self.record_presence(room_id, user);
        }
    }

    /// Records an attached member as online in a room that just gained a presence
    /// timeout, so its timeout starts only when its streams go away.
    pub fn stream_now_present(&self, room_id: &RoomId, user: &str) {
        self.record_presence(room_id, user);
    }
}
