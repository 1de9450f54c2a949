//! A cluster node's repair of what the bus lost.
//!
//! Messages: streams notice a lost message by the seq gap the next one leaves, and
//! read it from the store. A lost *last* message leaves no gap until another comes,
//! so every interval (`--cluster-repair-interval-ms`) the node reads the stored
//! `last_seq` of the rooms it has streams in (one statement) and tells each room that
//! is ahead of what it published ([`Hubs::behind`]): its streams read the rest from
//! the store, as any gap.
//!
//! Room events: every [`CONVERGE_EVERY`] intervals (5 s by default) the node checks
//! its streams against the store — a room deleted elsewhere is deleted here, a room
//! updated elsewhere is updated here, and the streams of users who are no longer
//! members (and not admins) are detached — so a detach or a deletion the bus lost
//! still happens, within that long. These repairs are this node's own: they are not
//! relayed.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Rooms;
use crate::domain::{DetachReason, RoomId};
use crate::error::Result;

/// Every how many repair intervals the streams are checked against membership.
pub const CONVERGE_EVERY: u32 = 10;

/// Starts the repairs, every `interval`; they end when `stop` turns true.
pub fn start(rooms: Rooms, interval: Duration, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 1u32.. {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let live = rooms.live.hubs.live_rooms();
            if live.is_empty() {
                continue;
            }
            match rooms.store.last_seqs(&live).await {
                Ok(stored) => {
                    for (room, last_seq) in stored {
                        rooms.live.hubs.behind(&room, last_seq);
                    }
                }
                Err(error) => tracing::debug!(%error, "could not read live rooms' last seqs"),
            }
            if round % CONVERGE_EVERY == 0 {
                for room in &live {
                    if let Err(error) = rooms.converge(room).await {
                        tracing::debug!(%error, room = %room, "could not check a room's streams");
                    }
                }
            }
        }
    })
}

impl Rooms {
    /// Brings this node's streams of `room_id` in line with the store.
    async fn converge(&self, room_id: &RoomId) -> Result<()> {
        let hubs = &self.live.hubs;
        let Some(room) = self.store.room(room_id).await? else {
            hubs.delete_here(room_id);
            return Ok(());
        };
        if hubs.room_version(room_id).is_none_or(|v| v < room.version) {
            hubs.room_updated_here(&room);
        }
        let attached = self.live.presence.online_users(room_id, None, u32::MAX);
        let members: HashSet<String> = self
            .store
            .members_among_users(room_id, &attached)
            .await?
            .into_iter()
            .collect();
        for user in attached {
            if !members.contains(&user) && !self.admins.contains(&user) {
                hubs.detach_here(room_id, &user, DetachReason::Left, None);
            }
        }
        Ok(())
    }
}
