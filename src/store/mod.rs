//! Durable state: rooms, members, per-user room counts and message history, in
//! PostgreSQL or an embedded SQLite file.
//!
//! Where the dialects agree (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`,
//! window functions), both backends run the same SQL text: the macros below expand one
//! query body against whichever pool or transaction the store holds. Where they differ
//! the statement has a branch per dialect: the batch statements (PostgreSQL takes
//! whole arrays with `UNNEST`, SQLite loops or chunks on its single writer) and row
//! locking (PostgreSQL transactions lock the room row with `FOR UPDATE` to serialize
//! concurrent changes to one room; SQLite's single writer connection already does).
//!
//! Locks are always taken rooms first (sorted by id when there are two), then
//! `user_rooms`, so concurrent transactions cannot deadlock.

mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, Postgres, SqlStr, Sqlite, SqlitePool};

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

use crate::domain::{HistoryRange, Member, Message, NewRoom, Room, RoomFilter, RoomId, UnixMicros};
use rows::{KeyedMemberRow, MemberRow, MessageRow, PagedMessageRow, RoomAndNameRow, RoomRow};

/// How long a request waits for a free database connection before failing with
/// UNAVAILABLE. Short, so that while the database is unreachable calls fail fast
/// instead of piling up (sqlx keeps trying to connect until this passes); under load
/// connections are held for milliseconds, so a healthy server never waits this long.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a SQLite call waits for the writer connection: a local file does not go
/// away, and the pool's queue is where writes wait their turn (a burst of presence
/// changes queues thousands), so the wait is a long one.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a lock held by another process before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections for SQLite (the writer is always one).
const SQLITE_READERS: u32 = 4;

/// The room columns, in [`RoomRow`] order.
macro_rules! room_columns {
    () => {
        "room_id, name, attributes, owner_id, max_members, member_events, destroy_after_ms, \
         presence_timeout_ms, member_count, last_seq, version, created_at_us, updated_at_us"
    };
}

/// The member columns, in [`MemberRow`] order.
macro_rules! member_columns {
    () => {
        "user_id, display_name, role, joined_at_us"
    };
}

/// The query reading one room by id (`$1`).
macro_rules! room_by_id {
    () => {
        concat!("SELECT ", room_columns!(), " FROM rooms WHERE room_id = $1")
    };
}

/// The query reading one member by room (`$1`) and user (`$2`).
macro_rules! member_by_key {
    () => {
        concat!(
            "SELECT ",
            member_columns!(),
            " FROM members WHERE room_id = $1 AND user_id = $2"
        )
    };
}

/// The message columns, in [`MessageRow`] order.
macro_rules! message_columns {
    () => {
        "room_id, seq, message_id, sender_id, sender_name, kind, body, payload, content_type, \
         client_msg_id, sent_at_us"
    };
}

/// Evaluates `$body` with `$c` bound to the backend's read pool.
macro_rules! on_pool {
    ($store:expr, $c:ident => $body:expr) => {
        match &$store.backend {
            Backend::Postgres(pool) => {
                let $c = pool;
                $body
            }
            Backend::Sqlite { reader, .. } => {
                let $c = reader;
                $body
            }
        }
    };
}

/// Evaluates `$body` with `$c` bound to the backend's write pool.
macro_rules! on_writer {
    ($store:expr, $c:ident => $body:expr) => {
        match &$store.backend {
            Backend::Postgres(pool) => {
                let $c = pool;
                $body
            }
            Backend::Sqlite { writer, .. } => {
                let $c = writer;
                $body
            }
        }
    };
}

/// Evaluates `$body` with `$c` bound to the transaction's connection.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match &mut $tx.inner {
            TxInner::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
            TxInner::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

#[derive(Clone, Debug)]
enum Backend {
    Postgres(PgPool),
    /// One writer connection (SQLite allows one writer at a time; queuing writes in
    /// the pool instead of in SQLite means no "database is locked"), several readers
    /// (WAL mode lets them read while the writer writes).
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
}

/// The durable store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

