//! In-memory live state only — no store, no rules: fan-out of events to attached
//! streams ([`hub`], each room's events in a [`ring`]) of frames encoded once
//! (`proto::Frame`), and presence — which
//! users have streams attached to which rooms. Two interfaces face the rest of a
//! node, each with a single-node and a cluster implementation that the composition
//! root picks once: the [`Broker`] the hubs publish through besides their own streams,
//! and the [`PresenceLedger`] where presence is written down beyond this process.
//! The writers that store and then publish here live in `rooms/`; a cluster's side
//! of both interfaces in `cluster/`.
//!
//! Presence here is this process's streams: connections end with the process. On a
//! single node room reads use it for `online`, `online_count` and
//! `ListMembers(online_only)`; in a cluster each node also writes it down, and reads
//! count every node (see [`PresenceLedger`]).
//!
//! It imports `domain`, `error`, `proto` and `telemetry`, and nothing above them.

pub mod broker;
pub mod hub;
pub mod ledger;
mod members;
mod mutes;
pub mod ring;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub use broker::{Alone, Broker, Relayed, RoomEvent};
pub use hub::{Event, Hubs, MuteNews};
pub use ledger::PresenceLedger;

use crate::domain::RoomId;

/// Attached-stream counts per room and user.
#[derive(Debug, Default)]
pub struct Presence {
    /// room → user → number of attached streams (entries are removed at zero).
    rooms: Mutex<HashMap<RoomId, BTreeMap<String, u32>>>,
}

impl Presence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one more stream of `user` attached to `room`; true when it is the
    /// user's first there (the user just came online).
    pub fn attach(&self, room: &RoomId, user: &str) -> bool {
        let mut rooms = self.rooms.lock().expect("presence lock");
        let streams = rooms
            .entry(room.clone())
            .or_default()
            .entry(user.to_string())
            .or_default();
        *streams += 1;
        *streams == 1
    }

    /// Records one stream fewer; true when the user has no stream left in the room.
    pub fn detach(&self, room: &RoomId, user: &str) -> bool {
        let mut rooms = self.rooms.lock().expect("presence lock");
        let Some(users) = rooms.get_mut(room) else {
            return true;
        };
        let gone = match users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                users.remove(user);
                true
            }
            None => true,
        };
        if users.is_empty() {
            rooms.remove(room);
        }
        gone
    }

    /// How many users have a stream attached to `room`.
    pub fn online_count(&self, room: &RoomId) -> u32 {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms
            .get(room)
            .map_or(0, |users| u32::try_from(users.len()).unwrap_or(u32::MAX))
    }

    /// Whether `user` has a stream attached to `room`.
    pub fn is_online(&self, room: &RoomId, user: &str) -> bool {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms
            .get(room)
            .is_some_and(|users| users.contains_key(user))
    }

    /// Every room and user with a stream attached.
    pub fn all(&self) -> Vec<(RoomId, String)> {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms
            .iter()
            .flat_map(|(room, users)| users.keys().map(|u| (room.clone(), u.clone())))
            .collect()
    }

    /// Up to `limit` online users of `room` with ids above `after`, in id order.
    pub fn online_users(&self, room: &RoomId, after: Option<&str>, limit: u32) -> Vec<String> {
        let rooms = self.rooms.lock().expect("presence lock");
        let Some(users) = rooms.get(room) else {
            return Vec::new();
        };
        let range = match after {
            Some(after) => users
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => users.range::<str, _>(..),
        };
        range.take(limit as usize).map(|(u, _)| u.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_streams_per_user() {
        let p = Presence::new();
        let room = RoomId::parse("r").unwrap();
        assert!(p.attach(&room, "alice"));
        assert!(!p.attach(&room, "alice"));
        assert!(p.attach(&room, "bob"));
        assert_eq!(p.online_count(&room), 2);
        assert!(!p.detach(&room, "alice"));
        assert!(p.is_online(&room, "alice"));
        assert!(p.detach(&room, "alice"));
        assert!(!p.is_online(&room, "alice"));
        assert_eq!(p.online_users(&room, None, 10), vec!["bob".to_string()]);
        assert_eq!(p.online_users(&room, Some("bob"), 10), Vec::<String>::new());
        assert!(p.detach(&room, "bob"));
        assert_eq!(p.online_count(&room), 0);
    }
}
