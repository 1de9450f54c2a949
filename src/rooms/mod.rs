//! The rules of rooms: who may do what, limits, and what each operation changes.
//!
//! Every operation that changes state runs in one store transaction that first locks
//! the rooms it touches, then checks the rules against what it read, then writes. A
//! failed check drops the transaction, so nothing is written. This module knows
//! neither gRPC nor SQL.
//!
//! [`Rooms`] is a set of handles, one per group of operations, each in its own file
//! and each listing what it holds: [`membership::Membership`] (create, join, enter,
//! leave, switch), [`admin::Admin`] (read, list, update, delete rooms, list members),
//! [`moderation::Moderation`] (roles, ownership, kicks, bans and mutes, judged by the
//! one table of who may do what to members in [`authority`]), [`messages::Messages`]
//! (send, read history, catch up), [`streams::Streams`] (stream slots and access for
//! Subscribe), [`expiry::Expiry`] (presence timeouts and empty rooms, applied by its
//! task), [`feed::RoomFeed`] (WatchRooms: the stored feed of every room's lifecycle,
//! which the writing handles append to as they commit, through [`feed::FeedNews`]).
//! They share [`presence::Online`] (who is online, here and in the ledger),
//! [`readers::Readers`] (who may receive a room) and [`rates`]; the two writers every
//! change goes through, [`roster`] (membership) and [`sequencer`] (messages, a task
//! per share of the rooms), on the
//! handle they share ([`writer`]); [`retention`] deletes history past its age or
//! count. Whether this is one node or a node of a cluster is not asked here: the
//! rules publish through the hubs' broker and write presence through the ledger they
//! are given ([`Parts`]).
//!
//! It imports `domain`, `error`, `live`, `store`, `proto` and `telemetry`.

pub mod admin;
pub mod authority;
pub mod expiry;
pub mod feed;
pub mod membership;
pub mod messages;
pub mod moderation;
pub mod presence;
pub mod rates;
pub mod readers;
pub mod retention;
pub mod roster;
pub mod sequencer;
pub mod streams;
pub mod writer;

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::domain::{Caller, Clock, MessageLimits, Room, RoomId, UserId};
use crate::error::{Error, Result};
use crate::live::{Hubs, Presence, PresenceLedger};
use crate::store::{Store, Tx};
use admin::Admin;
use expiry::Expiry;
use feed::{FeedNews, RoomFeed};
use membership::Membership;
pub use messages::{CatchUp, Handing, Messages, Sent};
use moderation::Moderation;
use presence::Online;
use readers::Readers;
use roster::Roster;
pub use sequencer::Sequencer;
pub use streams::{Access, Streams};

/// Limits that apply across rooms.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most rooms one user may be a member of; 0 means unlimited.
    pub max_rooms_per_user: u32,
    /// Message size limits.
    pub messages: MessageLimits,
    /// Sends per second per user and kind (0: unlimited), and the burst allowed.
    pub sends: rates::Rate,
    /// Room changes (create, join, enter, leave, switch, update, delete) per second
    /// per user (0: unlimited), and the burst allowed.
    pub room_changes: rates::Rate,
    /// Most Subscribe streams one user may have open at once (0: unlimited).
    pub max_streams_per_user: u32,
}

/// What the rules drive besides the store: fan-out, presence (this process's, in
/// memory, and as written down), the message writer, and the owner of the short
/// tasks they start (the server awaits them when it stops).
#[derive(Clone)]
pub struct Parts {
    pub hubs: Arc<Hubs>,
    pub presence: Arc<Presence>,
    pub ledger: Arc<dyn PresenceLedger>,
    pub sequencer: Sequencer,
    pub tasks: TaskTracker,
    /// Where the rules read the time and the timers wait.
    pub clock: Clock,
}

/// The rules' handles, as the API layer calls them. A clone is one pointer: every
/// Subscribe stream keeps one for as long as it lives.
#[derive(Clone)]
pub struct Rooms(Arc<Handles>);

/// Every handle (each defined, with what it holds, in its own file), and what the
/// API layer reads of the rules besides.
pub struct Handles {
    pub membership: Membership,
    pub admin: Admin,
    pub moderation: Moderation,
    pub messages: Messages,
    pub streams: Streams,
    pub expiry: Expiry,
    pub feed: RoomFeed,
    /// The fan-out hubs (the Subscribe session receives from them).
    hubs: Arc<Hubs>,
    message_limits: MessageLimits,
    /// `--admin-users`: admins by name (a token can make an admin too).
    admins: HashSet<String>,
    /// Wakes the expiry task when a new presence or destruction deadline starts.
    deadlines_changed: Arc<Notify>,
    /// Where the rules read the time (a stream's token expiry waits on it too).
    clock: Clock,
}

