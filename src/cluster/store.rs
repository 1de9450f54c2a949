//! Cluster mode's shared state (PostgreSQL only): the nodes serving the database,
//! each with a lease, and which users each node has streams attached for; and the
//! reads a node's repair makes over all its live rooms at once.
//!
//! Presence across nodes is one rule: a member is online while a node whose lease has
//! not run out holds a `node_presence` row for it, and `members.last_seen_us` (what
//! presence timeouts count from) is set when the last such row goes. Every statement
//! that decides that first locks the member's row, so two nodes changing the same
//! member's presence take turns, and the second sees what the first committed (each
//! statement of a READ COMMITTED transaction reads afresh).
//!
//! Leases use the database's clock, so nodes whose clocks disagree still agree on
//! which of them are alive.

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::{RoomId, UnixMicros};
use crate::error::Result;
use crate::store::{Shared, Store};

/// Now, in microseconds, by the database's clock.
macro_rules! db_now_us {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"
    };
}

/// The condition that the `nodes` row aliased `$n` is alive (its lease has not run
/// out).
macro_rules! alive {
    ($n:literal) => {
        concat!($n, ".lease_until_us >= ", db_now_us!())
    };
}

/// The statements only a cluster makes, on the database its nodes share.
#[derive(Clone, Debug)]
pub struct ClusterStore {
    db: Shared,
}

impl ClusterStore {
    /// The cluster's statements on `store`'s database; `None` for a SQLite file
    /// (which the flags refuse with `--nats-url`).
    pub fn new(store: &Store) -> Option<ClusterStore> {
        store.shared().map(|db| ClusterStore { db })
    }

