//! The room feed (WatchRooms): events appended by the transactions that make them,
//! read by position, and the oldest deleted past their age.
//!
//! Positions are dense and in commit order (see the migration): `append_feed` bumps
//! the one head row by the number of events and writes them under the numbers it
//! freed, and it is the last statement of its transaction, so the head row's lock —
//! which the next feed-writing transaction, on any node, waits for — is held only
//! for the commit. A reader that sees position n therefore has every position below
//! it, and a gap in what it reads can only be retention's doing.

use super::*;
use crate::domain::{FeedEntry, FeedEvent, FeedKind};

#[derive(sqlx::FromRow)]
struct FeedRow {
    position: i64,
    at_us: i64,
    room_id: String,
    kind: i64,
    user_id: String,
    by_user: String,
    role: i64,
}

impl TryFrom<FeedRow> for FeedEvent {
    type Error = Error;

    fn try_from(row: FeedRow) -> Result<FeedEvent> {
        let kind = FeedKind::from_number(row.kind)
            .ok_or_else(|| Error::Internal(format!("unknown feed kind {}", row.kind)))?;
        Ok(FeedEvent {
            position: u64::try_from(row.position).unwrap_or(0),
            at: UnixMicros(row.at_us),
            entry: FeedEntry {
                room_id: RoomId::from_stored(row.room_id),
                kind,
                user_id: row.user_id,
                by: row.by_user,
                role: (row.role != 0).then(|| rows::role_of(row.role)),
            },
        })
    }
}

/// An entry's columns, as the dialects' statements bind them.
pub(super) struct FeedColumns<'a> {
    pub room_id: &'a str,
    pub kind: i64,
    pub user_id: &'a str,
    pub by_user: &'a str,
    pub role: i64,
}

impl<'a> From<&'a FeedEntry> for FeedColumns<'a> {
    fn from(entry: &'a FeedEntry) -> Self {
        FeedColumns {
            room_id: entry.room_id.as_str(),
            kind: i64::from(entry.kind.number()),
            user_id: &entry.user_id,
            by_user: &entry.by,
            role: entry.role.map_or(0, rows::role_column),
        }
    }
}

impl Tx {
    /// Appends events to the feed at `at`, after everything committed before; the
    /// feed's last position after them (`None`: no events, nothing written). Call it
    /// last before the commit (`rooms::feed::FeedNews::commit` does): from here to the
    /// commit, every other feed-writing transaction waits.
    pub async fn append_feed(
        &mut self,
        entries: &[FeedEntry],
        at: UnixMicros,
    ) -> Result<Option<u64>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let columns: Vec<FeedColumns> = entries.iter().map(FeedColumns::from).collect();
        let last = by_dialect!(self, append_feed(&columns, at))?;
        Ok(Some(u64::try_from(last).unwrap_or(0)))
    }
}

impl Store {
    /// Up to `limit` events after `after`, oldest first.
    pub async fn feed_after(&self, after: u64, limit: u32) -> Result<Vec<FeedEvent>> {
        let rows: Vec<FeedRow> = on_pool!(self, c => {
            sqlx::query_as(
                "SELECT position, at_us, room_id, kind, user_id, by_user, role FROM room_feed \
                 WHERE position > $1 ORDER BY position LIMIT $2",
            )
            .bind(to_i64(after))
            .bind(i64::from(limit))
            .fetch_all(c)
            .await
        })?;
        rows.into_iter().map(FeedEvent::try_from).collect()
    }

    /// The feed's last position (0: nothing was ever appended), and its oldest kept
    /// (`None`: none kept).
    pub async fn feed_ends(&self) -> Result<(u64, Option<u64>)> {
        let (last, oldest): (i64, Option<i64>) = on_pool!(self, c => {
            sqlx::query_as(
                "SELECT position, (SELECT MIN(position) FROM room_feed) FROM room_feed_head",
            )
            .fetch_one(c)
            .await
        })?;
        let number = |p: i64| u64::try_from(p).unwrap_or(0);
        Ok((number(last), oldest.map(number)))
    }

    /// Deletes the feed's oldest events made before `cutoff`, at most `within` of
    /// them (what is kept stays a run ending at the last position); how many went.
    pub async fn prune_feed(&self, cutoff: UnixMicros, within: u32) -> Result<u64> {
        let deleted = on_writer!(self, c => {
            sqlx::query(
                "DELETE FROM room_feed WHERE position <= ( \
                   SELECT MAX(position) FROM ( \
                     SELECT position, at_us FROM room_feed ORDER BY position LIMIT $2 \
                   ) oldest WHERE at_us < $1)",
            )
            .bind(cutoff.0)
            .bind(i64::from(within))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(deleted)
    }
}
