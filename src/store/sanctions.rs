//! Sanctions: users kept out of a room (bans; kind 1) or kept from sending to it
//! (mutes; kind 2), each until a time or until lifted. Every read takes only those
//! in force at the `now` it is given; expired rows are deleted when their room gets
//! its next sanction.

use super::*;
use crate::domain::{Sanction, SanctionKind};
use rows::SanctionRow;

/// A kind of sanction as stored.
fn stored(kind: SanctionKind) -> i64 {
    match kind {
        SanctionKind::Ban => 1,
        // Also written in `speaker_columns!` and `Store::room_for_reader`.
        SanctionKind::Mute => 2,
    }
}

impl Tx {
    /// Sanctions users in rooms, each replacing an earlier sanction of the same kind
    /// on the same user there; the rooms' expired sanctions go. Rows are few (one per
    /// moderator action): a statement each.
    pub async fn put_sanctions(
        &mut self,
        kind: SanctionKind,
        sanctions: &[(&RoomId, &Sanction)],
        now: UnixMicros,
    ) -> Result<()> {
        for (room_id, sanction) in sanctions {
            on_tx!(self, c => {
                sqlx::query("DELETE FROM sanctions WHERE room_id = $1 AND until_us <= $2")
                    .bind(room_id.as_str())
                    .bind(now.0)
                    .execute(c)
                    .await
                    .map(drop)
            })?;
            on_tx!(self, c => {
                sqlx::query(
                    "INSERT INTO sanctions (room_id, user_id, kind, by_user, at_us, until_us) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (room_id, kind, user_id) DO UPDATE SET \
                         by_user = excluded.by_user, at_us = excluded.at_us, \
                         until_us = excluded.until_us",
                )
                .bind(room_id.as_str())
                .bind(&sanction.user_id)
                .bind(stored(kind))
                .bind(&sanction.by)
                .bind(sanction.at.0)
                .bind(sanction.expires_at.map(|t| t.0))
                .execute(c)
                .await
                .map(drop)
            })?;
        }
        Ok(())
    }

    /// Lifts a user's sanction of `kind` in a room; false when there was none.
    pub async fn lift_sanction(
        &mut self,
        kind: SanctionKind,
        room_id: &RoomId,
        user_id: &str,
    ) -> Result<bool> {
        let done = on_tx!(self, c => {
            sqlx::query("DELETE FROM sanctions WHERE room_id = $1 AND kind = $2 AND user_id = $3")
                .bind(room_id.as_str())
                .bind(stored(kind))
                .bind(user_id)
                .execute(c)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done > 0)
    }

    /// The sanctions of `kind` in force at `now` among `(room, user)` keys, with their
    /// rooms' ids.
    pub async fn sanctions_among(
        &mut self,
        kind: SanctionKind,
        keys: &[(&str, &str)],
        now: UnixMicros,
    ) -> Result<Vec<(String, Sanction)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = by_dialect!(self, sanctions_among(keys, stored(kind), now))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.room_id, Sanction::from(r.sanction)))
            .collect())
    }
}

impl Store {
    /// A user's sanction of `kind` in a room in force at `now`, if any.
    pub async fn sanction(
        &self,
        kind: SanctionKind,
        room_id: &RoomId,
        user_id: &str,
        now: UnixMicros,
    ) -> Result<Option<Sanction>> {
        let row: Option<SanctionRow> = on_pool!(self, pool => {
            sqlx::query_as(sanction_by_key!())
            .bind(room_id.as_str())
            .bind(stored(kind))
            .bind(user_id)
            .bind(now.0)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Sanction::from))
    }

    /// Up to `limit` sanctions of `kind` in a room in force at `now`, by user id after
    /// `after`.
    pub async fn sanctions(
        &self,
        kind: SanctionKind,
        room_id: &RoomId,
        after: Option<&str>,
        limit: u32,
        now: UnixMicros,
    ) -> Result<Vec<Sanction>> {
        let rows: Vec<SanctionRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", sanction_columns!(), " FROM sanctions \
                 WHERE room_id = $1 AND kind = $2 AND user_id > $3 \
                   AND (until_us IS NULL OR until_us > $4) \
                 ORDER BY user_id LIMIT $5"
            ))
            .bind(room_id.as_str())
            .bind(stored(kind))
            .bind(after.unwrap_or(""))
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Sanction::from).collect())
    }
}
