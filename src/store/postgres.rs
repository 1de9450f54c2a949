//! PostgreSQL's batch statements: a whole batch in one statement over arrays
//! (`UNNEST`), the same text for every batch size so it is prepared once, and rows
//! locked with `FOR UPDATE` in id order.
//!
//! Each function has a twin of the same name and meaning in [`super::sqlite`];
//! [`Tx`](super::Tx) calls whichever its connection's dialect is (`by_dialect!`).

use sqlx::PgConnection;

use super::rows::{self, KeyedMemberRow, KeyedSanctionRow, MessageRow, RoomRow, SpeakerRow};
use super::to_i64;
use crate::domain::{Member, Message, RoomId, UnixMicros};

/// What a statement found, as sqlx says it (the caller learns from it whether the
/// database is reachable).
type Result<T> = std::result::Result<T, sqlx::Error>;

/// Reads rooms (ids sorted and distinct) and locks them, in id order.
pub(super) async fn lock_rooms(c: &mut PgConnection, ids: &[&str]) -> Result<Vec<RoomRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        room_columns!(),
        " FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(c)
    .await
}

/// Reads a room and locks it.
pub(super) async fn lock_room(c: &mut PgConnection, room_id: &RoomId) -> Result<Option<RoomRow>> {
    sqlx::query_as(concat!(room_by_id!(), " FOR UPDATE"))
        .bind(room_id.as_str())
        .fetch_optional(c)
        .await
}

/// The members among `(room, user)` keys, with their rooms' ids.
pub(super) async fn members_among(
    c: &mut PgConnection,
    keys: &[(&str, &str)],
) -> Result<Vec<KeyedMemberRow>> {
    let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    sqlx::query_as(concat!(
        "SELECT room_id, ",
        member_columns!(),
        " FROM members JOIN UNNEST($1::text[], $2::text[]) AS k(r, u) \
          ON room_id = k.r AND user_id = k.u"
    ))
    .bind(rooms)
    .bind(users)
    .fetch_all(c)
    .await
}

/// The members among `(room, user)` keys, with their rooms' slow mode.
pub(super) async fn speakers_among(
    c: &mut PgConnection,
    keys: &[(&str, &str)],
) -> Result<Vec<SpeakerRow>> {
    let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    sqlx::query_as(concat!(
        "SELECT ",
        speaker_columns!(),
        " FROM members m JOIN UNNEST($1::text[], $2::text[]) AS k(r, u) \
          ON m.room_id = k.r AND m.user_id = k.u \
          JOIN rooms r ON r.room_id = m.room_id"
    ))
    .bind(rooms)
    .bind(users)
    .fetch_all(c)
    .await
}

/// Sets members' last CHAT times, `(room, user, at)` (distinct keys).
pub(super) async fn set_last_chats(
    c: &mut PgConnection,
    turns: &[(&str, &str, UnixMicros)],
) -> Result<()> {
    let rooms: Vec<&str> = turns.iter().map(|t| t.0).collect();
    let users: Vec<&str> = turns.iter().map(|t| t.1).collect();
    let ats: Vec<i64> = turns.iter().map(|t| t.2.0).collect();
    sqlx::query(
        "UPDATE members m SET last_chat_us = k.at \
         FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS k(r, u, at) \
         WHERE m.room_id = k.r AND m.user_id = k.u",
    )
    .bind(rooms)
    .bind(users)
    .bind(ats)
    .execute(c)
    .await
    .map(drop)
}

/// The sanctions of `kind` in force at `now` among `(room, user)` keys.
pub(super) async fn sanctions_among(
    c: &mut PgConnection,
    keys: &[(&str, &str)],
    kind: i64,
    now: UnixMicros,
) -> Result<Vec<KeyedSanctionRow>> {
    let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    sqlx::query_as(concat!(
        "SELECT room_id, ",
        sanction_columns!(),
        " FROM sanctions JOIN UNNEST($1::text[], $2::text[]) AS k(r, u) \
          ON room_id = k.r AND user_id = k.u \
          WHERE kind = $3 AND (until_us IS NULL OR until_us > $4)"
    ))
    .bind(rooms)
    .bind(users)
    .bind(kind)
    .bind(now.0)
    .fetch_all(c)
    .await
}

/// Counts one more room for each of `users` (sorted, distinct) unless that would
/// exceed `limit` (0: unlimited); returns the users whose slot was claimed.
pub(super) async fn claim_room_slots(
    c: &mut PgConnection,
    users: &[&str],
    limit: u32,
) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "INSERT INTO user_rooms (user_id, room_count) \
         SELECT u, 1 FROM UNNEST($1::text[]) AS k(u) \
         ON CONFLICT (user_id) DO UPDATE SET room_count = user_rooms.room_count + 1 \
         WHERE $2 = 0 OR user_rooms.room_count < $2 \
         RETURNING user_id",
    )
    .bind(users)
    .bind(i64::from(limit))
    .fetch_all(c)
    .await
}

/// Counts one room fewer for each of `users` (sorted, distinct).
pub(super) async fn release_room_slots(c: &mut PgConnection, users: &[&str]) -> Result<()> {
    sqlx::query("UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = ANY($1)")
        .bind(users)
        .execute(c)
        .await?;
    Ok(())
}

/// Adds members, each seen at its join time.
pub(super) async fn insert_members(
    c: &mut PgConnection,
    members: &[(&RoomId, &Member)],
) -> Result<()> {
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
    .execute(c)
    .await?;
    Ok(())
}

/// Removes members by `(room, user)` key; returns how many rows went.
pub(super) async fn delete_members(c: &mut PgConnection, keys: &[(&str, &str)]) -> Result<u64> {
    let (rooms, users): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let done = sqlx::query(
        "DELETE FROM members USING UNNEST($1::text[], $2::text[]) AS k(r, u) \
         WHERE room_id = k.r AND user_id = k.u",
    )
    .bind(rooms)
    .bind(users)
    .execute(c)
    .await?;
    Ok(done.rows_affected())
}