impl Deref for Rooms {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

impl Rooms {
    /// The handles over `store` and `live`, and the membership writer's task.
    pub fn new(
        store: Store,
        live: Parts,
        limits: Limits,
        admins: impl IntoIterator<Item = String>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let deadlines_changed = Arc::new(Notify::new());
        let news = Arc::new(FeedNews::default());
        let (roster, writer) = Roster::start(
            store.clone(),
            &live,
            deadlines_changed.clone(),
            limits.max_rooms_per_user,
            news.clone(),
        );
        let rates = Arc::new(rates::Rates::new(
            limits.sends,
            limits.room_changes,
            live.clock.clone(),
        ));
        let online = Online {
            memory: live.presence,
            ledger: live.ledger,
            tasks: live.tasks,
            deadlines_changed: deadlines_changed.clone(),
        };
        let readers = Readers::new(&store, &live.clock);
        let handles = Handles {
            membership: Membership {
                roster: roster.clone(),
                rates: rates.clone(),
                online: online.clone(),
            },
            moderation: Moderation {
                store: store.clone(),
                rates: rates.clone(),
                roster: roster.clone(),
                hubs: live.hubs.clone(),
                online: online.clone(),
                clock: live.clock.clone(),
                news: news.clone(),
            },
            admin: Admin {
                store: store.clone(),
                rates: rates.clone(),
                hubs: live.hubs.clone(),
                online: online.clone(),
                readers: readers.clone(),
                deadlines_changed: deadlines_changed.clone(),
                clock: live.clock.clone(),
                news: news.clone(),
            },
            messages: Messages {
                store: store.clone(),
                rates,
                sequencer: live.sequencer,
                hubs: live.hubs.clone(),
                readers: readers.clone(),
                clock: live.clock.clone(),
            },
            streams: Streams {
                open: Arc::new(streams::OpenStreams::new(limits.max_streams_per_user)),
                readers,
                online: online.clone(),
            },
            feed: RoomFeed::new(&store, news),
            expiry: Expiry {
                store,
                roster,
                online,
                clock: live.clock.clone(),
            },
            clock: live.clock,
            hubs: live.hubs,
            message_limits: limits.messages,
            admins: admins.into_iter().collect(),
            deadlines_changed,
        };
        (Rooms(Arc::new(handles)), writer)
    }
}

impl Handles {
    /// What wakes the expiry task when a presence or destruction deadline may be
    /// due sooner (a cluster's lease task rings it when it releases a dead node).
    pub fn deadlines_changed(&self) -> &Arc<Notify> {
        &self.deadlines_changed
    }

    /// The fan-out hubs (the Subscribe session receives from them).
    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.hubs
    }

    /// Where the rules read the time.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The message limits.
    pub fn message_limits(&self) -> &MessageLimits {
        &self.message_limits
    }

    /// The caller for an authenticated user id.
    pub fn caller(&self, user_id: UserId) -> Caller {
        let admin = self.admins.contains(user_id.as_str());
        Caller::new(user_id, admin)
    }
}

/// Locks a room, or fails with ROOM_NOT_FOUND.
async fn lock_existing(tx: &mut Tx, room_id: &RoomId) -> Result<Room> {
    tx.lock_room(room_id)
        .await?
        .ok_or_else(|| not_found(room_id))
}

/// Who may receive and send in a room, and under which name: its members, under their
/// display name (`display_name`, `None` when `user` is not a member), and admins, who
/// go by their user id. `None`: neither.
fn sender_name(admin: bool, user: &str, display_name: Option<&str>) -> Option<String> {
    match display_name {
        Some(name) => Some(name.to_string()),
        None if admin => Some(user.to_string()),
        None => None,
    }
}

/// Fails unless the caller's token reaches `room_id`. Every call and stream frame
/// that names a room checks it, for every caller, admins included: membership is
/// not enough, because a room joined with a broader token stays joined when the
/// user comes back with a narrower one — and a narrow admin token is how a backend
/// hands a moderator power over some rooms only. (ListRooms names no room and lists
/// every room, as the README says.)
fn check_in_token(caller: &Caller, room_id: &RoomId) -> Result<()> {
    if caller.may_enter(room_id) {
        Ok(())
    } else {
        Err(Error::RoomNotInToken {
            room_id: room_id.to_string(),
        })
    }
}

fn not_found(room_id: &RoomId) -> Error {
    Error::RoomNotFound {
        room_id: room_id.to_string(),
    }
}
