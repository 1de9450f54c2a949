//! Timers that survive restarts: presence timeouts and destroy-when-empty.
//!
//! Deadlines are not kept in memory but derived from the database (`members.last_seen_us`
//! plus the room's `presence_timeout`, `rooms.empty_since_us` plus its
//! `destroy_when_empty_after`), so after a restart the overdue ones still happen. One
//! task sleeps until the earliest deadline — woken early when a new one starts — and
//! hands whatever is due to the membership writer, which re-checks each under its
//! room's lock (a member who came back online, or a room someone joined, stays).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::presence::Online;
use super::roster::Roster;
use crate::domain::{Clock, UnixMicros};
use crate::error::Result;
use crate::store::{DueMember, Store};

/// The expiry handle: what applying due deadlines needs.
#[derive(Clone)]
pub struct Expiry {
    pub(super) store: Store,
    /// Applies the removals and deletions, re-checking each under its room's lock.
    pub(super) roster: Roster,
    /// Who is online after all; its `deadlines_changed` wakes the task.
    pub(super) online: Online,
    /// What deadlines are due by, and what the task waits on.
    pub(super) clock: Clock,
}

/// Longest sleep: deadlines made by another process are noticed at least this often.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Shortest sleep, so a deadline that cannot be applied yet is not spun on.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// Removals after which a round ends, and rows read per page.
const ROUND: u32 = 200;
/// Most pages of due members read per round (online ones are skipped).
const MAX_PAGES: usize = 8;

/// Starts the expiry task; it ends when `stop` turns true.
pub fn start(expiry: Expiry, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = expiry.clock.now();
            let wait = match expiry.expire_due(now).await {
                Ok(()) => match expiry.store.next_deadline().await {
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
                () = expiry.clock.sleep(wait) => {}
                () = expiry.online.deadlines_changed.notified() => {}
                _ = stop.changed() => return,
            }
        }
    })
}

fn until(now: UnixMicros, deadline: UnixMicros) -> Duration {
    Duration::from_micros(u64::try_from(deadline.0 - now.0).unwrap_or(0))
}

impl Expiry {
    /// Removes members whose presence timeout passed and deletes rooms whose
    /// destroy-when-empty delay passed, as of `now`. Both are changes of membership,
    /// so the membership writer applies them, re-checking each under its room's lock.
    async fn expire_due(&self, now: UnixMicros) -> Result<()> {
        let mut cursor = DueMember::first();
        let mut removed = 0;
        for _ in 0..MAX_PAGES {
            let due = self.store.expired_members(now, &cursor, ROUND).await?;
            let last_page = due.len() < ROUND as usize;
            let mut offline = Vec::with_capacity(due.len());
            for member in due {
                cursor = member.clone();
                let DueMember {
                    room_id, user_id, ..
                } = member;
                if self.online.memory.is_online(&room_id, &user_id) {
                    // Attached after all: its stored last-seen lost a race with an
                    // attach. Store that it is online, so it is not due again.
                    if let Err(error) = self.online.sync(&room_id, &user_id).await {
                        tracing::warn!(%error, room = %room_id, user = user_id, "could not record presence");
                    }
                    continue;
                }
                offline.push((room_id, user_id));
            }
            removed += self.roster.expire(offline, now).await?;
            if last_page || removed >= ROUND as usize {
                break;
            }
        }
        for room_id in self.store.expired_rooms(now, ROUND).await? {
            self.roster.destroy(&room_id, now).await?;
        }
        Ok(())
    }
}