    /// This deployment's identity on the bus: the `(id, key)` the first node stored,
    /// or `candidate`, stored now, if this is the first node.
    pub async fn deployment(&self, candidate: (&str, &[u8])) -> Result<(String, Vec<u8>)> {
        self.db
            .run(async |c| {
                sqlx::query(
                    "INSERT INTO deployment (id, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(candidate.0)
                .bind(candidate.1)
                .execute(&mut *c.connection().await?)
                .await?;
                let stored: (String, Vec<u8>) = sqlx::query_as("SELECT id, key FROM deployment")
                    .fetch_one(&mut *c.connection().await?)
                    .await?;
                Ok(stored)
            })
            .await
    }

    /// Announces `node` with a lease of `lease` from now (again, if it was known).
    pub async fn register_node(&self, node: &str, lease: Duration) -> Result<()> {
        self.db.run(async |c| {
            sqlx::query(concat!(
                "INSERT INTO nodes (node_id, started_at_us, lease_until_us) VALUES ($1, ",
                db_now_us!(),
                ", ",
                db_now_us!(),
                " + $2) ON CONFLICT (node_id) DO UPDATE SET lease_until_us = EXCLUDED.lease_until_us"
            ))
            .bind(node)
            .bind(micros(lease))
            .execute(&mut *c.connection().await?)
            .await?;
            Ok(())
        })
        .await
    }

    /// Extends `node`'s lease to `lease` from now. False when the node is not known
    /// any more: its lease ran out and another node released its presence.
    pub async fn renew_lease(&self, node: &str, lease: Duration) -> Result<bool> {
        self.db
            .run(async |c| {
                let done = sqlx::query(concat!(
                    "UPDATE nodes SET lease_until_us = ",
                    db_now_us!(),
                    " + $2 WHERE node_id = $1"
                ))
                .bind(node)
                .bind(micros(lease))
                .execute(&mut *c.connection().await?)
                .await?;
                Ok(done.rows_affected() == 1)
            })
            .await
    }

    /// Nodes whose lease has run out, with when it did.
    pub async fn dead_nodes(&self) -> Result<Vec<(String, UnixMicros)>> {
        self.db
            .run(async |c| {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT node_id, lease_until_us FROM nodes WHERE lease_until_us < ",
                    db_now_us!()
                ))
                .fetch_all(&mut *c.connection().await?)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(node, until)| (node, UnixMicros(until)))
                    .collect())
            })
            .await
    }

    /// Forgets `node` and its presence: members it held online and no live node
    /// holds go offline as of `offline_since` (their presence timeouts start). With
    /// `only_if_dead`, nothing happens unless the node's lease has run out — a node
    /// that renewed meanwhile keeps everything. Returns how many members went offline,
    /// or `None` when the node was not released.
    pub async fn release_node(
        &self,
        node: &str,
        offline_since: UnixMicros,
        only_if_dead: bool,
    ) -> Result<Option<u64>> {
        self.db.run(async |c| {
            let mut tx = c.begin().await?;
            // The node's row first: its own lease renewal waits on this and then finds the
            // node gone, so it knows to announce itself and its presence again.
            let gone = sqlx::query(concat!(
                "DELETE FROM nodes WHERE node_id = $1 AND (NOT $2 OR lease_until_us < ",
                db_now_us!(),
                ")"
            ))
            .bind(node)
            .bind(only_if_dead)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone == 0 && only_if_dead {
                return Ok(None);
            }
            sqlx::query(
                "SELECT 1 FROM members m WHERE (m.room_id, m.user_id) IN \
                   (SELECT room_id, user_id FROM node_presence WHERE node_id = $1) \
                 ORDER BY m.room_id, m.user_id FOR UPDATE OF m",
            )
            .bind(node)
            .execute(&mut *tx)
            .await?;
            let offline = sqlx::query(concat!(
                "UPDATE members m SET last_seen_us = $2 FROM node_presence p \
                 WHERE p.node_id = $1 AND m.room_id = p.room_id AND m.user_id = p.user_id \
                   AND m.last_seen_us IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM node_presence q JOIN nodes n ON n.node_id = q.node_id \
                     WHERE q.room_id = p.room_id AND q.user_id = p.user_id AND q.node_id <> $1 AND ",
                alive!("n"),
                ")"
            ))
            .bind(node)
            .bind(offline_since.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM node_presence WHERE node_id = $1")
                .bind(node)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(offline))
        })
        .await
    }

    /// Records whether `node` has a stream of `user` attached to `room`. The member
    /// is online from the first node's row on, and offline as of `now` once no live
    /// node holds one. A node that is not announced (released) records nothing
    /// online. Returns true when the member went offline.
    pub async fn set_node_presence(
        &self,
        node: &str,
        room_id: &RoomId,
        user: &str,
        online: bool,
        now: UnixMicros,
    ) -> Result<bool> {
        self.db.run(async |c| {
            let mut tx = c.begin().await?;
            if online {
                // Only an announced node holds members online: one released meanwhile (it
                // is stopping, or its lease ran out) would leave a row no release ever
                // removes and a member online with no stream anywhere. The share lock
                // holds off a release until this commits; the release then sees the row.
                let announced = sqlx::query("SELECT 1 FROM nodes WHERE node_id = $1 FOR SHARE")
                    .bind(node)
                    .fetch_optional(&mut *tx)
                    .await?;
                if announced.is_none() {
                    return Ok(false);
                }
            }
            sqlx::query("SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2 FOR UPDATE")
                .bind(room_id.as_str())
                .bind(user)
                .execute(&mut *tx)
                .await?;
            let went_offline = if online {
                sqlx::query(
                    "INSERT INTO node_presence (room_id, user_id, node_id) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(room_id.as_str())
                .bind(user)
                .bind(node)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE members SET last_seen_us = NULL \
                     WHERE room_id = $1 AND user_id = $2 AND last_seen_us IS NOT NULL",
                )
                .bind(room_id.as_str())
                .bind(user)
                .execute(&mut *tx)
                .await?;
                false
            } else {
                sqlx::query(
                    "DELETE FROM node_presence WHERE room_id = $1 AND user_id = $2 AND node_id = $3",
                )
                .bind(room_id.as_str())
                .bind(user)
                .bind(node)
                .execute(&mut *tx)
                .await?;
                sqlx::query(concat!(
                    "UPDATE members SET last_seen_us = $3 \
                     WHERE room_id = $1 AND user_id = $2 AND last_seen_us IS NULL \
                       AND NOT EXISTS (SELECT 1 FROM node_presence p JOIN nodes n ON n.node_id = p.node_id \
                         WHERE p.room_id = $1 AND p.user_id = $2 AND ",
                    alive!("n"),
                    ")"
                ))
                .bind(room_id.as_str())
                .bind(user)
                .bind(now.0)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            };
            tx.commit().await?;
            Ok(went_offline)
        })
        .await
    }

    /// How many distinct users live nodes hold online in each of `room_ids` (rooms
    /// with none are left out).
    pub async fn online_counts(&self, room_ids: &[&str]) -> Result<HashMap<String, u32>> {
        self.db
            .run(async |c| {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT p.room_id, COUNT(DISTINCT p.user_id) FROM node_presence p \
                 JOIN nodes n ON n.node_id = p.node_id WHERE p.room_id = ANY($1) AND ",
                    alive!("n"),
                    " GROUP BY p.room_id"
                ))
                .bind(room_ids)
                .fetch_all(&mut *c.connection().await?)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(room, n)| (room, u32::try_from(n).unwrap_or(u32::MAX)))
                    .collect())
            })
            .await
    }

    /// How many distinct users live nodes hold online in `room_id`, and whether
    /// `user` is one of them.
    pub async fn online_count_with(&self, room_id: &RoomId, user: &str) -> Result<(u32, bool)> {
        self.db
            .run(async |c| {
                let (count, found): (i64, bool) = sqlx::query_as(concat!(
                    "SELECT COUNT(DISTINCT p.user_id), COALESCE(BOOL_OR(p.user_id = $2), FALSE) \
                 FROM node_presence p JOIN nodes n ON n.node_id = p.node_id \
                 WHERE p.room_id = $1 AND ",
                    alive!("n")
                ))
                .bind(room_id.as_str())
                .bind(user)
                .fetch_one(&mut *c.connection().await?)
                .await?;
                Ok((u32::try_from(count).unwrap_or(u32::MAX), found))
            })
            .await
    }

    /// Up to `limit` users live nodes hold online in `room_id`, with ids above
    /// `after`, in id order.
    pub async fn online_users_anywhere(
        &self,
        room_id: &RoomId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        self.db.run(async |c| {
            Ok(sqlx::query_scalar(concat!(
                "SELECT DISTINCT p.user_id FROM node_presence p JOIN nodes n ON n.node_id = p.node_id \
                 WHERE p.room_id = $1 AND p.user_id > $2 AND ",
                alive!("n"),
                " ORDER BY p.user_id LIMIT $3"
            ))
            .bind(room_id.as_str())
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&mut *c.connection().await?)
            .await?)
        })
        .await
    }

    /// Which of `users` live nodes hold online in `room_id`.
    pub async fn online_among_anywhere(
        &self,
        room_id: &RoomId,
        users: &[&str],
    ) -> Result<Vec<String>> {
        self.db.run(async |c| {
            if users.is_empty() {
                return Ok(Vec::new());
            }
            Ok(sqlx::query_scalar(concat!(
                "SELECT DISTINCT p.user_id FROM node_presence p JOIN nodes n ON n.node_id = p.node_id \
                 WHERE p.room_id = $1 AND p.user_id = ANY($2) AND ",
                alive!("n")
            ))
            .bind(room_id.as_str())
            .bind(users)
            .fetch_all(&mut *c.connection().await?)
            .await?)
        })
        .await
    }
}

