//! History retention: where each room's kept history starts, and deleting its oldest
//! messages.
//!
//! A room's messages are numbered 1, 2, … by the writer and never renumbered, so what
//! is kept is always a contiguous run ending at `rooms.last_seq`, and where it starts
//! is simply the lowest seq left (one probe of the primary key). Nothing else records
//! what was deleted: no extra table to keep in step with DeleteRoom, no extra write on
//! the send path.

use super::*;

/// Where one room's kept history starts.
#[derive(Clone, Debug)]
pub struct HistorySpan {
    pub room_id: RoomId,
    pub last_seq: u64,
    /// The oldest kept message's seq and when it was sent; `None`: none kept.
    pub oldest: Option<(u64, UnixMicros)>,
}

#[derive(sqlx::FromRow)]
struct SpanRow {
    room_id: String,
    last_seq: i64,
    first_seq: Option<i64>,
    first_sent_at_us: Option<i64>,
}

impl Store {
    /// The history spans of up to `limit` rooms with ids above `after`, by id.
    pub async fn history_spans(
        &self,
        after: Option<&RoomId>,
        limit: u32,
    ) -> Result<Vec<HistorySpan>> {
        let rows: Vec<SpanRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id, last_seq, \
                   (SELECT seq FROM messages m WHERE m.room_id = r.room_id \
                    ORDER BY seq LIMIT 1) AS first_seq, \
                   (SELECT sent_at_us FROM messages m WHERE m.room_id = r.room_id \
                    ORDER BY seq LIMIT 1) AS first_sent_at_us \
                 FROM rooms r WHERE room_id > $1 ORDER BY room_id LIMIT $2",
            )
            .bind(after.map_or("", |r| r.as_str()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|row| HistorySpan {
                room_id: RoomId::from_stored(row.room_id),
                last_seq: u64::try_from(row.last_seq).unwrap_or(0),
                oldest: row
                    .first_seq
                    .zip(row.first_sent_at_us)
                    .map(|(seq, at)| (u64::try_from(seq).unwrap_or(0), UnixMicros(at))),
            })
            .collect())
    }

    /// The highest seq among a room's `within` oldest kept messages that was sent
    /// before `cutoff` (`None`: the oldest was not).
    pub async fn last_seq_sent_before(
        &self,
        room_id: &RoomId,
        cutoff: UnixMicros,
        within: u32,
    ) -> Result<Option<u64>> {
        let seq: Option<(Option<i64>,)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT MAX(seq) FROM ( \
                   SELECT seq, sent_at_us FROM messages WHERE room_id = $1 \
                   ORDER BY seq LIMIT $3 \
                 ) oldest WHERE sent_at_us < $2",
            )
            .bind(room_id.as_str())
            .bind(cutoff.0)
            .bind(i64::from(within))
            .fetch_optional(pool)
            .await
        })?;
        Ok(seq
            .and_then(|(s,)| s)
            .map(|s| u64::try_from(s).unwrap_or(0)))
    }

    /// Deletes a room's messages up to and including `through`; how many there were.
    /// One short statement on the primary key: sends to the room insert above it and
    /// do not wait on it (on SQLite they queue behind it for its few milliseconds).
    pub async fn delete_history_through(&self, room_id: &RoomId, through: u64) -> Result<u64> {
        let done = on_writer!(self, c => {
            sqlx::query("DELETE FROM messages WHERE room_id = $1 AND seq <= $2")
                .bind(room_id.as_str())
                .bind(to_i64(through))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }
}
