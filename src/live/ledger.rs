//! Where presence is written down beyond this process's memory ([`super::Presence`]):
//! one interface, two implementations, picked once by the composition root.
//!
//! - One node (`rooms::presence::OneNode`): memory is the truth; the store keeps only
//!   `last_seen` for rooms with a presence timeout (what the timeout counts from).
//! - A cluster (`cluster::presence`): each node stores a row per room and user it
//!   has streams for, under its lease; counts and lists are read over every live
//!   node and joined with this node's memory, which is ahead of its own rows by the
//!   write in flight.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use super::Presence;
use crate::domain::RoomId;
use crate::error::Result;

/// A ledger's answer to come.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Where presence is written down, and read back over every node.
pub trait PresenceLedger: Send + Sync + std::fmt::Debug {
    /// Whether every room's presence is written down (other nodes count it), or
    /// only that of rooms with a presence timeout.
    fn records_every_room(&self) -> bool;

    /// Online counts of `rooms` over every node (rooms with none left out); `None`:
    /// this process's streams are all there is, counted in memory.
    fn online_counts<'a>(
        &'a self,
        rooms: &'a [&'a str],
    ) -> Pending<'a, Option<HashMap<String, u32>>>;

    /// A room's online count over every node as a stream of `user` attaches (it
    /// counted); `None`: counted in memory once the stream registered.
    fn count_at_attach<'a>(&'a self, room: &'a RoomId, user: &'a str) -> Pending<'a, Option<u32>>;

    /// Up to `limit` users online in `room` on other nodes, with ids above `after`,
    /// in id order (none on one node).
    fn online_elsewhere<'a>(
        &'a self,
        room: &'a RoomId,
        after: Option<&'a str>,
        limit: u32,
    ) -> Pending<'a, Vec<String>>;

    /// Which of `users` are online in `room` on other nodes (none on one node).
    fn online_among_elsewhere<'a>(
        &'a self,
        room: &'a RoomId,
        users: &'a [&'a str],
    ) -> Pending<'a, Vec<String>>;

    /// Writes down that `user` is online in `room`, or offline since now. True when
    /// the member went offline (a presence timeout starts).
    fn record<'a>(&'a self, room: &'a RoomId, user: &'a str, online: bool) -> Pending<'a, bool>;
}

/// Brings what `ledger` says of `user` in a room in line with its streams here, as
/// `memory` counts them after the write; true when the member went offline.
///
/// Attaches and detaches race on their writes (two connections, no order between
/// them), so each writer writes what it sees, looks again once its write is done,
/// and writes again if that changed: whoever changes presence last also writes
/// last, and no member stays "online" in the ledger with no stream, nor "offline"
/// with one, for longer than a write. A writer that keeps seeing changes stops after
/// a few rounds: every change of presence starts a writer of its own, and the last
/// one finishes the job.
pub async fn sync(
    memory: &Presence,
    ledger: &dyn PresenceLedger,
    room: &RoomId,
    user: &str,
) -> Result<bool> {
    let mut online = memory.is_online(room, user);
    for _ in 0..4 {
        let went_offline = ledger.record(room, user, online).await?;
        let now_online = memory.is_online(room, user);
        if now_online == online {
            return Ok(went_offline);
        }
        online = now_online;
    }
    Ok(false)
}
