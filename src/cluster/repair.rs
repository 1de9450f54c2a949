//! A cluster node's repair of what the bus lost.
//!
//! Messages: streams notice a lost message by the seq gap the next one leaves, and
//! read it from the store. A lost *last* message leaves no gap until another comes,
//! so every interval (`--cluster-repair-interval-ms`) the node reads the stored
//! `last_seq` of the rooms it has streams in (one statement) and tells each room that
//! is behind what was stored *one interval earlier* ([`Hubs::behind`]): its streams
//! read the rest from the store, as any gap. One interval earlier, because a message
//! committed a moment ago is usually still on the bus, and telling every stream of a
//! busy room to read it from the database would cost a read per stream per interval
//! for nothing (measured: fan-out across two nodes lost a quarter of its throughput
//! and most of its p99 to those reads). A lost tail is read within two intervals.
//!
//! Room events: every [`CONVERGE_EVERY`] intervals (5 s by default) the node checks
//! its streams against the store (two statements for all its rooms) — a room deleted
//! elsewhere is deleted here, a room updated elsewhere is updated here, and the
//! streams of users who are no longer members are detached, but not those a caller
//! who is an admin (by `--admin-users` or by a token's `roles`) opened — so a
//! detach or a deletion the bus lost still happens, within that long; and the mutes
//! in force on attached users are told to their hubs again, so a mute the bus lost
//! holds on this node's streams within that long too. (Only mutes are told: a lost
//! unmute leaves a hub thinking a user muted, whose sends then ask the store, which
//! knows better.) These repairs are this node's own: they are not relayed.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::store::{ClusterStore, RoomHead};
use crate::domain::{Clock, MutedUntil, RoomId, SanctionKind};
use crate::error::Result;
use crate::live::{Hubs, Presence};
use crate::store::Store;

/// What the repairs read and tell: this node's hubs and streams, and the store.
#[derive(Clone)]
pub struct Repair {
    pub hubs: Arc<Hubs>,
    pub memory: Arc<Presence>,
    pub store: Store,
    pub cluster: ClusterStore,
    /// Which mutes are in force.
    pub clock: Clock,
}

/// Every how many repair intervals the streams are checked against membership.
pub const CONVERGE_EVERY: u32 = 10;

/// Starts the repairs, every `interval`; they end when `stop` turns true.
pub fn start(
    repair: Repair,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each live room's stored last seq as the previous round read it.
        let mut stored_before: HashMap<RoomId, u64> = HashMap::new();
        for round in 1u32.. {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let live = repair.hubs.live_rooms();
            if live.is_empty() {
                continue;
            }
            let heads = match repair.cluster.room_heads(&live).await {
                Ok(heads) => heads,
                Err(error) => {
                    tracing::debug!(%error, "could not read live rooms' last seqs");
                    continue;
                }
            };
            for head in &heads {
                if let Some(&before) = stored_before.get(&head.room_id) {
                    repair.hubs.behind(&head.room_id, before);
                }
            }
            stored_before = heads
                .iter()
                .map(|h| (h.room_id.clone(), h.last_seq))
                .collect();
            if round % CONVERGE_EVERY == 0
                && let Err(error) = repair.converge(&live, &heads).await
            {
                tracing::debug!(%error, "could not check this node's streams against the store");
            }
        }
    })
}

impl Repair {
    /// Brings this node's streams of the `live` rooms in line with the store, whose
    /// `heads` of them were just read: three statements for all of them, and one more
    /// per room updated elsewhere.
    async fn converge(&self, live: &[RoomId], heads: &[RoomHead]) -> Result<()> {
        let hubs = &self.hubs;
        let versions: HashMap<&str, u64> = heads
            .iter()
            .map(|h| (h.room_id.as_str(), h.version))
            .collect();
        let mut attached = Vec::new();
        for room_id in live {
            let Some(&version) = versions.get(room_id.as_str()) else {
                hubs.delete_here(room_id);
                continue;
            };
            if hubs.room_version(room_id).is_none_or(|v| v < version)
                && let Some(room) = self.store.room(room_id).await?
            {
                hubs.room_updated_here(&room);
            }
            for user in self.memory.online_users(room_id, None, u32::MAX) {
                attached.push((room_id, user));
            }
        }
        let pairs: Vec<(&str, &str)> = attached
            .iter()
            .map(|(room, user)| (room.as_str(), user.as_str()))
            .collect();
        let members = self.cluster.memberships_among(&pairs).await?;
        for (room_id, user) in &attached {
            let key = (room_id.to_string(), user.clone());
            if !members.contains(&key) {
                hubs.detach_non_member_here(room_id, user);
            }
        }
        let mut tx = self.store.begin().await?;
        let mutes = tx
            .sanctions_among(SanctionKind::Mute, &pairs, self.clock.now())
            .await?;
        tx.commit().await?;
        for (room, mute) in mutes {
            if let Ok(room_id) = RoomId::parse(room) {
                let until = Some(MutedUntil(mute.expires_at));
                hubs.member_muted_here(&room_id, &mute.user_id, until);
            }
        }
        Ok(())
    }
}
