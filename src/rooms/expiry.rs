//! Timers that survive restarts: presence timeouts and destroy-when-empty.
//!
//! Deadlines are not kept in memory but derived from the database (`members.last_seen_us`
//! plus the room's `presence_timeout`, `rooms.empty_since_us` plus its
//! `destroy_when_empty_after`), so after a restart the overdue ones still happen. One
//! task sleeps until the earliest deadline — woken early when a new one starts — and
//! applies whatever is due, each in its own transaction that re-checks under the lock.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Rooms, Slot, remove_member};
use crate::error::Result;
use crate::live::DetachReason;
use crate::rooms::model::UnixMicros;

/// Longest sleep: deadlines made by another process are noticed at least this often.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Shortest sleep, so a deadline that cannot be applied yet is not spun on.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// Most removals applied per round.
const ROUND: u32 = 200;

/// Starts the expiry task; it ends when `stop` turns true.
pub fn start(rooms: Rooms, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = UnixMicros::now();
            let wait = match rooms.expire_due(now).await {
                Ok(()) => match rooms.store.next_deadline().await {
                    Ok(Some(deadline)) => until(now, deadline).clamp(MIN_WAIT, MAX_WAIT),
                    Ok(None) => MAX_WAIT,
                    Err(error) => {
                        tracing::warn!(%error, "could not read the next deadline");
                        MAX_WAIT
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "applying presence timeouts or room destruction failed");
                    MAX_WAIT
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = rooms.deadlines_changed.notified() => {}
                _ = stop.changed() => return,
            }
        }
    })
}

fn until(now: UnixMicros, deadline: UnixMicros) -> Duration {
    Duration::from_micros(u64::try_from(deadline.0 - now.0).unwrap_or(0))
}

impl Rooms {
    /// Removes members whose presence timeout passed and deletes rooms whose
    /// destroy-when-empty delay passed, as of `now`.
    async fn expire_due(&self, now: UnixMicros) -> Result<()> {
        for (room_id, user) in self.store.expired_members(now, ROUND).await? {
            if self.live.presence.is_online(&room_id, &user) {
                continue;
            }
            let mut tx = self.store.begin().await?;
            let Some(room) = tx.lock_room(&room_id).await? else {
                continue;
            };
            let Some(timeout) = room.settings.presence_timeout else {
                continue;
            };
            let cutoff = UnixMicros(now.0 - i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX));
            if !tx.member_offline_since(&room_id, &user, cutoff).await? {
                continue;
            }
            let Some((member, room)) = remove_member(&mut tx, &room_id, &user, Slot::Claim).await?
            else {
                continue;
            };
            tx.commit().await?;
            tracing::debug!(room = %room_id, user, "presence timeout: member removed");
            self.announce_leave(&room, member, DetachReason::PresenceTimeout, None);
        }
        for room_id in self.store.expired_rooms(now, ROUND).await? {
            let mut tx = self.store.begin().await?;
            if tx.lock_room(&room_id).await?.is_none() || !tx.room_expired(&room_id, now).await? {
                continue;
            }
            tx.delete_room(&room_id).await?;
            tx.commit().await?;
            tracing::debug!(room = %room_id, "empty room destroyed");
            self.live.hubs.room_deleted(&room_id);
        }
        Ok(())
    }
}
