//! Membership statements within a transaction: member rows, user room counts,
//! member counts — one at a time and for a whole batch.

use super::*;

impl Tx {
    /// The members among `(room, user)` keys, with their rooms' ids.
    pub async fn members_among(&mut self, keys: &[(&str, &str)]) -> Result<Vec<(String, Member)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, MemberRow)> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
                let rows: Vec<KeyedMemberRow> = sqlx::query_as(concat!(
                    "SELECT room_id, ",
                    member_columns!(),
                    " FROM members JOIN UNNEST($1::text[], $2::text[]) AS k(r, u) \
                      ON room_id = k.r AND user_id = k.u"
                ))
                .bind(rooms)
                .bind(users)
                .fetch_all(&mut **tx)
                .await?;
                rows.into_iter().map(|r| (r.room_id, r.member)).collect()
            }
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::new();
                for (room, user) in keys {
                    let row: Option<MemberRow> = sqlx::query_as(member_by_key!())
                        .bind(room)
                        .bind(user)
                        .fetch_optional(&mut **tx)
                        .await?;
                    rows.extend(row.map(|m| (room.to_string(), m)));
                }
                rows
            }
        };
        rows.into_iter()
            .map(|(room, m)| Ok((room, Member::try_from(m)?)))
            .collect()
    }

    /// Counts one more room for each of `users` (distinct) unless that would exceed
    /// `limit` (0 means unlimited); returns the users whose slot was claimed.
    pub async fn claim_room_slots(&mut self, users: &[&str], limit: u32) -> Result<Vec<String>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut users = users.to_vec();
        users.sort_unstable();
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(sqlx::query_scalar(
                "INSERT INTO user_rooms (user_id, room_count) \
                 SELECT u, 1 FROM UNNEST($1::text[]) AS k(u) \
                 ON CONFLICT (user_id) DO UPDATE SET room_count = user_rooms.room_count + 1 \
                 WHERE $2 = 0 OR user_rooms.room_count < $2 \
                 RETURNING user_id",
            )
            .bind(users)
            .bind(i64::from(limit))
            .fetch_all(&mut **tx)
            .await?),
            TxInner::Sqlite(_) => {
                let mut claimed = Vec::with_capacity(users.len());
                for user in users {
                    if self.claim_room_slot(user, limit).await? {
                        claimed.push(user.to_string());
                    }
                }
                Ok(claimed)
            }
        }
    }

    /// Counts one room fewer for each of `users` (distinct).
    pub async fn release_room_slots(&mut self, users: &[&str]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut users = users.to_vec();
        users.sort_unstable();
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                sqlx::query(
                    "UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = ANY($1)",
                )
                .bind(users)
                .execute(&mut **tx)
                .await?;
            }
            TxInner::Sqlite(_) => {
                for user in users {
                    self.release_room_slot(user).await?;
                }
            }
        }
        Ok(())
    }

    /// Adds members to rooms that exist and that they are not members of yet; each
    /// starts as seen at its join time.
    pub async fn insert_members(&mut self, members: &[(&RoomId, &Member)]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                let rooms: Vec<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
                let users: Vec<&str> = members.iter().map(|(_, m)| m.user_id.as_str()).collect();
                let names: Vec<&str> = members
                    .iter()
                    .map(|(_, m)| m.display_name.as_str())
                    .collect();
                let roles: Vec<i64> = members
                    .iter()
                    .map(|(_, m)| rows::role_column(m.role))
                    .collect();
                let joined: Vec<i64> = members.iter().map(|(_, m)| m.joined_at.0).collect();
                sqlx::query(
                    "INSERT INTO members (room_id, user_id, display_name, role, joined_at_us, last_seen_us) \
                     SELECT r, u, n, role, t, t \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                       AS k(r, u, n, role, t)",
                )
                .bind(rooms)
                .bind(users)
                .bind(names)
                .bind(roles)
                .bind(joined)
                .execute(&mut **tx)
                .await?;
            }
            TxInner::Sqlite(tx) => {
                for (room, m) in members {
                    sqlx::query(
                        "INSERT INTO members (room_id, user_id, display_name, role, joined_at_us, last_seen_us) \
                         VALUES ($1, $2, $3, $4, $5, $5)",
                    )
                    .bind(room.as_str())
                    .bind(&m.user_id)
                    .bind(&m.display_name)
                    .bind(rows::role_column(m.role))
                    .bind(m.joined_at.0)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Removes members by `(room, user)` key; returns how many rows went.
    pub async fn delete_members(&mut self, keys: &[(&str, &str)]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
                let done = sqlx::query(
                    "DELETE FROM members USING UNNEST($1::text[], $2::text[]) AS k(r, u) \
                     WHERE room_id = k.r AND user_id = k.u",
                )
                .bind(rooms)
                .bind(users)
                .execute(&mut **tx)
                .await?;
                Ok(done.rows_affected())
            }
            TxInner::Sqlite(tx) => {
                let mut removed = 0;
                for (room, user) in keys {
                    removed +=
                        sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
                            .bind(room)
                            .bind(user)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                }
                Ok(removed)
            }
        }
    }

    /// Adds a delta to each room's member count (recording when a room became
    /// empty) and returns the rooms after.
    pub async fn add_member_counts(
        &mut self,
        deltas: &[(&RoomId, i64)],
        now: UnixMicros,
    ) -> Result<Vec<Room>> {
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                let rooms: Vec<&str> = deltas.iter().map(|(r, _)| r.as_str()).collect();
                let ds: Vec<i64> = deltas.iter().map(|&(_, d)| d).collect();
                let rows: Vec<RoomRow> = sqlx::query_as(concat!(
                    "UPDATE rooms SET member_count = member_count + k.d, \
                         empty_since_us = CASE WHEN member_count + k.d = 0 THEN $3 ELSE NULL END \
                     FROM UNNEST($1::text[], $2::bigint[]) AS k(r, d) \
                     WHERE room_id = k.r RETURNING ",
                    room_columns!()
                ))
                .bind(rooms)
                .bind(ds)
                .bind(now.0)
                .fetch_all(&mut **tx)
                .await?;
                rows.into_iter().map(Room::try_from).collect()
            }
            TxInner::Sqlite(_) => {
                let mut rooms = Vec::with_capacity(deltas.len());
                for &(room, d) in deltas {
                    rooms.push(self.change_member_count(room, d, now).await?);
                }
                Ok(rooms)
            }
        }
    }

    /// Reads one member of a room.
    pub async fn member(&mut self, room_id: &RoomId, user_id: &str) -> Result<Option<Member>> {
        let row: Option<MemberRow> = on_tx!(self, c => {
            sqlx::query_as(member_by_key!())
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(c)
            .await
        })?;
        row.map(Member::try_from).transpose()
    }

    /// Adds `delta` to the room's member count, records when it became empty, and
    /// returns the room.
    async fn change_member_count(
        &mut self,
        room_id: &RoomId,
        delta: i64,
        now: UnixMicros,
    ) -> Result<Room> {
        let row: RoomRow = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE rooms SET member_count = member_count + $2, \
                     empty_since_us = CASE WHEN member_count + $2 = 0 THEN $3 ELSE NULL END \
                 WHERE room_id = $1 RETURNING ",
                room_columns!()
            ))
            .bind(room_id.as_str())
            .bind(delta)
            .bind(now.0)
            .fetch_one(c)
            .await
        })?;
        Room::try_from(row)
    }

    /// Counts one more room for `user_id` unless that would exceed `limit` (0 means
    /// unlimited); false when it would.
    async fn claim_room_slot(&mut self, user_id: &str, limit: u32) -> Result<bool> {
        let claimed: Option<(i64,)> = on_tx!(self, c => {
            sqlx::query_as(
                "INSERT INTO user_rooms (user_id, room_count) VALUES ($1, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET room_count = user_rooms.room_count + 1 \
                 WHERE $2 = 0 OR user_rooms.room_count < $2 \
                 RETURNING room_count",
            )
            .bind(user_id)
            .bind(i64::from(limit))
            .fetch_optional(c)
            .await
        })?;
        Ok(claimed.is_some())
    }

    /// Counts one room fewer for `user_id`.
    async fn release_room_slot(&mut self, user_id: &str) -> Result<()> {
        on_tx!(self, c => {
            sqlx::query("UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = $1")
                .bind(user_id)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }
}
