//! The rules of rooms: who may do what, limits, and what each operation changes.
//!
//! Every operation that changes state runs in one store transaction that first locks
//! the rooms it touches, then checks the rules against what it read, then writes. A
//! failed check drops the transaction, so nothing is written. This module knows
//! neither gRPC nor SQL.
//!
//! The operations, a file per group: [`membership`] (create, join, enter, leave,
//! switch), [`admin`] (read, list, update, delete rooms, list members), [`messages`]
//! (send, read history, catch up), [`streams`] (access for Subscribe), [`presence`]
//! (who is online, on one node or across a cluster);
//! the two writers every change goes through, [`roster`] (membership) and
//! [`sequencer`] (messages), on the handle they share ([`writer`]); [`expiry`]
//! (presence timeouts, empty rooms); [`retention`] (deleting history past its age or
//! count). Whether this is one node or a node of a cluster is not asked here: the
//! rules publish through the hubs' broker and write presence through the ledger
//! they are given ([`Parts`]).
//!
//! It imports `domain`, `error`, `live`, `store`, `proto` and `telemetry`.

pub mod admin;
pub mod expiry;
pub mod membership;
pub mod messages;
pub mod presence;
pub mod rates;
pub mod retention;
pub mod roster;
pub mod sequencer;
pub mod streams;
pub mod writer;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::domain::{
    Caller, Draft, HistoryRange, Member, Message, MessageLimits, NewRoom, Page, PageRequest, Room,
    RoomFilter, RoomId, RoomMove, RoomPatch, UnixMicros, UserId,
};
use crate::error::{Error, Result};
use crate::live::{Hubs, Presence, PresenceLedger};
use crate::store::{Store, Tx};
use roster::Roster;
use sequencer::Appended;
pub use sequencer::Sequencer;

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
}

/// Room operations, as the API layer calls them.
#[derive(Clone)]
pub struct Rooms {
    store: Store,
    live: Parts,
    limits: Limits,
    admins: Arc<HashSet<String>>,
    /// The one writer of membership (every join, leave, switch, presence timeout and
    /// destroy-when-empty deletion).
    roster: Roster,
    /// Wakes the expiry task when a new presence or destruction deadline starts.
    deadlines_changed: Arc<Notify>,
    /// Per-user send buckets.
    rates: Arc<rates::Rates>,
    /// Subscribe streams open per user.
    open_streams: Arc<streams::OpenStreams>,
}

/// A message handed over for sending, with its answer to come.
pub enum Sent {
    /// Unstored kinds are published at once.
    Published(Box<Message>),
    /// CHAT is answered by the writer once committed.
    Stored {
        room_id: RoomId,
        answer: sequencer::Answer,
        /// Gives the send's token back if the writer refuses it for its room.
        refund: Refund,
    },
}

/// Where a refused CHAT send's rate token goes back to.
pub struct Refund {
    rates: Arc<rates::Rates>,
    user: Arc<str>,
}

impl Sent {
    /// The accepted message (with its seq, for CHAT).
    pub async fn answer(self) -> Result<Message> {
        match self {
            Sent::Published(message) => Ok(*message),
            Sent::Stored {
                room_id,
                answer,
                refund,
            } => {
                let refused = match answer.await? {
                    Appended::New(m) | Appended::Existing(m) => return Ok(m),
                    Appended::RoomGone => not_found(&room_id),
                    Appended::NotAMember => Error::NotAMember {
                        room_id: room_id.to_string(),
                    },
                };
                refund
                    .rates
                    .refund_send(&refund.user, crate::domain::MessageKind::Chat);
                Err(refused)
            }
        }
    }
}

/// Whether a send was refused for its room (missing, or the sender may not send
/// there) — before anything was stored or published, so its rate token goes back.
fn refused_for_its_room(error: &Error) -> bool {
    matches!(error, Error::RoomNotFound { .. } | Error::NotAMember { .. })
}

/// A page of a stream's catch-up.
#[derive(Debug)]
pub struct CatchUp {
    pub messages: Vec<Message>,
    /// More stored messages may follow the page.
    pub more: bool,
}

/// What checking a caller's access to a room found: the room as stored, and the
/// name the caller's messages carry in it.
#[derive(Clone, Debug)]
pub struct Access {
    pub room: Room,
    /// The name messages from this stream carry.
    pub sender_name: String,
    /// In a cluster, the room's online count over every node, the caller included;
    /// `None` on a single node, which counts its streams in memory.
    pub online: Option<u32>,
    /// The seq of the oldest message still stored (`last_seq + 1` when none is): a
    /// stream resuming from before it missed history that retention deleted.
    pub history_from: u64,
}

impl Access {
    /// Whether resuming after `after_seq` misses messages that are no longer stored.
    pub fn history_truncated(&self, after_seq: u64) -> bool {
        after_seq.saturating_add(1) < self.history_from
    }
}

impl Rooms {
    pub fn new(
        store: Store,
        live: Parts,
        limits: Limits,
        admins: impl IntoIterator<Item = String>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let deadlines_changed = Arc::new(Notify::new());
        let (roster, writer) = Roster::start(
            store.clone(),
            live.hubs.clone(),
            deadlines_changed.clone(),
            limits.max_rooms_per_user,
        );
        let rooms = Rooms {
            store,
            live,
            admins: Arc::new(admins.into_iter().collect()),
            roster,
            deadlines_changed,
            rates: Arc::new(rates::Rates::new(limits.sends, limits.room_changes)),
            open_streams: Arc::new(streams::OpenStreams::new(limits.max_streams_per_user)),
            limits,
        };
        (rooms, writer)
    }

    /// What wakes the expiry task when a presence or destruction deadline may be
    /// due sooner (a cluster's lease task rings it when it releases a dead node).
    pub fn deadlines_changed(&self) -> &Arc<Notify> {
        &self.deadlines_changed
    }

    /// The fan-out hubs (the Subscribe session receives from them).
    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.live.hubs
    }

    /// The message limits.
    pub fn message_limits(&self) -> &MessageLimits {
        &self.limits.messages
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
