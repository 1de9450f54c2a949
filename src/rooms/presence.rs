//! Presence: who is online in a room, and the stored last-seen times presence
//! timeouts count from.
//!
//! This process's streams are in memory ([`crate::live::Presence`]); what is written
//! down beyond it, and read back over every node, is the [`PresenceLedger`]'s: on one
//! node [`OneNode`] (below), in a cluster the cluster's (`cluster::presence`). The
//! rules read and write both through [`Online`] and never ask which ledger it is.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::domain::{Clock, Room, RoomId};
use crate::error::Result;
use crate::live::ledger::{self, Pending};
use crate::live::{Presence, PresenceLedger};
use crate::store::Store;

/// The presence handle: who is online, in this process's memory and in the ledger.
#[derive(Clone)]
pub struct Online {
    /// This process's streams.
    pub(super) memory: Arc<Presence>,
    /// What is written down beyond them (and, in a cluster, every node's).
    pub(super) ledger: Arc<dyn PresenceLedger>,
    /// Owns the presence writes that run on tasks of their own.
    pub(super) tasks: TaskTracker,
    /// Rung when a member went offline in a room with a presence timeout.
    pub(super) deadlines_changed: Arc<Notify>,
}

/// A single node's ledger: memory is the truth, and the store keeps only
/// `last_seen` for rooms with a presence timeout (unset while a member is online).
#[derive(Debug)]
pub struct OneNode {
    store: Store,
    /// When a member went offline.
    clock: Clock,
}

impl OneNode {
    pub fn new(store: Store, clock: Clock) -> Self {
        OneNode { store, clock }
    }
}

impl PresenceLedger for OneNode {
    fn records_every_room(&self) -> bool {
        false
    }

    fn online_counts<'a>(&'a self, _: &'a [&'a str]) -> Pending<'a, Option<HashMap<String, u32>>> {
        Box::pin(async { Ok(None) })
    }

    fn count_at_attach<'a>(&'a self, _: &'a RoomId, _: &'a str) -> Pending<'a, Option<u32>> {
        Box::pin(async { Ok(None) })
    }

    fn online_elsewhere<'a>(
        &'a self,
        _: &'a RoomId,
        _: Option<&'a str>,
        _: u32,
    ) -> Pending<'a, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn online_among_elsewhere<'a>(
        &'a self,
        _: &'a RoomId,
        _: &'a [&'a str],
    ) -> Pending<'a, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn record<'a>(&'a self, room: &'a RoomId, user: &'a str, online: bool) -> Pending<'a, bool> {
        Box::pin(async move {
            let last_seen = (!online).then(|| self.clock.now());
            self.store.set_last_seen(room, user, last_seen).await?;
            Ok(!online)
        })
    }
}

impl Online {
    /// Whether the ledger writes presence down in every room (a cluster's does, so
    /// the other nodes count it), not only in rooms with a presence timeout.
    pub(super) fn records_every_room(&self) -> bool {
        self.ledger.records_every_room()
    }

    /// This process's online count of a room.
    pub(super) fn here(&self, room_id: &RoomId) -> u32 {
        self.memory.online_count(room_id)
    }

    /// The online count of a room a stream of `user` attaches to: the ledger's, read
    /// now, in a cluster; `None` on one node (counted in memory once attached).
    pub(super) async fn count_at_attach(
        &self,
        room_id: &RoomId,
        user: &str,
    ) -> Result<Option<u32>> {
        self.ledger.count_at_attach(room_id, user).await
    }

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
        let ids: Vec<&str> = rooms.iter().map(|r| r.id.as_str()).collect();
        let counts = match self.ledger.online_counts(&ids).await {
            Ok(counts) => counts,
            Err(error) => {
                tracing::warn!(%error, "could not read presence; counting this node's");
                None
            }
        };
        for room in &mut rooms {
            room.online_count = match &counts {
                Some(counts) => counts.get(room.id.as_str()).copied().unwrap_or(0),
                None => self.here(&room.id),
            };
        }
        rooms
    }

    /// Up to `limit` online users of a room with ids above `after`, in id order.
    pub(super) async fn online_users(
        &self,
        room_id: &RoomId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let here = self.memory.online_users(room_id, after, limit);
        let elsewhere = self.ledger.online_elsewhere(room_id, after, limit).await?;
        if elsewhere.is_empty() {
            return Ok(here);
        }
        let all: BTreeSet<String> = here.into_iter().chain(elsewhere).collect();
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
            .filter(|u| self.memory.is_online(room_id, u))
            .map(|u| u.to_string())
            .collect();
        online.extend(self.ledger.online_among_elsewhere(room_id, users).await?);
        Ok(online)
    }

    /// Brings the stored presence of `user` in a room in line with its streams, on a
    /// task of its own (no stream waits on the database for it).
    pub(super) fn record(&self, room_id: &RoomId, user: &str) {
        let online = self.clone();
        let room_id = room_id.clone();
        let user = user.to_string();
        self.tasks.spawn(async move {
            if let Err(error) = online.sync(&room_id, &user).await {
                tracing::warn!(%error, room = %room_id, user, "could not record presence");
            }
        });
    }

    /// Writes down whether `user` is online in a room, as its streams here are after
    /// the write (see [`ledger::sync`]); a member who went offline may have a
    /// presence timeout to start.
    pub(super) async fn sync(&self, room_id: &RoomId, user: &str) -> Result<()> {
        if ledger::sync(&self.memory, self.ledger.as_ref(), room_id, user).await? {
            self.deadlines_changed.notify_one();
        }
        Ok(())
    }
}
