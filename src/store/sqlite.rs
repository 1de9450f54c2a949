//! SQLite's batch statements: a statement per row (or multi-row `VALUES` in chunks)
//! on its one writer connection, where a round trip is a function call. Nothing is
//! locked row by row: the single writer connection already serializes write
//! transactions.
//!
//! Each function has a twin of the same name and meaning in [`super::postgres`];
//! [`Tx`](super::Tx) calls whichever its connection's dialect is (`by_dialect!`).

use sqlx::SqliteConnection;

use super::rows::{
    self, KeyedMemberRow, KeyedSanctionRow, MemberRow, MessageRow, RoomRow, SanctionRow, SpeakerRow,
};
use super::to_i64;
use crate::domain::{Member, Message, RoomId, UnixMicros};

/// What a statement found, as sqlx says it (the caller learns from it whether the
/// database is reachable).
type Result<T> = std::result::Result<T, sqlx::Error>;

/// Rows per multi-row INSERT (14 parameters each: within SQLite's limit of 32,766).
const INSERT_CHUNK: usize = 1000;

/// Reads rooms (ids sorted and distinct).
pub(super) async fn lock_rooms(c: &mut SqliteConnection, ids: &[&str]) -> Result<Vec<RoomRow>> {
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<RoomRow> = sqlx::query_as(room_by_id!())
            .bind(id)
            .fetch_optional(&mut *c)
            .await?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Reads a room.
pub(super) async fn lock_room(
    c: &mut SqliteConnection,
    room_id: &RoomId,
) -> Result<Option<RoomRow>> {
    sqlx::query_as(room_by_id!())
        .bind(room_id.as_str())
        .fetch_optional(c)
        .await
}

/// The members among `(room, user)` keys, with their rooms' ids.
pub(super) async fn members_among(
    c: &mut SqliteConnection,
    keys: &[(&str, &str)],
) -> Result<Vec<KeyedMemberRow>> {
    let mut rows = Vec::new();
    for (room, user) in keys {
        let row: Option<MemberRow> = sqlx::query_as(member_by_key!())
            .bind(room)
            .bind(user)
            .fetch_optional(&mut *c)
            .await?;
        rows.extend(row.map(|member| KeyedMemberRow {
            room_id: room.to_string(),
            member,
        }));
    }
    Ok(rows)
}

/// The members among `(room, user)` keys, with their rooms' slow mode.
pub(super) async fn speakers_among(
    c: &mut SqliteConnection,
    keys: &[(&str, &str)],
) -> Result<Vec<SpeakerRow>> {
    let mut rows = Vec::new();
    for (room, user) in keys {
        let row: Option<SpeakerRow> = sqlx::query_as(concat!(
            "SELECT ",
            speaker_columns!(),
            " FROM members m JOIN rooms r ON r.room_id = m.room_id \
              WHERE m.room_id = $1 AND m.user_id = $2"
        ))
        .bind(room)
        .bind(user)
        .fetch_optional(&mut *c)
        .await?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Sets members' last CHAT times, `(room, user, at)`.
pub(super) async fn set_last_chats(
    c: &mut SqliteConnection,
    turns: &[(&str, &str, UnixMicros)],
) -> Result<()> {
    for (room, user, at) in turns {
        sqlx::query("UPDATE members SET last_chat_us = $3 WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .bind(at.0)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// The sanctions of `kind` in force at `now` among `(room, user)` keys.
pub(super) async fn sanctions_among(
    c: &mut SqliteConnection,
    keys: &[(&str, &str)],
    kind: i64,
    now: UnixMicros,
) -> Result<Vec<KeyedSanctionRow>> {
    let mut rows = Vec::new();
    for (room, user) in keys {
        let row: Option<SanctionRow> = sqlx::query_as(sanction_by_key!())
            .bind(room)
            .bind(kind)
            .bind(user)
            .bind(now.0)
            .fetch_optional(&mut *c)
            .await?;
        rows.extend(row.map(|sanction| KeyedSanctionRow {
            room_id: room.to_string(),
            sanction,
        }));
    }
    Ok(rows)
}

/// Counts one more room for each of `users` (sorted, distinct) unless that would
/// exceed `limit` (0: unlimited); returns the users whose slot was claimed.
pub(super) async fn claim_room_slots(
    c: &mut SqliteConnection,
    users: &[&str],
    limit: u32,
) -> Result<Vec<String>> {
    let mut claimed = Vec::with_capacity(users.len());
    for user in users {
        let row: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO user_rooms (user_id, room_count) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET room_count = user_rooms.room_count + 1 \
             WHERE $2 = 0 OR user_rooms.room_count < $2 \
             RETURNING room_count",
        )
        .bind(user)
        .bind(i64::from(limit))
        .fetch_optional(&mut *c)
        .await?;
        if row.is_some() {
            claimed.push(user.to_string());
        }
    }
    Ok(claimed)
}

/// Counts one room fewer for each of `users` (sorted, distinct).
pub(super) async fn release_room_slots(c: &mut SqliteConnection, users: &[&str]) -> Result<()> {
    for user in users {
        sqlx::query("UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = $1")
            .bind(user)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// Adds members, each seen at its join time.
pub(super) async fn insert_members(
    c: &mut SqliteConnection,
    members: &[(&RoomId, &Member)],
) -> Result<()> {
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
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Removes members by `(room, user)` key; returns how many rows went.
pub(super) async fn delete_members(c: &mut SqliteConnection, keys: &[(&str, &str)]) -> Result<u64> {
    let mut removed = 0;
    for (room, user) in keys {
        removed += sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user)
            .execute(&mut *c)
            .await?
            .rows_affected();
    }
    Ok(removed)
}

/// Adds a delta to each room's member count, recording when a room became empty;
/// returns the rooms after.
pub(super) async fn add_member_counts(
    c: &mut SqliteConnection,
    deltas: &[(&RoomId, i64)],
    now: UnixMicros,
) -> Result<Vec<RoomRow>> {
    let mut rooms = Vec::with_capacity(deltas.len());
    for &(room_id, delta) in deltas {
        let row: RoomRow = sqlx::query_as(concat!(
            "UPDATE rooms SET member_count = member_count + $2, \
                 empty_since_us = CASE WHEN member_count + $2 = 0 THEN $3 ELSE NULL END \
             WHERE room_id = $1 RETURNING ",
            room_columns!()
        ))
        .bind(room_id.as_str())
        .bind(delta)
        .bind(now.0)
        .fetch_one(&mut *c)
        .await?;
        rooms.push(row);
    }
    Ok(rooms)
}

/// The stored messages with the idempotency keys of `messages`.
pub(super) async fn messages_by_keys(
    c: &mut SqliteConnection,
    messages: &[&Message],
) -> Result<Vec<MessageRow>> {
    let mut rows = Vec::new();
    for m in messages {
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
        ))
        .bind(m.room_id.as_str())
        .bind(&m.sender_id)
        .bind(&m.client_msg_id)
        .fetch_optional(&mut *c)
        .await?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Reserves `n` seqs in each room (given in id order); returns each existing room's
/// new `last_seq`.
pub(super) async fn advance_seqs(
    c: &mut SqliteConnection,
    counts: &[(&RoomId, i64)],
) -> Result<Vec<(String, i64)>> {
    let mut rows = Vec::new();
    for (room_id, n) in counts {
        let row: Option<(String, i64)> = sqlx::query_as(
            "UPDATE rooms SET last_seq = last_seq + $2 WHERE room_id = $1 \
             RETURNING room_id, last_seq",
        )
        .bind(room_id.as_str())
        .bind(n)
        .fetch_optional(&mut *c)
        .await?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Inserts messages, multi-row `VALUES` in chunks.
pub(super) async fn insert_messages(c: &mut SqliteConnection, messages: &[&Message]) -> Result<()> {
    for chunk in messages.chunks(INSERT_CHUNK) {
        let mut insert =
            sqlx::QueryBuilder::new(concat!("INSERT INTO messages (", message_columns!(), ") "));
        insert.push_values(chunk, |mut row, m| {
            row.push_bind(m.room_id.as_str())
                .push_bind(to_i64(m.seq))
                .push_bind(m.message_id.as_str())
                .push_bind(m.sender_id.as_str())
                .push_bind(m.sender_name.as_str())
                .push_bind(rows::kind_column(m.kind))
                .push_bind(m.text.as_str())
                .push_bind(m.payload.as_slice())
                .push_bind(m.content_type.as_str())
                .push_bind((!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()))
                .push_bind(m.sent_at.0)
                .push_bind((m.target_seq > 0).then(|| to_i64(m.target_seq)))
                .push_bind(false)
                .push_bind(None::<i64>);
        });
        insert.build().execute(&mut *c).await?;
    }
    Ok(())
}

/// Appends feed events after the head, moving it on; the last position written.
pub(super) async fn append_feed(
    c: &mut SqliteConnection,
    entries: &[super::feed::FeedColumns<'_>],
    at: UnixMicros,
) -> Result<i64> {
    let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    let (last,): (i64,) = sqlx::query_as(
        "UPDATE room_feed_head SET position = position + $1 WHERE id = 1 RETURNING position",
    )
    .bind(count)
    .fetch_one(&mut *c)
    .await?;
    for (position, e) in (last - count + 1..).zip(entries) {
        sqlx::query(
            "INSERT INTO room_feed (position, at_us, room_id, kind, user_id, by_user, role) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(position)
        .bind(at.0)
        .bind(e.room_id)
        .bind(e.kind)
        .bind(e.user_id)
        .bind(e.by_user)
        .bind(e.role)
        .execute(&mut *c)
        .await?;
    }
    Ok(last)
}
