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

use super::{Rooms, UserSlot, remove_member};
use crate::domain::{DetachReason, RoomId, UnixMicros};
use crate::error::Result;
use crate::store::DueMember;

/// Longest sleep: deadlines made by another process are noticed at least this often.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Shortest sleep, so a deadline that cannot be applied yet is not spun on.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// Most removals applied per round, and rows read per page.
const ROUND: u32 = 200;
/// Most pages of due members read per round (online ones are skipped).
const MAX_PAGES: usize = 8;

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
        let mut cursor = DueMember::first();
        let mut removed = 0;
        'pages: for _ in 0..MAX_PAGES {
            let due = self.store.expired_members(now, &cursor, ROUND).await?;
            let last_page = due.len() < ROUND as usize;
            for member in due {
                cursor = member.clone();
                let DueMember {
                    room_id, user_id, ..
                } = member;
                if self.live.presence.is_online(&room_id, &user_id) {
                    // Attached after all: its stored last-seen lost a race with an
                    // attach. Store that it is online, so it is not due again.
                    if let Err(error) = self.sync_presence(&room_id, &user_id).await {
                        tracing::warn!(%error, room = %room_id, user = user_id, "could not record presence");
                    }
                    continue;
                }
                if self.expire_member(&room_id, &user_id, now).await? {
                    removed += 1;
                    if removed == ROUND {
                        break 'pages;
                    }
                }
            }
            if last_page {
                break;
            }
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

    /// Removes a member whose presence timeout passed, re-checked under its room's
    /// lock; true when it was removed.
    async fn expire_member(&self, room_id: &RoomId, user: &str, now: UnixMicros) -> Result<bool> {
        let mut tx = self.store.begin().await?;
        let Some(room) = tx.lock_room(room_id).await? else {
            return Ok(false);
        };
        let Some(timeout) = room.settings.presence_timeout else {
            return Ok(false);
        };
        let cutoff = UnixMicros(now.0 - i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX));
        if !tx.member_offline_since(room_id, user, cutoff).await? {
            return Ok(false);
        }
        let Some((member, room)) = remove_member(&mut tx, room_id, user, UserSlot::Counted).await?
        else {
            return Ok(false);
        };
        // Before the commit, as for every leave (see `announce_leave`).
        self.live
            .hubs
            .detach_user(room_id, user, DetachReason::PresenceTimeout, None);
        tx.commit().await?;
        tracing::debug!(room = %room_id, user, "presence timeout: member removed");
        self.announce_leave(&room, member);
        Ok(true)
    }
}