impl ClusterStore {
    /// Where each existing room among `room_ids` stands: its stored `last_seq` and
    /// version (rooms that are gone are left out). One statement, every repair
    /// interval, for every room a node has streams in.
    pub async fn room_heads(&self, room_ids: &[RoomId]) -> Result<Vec<RoomHead>> {
        self.db
            .run(async |c| {
                let ids: Vec<&str> = room_ids.iter().map(RoomId::as_str).collect();
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT room_id, last_seq, version FROM rooms WHERE room_id = ANY($1)",
                )
                .bind(ids)
                .fetch_all(&mut *c.connection().await?)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, seq, version)| RoomHead {
                        room_id: RoomId::from_stored(id),
                        last_seq: u64::try_from(seq).unwrap_or(0),
                        version: u64::try_from(version).unwrap_or(0),
                    })
                    .collect())
            })
            .await
    }

    /// Which `(room, user)` pairs among `pairs` are memberships (one statement).
    pub async fn memberships_among(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<std::collections::HashSet<(String, String)>> {
        self.db.run(async |c| {
            if pairs.is_empty() {
                return Ok(Default::default());
            }
            let (rooms, users): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT m.room_id, m.user_id FROM members m \
                 JOIN UNNEST($1::text[], $2::text[]) AS k(r, u) ON m.room_id = k.r AND m.user_id = k.u",
            )
            .bind(rooms)
            .bind(users)
            .fetch_all(&mut *c.connection().await?)
            .await?;
            Ok(rows.into_iter().collect())
        })
        .await
    }
}

/// A room's stored `last_seq` and version.
#[derive(Clone, Debug)]
pub struct RoomHead {
    pub room_id: RoomId,
    pub last_seq: u64,
    pub version: u64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
