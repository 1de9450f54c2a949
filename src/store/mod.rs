//! Durable state: rooms, members, per-user room counts and message history, in
//! PostgreSQL or an embedded SQLite file.
//!
//! Where the dialects agree (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`,
//! window functions), both backends run the same SQL text: the `on_pool!`, `on_writer!`
//! and `on_tx!` macros below expand one query body against whichever pool or
//! transaction the store holds. Where they differ — the batch statements the two
//! writers run, and row locking — each dialect has a file of its own with a function
//! per statement, and `by_dialect!` calls the right one: [`postgres`] takes a whole
//! batch in one statement over arrays (`UNNEST`) and locks room rows with
//! `FOR UPDATE`; [`sqlite`] runs a statement per row on its single writer connection,
//! which already serializes write transactions.
//!
//! Locks are always taken rooms first (sorted by id when there are two), then
//! `user_rooms`, so concurrent transactions cannot deadlock.
//!
//! The files: this one has the handle, the transaction type, migrations and the
//! mapping of database errors; [`reads`] the reads outside transactions; [`messages`]
//! and [`membership`] the batch statements of the two writers' transactions;
//! [`rooms`] room rows within a transaction; [`presence`] last-seen times and
//! deadlines; [`history`] where kept history starts and its pruning; [`sanctions`]
//! bans and mutes; [`feed`] the room feed WatchRooms reads; [`postgres`] and
//! [`sqlite`] each dialect's batch statements;
//! `reach.rs` failing fast while PostgreSQL is unreachable; `rows.rs` rows and their
//! conversion to domain values.

mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use crate::error::{Error, Result};
use std::collections::HashMap;

use crate::domain::{
    Dialect, HistoryRange, Member, Message, MessageKind, MutedUntil, NewRoom, Role, Room,
    RoomFilter, RoomId, Speaker, UnixMicros,
};
use rows::{MemberRow, MessageRow, PagedMessageRow, RoomAndNameRow, RoomRow};

/// How long a request waits for a free PostgreSQL connection before failing with
/// UNAVAILABLE. Short, so that the calls in flight when the database goes away are
/// answered within a second (sqlx keeps trying to connect until this passes; later
/// calls fail at once, see [`reach`]); under load connections are held for
/// milliseconds, so a healthy server never waits this long.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(600);
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
         presence_timeout_ms, slow_mode_ms, muted, member_count, last_seq, version, created_at_us, \
         updated_at_us"
    };
}

/// The member columns, in [`MemberRow`] order.
macro_rules! member_columns {
    () => {
        "user_id, display_name, role, joined_at_us"
    };
}

/// A sender's columns, in `SpeakerRow` order, over `members m` joined with its room
/// `r` (which has none of the member columns' names). Their mute (a sanction of kind
/// 2, expired or not) is read by a subquery, `mute_until_us` being NULL when there is
/// none and -1 when it lasts until lifted.
macro_rules! speaker_columns {
    () => {
        concat!(
            "m.room_id, ",
            member_columns!(),
            ", r.slow_mode_ms, m.last_chat_us, r.muted AS room_muted, \
             (SELECT COALESCE(s.until_us, -1) FROM sanctions s \
               WHERE s.room_id = m.room_id AND s.kind = 2 AND s.user_id = m.user_id) \
               AS mute_until_us"
        )
    };
}

/// The sanction columns, in `SanctionRow` order.
macro_rules! sanction_columns {
    () => {
        "user_id, by_user, at_us, until_us"
    };
}

/// The query reading one user's sanction of a kind in a room, if in force
/// (`$1` room, `$2` kind, `$3` user, `$4` now).
macro_rules! sanction_by_key {
    () => {
        concat!(
            "SELECT ",
            sanction_columns!(),
            " FROM sanctions WHERE room_id = $1 AND kind = $2 AND user_id = $3 \
              AND (until_us IS NULL OR until_us > $4)"
        )
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
         client_msg_id, sent_at_us, target_seq, recalled, edited_at_us"
    };
}

