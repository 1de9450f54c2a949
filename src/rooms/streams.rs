//! What Subscribe streams need from the rules: access to a room, and presence.

use super::*;

impl Rooms {
    /// Checks that the caller may receive a room (member or admin) and returns it, as
    /// stored: a stream fills in presence once it has registered itself.
    pub async fn access(&self, caller: &Caller, room_id: &RoomId) -> Result<Access> {
        let user = caller.user_id.as_str();
        let (room, name) = self
            .store
            .room_and_name(room_id, user)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        let sender_name =
            sender_name(caller.admin, user, name.as_deref()).ok_or_else(|| Error::NotAMember {
                room_id: room_id.to_string(),
            })?;
        Ok(Access { room, sender_name })
    }

    /// Records a stream of `user` attached to `room`; a member of a room with a
    /// presence timeout is online from now on. Synchronous: the stream records the
    /// room in the same step, so no cancellation can fall between the two.
    pub fn stream_attached(&self, room: &Room, user: &str) {
        let first = self.live.presence.attach(&room.id, user);
        if first && room.settings.presence_timeout.is_some() {
            self.record_presence(&room.id, user);
        }
    }

    /// Records a stream of `user` detached from `room` (synchronously, so it can run
    /// while a stream is being dropped); when it was the user's last one in a room
    /// with a presence timeout (`timeout`: as the room is now), the timeout starts.
    pub fn stream_detached(&self, room_id: &RoomId, user: &str, timeout: bool) {
        let last = self.live.presence.detach(room_id, user);
        if last && timeout {
            self.record_presence(room_id, user);
        }
    }

    /// Records an attached member as online in a room that just gained a presence
    /// timeout, so its timeout starts only when its streams go away.
    pub fn stream_now_present(&self, room_id: &RoomId, user: &str) {
        self.record_presence(room_id, user);
    }

    /// Brings the stored presence of `user` in a room in line with its streams, on a
    /// task of its own (no stream waits on the database for it).
    fn record_presence(&self, room_id: &RoomId, user: &str) {
        let rooms = self.clone();
        let room_id = room_id.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            if let Err(error) = rooms.sync_presence(&room_id, &user).await {
                tracing::warn!(%error, room = %room_id, user, "could not record presence");
            }
        });
    }

    /// Stores whether `user` is online in a room (`last_seen` unset) or offline since
    /// now — as its streams are after the write. Attaches and detaches race on their
    /// writes (two connections, no order between them), so each writer writes what it
    /// sees, looks again once its write is done, and writes again if that changed:
    /// whoever changes presence last also writes last, and no member stays "online"
    /// in the store with no stream, nor "offline" with one, for longer than a write.
    /// A writer that keeps seeing changes stops after a few rounds: every change of
    /// presence starts a writer of its own, and the last one finishes the job.
    pub(crate) async fn sync_presence(&self, room_id: &RoomId, user: &str) -> Result<()> {
        let mut online = self.live.presence.is_online(room_id, user);
        for _ in 0..4 {
            let last_seen = (!online).then(UnixMicros::now);
            self.store.set_last_seen(room_id, user, last_seen).await?;
            let now_online = self.live.presence.is_online(room_id, user);
            if now_online == online {
                if !online {
                    self.deadlines_changed.notify_one();
                }
                return Ok(());
            }
            online = now_online;
        }
        Ok(())
    }
}
