//! History retention: `--history-retention` (age) and `--history-max-per-room` (count).
//!
//! One background task walks the rooms every [`ROUND`] and deletes, per room, the
//! oldest messages past either limit — at most [`BATCH`] rows per statement, pausing
//! between statements, so a backlog (retention switched on over years of history)
//! is worked off without ever holding the writers' connection for long. What is kept
//! stays a contiguous run of seqs ending at the room's last one: age is applied to
//! the oldest messages first and stops at the first one young enough, so a resuming
//! stream can tell exactly whether it missed anything (`Access::history_truncated`).
//!
//! A room passes its limit and is pruned within one round plus the time the rooms
//! before it take; the deletion is not in the send path at all.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::{Clock, RoomId, UnixMicros};
use crate::error::Result;
use crate::store::{HistorySpan, Store};

/// How often the rooms are walked.
const ROUND: Duration = Duration::from_secs(2);
/// Rooms read per page of the walk.
const ROOMS_PER_PAGE: u32 = 500;
/// Most messages one delete statement removes.
const BATCH: u32 = 1_000;
/// Pause between delete statements, so queued writes go first.
const PAUSE: Duration = Duration::from_millis(5);

/// What history to keep. Both limits apply when both are set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Messages older than this are deleted.
    pub max_age: Option<Duration>,
    /// Only the newest this many messages of a room are kept.
    pub max_per_room: Option<u64>,
}

impl Retention {
    /// Whether any history is ever deleted.
    pub fn is_on(&self) -> bool {
        self.max_age.is_some() || self.max_per_room.is_some()
    }

    /// The last seq to delete of a room as `span` shows it, within one batch from its
    /// oldest message (`None`: nothing to delete). For the age limit the store finds
    /// the newest of the batch sent before `cutoff`.
    async fn prune_through(
        &self,
        span: &HistorySpan,
        cutoff: Option<UnixMicros>,
        store: &Store,
    ) -> Result<Option<u64>> {
        let Some((first, first_sent)) = span.oldest else {
            return Ok(None);
        };
        let batch_end = first + u64::from(BATCH) - 1;
        let mut through = None;
        if let Some(keep) = self.max_per_room
            && span.last_seq >= first + keep
        {
            through = Some(span.last_seq - keep);
        }
        if let Some(cutoff) = cutoff
            && first_sent < cutoff
            && let Some(old) = store
                .last_seq_sent_before(&span.room_id, cutoff, BATCH)
                .await?
        {
            through = through.max(Some(old));
        }
        Ok(through.map(|t| t.min(batch_end)))
    }
}

/// Starts the retention task (nothing when no limit is set); it ends when `stop`
/// turns true.
pub fn start(
    store: Store,
    retention: Retention,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !retention.is_on() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            if let Err(error) = prune_round(&store, retention, &clock, &stop).await {
                tracing::warn!(%error, "pruning history failed; retrying next round");
            }
            tokio::select! {
                () = clock.sleep(ROUND) => {}
                _ = stop.changed() => return,
            }
        }
    }))
}

/// One walk over every room, deleting what is past the limits.
async fn prune_round(
    store: &Store,
    retention: Retention,
    clock: &Clock,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    let mut after: Option<RoomId> = None;
    loop {
        let page = store.history_spans(after.as_ref(), ROOMS_PER_PAGE).await?;
        let last_page = page.len() < ROOMS_PER_PAGE as usize;
        for span in &page {
            let cutoff = retention.max_age.map(|age| clock.now().minus(age));
            prune_room(store, retention, cutoff, span.clone(), stop).await?;
            if *stop.borrow() {
                return Ok(());
            }
        }
        match (last_page, page.into_iter().last()) {
            (false, Some(span)) => after = Some(span.room_id),
            _ => return Ok(()),
        }
    }
}

/// Deletes one room's history past the limits (sent before `cutoff`, or past the
/// count), a batch at a time.
async fn prune_room(
    store: &Store,
    retention: Retention,
    cutoff: Option<UnixMicros>,
    mut span: HistorySpan,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    while let Some(through) = retention.prune_through(&span, cutoff, store).await? {
        let deleted = store.delete_history_through(&span.room_id, through).await?;
        crate::telemetry::history_pruned(deleted);
        tracing::debug!(room_id = %span.room_id, through, deleted, "pruned history");
        if *stop.borrow() {
            return Ok(());
        }
        tokio::time::sleep(PAUSE).await;
        // What is left: the next batch starts after `through`. Its send time is read
        // again with the next batch's seqs, so only the seq matters here.
        span.oldest = span
            .oldest
            .filter(|_| through < span.last_seq)
            .map(|(_, sent)| (through + 1, sent));
    }
    Ok(())
}