/// Adds a delta to each room's member count, recording when a room became empty;
/// returns the rooms after.
pub(super) async fn add_member_counts(
    c: &mut PgConnection,
    deltas: &[(&RoomId, i64)],
    now: UnixMicros,
) -> Result<Vec<RoomRow>> {
    let rooms: Vec<&str> = deltas.iter().map(|(r, _)| r.as_str()).collect();
    let ds: Vec<i64> = deltas.iter().map(|&(_, d)| d).collect();
    sqlx::query_as(concat!(
        "UPDATE rooms SET member_count = member_count + k.d, \
             empty_since_us = CASE WHEN member_count + k.d = 0 THEN $3 ELSE NULL END \
         FROM UNNEST($1::text[], $2::bigint[]) AS k(r, d) \
         WHERE room_id = k.r RETURNING ",
        room_columns!()
    ))
    .bind(rooms)
    .bind(ds)
    .bind(now.0)
    .fetch_all(c)
    .await
}

/// The stored messages with the idempotency keys of `messages`.
pub(super) async fn messages_by_keys(
    c: &mut PgConnection,
    messages: &[&Message],
) -> Result<Vec<MessageRow>> {
    let rooms: Vec<&str> = messages.iter().map(|m| m.room_id.as_str()).collect();
    let senders: Vec<&str> = messages.iter().map(|m| m.sender_id.as_str()).collect();
    let keys: Vec<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages \
         JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(r, s, c) \
           ON room_id = k.r AND sender_id = k.s AND client_msg_id = k.c"
    ))
    .bind(rooms)
    .bind(senders)
    .bind(keys)
    .fetch_all(c)
    .await
}

/// Reserves `n` seqs in each room (given in id order); returns each existing room's
/// new `last_seq`.
pub(super) async fn advance_seqs(
    c: &mut PgConnection,
    counts: &[(&RoomId, i64)],
) -> Result<Vec<(String, i64)>> {
    let rooms: Vec<&str> = counts.iter().map(|(r, _)| r.as_str()).collect();
    let ns: Vec<i64> = counts.iter().map(|&(_, n)| n).collect();
    // Several rooms are locked in id order first; one room is locked by the update
    // itself (a round trip less for the common small batch).
    if rooms.len() > 1 {
        sqlx::query("SELECT 1 FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE")
            .bind(&rooms)
            .execute(&mut *c)
            .await?;
    }
    sqlx::query_as(
        "UPDATE rooms SET last_seq = rooms.last_seq + k.n \
         FROM UNNEST($1::text[], $2::bigint[]) AS k(r, n) \
         WHERE rooms.room_id = k.r RETURNING rooms.room_id, rooms.last_seq",
    )
    .bind(rooms)
    .bind(ns)
    .fetch_all(c)
    .await
}

/// Inserts messages in one statement.
pub(super) async fn insert_messages(c: &mut PgConnection, messages: &[&Message]) -> Result<()> {
    let col = |f: fn(&Message) -> &str| messages.iter().map(|m| f(m)).collect::<Vec<&str>>();
    sqlx::query(concat!(
        "INSERT INTO messages (",
        message_columns!(),
        ") \
         SELECT *, false, NULL::bigint FROM UNNEST($1::text[], $2::bigint[], $3::text[], \
           $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bytea[], $9::text[], \
           $10::text[], $11::bigint[], $12::bigint[])"
    ))
    .bind(col(|m| m.room_id.as_str()))
    .bind(messages.iter().map(|m| to_i64(m.seq)).collect::<Vec<_>>())
    .bind(col(|m| &m.message_id))
    .bind(col(|m| &m.sender_id))
    .bind(col(|m| &m.sender_name))
    .bind(
        messages
            .iter()
            .map(|m| rows::kind_column(m.kind))
            .collect::<Vec<_>>(),
    )
    .bind(col(|m| &m.text))
    .bind(
        messages
            .iter()
            .map(|m| m.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(col(|m| &m.content_type))
    .bind(
        messages
            .iter()
            .map(|m| (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(messages.iter().map(|m| m.sent_at.0).collect::<Vec<_>>())
    .bind(
        messages
            .iter()
            .map(|m| (m.target_seq > 0).then(|| to_i64(m.target_seq)))
            .collect::<Vec<_>>(),
    )
    .execute(c)
    .await?;
    Ok(())
}

/// Appends feed events after the head, moving it on; the last position written.
/// One statement: the head row's update (which holds it until the commit) and the
/// insert of every event under the positions it freed.
pub(super) async fn append_feed(
    c: &mut PgConnection,
    entries: &[super::feed::FeedColumns<'_>],
    at: UnixMicros,
) -> Result<i64> {
    let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    let (last,): (i64,) = sqlx::query_as(
        "WITH head AS ( \
           UPDATE room_feed_head SET position = position + $1 WHERE id = 1 RETURNING position \
         ), added AS ( \
           INSERT INTO room_feed (position, at_us, room_id, kind, user_id, by_user, role) \
           SELECT head.position - $1 + e.n, $2, e.room_id, e.kind, e.user_id, e.by_user, e.role \
           FROM head, UNNEST($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[]) \
             WITH ORDINALITY AS e(room_id, kind, user_id, by_user, role, n) \
         ) \
         SELECT position FROM head",
    )
    .bind(count)
    .bind(at.0)
    .bind(entries.iter().map(|e| e.room_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.by_user).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.role).collect::<Vec<_>>())
    .fetch_one(c)
    .await?;
    Ok(last)
}