/// Evaluates `$body` with `$c` bound to a connection of the backend's pool (for
/// SQLite, of the pool named `$sqlite`: `reader` or `writer`) — or fails at once
/// while the database is known to be down ([`reach`]), learning from what it found.
/// On PostgreSQL the wait for a connection and the round trip are [`bounded`].
macro_rules! on_connection {
    ($store:expr, $sqlite:ident, $c:ident => $body:expr) => {{
        let store = &$store;
        match store.reach.admit() {
            Err(error) => Err(error),
            Ok(()) => {
                let result = match &store.backend {
                    Backend::Postgres(pool) => {
                        bounded(async {
                            match connection(pool, store.reach.check_connection()).await {
                                Ok(mut connection) => {
                                    let $c = &mut *connection;
                                    $body
                                }
                                Err(error) => Err(error),
                            }
                        })
                        .await
                    }
                    Backend::Sqlite { $sqlite, .. } => match connection($sqlite, false).await {
                        Ok(mut connection) => {
                            let $c = &mut *connection;
                            $body
                        }
                        Err(error) => Err(error),
                    },
                };
                store.reach.observe(&result);
                result
            }
        }
    }};
}

/// [`on_connection`] for reads (SQLite's reader connections).
macro_rules! on_pool {
    ($store:expr, $c:ident => $body:expr) => {
        on_connection!($store, reader, $c => $body)
    };
}

/// [`on_connection`] for writes outside a transaction (SQLite's one writer).
macro_rules! on_writer {
    ($store:expr, $c:ident => $body:expr) => {
        on_connection!($store, writer, $c => $body)
    };
}

/// Evaluates `$body` with `$c` bound to the transaction's connection ([`bounded`] on
/// PostgreSQL), learning from what it found whether the database is reachable.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {{
        let tx: &mut Tx = &mut *$tx;
        let result = match &mut tx.inner {
            TxInner::Postgres(inner) => {
                bounded(async {
                    let $c = &mut **inner;
                    $body
                })
                .await
            }
            TxInner::Sqlite(inner) => {
                let $c = &mut **inner;
                $body
            }
        };
        tx.reach.observe(&result);
        result
    }};
}

/// Calls the transaction's dialect's own form of a batch statement,
/// `postgres::$f` or `sqlite::$f`, with the transaction's connection first, under
/// the same rule as [`on_tx`] ([`bounded`] on PostgreSQL, and learnt from).
macro_rules! by_dialect {
    ($tx:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let tx: &mut Tx = &mut *$tx;
        let result = match &mut tx.inner {
            TxInner::Postgres(inner) => bounded(postgres::$f(&mut **inner, $($arg),*)).await,
            TxInner::Sqlite(inner) => sqlite::$f(&mut **inner, $($arg),*).await,
        };
        tx.reach.observe(&result);
        result.map_err(Error::from)
    }};
}

mod postgres;
mod reach;
mod sqlite;

pub mod feed;
pub mod history;
pub mod membership;
pub mod messages;
pub mod presence;
pub mod reads;
pub mod rooms;
pub mod sanctions;

pub use history::HistorySpan;
pub use presence::DueMember;
pub use reads::ForReader;

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
    /// Whether PostgreSQL is known to be unreachable (calls then fail at once).
    reach: std::sync::Arc<reach::Reach>,
}

