//! Reads outside transactions: rooms, members, history and catch-up pages.

use super::*;

/// A room as a reader of it sees it.
#[derive(Clone, Debug)]
pub struct ForReader {
    pub room: Room,
    /// The reader's display name there; `None`: not a member.
    pub display_name: Option<String>,
    /// The reader's role there; `None`: not a member.
    pub role: Option<Role>,
    /// The reader's mute there, expired or not; `None`: none stored.
    pub mute: Option<MutedUntil>,
    /// The seq of the oldest message still stored (`last_seq + 1` when none is):
    /// earlier ones were deleted by history retention.
    pub kept_from: u64,
}

impl Store {
    /// Reads a room.
    pub async fn room(&self, room_id: &RoomId) -> Result<Option<Room>> {
        let row: Option<RoomRow> = on_pool!(self, pool => {
            sqlx::query_as(room_by_id!())
                .bind(room_id.as_str())
                .fetch_optional(pool)
                .await
        })?;
        row.map(Room::try_from).transpose()
    }

    /// Reads a room and, in the same statement, what a reader of it needs: the
    /// display name and role `user_id` has in it, their mute there, and where its
    /// kept history starts. What attaching a stream (or sending outside one) needs,
    /// in one round trip.
    pub async fn room_for_reader(
        &self,
        room_id: &RoomId,
        user_id: &str,
    ) -> Result<Option<ForReader>> {
        let row: Option<RoomAndNameRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", room_columns!(), ", \
                   (SELECT display_name FROM members WHERE room_id = $1 AND user_id = $2) \
                     AS display_name, \
                   (SELECT role FROM members WHERE room_id = $1 AND user_id = $2) AS role, \
                   (SELECT COALESCE(until_us, -1) FROM sanctions \
                     WHERE room_id = $1 AND kind = 2 AND user_id = $2) AS mute_until_us, \
                   (SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq LIMIT 1) \
                     AS first_seq \
                 FROM rooms WHERE room_id = $1"
            ))
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })?;
        row.map(|r| {
            let room = Room::try_from(r.room)?;
            let kept_from = match r.first_seq {
                Some(seq) => u64::try_from(seq).unwrap_or(0),
                None => room.last_seq + 1,
            };
            Ok(ForReader {
                room,
                display_name: r.display_name,
                role: r.role.map(rows::role_of),
                mute: rows::mute_of(r.mute_until_us),
                kept_from,
            })
        })
        .transpose()
    }

    /// Reads up to `limit` rooms matching `filter` with ids above `after`, by id.
    pub async fn rooms(
        &self,
        filter: &RoomFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Room>> {
        let rows: Vec<RoomRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", room_columns!(), " FROM rooms \
                 WHERE ($1 = '' OR name = $1) \
                   AND ($2 = '' OR substr(name, 1, length($2)) = $2) \
                   AND room_id > $3 \
                 ORDER BY room_id LIMIT $4"
            ))
            .bind(&filter.name)
            .bind(&filter.name_prefix)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(Room::try_from).collect()
    }

    /// Reads up to `limit` of the rooms `user_id` is a member of with ids above
    /// `after`, by id.
    pub async fn rooms_of(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Room>> {
        let rows: Vec<RoomRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", room_columns!(), " FROM rooms \
                 WHERE room_id IN \
                   (SELECT room_id FROM members WHERE user_id = $1 AND room_id > $2) \
                 ORDER BY room_id LIMIT $3"
            ))
            .bind(user_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(Room::try_from).collect()
    }

    /// Reads one member of a room.
    pub async fn member(&self, room_id: &RoomId, user_id: &str) -> Result<Option<Member>> {
        let row: Option<MemberRow> = on_pool!(self, pool => {
            sqlx::query_as(member_by_key!())
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })?;
        row.map(Member::try_from).transpose()
    }

    /// Reads up to `limit` members of a room with user ids above `after`, by user id.
    pub async fn members(
        &self,
        room_id: &RoomId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Member>> {
        let rows: Vec<MemberRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", member_columns!(), " FROM members \
                 WHERE room_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3"
            ))
            .bind(room_id.as_str())
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(Member::try_from).collect()
    }

    /// Reads up to `limit` stored messages of a room in `range`'s order.
    pub async fn messages(
        &self,
        room_id: &RoomId,
        range: HistoryRange,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let rows: Vec<MessageRow> = match range {
            HistoryRange::After(after) => on_pool!(self, pool => {
                sqlx::query_as(concat!(
                    "SELECT ", message_columns!(), " FROM messages \
                     WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .bind(room_id.as_str())
                .bind(to_i64(after))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            })?,
            HistoryRange::Before(before) => on_pool!(self, pool => {
                sqlx::query_as(concat!(
                    "SELECT ", message_columns!(), " FROM messages \
                     WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .bind(room_id.as_str())
                .bind(before.map_or(i64::MAX, to_i64))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            })?,
        };
        rows.into_iter().map(Message::try_from).collect()
    }

    /// A page of stored messages after `after_seq`, oldest first, for a stream catching
    /// up: at most `limit` of them and about `max_bytes` of text and payload (the first
    /// is always included), read only while `user_id` is a member of the room (or
    /// `admin`). One statement, so one snapshot: every message it returns was committed
    /// while the user was a member, and nothing committed after a leave is ever read
    /// for the leaver. An empty page means caught up, or no longer allowed (the caller
    /// tells which). Returns the page and whether more may follow.
    pub async fn messages_for_reader(
        &self,
        room_id: &RoomId,
        user_id: &str,
        admin: bool,
        after_seq: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<(Vec<Message>, bool)> {
        let rows: Vec<PagedMessageRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", message_columns!(), ", firsts FROM ( \
                   SELECT ", message_columns!(), ", COUNT(*) OVER () AS firsts, \
                     SUM(octet_length(body) + octet_length(payload)) OVER (ORDER BY seq) \
                       - (octet_length(body) + octet_length(payload)) AS bytes_before \
                   FROM ( \
                     SELECT ", message_columns!(), " FROM messages \
                     WHERE room_id = $1 AND seq > $2 \
                       AND ($4 OR EXISTS ( \
                         SELECT 1 FROM members WHERE room_id = $1 AND user_id = $3)) \
                     ORDER BY seq LIMIT $5 \
                   ) firsts_page \
                 ) sized \
                 WHERE bytes_before < $6 ORDER BY seq"
            ))
            .bind(room_id.as_str())
            .bind(to_i64(after_seq))
            .bind(user_id)
            .bind(admin)
            .bind(i64::from(limit))
            .bind(to_i64(max_bytes))
            .fetch_all(pool)
            .await
        })?;
        let firsts = rows.first().map_or(0, |r| r.firsts);
        let more = firsts == i64::from(limit) || (rows.len() as i64) < firsts;
        let messages = rows
            .into_iter()
            .map(|r| Message::try_from(r.message))
            .collect::<Result<Vec<_>>>()?;
        Ok((messages, more))
    }
}
