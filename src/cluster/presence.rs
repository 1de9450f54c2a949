//! A cluster's [`PresenceLedger`]: each node stores a row per room and user it has
//! streams for, under its lease ([`super::store`]); a member is online while a live
//! node holds a row for it, and counts and lists are read over every live node.

use std::collections::HashMap;

use super::Node;
use super::store::ClusterStore;
use crate::domain::{Clock, RoomId};
use crate::live::PresenceLedger;
use crate::live::ledger::Pending;

/// Presence as every node of the cluster wrote it down.
#[derive(Debug)]
pub struct ClusterPresence {
    store: ClusterStore,
    node: Node,
    /// When a member went offline.
    clock: Clock,
}

impl ClusterPresence {
    pub fn new(store: ClusterStore, node: Node, clock: Clock) -> Self {
        ClusterPresence { store, node, clock }
    }
}

impl PresenceLedger for ClusterPresence {
    fn records_every_room(&self) -> bool {
        // The other nodes count this node's streams in every room.
        true
    }

    fn online_counts<'a>(
        &'a self,
        rooms: &'a [&'a str],
    ) -> Pending<'a, Option<HashMap<String, u32>>> {
        Box::pin(async move { Ok(Some(self.store.online_counts(rooms).await?)) })
    }

    fn count_at_attach<'a>(&'a self, room: &'a RoomId, user: &'a str) -> Pending<'a, Option<u32>> {
        Box::pin(async move {
            let (count, counted) = self.store.online_count_with(room, user).await?;
            Ok(Some(count + u32::from(!counted)))
        })
    }

    fn online_elsewhere<'a>(
        &'a self,
        room: &'a RoomId,
        after: Option<&'a str>,
        limit: u32,
    ) -> Pending<'a, Vec<String>> {
        Box::pin(self.store.online_users_anywhere(room, after, limit))
    }

    fn online_among_elsewhere<'a>(
        &'a self,
        room: &'a RoomId,
        users: &'a [&'a str],
    ) -> Pending<'a, Vec<String>> {
        Box::pin(self.store.online_among_anywhere(room, users))
    }

    fn record<'a>(&'a self, room: &'a RoomId, user: &'a str, online: bool) -> Pending<'a, bool> {
        Box::pin(
            self.store
                .set_node_presence(&self.node.id, room, user, online, self.clock.now()),
        )
    }
}
