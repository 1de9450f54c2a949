//! Presence: who is online in a room, and the stored last-seen times presence
//! timeouts count from.
//!
//! On one node the truth is in memory ([`crate::live::Presence`], this process's
//! streams) and the store only keeps `last_seen` for rooms with a presence timeout.
//! In a cluster each node stores a row per room and user it has streams for (with
//! the node's lease, `store/cluster.rs`): counts and lists are read from there, over
//! every live node, and joined with this node's memory, which is ahead of its own
//! rows by the write in flight.

use std::collections::{BTreeSet, HashSet};

use super::*;

impl Rooms {
    /// Fills in the room's online count. Never fails: it often follows a committed
    /// change, whose answer must not turn into an error. Should the store not answer
    /// in a cluster, the count is this node's.
    pub async fn with_presence(&self, room: Room) -> Room {
        self.with_presence_all(vec![room])
            .await
            .pop()
            .expect("one room in, one out")
    }

    /// Fills in the online counts of several rooms (one read in a cluster).
    pub async fn with_presence_all(&self, mut rooms: Vec<Room>) -> Vec<Room> {
        let counts = match &self.node {
            None => None,
            Some(_) => {
                let ids: Vec<&str> = rooms.iter().map(|r| r.id.as_str()).collect();
                match self.store.online_counts(&ids).await {
                    Ok(counts) => Some(counts),
                    Err(error) => {
                        tracing::warn!(%error, "could not read presence; counting this node's");
                        None
                    }
                }
            }
        };
        for room in &mut rooms {
            room.online_count = match &counts {
                Some(counts) => counts.get(room.id.as_str()).copied().unwrap_or(0),
                None => self.live.presence.online_count(&room.id),
            };
        }
        rooms
    }

    /// The room a stream just attached to, with its online count: in a cluster as
    /// [`Rooms::access`] read it, on one node from memory (the stream counted).
    pub fn presence_at_attach(&self, mut room: Room, online: Option<u32>) -> Room {
        room.online_count = online.unwrap_or_else(|| self.live.presence.online_count(&room.id));
        room
    }

    /// Up to `limit` online users of a room with ids above `after`, in id order.
    pub(super) async fn online_users(
        &self,
        room_id: &RoomId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let here = self.live.presence.online_users(room_id, after, limit);
        if self.node.is_none() {
            return Ok(here);
        }
        let anywhere = self
            .store
            .online_users_anywhere(room_id, after, limit)
            .await?;
        let all: BTreeSet<String> = here.into_iter().chain(anywhere).collect();
        Ok(all.into_iter().take(limit as usize).collect())
    }

    /// Which of `users` are online in a room.
    pub(super) async fn online_among(
        &self,
        room_id: &RoomId,
        users: &[&str],
    ) -> Result<HashSet<String>> {
        let mut online: HashSet<String> = users
            .iter()
            .filter(|u| self.live.presence.is_online(room_id, u))
            .map(|u| u.to_string())
            .collect();
        if self.node.is_some() {
            online.extend(self.store.online_among_anywhere(room_id, users).await?);
        }
        Ok(online)
    }

    /// Brings the stored presence of `user` in a room in line with its streams, on a
    /// task of its own (no stream waits on the database for it).
    pub(super) fn record_presence(&self, room_id: &RoomId, user: &str) {
        let rooms = self.clone();
        let room_id = room_id.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            if let Err(error) = rooms.sync_presence(&room_id, &user).await {
                tracing::warn!(%error, room = %room_id, user, "could not record presence");
            }
        });
    }

    /// Stores whether `user` is online in a room (on one node: `last_seen` unset; in
    /// a cluster: this node's row) or offline since now — as its streams here are
    /// after the write. Attaches and detaches race on their writes (two connections,
    /// no order between them), so each writer writes what it sees, looks again once
    /// its write is done, and writes again if that changed: whoever changes presence
    /// last also writes last, and no member stays "online" in the store with no
    /// stream, nor "offline" with one, for longer than a write. A writer that keeps
    /// seeing changes stops after a few rounds: every change of presence starts a
    /// writer of its own, and the last one finishes the job.
    pub(crate) async fn sync_presence(&self, room_id: &RoomId, user: &str) -> Result<()> {
        let mut online = self.live.presence.is_online(room_id, user);
        for _ in 0..4 {
            let went_offline = match &self.node {
                None => {
                    let last_seen = (!online).then(UnixMicros::now);
                    self.store.set_last_seen(room_id, user, last_seen).await?;
                    !online
                }
                Some(node) => {
                    self.store
                        .set_node_presence(&node.id, room_id, user, online, UnixMicros::now())
                        .await?
                }
            };
            let now_online = self.live.presence.is_online(room_id, user);
            if now_online == online {
                if went_offline {
                    self.deadlines_changed.notify_one();
                }
                return Ok(());
            }
            online = now_online;
        }
        Ok(())
    }

    /// Stores this node's presence again, every room and user it has streams for
    /// (after its lease ran out and other nodes released it).
    pub(super) async fn restore_presence(&self) -> Result<()> {
        for (room_id, user) in self.live.presence.all() {
            self.sync_presence(&room_id, &user).await?;
        }
        Ok(())
    }
}