impl Store {
    /// Connects to `database_url` (`sqlite://FILE` or `postgres://…`) and runs the
    /// migrations of its dialect.
    pub async fn connect(database_url: &str, pool_size: u32) -> Result<Store> {
        let backend = if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            let options = PgConnectOptions::from_str(database_url)
                .map_err(|e| Error::invalid("database_url", e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            migrator(POSTGRES_MIGRATIONS)
                .run(&pool)
                .await
                .map_err(migrate_error)?;
            Backend::Postgres(pool)
        } else if database_url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(database_url)
                .map_err(|e| Error::invalid("database_url", e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
                .connect_with(options.clone())
                .await?;
            migrator(SQLITE_MIGRATIONS)
                .run(&writer)
                .await
                .map_err(migrate_error)?;
            let reader = SqlitePoolOptions::new()
                .max_connections(SQLITE_READERS)
                .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
                .connect_with(options.read_only(true))
                .await?;
            Backend::Sqlite { writer, reader }
        } else {
            return Err(Error::invalid(
                "database_url",
                "must start with sqlite: or postgres://",
            ));
        };
        Ok(Store { backend })
    }

    /// The backend's name, for logs.
    pub fn dialect(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite { .. } => "sqlite",
        }
    }

    /// Checks that the database answers (for the health service).
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
        }
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        let inner = match &self.backend {
            Backend::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
            Backend::Sqlite { writer, .. } => TxInner::Sqlite(writer.begin().await?),
        };
        Ok(Tx { inner })
    }

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

    /// Reads a room and, in the same statement, the display name `user_id` has in it
    /// (`None`: not a member). What attaching a stream needs, in one round trip.
    pub async fn room_and_name(
        &self,
        room_id: &RoomId,
        user_id: &str,
    ) -> Result<Option<(Room, Option<String>)>> {
        let row: Option<RoomAndNameRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!(
                "SELECT ", room_columns!(), ", \
                   (SELECT display_name FROM members WHERE room_id = $1 AND user_id = $2) \
                     AS display_name \
                 FROM rooms WHERE room_id = $1"
            ))
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })?;
        row.map(|r| Ok((Room::try_from(r.room)?, r.display_name)))
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

    /// Stores a batch of accepted CHAT messages in one transaction: senders are checked
    /// to be members (their display names come from the same rows), each room's next
    /// seqs are taken from `rooms.last_seq` (rooms locked in sorted order, so
    /// concurrent batches cannot deadlock), and all rows go in together.
    ///
    /// A message whose `(room, sender, client_msg_id)` is already stored — or appears
    /// earlier in the batch — is not stored again: its answer is the first one.
    /// One answer per message, in order. When the transaction fails nothing is
    /// stored, and the batch comes back with the error so that it can be tried again
    /// (in parts: one entry the database refuses must not fail the others).
    pub async fn append_messages(
        &self,
        batch: Vec<Pending>,
    ) -> std::result::Result<Vec<Appended>, (Error, Vec<Pending>)> {
        let (mut messages, admin): (Vec<Message>, Vec<bool>) =
            batch.into_iter().map(|p| (p.message, p.admin)).unzip();
        match self.append(&mut messages, &admin).await {
            Ok(answers) => Ok(answers),
            Err(error) => {
                let batch = messages
                    .into_iter()
                    .zip(admin)
                    .map(|(message, admin)| Pending { message, admin })
                    .collect();
                Err((error, batch))
            }
        }
    }

    async fn append(&self, messages: &mut [Message], admin: &[bool]) -> Result<Vec<Appended>> {
        let mut answers: Vec<Option<Appended>> = vec![None; messages.len()];
        let mut tx = self.begin().await?;

        // 1. Who may send, and under which name: members, and admins.
        let pairs: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.room_id.as_str(), m.sender_id.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: HashMap<(String, String), String> = tx
            .members_among(&pairs)
            .await?
            .into_iter()
            .map(|(room, m)| ((room, m.user_id), m.display_name))
            .collect();
        let mut refused_rooms = std::collections::BTreeSet::new();
        for (i, m) in messages.iter_mut().enumerate() {
            match names.get(&(m.room_id.to_string(), m.sender_id.clone())) {
                Some(name) => m.sender_name = name.clone(),
                None if admin[i] => m.sender_name = m.sender_id.clone(),
                None => {
                    answers[i] = Some(Appended::NotAMember);
                    refused_rooms.insert(m.room_id.clone());
                }
            }
        }
        // A refused sender in a room that does not exist is told so.
        for room_id in refused_rooms {
            if tx.lock_room(&room_id).await?.is_none() {
                for (i, m) in messages.iter().enumerate() {
                    if m.room_id == room_id {
                        answers[i] = Some(Appended::RoomGone);
                    }
                }
            }
        }

        // 2. Idempotency: keys seen before (stored, or earlier in this batch).
        let keyed: Vec<usize> = (0..messages.len())
            .filter(|&i| answers[i].is_none() && !messages[i].client_msg_id.is_empty())
            .collect();
        let stored: HashMap<(String, String, String), Message> = tx
            .messages_by_keys(&keyed.iter().map(|&i| &messages[i]).collect::<Vec<_>>())
            .await?
            .into_iter()
            .map(|m| {
                (
                    (
                        m.room_id.to_string(),
                        m.sender_id.clone(),
                        m.client_msg_id.clone(),
                    ),
                    m,
                )
            })
            .collect();
        let mut first_with_key: HashMap<(String, String, String), usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for i in keyed {
            let m = &messages[i];
            let key = (
                m.room_id.to_string(),
                m.sender_id.clone(),
                m.client_msg_id.clone(),
            );
            if let Some(existing) = stored.get(&key) {
                answers[i] = Some(Appended::Existing(existing.clone()));
            } else if let Some(&first) = first_with_key.get(&key) {
                copies.push((i, first));
            } else {
                first_with_key.insert(key, i);
            }
        }

        // 3. Seqs, for each room in id order.
        let is_copy: std::collections::HashSet<usize> = copies.iter().map(|&(i, _)| i).collect();
        let mut by_room: BTreeMap<RoomId, Vec<usize>> = BTreeMap::new();
        for (i, m) in messages.iter().enumerate() {
            if answers[i].is_none() && !is_copy.contains(&i) {
                by_room.entry(m.room_id.clone()).or_default().push(i);
            }
        }
        let counts: Vec<(&RoomId, i64)> =
            by_room.iter().map(|(r, ix)| (r, ix.len() as i64)).collect();
        let last_seqs = tx.advance_seqs(&counts).await?;
        let mut new_rows = Vec::new();
        for (room_id, indexes) in &by_room {
            match last_seqs.get(room_id.as_str()) {
                None => {
                    for &i in indexes {
                        answers[i] = Some(Appended::RoomGone);
                    }
                }
                Some(&last) => {
                    let first = (last - indexes.len() as i64 + 1) as u64;
                    for (offset, &i) in indexes.iter().enumerate() {
                        messages[i].seq = first + offset as u64;
                        new_rows.push(i);
                    }
                }
            }
        }

        // 4. The rows, together.
        if !new_rows.is_empty() {
            tx.insert_messages(&new_rows.iter().map(|&i| &messages[i]).collect::<Vec<_>>())
                .await?;
        }
        tx.commit().await?;

        for &i in &new_rows {
            answers[i] = Some(Appended::New(messages[i].clone()));
        }
        for (i, first) in copies {
            answers[i] = Some(match &answers[first] {
                Some(Appended::New(m) | Appended::Existing(m)) => Appended::Existing(m.clone()),
                Some(other) => other.clone(),
                None => Appended::RoomGone,
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every message has an answer"))
            .collect())
    }

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

/// A message for [`Store::append_messages`].
pub struct Pending {
    pub message: Message,
    /// Admins may send to rooms they are not members of.
    pub admin: bool,
}

/// What happened to one message of a batch.
#[derive(Clone, Debug)]
pub enum Appended {
    /// Stored now, with its seq.
    New(Message),
    /// Its idempotency key was already stored: the stored message.
    Existing(Message),
    /// The room no longer exists.
    RoomGone,
    /// The sender is not a member of the room.
    NotAMember,
}

/// Rows per SQLite multi-row INSERT (11 parameters each: within its limit).
const INSERT_CHUNK: usize = 1000;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

enum TxInner {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

/// A write transaction. Dropping it without [`Tx::commit`] rolls it back, so an
/// error anywhere in a multi-step change leaves nothing written.
pub struct Tx {
    inner: TxInner,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// The stored messages with the idempotency keys of `messages`.
    async fn messages_by_keys(&mut self, messages: &[&Message]) -> Result<Vec<Message>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<MessageRow> = match &mut self.inner {
            TxInner::Postgres(tx) => {
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
                .fetch_all(&mut **tx)
                .await?
            }
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::new();
                for m in messages {
                    let row: Option<MessageRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages \
                         WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
                    ))
                    .bind(m.room_id.as_str())
                    .bind(&m.sender_id)
                    .bind(&m.client_msg_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        rows.into_iter().map(Message::try_from).collect()
    }

    /// Reserves `n` seqs in each room (given in id order); returns each existing
    /// room's new `last_seq`. Rooms are locked in id order, which orders concurrent
    /// batches and room changes without deadlocks.
    async fn advance_seqs(&mut self, counts: &[(&RoomId, i64)]) -> Result<HashMap<String, i64>> {
        if counts.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                let rooms: Vec<&str> = counts.iter().map(|(r, _)| r.as_str()).collect();
                let ns: Vec<i64> = counts.iter().map(|&(_, n)| n).collect();
                // Several rooms are locked in id order first; one room is locked by
                // the update itself (a round trip less for the common small batch).
                if rooms.len() > 1 {
                    sqlx::query(
                        "SELECT 1 FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE",
                    )
                    .bind(&rooms)
                    .execute(&mut **tx)
                    .await?;
                }
                sqlx::query_as(
                    "UPDATE rooms SET last_seq = rooms.last_seq + k.n \
                     FROM UNNEST($1::text[], $2::bigint[]) AS k(r, n) \
                     WHERE rooms.room_id = k.r RETURNING rooms.room_id, rooms.last_seq",
                )
                .bind(rooms)
                .bind(ns)
                .fetch_all(&mut **tx)
                .await?
            }
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::new();
                for (room_id, n) in counts {
                    let row: Option<(String, i64)> = sqlx::query_as(
                        "UPDATE rooms SET last_seq = last_seq + $2 WHERE room_id = $1 \
                         RETURNING room_id, last_seq",
                    )
                    .bind(room_id.as_str())
                    .bind(n)
                    .fetch_optional(&mut **tx)
                    .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// Inserts messages: on PostgreSQL one statement over arrays (the same text for
    /// every batch size, so it is prepared once); on SQLite multi-row VALUES in chunks.
    async fn insert_messages(&mut self, messages: &[&Message]) -> Result<()> {
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                let col =
                    |f: fn(&Message) -> &str| messages.iter().map(|m| f(m)).collect::<Vec<&str>>();
                sqlx::query(concat!(
                    "INSERT INTO messages (", message_columns!(), ") \
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                       $6::bigint[], $7::text[], $8::bytea[], $9::text[], $10::text[], $11::bigint[])"
                ))
                .bind(col(|m| m.room_id.as_str()))
                .bind(messages.iter().map(|m| to_i64(m.seq)).collect::<Vec<_>>())
                .bind(col(|m| &m.message_id))
                .bind(col(|m| &m.sender_id))
                .bind(col(|m| &m.sender_name))
                .bind(messages.iter().map(|m| rows::kind_column(m.kind)).collect::<Vec<_>>())
                .bind(col(|m| &m.text))
                .bind(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
                .bind(col(|m| &m.content_type))
                .bind(
                    messages
                        .iter()
                        .map(|m| (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()))
                        .collect::<Vec<_>>(),
                )
                .bind(messages.iter().map(|m| m.sent_at.0).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
            }
            TxInner::Sqlite(tx) => {
                for chunk in messages.chunks(INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::new(concat!(
                        "INSERT INTO messages (",
                        message_columns!(),
                        ") "
                    ));
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
                            .push_bind(
                                (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()),
                            )
                            .push_bind(m.sent_at.0);
                    });
                    insert.build().execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads rooms and holds them against concurrent change until the transaction
    /// ends, locking in id order (the order every transaction locks rooms in).
    pub async fn lock_rooms(&mut self, room_ids: &[&RoomId]) -> Result<Vec<Room>> {
        let mut ids: Vec<&str> = room_ids.iter().map(|r| r.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<RoomRow> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    room_columns!(),
                    " FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE"
                ))
                .bind(ids)
                .fetch_all(&mut **tx)
                .await?
            }
            // The single writer connection already serializes write transactions.
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::with_capacity(ids.len());
                for id in ids {
                    let row: Option<RoomRow> = sqlx::query_as(room_by_id!())
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        rows.into_iter().map(Room::try_from).collect()
    }

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

    /// Reads a room without locking it.
    pub async fn room(&mut self, room_id: &RoomId) -> Result<Option<Room>> {
        let row: Option<RoomRow> = on_tx!(self, c => {
            sqlx::query_as(room_by_id!())
                .bind(room_id.as_str())
                .fetch_optional(c)
                .await
        })?;
        row.map(Room::try_from).transpose()
    }

    /// Adds `user_id` to an existing room unless it is a member already (the room's
    /// owner gets the owner role). `None`: already a member, or no such room.
    pub async fn insert_member_if_new(
        &mut self,
        room_id: &RoomId,
        user_id: &str,
        display_name: &str,
        now: UnixMicros,
    ) -> Result<Option<Member>> {
        let inserted: std::result::Result<Option<MemberRow>, sqlx::Error> = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "INSERT INTO members (room_id, user_id, display_name, role, joined_at_us, last_seen_us) \
                 SELECT room_id, $2, $3, CASE WHEN owner_id = $2 THEN 1 ELSE 2 END, $4, $4 \
                 FROM rooms WHERE room_id = $1 \
                 ON CONFLICT (room_id, user_id) DO NOTHING RETURNING ",
                member_columns!()
            ))
            .bind(room_id.as_str())
            .bind(user_id)
            .bind(display_name)
            .bind(now.0)
            .fetch_optional(c)
            .await
        });
        match inserted {
            Ok(row) => row.map(Member::try_from).transpose(),
            // SQLite keeps the foreign key to rooms; should it ever fire, the room is
            // gone (and the transaction may be unusable, so answer here).
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(Error::RoomNotFound {
                    room_id: room_id.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a new member if the room has space (`max_members` 0 or not reached) and
    /// returns the room; `None` when it is full or gone. The only statement of a join
    /// that locks the room row.
    pub async fn count_new_member(&mut self, room_id: &RoomId) -> Result<Option<Room>> {
        let row: Option<RoomRow> = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE rooms SET member_count = member_count + 1, empty_since_us = NULL \
                 WHERE room_id = $1 AND (max_members = 0 OR member_count < max_members) \
                 RETURNING ",
                room_columns!()
            ))
            .bind(room_id.as_str())
            .fetch_optional(c)
            .await
        })?;
        row.map(Room::try_from).transpose()
    }

    /// Reads a room and holds it against concurrent change until the transaction ends.
    pub async fn lock_room(&mut self, room_id: &RoomId) -> Result<Option<Room>> {
        let row: Option<RoomRow> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                sqlx::query_as(concat!(room_by_id!(), " FOR UPDATE"))
                    .bind(room_id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?
            }
            // The single writer connection already serializes write transactions.
            TxInner::Sqlite(tx) => {
                sqlx::query_as(room_by_id!())
                    .bind(room_id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        row.map(Room::try_from).transpose()
    }

    /// Inserts a room with no members; false when the id is taken.
    pub async fn insert_room(
        &mut self,
        room: &NewRoom,
        owner_id: &str,
        now: UnixMicros,
    ) -> Result<bool> {
        let settings = rows::SettingsColumns::from(&room.settings);
        let attributes = rows::attributes_json(&room.attributes);
        let inserted: Option<(String,)> = on_tx!(self, c => {
            sqlx::query_as(
                "INSERT INTO rooms (room_id, name, attributes, owner_id, max_members, member_events, \
                     destroy_after_ms, presence_timeout_ms, member_count, last_seq, version, \
                     created_at_us, updated_at_us, empty_since_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 1, $9, $9, $9) \
                 ON CONFLICT (room_id) DO NOTHING RETURNING room_id",
            )
            .bind(room.id.as_str())
            .bind(&room.name)
            .bind(&attributes)
            .bind(owner_id)
            .bind(settings.max_members)
            .bind(settings.member_events)
            .bind(settings.destroy_after_ms)
            .bind(settings.presence_timeout_ms)
            .bind(now.0)
            .fetch_optional(c)
            .await
        })?;
        Ok(inserted.is_some())
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

    /// Removes a member, returning it; `None` when the user was not a member.
    pub async fn delete_member(
        &mut self,
        room_id: &RoomId,
        user_id: &str,
    ) -> Result<Option<Member>> {
        let row: Option<MemberRow> = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING ",
                member_columns!()
            ))
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(c)
            .await
        })?;
        row.map(Member::try_from).transpose()
    }

    /// Adds `delta` to the room's member count, records when it became empty, and
    /// returns the room.
    pub async fn change_member_count(
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
    pub async fn claim_room_slot(&mut self, user_id: &str, limit: u32) -> Result<bool> {
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
    pub async fn release_room_slot(&mut self, user_id: &str) -> Result<()> {
        on_tx!(self, c => {
            sqlx::query("UPDATE user_rooms SET room_count = room_count - 1 WHERE user_id = $1")
                .bind(user_id)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Writes a room's name, attributes and settings, advances its version and
    /// returns it.
    pub async fn update_room(&mut self, room: &Room, now: UnixMicros) -> Result<Room> {
        let settings = rows::SettingsColumns::from(&room.settings);
        let attributes = rows::attributes_json(&room.attributes);
        let row: RoomRow = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE rooms SET name = $2, attributes = $3, max_members = $4, member_events = $5, \
                     destroy_after_ms = $6, presence_timeout_ms = $7, version = version + 1, \
                     updated_at_us = $8 \
                 WHERE room_id = $1 RETURNING ",
                room_columns!()
            ))
            .bind(room.id.as_str())
            .bind(&room.name)
            .bind(&attributes)
            .bind(settings.max_members)
            .bind(settings.member_events)
            .bind(settings.destroy_after_ms)
            .bind(settings.presence_timeout_ms)
            .bind(now.0)
            .fetch_one(c)
            .await
        })?;
        Room::try_from(row)
    }

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

    /// Deletes a room with its members and history, releasing each member's room slot.
    pub async fn delete_room(&mut self, room_id: &RoomId) -> Result<()> {
        const STEPS: [&str; 4] = [
            "UPDATE user_rooms SET room_count = room_count - 1 \
             WHERE user_id IN (SELECT user_id FROM members WHERE room_id = $1)",
            "DELETE FROM messages WHERE room_id = $1",
            "DELETE FROM members WHERE room_id = $1",
            "DELETE FROM rooms WHERE room_id = $1",
        ];
        for step in STEPS {
            on_tx!(self, c => sqlx::query(step).bind(room_id.as_str()).execute(c).await.map(drop))?;
        }
        Ok(())
    }
}

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "members without room fk",
        include_str!("../../migrations/postgres/0002_members_without_room_fk.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

/// sqlx's migrator over the embedded migration files of one dialect (embedded, so the
/// binary runs anywhere; sqlx records applied versions and checksums).
fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> Error {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => e.into(),
        other => Error::Internal(format!("migration failed: {other}")),
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // PostgreSQL broke a deadlock or a serialization conflict by aborting this
            // transaction (rare: e.g. a SwitchRoom racing a JoinRoom of the same user).
            // Nothing was written; the same call may simply be retried.
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_retryable) => {
                Error::Unavailable(format!("{db} (SQLSTATE {})", db.code().unwrap_or_default()))
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Error::Unavailable(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// SQLSTATEs that say the database (or the connection to it) cannot serve the call
/// now, not that the call is wrong: it may be retried as it is.
fn is_retryable(code: &str) -> bool {
    matches!(
        code,
        // deadlock detected, serialization failure
        "40P01" | "40001"
        // shutting down: admin_shutdown, crash_shutdown, cannot_connect_now
        | "57P01" | "57P02" | "57P03"
        // SQLite: the database is busy or locked (another process holds it)
        | "5" | "6" | "261" | "262" | "517"
    ) || code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
}
