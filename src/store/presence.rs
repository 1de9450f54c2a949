//! Presence and deadlines: last-seen times, due members, rooms to destroy.

use super::*;

impl Store {
    /// Marks a member online (`None`: a stream is attached) or offline since a time,
    /// which starts its presence timeout.
    pub async fn set_last_seen(
        &self,
        room_id: &RoomId,
        user_id: &str,
        last_seen: Option<UnixMicros>,
    ) -> Result<()> {
        on_writer!(self, c => {
            sqlx::query("UPDATE members SET last_seen_us = $3 WHERE room_id = $1 AND user_id = $2")
                .bind(room_id.as_str())
                .bind(user_id)
                .bind(last_seen.map(|t| t.0))
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// After a restart no stream is attached: members that were online when the last
    /// process ended start their presence timeout now.
    pub async fn mark_all_offline(&self, now: UnixMicros) -> Result<()> {
        on_writer!(self, c => {
            sqlx::query("UPDATE members SET last_seen_us = $1 WHERE last_seen_us IS NULL")
                .bind(now.0)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Members whose presence timeout has passed at `now`, earliest deadline first,
    /// after `after` (a `(deadline, room, user)` cursor), up to `limit`. Ordered and
    /// paged so that rows the caller skips (members online after all) cannot hide
    /// the ones behind them.
    pub async fn expired_members(
        &self,
        now: UnixMicros,
        after: &DueMember,
        limit: u32,
    ) -> Result<Vec<DueMember>> {
        let rows: Vec<(i64, String, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT m.last_seen_us + r.presence_timeout_ms * 1000 AS due, m.room_id, m.user_id \
                 FROM members m JOIN rooms r ON r.room_id = m.room_id \
                 WHERE r.presence_timeout_ms IS NOT NULL AND m.last_seen_us IS NOT NULL \
                   AND m.last_seen_us + r.presence_timeout_ms * 1000 <= $1 \
                   AND (m.last_seen_us + r.presence_timeout_ms * 1000, m.room_id, m.user_id) \
                       > ($2, $3, $4) \
                 ORDER BY due, m.room_id, m.user_id LIMIT $5",
            )
            .bind(now.0)
            .bind(after.due.0)
            .bind(after.room_id.as_str())
            .bind(&after.user_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(due, room, user)| DueMember {
                due: UnixMicros(due),
                room_id: RoomId::from_stored(room),
                user_id: user,
            })
            .collect())
    }

    /// Empty rooms whose `destroy_when_empty_after` has passed at `now` (up to `limit`).
    pub async fn expired_rooms(&self, now: UnixMicros, limit: u32) -> Result<Vec<RoomId>> {
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id FROM rooms \
                 WHERE member_count = 0 AND empty_since_us IS NOT NULL \
                   AND destroy_after_ms IS NOT NULL \
                   AND empty_since_us + destroy_after_ms * 1000 <= $1 \
                 LIMIT $2",
            )
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(r,)| RoomId::from_stored(r))
            .collect())
    }

    /// The earliest pending presence timeout or room destruction, if any.
    pub async fn next_deadline(&self) -> Result<Option<UnixMicros>> {
        let row: (Option<i64>,) = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT MIN(d) FROM ( \
                   SELECT MIN(empty_since_us + destroy_after_ms * 1000) AS d FROM rooms \
                   WHERE member_count = 0 AND empty_since_us IS NOT NULL AND destroy_after_ms IS NOT NULL \
                   UNION ALL \
                   SELECT MIN(m.last_seen_us + r.presence_timeout_ms * 1000) AS d \
                   FROM members m JOIN rooms r ON r.room_id = m.room_id \
                   WHERE r.presence_timeout_ms IS NOT NULL AND m.last_seen_us IS NOT NULL \
                 ) deadlines",
            )
            .fetch_one(pool)
            .await
        })?;
        Ok(row.0.map(UnixMicros))
    }
}

/// A member whose presence timeout is due, and when it was.
#[derive(Clone, Debug)]
pub struct DueMember {
    pub due: UnixMicros,
    pub room_id: RoomId,
    pub user_id: String,
}

impl DueMember {
    /// A cursor before every row.
    pub fn first() -> Self {
        DueMember {
            due: UnixMicros(i64::MIN),
            room_id: RoomId::from_stored(String::new()),
            user_id: String::new(),
        }
    }
}

impl Tx {
    /// Whether the member has been offline since `cutoff` or earlier.
    pub async fn member_offline_since(
        &mut self,
        room_id: &RoomId,
        user_id: &str,
        cutoff: UnixMicros,
    ) -> Result<bool> {
        let row: Option<(i32,)> = on_tx!(self, c => {
            sqlx::query_as(
                "SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2 \
                 AND last_seen_us IS NOT NULL AND last_seen_us <= $3",
            )
            .bind(room_id.as_str())
            .bind(user_id)
            .bind(cutoff.0)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.is_some())
    }

    /// Whether the room is empty and its destroy-when-empty delay has passed at `now`.
    pub async fn room_expired(&mut self, room_id: &RoomId, now: UnixMicros) -> Result<bool> {
        let row: Option<(i32,)> = on_tx!(self, c => {
            sqlx::query_as(
                "SELECT 1 FROM rooms WHERE room_id = $1 AND member_count = 0 \
                 AND empty_since_us IS NOT NULL AND destroy_after_ms IS NOT NULL \
                 AND empty_since_us + destroy_after_ms * 1000 <= $2",
            )
            .bind(room_id.as_str())
            .bind(now.0)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.is_some())
    }
}
