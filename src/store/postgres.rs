//! PostgreSQL's batch statements: a whole batch in one statement over arrays
//! (`UNNEST`), the same text for every batch size so it is prepared once, and rows
//! locked with `FOR UPDATE` in id order. New messages, the bulk of every write, go in
//! with a binary `COPY` instead.
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
    let (rooms, users, names, roles, joined) = member_arrays(members);
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

/// Members as the columns `insert_members` and `write_members` bind.
type MemberArrays<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i64>, Vec<i64>);

fn member_arrays<'a>(members: &[(&'a RoomId, &'a Member)]) -> MemberArrays<'a> {
    let rooms = members.iter().map(|(r, _)| r.as_str()).collect();
    let users = members.iter().map(|(_, m)| m.user_id.as_str()).collect();
    let names = members
        .iter()
        .map(|(_, m)| m.display_name.as_str())
        .collect();
    let roles = members
        .iter()
        .map(|(_, m)| rows::role_column(m.role))
        .collect();
    let joined = members.iter().map(|(_, m)| m.joined_at.0).collect();
    (rooms, users, names, roles, joined)
}

/// A batch's member writes in one statement (see `Tx::write_members`, which sends
/// here only batches where no key is both added and removed: every part of one
/// statement sees the rows as they were before it). Returns how many member rows
/// went and the rooms after; one round trip where the parts in turn took four.
pub(super) async fn write_members(
    c: &mut PgConnection,
    writes: &super::membership::MemberWrites<'_>,
    released: &[&str],
    now: UnixMicros,
) -> Result<(u64, Vec<RoomRow>)> {
    let (rooms, users, names, roles, joined) = member_arrays(writes.added);
    let (gone_rooms, gone_users): (Vec<&str>, Vec<&str>) = writes.removed.iter().copied().unzip();
    let counted: Vec<&str> = writes.counts.iter().map(|(r, _)| r.as_str()).collect();
    let deltas: Vec<i64> = writes.counts.iter().map(|&(_, d)| d).collect();
    let written: Vec<rows::WrittenRoomRow> = sqlx::query_as(concat!(
        "WITH added AS ( \
           INSERT INTO members (room_id, user_id, display_name, role, joined_at_us, last_seen_us) \
           SELECT r, u, n, role, t, t \
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
             AS k(r, u, n, role, t) \
         ), removed AS ( \
           DELETE FROM members USING UNNEST($6::text[], $7::text[]) AS k(r, u) \
           WHERE room_id = k.r AND user_id = k.u RETURNING 1 \
         ), released AS ( \
           UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = ANY($8) \
         ), counted AS ( \
           UPDATE rooms SET member_count = member_count + k.d, \
             empty_since_us = CASE WHEN member_count + k.d = 0 THEN $11 ELSE NULL END \
           FROM UNNEST($9::text[], $10::bigint[]) AS k(r, d) \
           WHERE room_id = k.r RETURNING ",
        room_columns!(),
        " ) SELECT (SELECT count(*) FROM removed) AS removed, ",
        room_columns!(),
        " FROM counted"
    ))
    .bind(rooms)
    .bind(users)
    .bind(names)
    .bind(roles)
    .bind(joined)
    .bind(gone_rooms)
    .bind(gone_users)
    .bind(released)
    .bind(counted)
    .bind(deltas)
    .bind(now.0)
    .fetch_all(c)
    .await?;
    let removed = written.first().map_or(0, |w| w.removed);
    Ok((
        u64::try_from(removed).unwrap_or(0),
        written.into_iter().map(|w| w.room).collect(),
    ))
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

/// Inserts messages with one binary `COPY`: PostgreSQL reads each field straight into
/// its row and logs the rows page by page, where `INSERT … SELECT FROM UNNEST` had it
/// parse twelve arrays, unnest them through a tuplestore and log each row on its own
/// (a third less of PostgreSQL's time per stored message; BENCHMARKS.md, session 18).
/// `recalled` and `edited_at_us` take their defaults (false, NULL).
pub(super) async fn insert_messages(c: &mut PgConnection, messages: &[&Message]) -> Result<()> {
    let mut rows = BinaryRows::new(messages.len() * 256);
    for m in messages {
        rows.row(12);
        rows.text(m.room_id.as_str())?;
        rows.int8(to_i64(m.seq));
        rows.text(&m.message_id)?;
        rows.text(&m.sender_id)?;
        rows.text(&m.sender_name)?;
        rows.int8(rows::kind_column(m.kind));
        rows.text(&m.text)?;
        rows.bytes(&m.payload)?;
        rows.text(&m.content_type)?;
        match m.client_msg_id.as_str() {
            "" => rows.null(),
            key => rows.text(key)?,
        }
        rows.int8(m.sent_at.0);
        match m.target_seq {
            0 => rows.null(),
            seq => rows.int8(to_i64(seq)),
        }
    }
    let mut copy = c
        .copy_in_raw(
            "COPY messages (room_id, seq, message_id, sender_id, sender_name, kind, body, \
             payload, content_type, client_msg_id, sent_at_us, target_seq) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    Ok(())
}

/// Rows in `COPY`'s binary format: a signature and two zero words, then per row its
/// field count and each field as a length (-1: NULL) and that many bytes in the
/// column type's binary form, then -1 as the count that ends the data.
struct BinaryRows(Vec<u8>);

impl BinaryRows {
    fn new(capacity: usize) -> BinaryRows {
        let mut buf = Vec::with_capacity(capacity + 19);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&[0; 8]); // flags, header extension length
        BinaryRows(buf)
    }

    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    /// A `bytea` field; `text` is its bytes too (UTF-8 on both sides).
    fn bytes(&mut self, value: &[u8]) -> Result<()> {
        let len = i32::try_from(value.len())
            .map_err(|_| sqlx::Error::Encode("a field over 2 GiB".into()))?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(value);
        Ok(())
    }

    fn text(&mut self, value: &str) -> Result<()> {
        self.bytes(value.as_bytes())
    }

    fn int8(&mut self, value: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
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

#[cfg(test)]
mod tests {
    use super::BinaryRows;

    #[test]
    fn binary_rows_frame_each_field_by_its_length() {
        let mut rows = BinaryRows::new(0);
        rows.row(3);
        rows.text("é").unwrap();
        rows.int8(-2);
        rows.null();
        let bytes = rows.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        expected.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, expected);
    }
}