impl Store {
    /// Connects to `database_url` (`sqlite://FILE` or `postgres://…`) and runs the
    /// migrations of its dialect.
    pub async fn connect(database_url: &str, pool_size: u32) -> Result<Store> {
        let dialect = Dialect::of(database_url).ok_or_else(|| {
            Error::invalid("database_url", "must start with sqlite: or postgres://")
        })?;
        let backend = if dialect == Dialect::Postgres {
            let options = PgConnectOptions::from_str(database_url)
                .map_err(|e| Error::invalid("database_url", e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .map_err(migrate_error)?;
            Backend::Postgres(pool)
        } else {
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
            SQLITE_MIGRATIONS
                .run(&writer)
                .await
                .map_err(migrate_error)?;
            let reader = SqlitePoolOptions::new()
                .max_connections(SQLITE_READERS)
                .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
                .connect_with(options.read_only(true))
                .await?;
            Backend::Sqlite { writer, reader }
        };
        let reach = std::sync::Arc::new(reach::Reach::new(matches!(backend, Backend::Postgres(_))));
        Ok(Store { backend, reach })
    }

    /// How many writers may hold a transaction at once, of the `wanted`: SQLite has
    /// one write connection (more would only queue for it); PostgreSQL at most half
    /// of its pool, so that reads and the other writers find connections.
    pub fn concurrent_writers(&self, wanted: u32) -> usize {
        match &self.backend {
            Backend::Postgres(pool) => {
                let pool_size = pool.options().get_max_connections();
                wanted.min(pool_size / 2).max(1) as usize
            }
            Backend::Sqlite { .. } => 1,
        }
    }

    /// The backend's name, for logs.
    pub fn dialect(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite { .. } => "sqlite",
        }
    }

    /// Checks that the database answers (for the health service). Always tries, even
    /// while calls fail at once: its success is what ends an outage when no call
    /// happens to probe.
    pub async fn ping(&self) -> Result<()> {
        let result = match &self.backend {
            Backend::Postgres(pool) => bounded(sqlx::query("SELECT 1").execute(pool))
                .await
                .map(drop),
            Backend::Sqlite { reader, .. } => {
                sqlx::query("SELECT 1").execute(reader).await.map(drop)
            }
        };
        self.reach.observe(&result);
        Ok(result?)
    }

    /// Whether calls fail at once because the database was found unreachable.
    pub fn is_unreachable(&self) -> bool {
        self.reach.is_down()
    }

    /// Resolves the next time a call finds the database unreachable.
    pub async fn found_unreachable(&self) {
        self.reach.tripped().await;
    }

    /// Connections in use and idle, over every pool.
    pub fn connections(&self) -> (usize, usize) {
        let of = |size: u32, idle: usize| (size as usize - idle.min(size as usize), idle);
        match &self.backend {
            Backend::Postgres(pool) => of(pool.size(), pool.num_idle()),
            Backend::Sqlite { writer, reader } => {
                let (w_used, w_idle) = of(writer.size(), writer.num_idle());
                let (r_used, r_idle) = of(reader.size(), reader.num_idle());
                (w_used + r_used, w_idle + r_idle)
            }
        }
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

    /// Starts a write transaction (or fails at once while the database is down).
    pub async fn begin(&self) -> Result<Tx> {
        self.reach.admit()?;
        let inner = match &self.backend {
            Backend::Postgres(pool) => {
                let begun = bounded(begin(pool, self.reach.check_connection())).await;
                self.reach.observe(&begun);
                TxInner::Postgres(begun?)
            }
            Backend::Sqlite { writer, .. } => TxInner::Sqlite(begin(writer, false).await?),
        };
        Ok(Tx {
            inner,
            reach: self.reach.clone(),
        })
    }
}

/// How long one round trip to PostgreSQL (a statement, a commit, or the wait for a
/// connection and its first statement) may take before the call fails UNAVAILABLE and
/// the database counts as down ([`reach`]). A PostgreSQL that stops answering — a
/// stalled disk, a frozen VM, a network path that drops packets without a reset —
/// otherwise holds every call in flight for as long as it hangs, since TCP notices
/// nothing. Every statement here is short (point reads, pages of at most a few
/// hundred rows, batches of at most a thousand), so this is far beyond any of them on
/// a healthy database.
pub const ROUND_TRIP_DEADLINE: Duration = Duration::from_millis(1500);

/// `round_trip` within [`ROUND_TRIP_DEADLINE`], else a timed-out I/O error (a lost
/// connection, for [`connection_lost`] and [`reach`]). The round trip is dropped: its
/// connection goes back to the pool only once it answers again (sqlx checks it).
async fn bounded<T>(
    round_trip: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, sqlx::Error> {
    tokio::time::timeout(ROUND_TRIP_DEADLINE, round_trip)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// The PostgreSQL database every node of a cluster shares, for the statements of a
/// cluster's own (`cluster::store`), under the rule every statement here follows:
/// refused at once while the database is known to be down, and the call bounded (by twice [`ROUND_TRIP_DEADLINE`]:
/// a call may make a few round trips), after which the database counts as down.
#[derive(Clone, Debug)]
pub struct Shared {
    pool: PgPool,
    reach: std::sync::Arc<reach::Reach>,
}

impl Store {
    /// The database as every node of a cluster shares it; `None` for a SQLite file,
    /// which is one process's.
    pub fn shared(&self) -> Option<Shared> {
        match &self.backend {
            Backend::Postgres(pool) => Some(Shared {
                pool: pool.clone(),
                reach: self.reach.clone(),
            }),
            Backend::Sqlite { .. } => None,
        }
    }
}

impl Shared {
    /// Runs `body` on connections of the pool, under the rule above.
    pub async fn run<T>(&self, body: impl AsyncFnOnce(&SharedPool) -> Result<T>) -> Result<T> {
        self.reach.admit()?;
        // Each statement takes a connection of the pool and gives it back (holding
        // one across the call kept connections a hung database had stalled away
        // from the pool after it came back: the cluster's hang test).
        let pool = SharedPool { pool: &self.pool };
        match tokio::time::timeout(2 * ROUND_TRIP_DEADLINE, body(&pool)).await {
            Ok(result) => result,
            Err(_) => {
                self.reach.trip();
                Err(timed_out().into())
            }
        }
    }
}

/// The shared pool as a [`Shared::run`] body sees it: a wait for one of its
/// connections is counted and timed like every other statement's ([`connection`],
/// [`begin`]). Always the checked way (sqlx tests an idle connection before handing
/// it out), as these statements always took them: the fast way hands out an idle
/// connection with no round trip, which says nothing of whether the database answers
/// (and a cluster's lease must not renew over a connection that died).
pub struct SharedPool<'a> {
    pool: &'a PgPool,
}

impl SharedPool<'_> {
    /// A connection for one statement (given back when dropped).
    pub async fn connection(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
        Ok(connection(self.pool, true).await?)
    }

    /// A transaction, for statements that must hold together.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(begin(self.pool, true).await?)
    }
}

/// What a round trip past [`ROUND_TRIP_DEADLINE`] fails with.
fn timed_out() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "PostgreSQL did not answer within {} ms",
            ROUND_TRIP_DEADLINE.as_millis()
        ),
    ))
}

