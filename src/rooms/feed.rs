//! The room feed (WatchRooms): every room's lifecycle, across all rooms and nodes,
//! in one resumable order.
//!
//! The events are written by the transactions that make them — the membership
//! writer's batches (created, joined, left, kicked, banned, occupied, empty, and
//! deleted when empty), UpdateRoom and DeleteRoom, SetMemberRole and
//! TransferOwnership — as their last statement (`Tx::append_feed`), so an event is
//! stored exactly when its change is, numbered in commit order with no gaps. A watch
//! reads them back by position: a page at a time while it is behind, then, once it
//! has read everything, whenever this node commits more ([`FeedNews`]) or every
//! [`POLL`] (for what other nodes, on the same database, commit). What a watch
//! reads next is always the position after the last it read, so it never skips or
//! repeats one, and a position retention deleted shows as a gap it reports.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::Stream;

use crate::domain::{Caller, Clock, FeedEntry, FeedEvent, UnixMicros};
use crate::error::{Error, Result};
use crate::store::{Store, Tx};

/// Most events read (and sent) at once.
const PAGE: u32 = 256;
/// How often a watch that has read everything looks for events committed by other
/// processes on the same database (this node's own wake it at once).
const POLL: Duration = Duration::from_millis(200);
/// How often retention looks for events past their age.
const PRUNE_ROUND: Duration = Duration::from_secs(10);
/// Most events one delete statement removes.
const PRUNE_BATCH: u32 = 5_000;
/// Pause between delete statements, so queued writes go first.
const PRUNE_PAUSE: Duration = Duration::from_millis(5);

/// The last feed position this node committed: watches wait on it.
#[derive(Debug)]
pub struct FeedNews(watch::Sender<u64>);

impl Default for FeedNews {
    fn default() -> Self {
        FeedNews(watch::Sender::new(0))
    }
}

impl FeedNews {
    /// Commits `tx` with `events` (none: just commits), made at `at`: they are
    /// appended to the feed as its last statement, as the feed's order requires (see
    /// `store::feed`), and this node's watches are told once the commit holds. Every
    /// transaction that writes feed events commits through here.
    pub async fn commit(&self, mut tx: Tx, events: &[FeedEntry], at: UnixMicros) -> Result<()> {
        let last = tx.append_feed(events, at).await?;
        tx.commit().await?;
        self.committed(last);
        Ok(())
    }

    /// Tells the watches that the feed reached `last`.
    fn committed(&self, last: Option<u64>) {
        if let Some(last) = last {
            self.0.send_if_modified(|head| {
                let newer = last > *head;
                *head = (*head).max(last);
                newer
            });
        }
    }
}

/// What a watch sends: the events it read, and how far it has read (where a resume
/// starts). The first has no events: it says where the watch starts.
#[derive(Debug)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    pub position: u64,
}

/// The feed's handle.
#[derive(Clone)]
pub struct RoomFeed {
    store: Store,
    news: Arc<FeedNews>,
}

impl RoomFeed {
    /// The feed over `store`, its watches woken by `news`.
    pub(super) fn new(store: &Store, news: Arc<FeedNews>) -> RoomFeed {
        RoomFeed {
            store: store.clone(),
            news,
        }
    }

    /// A watch of the feed for `caller` (an admin), from after `after` (`None`: from
    /// the feed's last position now). Refused before anything is sent when `after`
    /// is no longer kept (POSITION_EXPIRED) or not reached yet (POSITION_AHEAD). The
    /// events of rooms the caller's token does not name are left out.
    pub async fn watch(
        &self,
        caller: Caller,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<FeedPage>> + Send + 'static> {
        if !caller.admin {
            return Err(Error::NotAnAdmin);
        }
        let (last, oldest) = self.store.feed_ends().await?;
        let start = after.unwrap_or(last);
        if start > last {
            return Err(Error::PositionAhead { last });
        }
        if start < last && oldest.is_none_or(|oldest| start + 1 < oldest) {
            return Err(Error::PositionExpired {
                oldest: oldest.unwrap_or(last + 1),
            });
        }
        let store = self.store.clone();
        let mut news = self.news.0.subscribe();
        Ok(async_stream::try_stream! {
            yield FeedPage { events: Vec::new(), position: start };
            let mut position = start;
            loop {
                let mut events = read_after(&store, position).await?;
                if events.is_empty() {
                    // Everything is read: wait for this node's next commit, or look
                    // again for other nodes'.
                    tokio::select! {
                        _ = news.changed() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                    continue;
                }
                position = events.last().map_or(position, |e| e.position);
                events.retain(|e| caller.may_enter(&e.entry.room_id));
                if !events.is_empty() {
                    yield FeedPage { events, position };
                }
            }
        })
    }
}

/// The events after `position` (a page), or POSITION_EXPIRED when retention deleted
/// the next one: the feed has no gaps of its own, so a page that does not start
/// right after `position`, or none where the feed has gone further, is one.
async fn read_after(store: &Store, position: u64) -> Result<Vec<FeedEvent>> {
    let events = store.feed_after(position, PAGE).await?;
    match events.first() {
        Some(first) if first.position == position + 1 => Ok(events),
        Some(first) => Err(Error::PositionExpired {
            oldest: first.position,
        }),
        None => {
            // Empty: read the end first, then look again — what committed before
            // the end was read is visible to the second look unless deleted.
            let (last, oldest) = store.feed_ends().await?;
            if last <= position {
                return Ok(Vec::new());
            }
            let events = store.feed_after(position, PAGE).await?;
            match events.first() {
                Some(first) if first.position == position + 1 => Ok(events),
                _ => Err(Error::PositionExpired {
                    oldest: oldest.unwrap_or(last + 1),
                }),
            }
        }
    }
}

/// Starts the feed's retention: events older than `keep` are deleted, the oldest
/// first, a batch per statement. Ends when `stop` turns true.
pub fn start_pruning(
    store: Store,
    keep: Duration,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cutoff = clock.now().minus(keep);
            loop {
                match store.prune_feed(cutoff, PRUNE_BATCH).await {
                    Ok(deleted) => {
                        crate::telemetry::feed_pruned(deleted);
                        if deleted < u64::from(PRUNE_BATCH) || *stop.borrow() {
                            break;
                        }
                        tokio::time::sleep(PRUNE_PAUSE).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "pruning the room feed failed; retrying next round");
                        break;
                    }
                }
            }
            tokio::select! {
                () = clock.sleep(PRUNE_ROUND) => {}
                _ = stop.changed() => return,
            }
        }
    })
}