/// A connection of `pool`: an idle one at once, else whatever waiting for one takes —
/// a wait the metrics count and time (`chatroom_db_waits_total`,
/// `chatroom_db_wait_seconds`), the sign of a pool too small for its load.
///
/// `check`: take it the slow way, which tests an idle connection before handing it
/// out (the fast way does not) — after an outage, see [`reach`].
async fn connection<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    check: bool,
) -> std::result::Result<sqlx::pool::PoolConnection<DB>, sqlx::Error> {
    if !check && let Some(connection) = pool.try_acquire() {
        return Ok(connection);
    }
    let started = std::time::Instant::now();
    let connection = pool.acquire().await;
    crate::telemetry::db_wait(started.elapsed());
    connection
}

/// A transaction on a connection of `pool`, its wait counted as [`connection`]'s.
async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    check: bool,
) -> std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    if !check && let Some(tx) = pool.try_begin().await? {
        return Ok(tx);
    }
    let started = std::time::Instant::now();
    let tx = pool.begin().await;
    crate::telemetry::db_wait(started.elapsed());
    tx
}

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
    reach: std::sync::Arc<reach::Reach>,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        let committed = match self.inner {
            // A commit that times out may or may not have happened: the caller hears
            // UNAVAILABLE either way and nothing is published, so nothing is
            // acknowledged that is not known to be stored (a retry with the same
            // idempotency key finds it if it was).
            TxInner::Postgres(tx) => bounded(tx.commit()).await,
            TxInner::Sqlite(tx) => tx.commit().await,
        };
        self.reach.observe(&committed);
        Ok(committed?)
    }
}

/// The migrations of each dialect, embedded in the binary at build time (so it runs
/// anywhere); sqlx records applied versions and checksums in the database.
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

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
            e if connection_lost(&e) || matches!(e, sqlx::Error::PoolClosed) => {
                Error::Unavailable(e.to_string())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Whether `error` says the database cannot be reached at all — the connection, not
/// the statement, failed. Such errors are UNAVAILABLE, and they are what makes
/// [`reach`] fail later calls at once.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref().is_some_and(is_connection_state),
        _ => false,
    }
}

/// SQLSTATEs of a lost connection: connection exception (08…); shutting down
/// (admin_shutdown, crash_shutdown, cannot_connect_now).
fn is_connection_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// SQLSTATEs that say the database (or the connection to it) cannot serve the call
/// now, not that the call is wrong: it may be retried as it is.
fn is_retryable(code: &str) -> bool {
    is_connection_state(code)
        || matches!(
            code,
            // deadlock detected, serialization failure
            "40P01" | "40001"
            // SQLite: the database is busy or locked (another process holds it)
            | "5" | "6" | "261" | "262" | "517"
        )
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
}
