//! The rules of rooms: who may do what, limits, and what each operation changes.
//!
//! Every operation that changes state runs in one store transaction that first locks
//! the rooms it touches, then checks the rules against what it read, then writes. A
//! failed check drops the transaction, so nothing is written. This module knows
//! neither gRPC nor SQL.

pub mod admissions;
pub mod expiry;
pub mod sequencer;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::domain::{
    Caller, DetachReason, Draft, HistoryRange, Member, Message, MessageLimits, NewRoom, Page,
    PageRequest, Room, RoomFilter, RoomId, RoomPatch, UnixMicros, UserId,
};
use crate::error::{Error, Result};
use crate::live::{Hubs, Presence};
use crate::store::{Appended, Store, Tx};
use admissions::Admissions;
pub use sequencer::Sequencer;

/// Limits that apply across rooms.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most rooms one user may be a member of; 0 means unlimited.
    pub max_rooms_per_user: u32,
    /// Message size limits.
    pub messages: MessageLimits,
}

/// The live parts the rules drive: fan-out, presence and the message writer.
#[derive(Clone)]
pub struct Live {
    pub hubs: Arc<Hubs>,
    pub presence: Arc<Presence>,
    pub sequencer: Sequencer,
}

/// Room operations, as the API layer calls them.
#[derive(Clone)]
pub struct Rooms {
    store: Store,
    live: Live,
    limits: Limits,
    admins: Arc<HashSet<String>>,
    /// The one writer of joins and leaves (JoinRoom, EnterRoom, LeaveRoom).
    admissions: Admissions,
    /// Wakes the expiry task when a new presence or destruction deadline starts.
    deadlines_changed: Arc<Notify>,
}

/// A message handed over for sending, with its answer to come.
pub enum Sent {
    /// Unstored kinds are published at once.
    Published(Box<Message>),
    /// CHAT is answered by the writer once committed.
    Stored {
        room_id: RoomId,
        answer: sequencer::Answer,
    },
}

impl Sent {
    /// The accepted message (with its seq, for CHAT).
    pub async fn answer(self) -> Result<Message> {
        match self {
            Sent::Published(message) => Ok(*message),
            Sent::Stored { room_id, answer } => match answer.await? {
                Appended::New(m) | Appended::Existing(m) => Ok(m),
                Appended::RoomGone => Err(not_found(&room_id)),
                Appended::NotAMember => Err(Error::NotAMember {
                    room_id: room_id.to_string(),
                }),
            },
        }
    }
}

/// A page of a stream's catch-up.
#[derive(Debug)]
pub struct CatchUp {
    pub messages: Vec<Message>,
    /// More stored messages may follow the page.
    pub more: bool,
}

/// What attaching a stream to a room found.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub room: Room,
    /// The name messages from this stream carry.
    pub sender_name: String,
}

/// Whether a join adds to the user's room count (a switch moves it instead).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Claim,
    Move,
}

impl Rooms {
    pub fn new(
        store: Store,
        live: Live,
        limits: Limits,
        admins: impl IntoIterator<Item = String>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let deadlines_changed = Arc::new(Notify::new());
        let (admissions, writer) = Admissions::start(
            store.clone(),
            live.hubs.clone(),
            deadlines_changed.clone(),
            limits.max_rooms_per_user,
        );
        let rooms = Rooms {
            store,
            live,
            limits,
            admins: Arc::new(admins.into_iter().collect()),
            admissions,
            deadlines_changed,
        };
        (rooms, writer)
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
        Caller { user_id, admin }
    }

    /// Creates a room with the caller as its owner and first member.
    pub async fn create(
        &self,
        caller: &Caller,
        room: NewRoom,
        display_name: String,
    ) -> Result<Room> {
        let mut tx = self.store.begin().await?;
        if !tx
            .insert_room(&room, caller.user_id.as_str(), UnixMicros::now())
            .await?
        {
            return Err(Error::RoomExists {
                room_id: room.id.to_string(),
            });
        }
        let (room, _) = self
            .join_in(&mut tx, caller, &room.id, display_name, Slot::Claim)
            .await?;
        tx.commit().await?;
        Ok(self.with_presence(room))
    }

    /// Joins an existing room; already being a member is not an error.
    pub async fn join(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        display_name: String,
    ) -> Result<Room> {
        let joined = self
            .admissions
            .join(room_id, caller.user_id.as_str(), display_name, None)
            .await?;
        Ok(self.with_presence(joined.room))
    }

    /// Joins a room within a transaction that holds it already (CreateRoom's new row,
    /// SwitchRoom's lock), claiming a room slot unless the join is part of a move:
    /// insert the member (the room's owner rejoins as owner), claim the slot, then add
    /// to the member count if the room has space. Any failure drops the transaction
    /// and with it the inserted member. Returns the room and the new member (`None`:
    /// already a member, nothing changed). JoinRoom, EnterRoom and LeaveRoom go
    /// through [`Admissions`] instead, batched.
    async fn join_in(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        room_id: &RoomId,
        display_name: String,
        slot: Slot,
    ) -> Result<(Room, Option<Member>)> {
        let user = caller.user_id.as_str();
        let now = UnixMicros::now();
        let Some(member) = tx
            .insert_member_if_new(room_id, user, &display_name, now)
            .await?
        else {
            // Already a member (nothing changes), or no such room.
            let room = tx.room(room_id).await?.ok_or_else(|| not_found(room_id))?;
            return Ok((room, None));
        };
        let limit = self.limits.max_rooms_per_user;
        if slot == Slot::Claim && !tx.claim_room_slot(user, limit).await? {
            return Err(Error::TooManyRooms { limit });
        }
        match tx.count_new_member(room_id).await? {
            Some(room) => Ok((room, Some(member))),
            None => {
                let room = tx.room(room_id).await?.ok_or_else(|| not_found(room_id))?;
                Err(Error::RoomFull {
                    room_id: room_id.to_string(),
                    max_members: room.settings.max_members,
                })
            }
        }
    }

    /// Creates the room, or joins it if it exists; true when this call created it.
    ///
    /// Atomic: of concurrent callers exactly one creates the room (its insert is
    /// `ON CONFLICT DO NOTHING`; the others wait for its commit, see the row, and join).
    pub async fn enter(
        &self,
        caller: &Caller,
        room: NewRoom,
        display_name: String,
    ) -> Result<(Room, bool)> {
        let room_id = room.id.clone();
        let joined = self
            .admissions
            .join(&room_id, caller.user_id.as_str(), display_name, Some(room))
            .await?;
        Ok((self.with_presence(joined.room), joined.created))
    }

    /// Leaves a room; not being a member is not an error. Returns the member removed.
    pub async fn leave(&self, caller: &Caller, room_id: &RoomId) -> Result<Option<Member>> {
        self.admissions
            .leave(room_id, caller.user_id.as_str())
            .await
    }

    /// Leaves `from` and joins `to` in one transaction: if the join fails, the
    /// caller is still in `from`. A move never trips the per-user room limit.
    pub async fn switch(
        &self,
        caller: &Caller,
        from: &RoomId,
        to: &RoomId,
        display_name: String,
    ) -> Result<Room> {
        if from == to {
            return Err(Error::invalid(
                "to_room_id",
                "must differ from from_room_id",
            ));
        }
        let mut tx = self.store.begin().await?;
        // Lock in id order so two opposite switches cannot deadlock.
        let (first, second) = if from < to { (from, to) } else { (to, from) };
        let first_room = tx.lock_room(first).await?;
        let second_room = tx.lock_room(second).await?;
        let (from_room, to_room) = if from < to {
            (first_room, second_room)
        } else {
            (second_room, first_room)
        };
        if from_room.is_none() {
            return Err(not_found(from));
        }
        if to_room.is_none() {
            return Err(not_found(to));
        }
        let user = caller.user_id.as_str();
        let Some((left, from_room)) = remove_member(&mut tx, from, user, Slot::Move).await? else {
            return Err(Error::NotAMember {
                room_id: from.to_string(),
            });
        };
        let (room, joined) = self
            .join_in(&mut tx, caller, to, display_name, Slot::Move)
            .await?;
        if joined.is_none() {
            // Already a member of `to`: the move freed the slot `from` held.
            tx.release_room_slot(user).await?;
        }
        // The user's streams stop receiving `from` before the commit, like every leave
        // (see `announce_leave`), and follow into `to` once the commit says so.
        let (committed, outcome) = tokio::sync::watch::channel(None);
        let switch = crate::live::hub::Switch {
            to: self.with_presence(room.clone()),
            committed: outcome,
        };
        self.live
            .hubs
            .detach_user(from, user, DetachReason::Switched, Some(switch));
        let result = tx.commit().await;
        let _ = committed.send(Some(result.is_ok()));
        result?;
        let room = self.with_presence(room);
        self.announce_leave(&from_room, left);
        if let Some(member) = joined {
            self.live.hubs.member_changed(&room, member, true);
        }
        Ok(room)
    }

    /// Reads a room.
    pub async fn get(&self, room_id: &RoomId) -> Result<Room> {
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        Ok(self.with_presence(room))
    }

    /// Lists rooms by id.
    pub async fn list(&self, filter: &RoomFilter, page: PageRequest) -> Result<Page<Room>> {
        let rooms = self
            .store
            .rooms(filter, page.after.as_deref(), page.size + 1)
            .await?;
        let rooms = rooms.into_iter().map(|r| self.with_presence(r)).collect();
        Ok(Page::from_overfetch(rooms, page.size, |r: &Room| {
            r.id.to_string()
        }))
    }

    /// Changes a room's name, settings (owner or admin) or attributes (any member).
    pub async fn update(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        patch: RoomPatch,
    ) -> Result<Room> {
        let mut tx = self.store.begin().await?;
        let mut room = lock_existing(&mut tx, room_id).await?;
        if !caller.admin {
            let user = caller.user_id.as_str();
            if tx.member(room_id, user).await?.is_none() {
                return Err(Error::NotAMember {
                    room_id: room_id.to_string(),
                });
            }
            if patch.needs_owner() && room.owner_id != user {
                return Err(Error::NotRoomOwner {
                    room_id: room_id.to_string(),
                });
            }
        }
        if let Some(expected) = patch.expected_version
            && expected != room.version
        {
            return Err(Error::VersionConflict {
                room_id: room_id.to_string(),
                expected,
                actual: room.version,
            });
        }
        if patch.apply(&mut room)? {
            room = tx.update_room(&room, UnixMicros::now()).await?;
            tx.commit().await?;
            room = self.with_presence(room);
            self.live.hubs.room_updated(&room);
            // A new or shorter presence timeout may be due sooner.
            self.deadlines_changed.notify_one();
            return Ok(room);
        }
        Ok(self.with_presence(room))
    }

    /// Deletes a room with its members and history (owner or admin).
    pub async fn delete(&self, caller: &Caller, room_id: &RoomId) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let room = lock_existing(&mut tx, room_id).await?;
        if !caller.admin && room.owner_id != caller.user_id.as_str() {
            return Err(Error::NotRoomOwner {
                room_id: room_id.to_string(),
            });
        }
        tx.delete_room(room_id).await?;
        tx.commit().await?;
        self.live.hubs.room_deleted(room_id);
        Ok(())
    }

    /// Lists a room's members by user id (members and admins only).
    pub async fn members(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        online_only: bool,
        page: PageRequest,
    ) -> Result<Page<Member>> {
        self.check_can_read(caller, room_id).await?;
        let members = if online_only {
            // Online members are few and known in memory; read just those rows.
            let mut members = Vec::new();
            for user in
                self.live
                    .presence
                    .online_users(room_id, page.after.as_deref(), page.size + 1)
            {
                if let Some(member) = self.store.member(room_id, &user).await? {
                    members.push(member);
                }
            }
            members
        } else {
            self.store
                .members(room_id, page.after.as_deref(), page.size + 1)
                .await?
        };
        let members = members
            .into_iter()
            .map(|mut m| {
                m.online = self.live.presence.is_online(room_id, &m.user_id);
                m
            })
            .collect();
        Ok(Page::from_overfetch(members, page.size, |m: &Member| {
            m.user_id.clone()
        }))
    }

    /// Fails unless the room exists and the caller is a member or an admin.
    async fn check_can_read(&self, caller: &Caller, room_id: &RoomId) -> Result<()> {
        if caller.admin {
            return self
                .store
                .room(room_id)
                .await?
                .map(drop)
                .ok_or_else(|| not_found(room_id));
        }
        if self
            .store
            .member(room_id, caller.user_id.as_str())
            .await?
            .is_some()
        {
            return Ok(());
        }
        match self.store.room(room_id).await? {
            None => Err(not_found(room_id)),
            Some(_) => Err(Error::NotAMember {
                room_id: room_id.to_string(),
            }),
        }
    }

    /// Fills in the live presence counts.
    pub fn with_presence(&self, mut room: Room) -> Room {
        room.online_count = self.live.presence.online_count(&room.id);
        room
    }

    /// Announces a committed leave (coalesced).
    fn announce_leave(&self, room: &Room, member: Member) {
        announce_leave(&self.live.hubs, &self.deadlines_changed, room, member);
    }

    /// Sends a message and waits for its answer: for CHAT, after the commit; for
    /// BARRAGE and COMMAND, after publishing.
    pub async fn send(
        &self,
        caller: &Caller,
        draft: Draft,
        sender_name: Option<&str>,
    ) -> Result<Message> {
        self.submit(caller, draft, sender_name)
            .await?
            .answer()
            .await
    }

    /// Hands a message over for sending and returns its pending answer. Messages one
    /// caller submits one after another are sequenced in that order. `sender_name` is
    /// the caller's display name when it already proved membership (an attached
    /// stream); otherwise membership is checked: for CHAT by the writer, in the
    /// transaction that stores the message; for the other kinds here.
    pub async fn submit(
        &self,
        caller: &Caller,
        draft: Draft,
        sender_name: Option<&str>,
    ) -> Result<Sent> {
        let room_id = draft.room_id.clone();
        if draft.kind.is_stored() {
            // The writer checks membership and takes the display name in its own
            // transaction: one lookup per batch instead of reads per message.
            let name = sender_name.unwrap_or_default();
            let message = Message::accept(draft, caller.user_id.as_str(), name);
            let answer = self.live.sequencer.submit(message, caller.admin).await?;
            return Ok(Sent::Stored { room_id, answer });
        }
        let name = match sender_name {
            Some(name) => name.to_string(),
            None => self.attach(caller, &draft.room_id).await?.sender_name,
        };
        let message = Message::accept(draft, caller.user_id.as_str(), &name);
        self.live
            .hubs
            .publish_messages(&message.room_id, std::iter::once(&message));
        Ok(Sent::Published(Box::new(message)))
    }

    /// Reads stored history (members and admins only); true when there is more.
    pub async fn messages(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        range: HistoryRange,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        self.check_can_read(caller, room_id).await?;
        let mut messages = self.store.messages(room_id, range, limit + 1).await?;
        let more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok((messages, more))
    }

    /// The next page of stored messages after `after_seq` for a stream of `caller`
    /// catching up: at most `limit` messages and about `max_bytes` of them, and only
    /// while the caller may receive the room — read in one statement with the
    /// membership, so nothing committed after the caller left reaches it. Fails with
    /// NOT_A_MEMBER or ROOM_NOT_FOUND once the caller may not.
    pub async fn catch_up(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        after_seq: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<CatchUp> {
        let user = caller.user_id.as_str();
        let (messages, more) = self
            .store
            .messages_for_reader(room_id, user, caller.admin, after_seq, limit, max_bytes)
            .await?;
        if messages.is_empty() {
            // Caught up, or no longer allowed: which one, the access check tells.
            self.attach(caller, room_id).await?;
        }
        Ok(CatchUp { messages, more })
    }

    /// Checks that the caller may receive a room (member or admin) and returns it, as
    /// stored: a stream fills in presence once it has registered itself.
    pub async fn attach(&self, caller: &Caller, room_id: &RoomId) -> Result<Attachment> {
        let user = caller.user_id.as_str();
        let (room, name) = self
            .store
            .room_and_name(room_id, user)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        let sender_name = match name {
            Some(name) => name,
            None if caller.admin => user.to_string(),
            None => {
                return Err(Error::NotAMember {
                    room_id: room_id.to_string(),
                });
            }
        };
        Ok(Attachment { room, sender_name })
    }

    /// Records a stream of `user` attached to `room`; a member of a room with a
    /// presence timeout is online from now on. Synchronous: the stream records the
    /// room in the same step, so no cancellation can fall between the two.
    pub fn stream_attached(&self, room: &Room, user: &str) {
        let first = self.live.presence.attach(&room.id, user);
        if first && room.settings.presence_timeout.is_some() {
            self.record_presence(&room.id, user);
        }
    }

    /// Records a stream of `user` detached from `room` (synchronously, so it can run
    /// while a stream is being dropped); when it was the user's last one in a room
    /// with a presence timeout (`timeout`: as the room is now), the timeout starts.
    pub fn stream_detached(&self, room_id: &RoomId, user: &str, timeout: bool) {
        let last = self.live.presence.detach(room_id, user);
        if last && timeout {
            self.record_presence(room_id, user);
        }
    }

    /// Records an attached member as online in a room that just gained a presence
    /// timeout, so its timeout starts only when its streams go away.
    pub fn stream_now_present(&self, room_id: &RoomId, user: &str) {
        self.record_presence(room_id, user);
    }

    /// Brings the stored presence of `user` in a room in line with its streams, on a
    /// task of its own (no stream waits on the database for it).
    fn record_presence(&self, room_id: &RoomId, user: &str) {
        let rooms = self.clone();
        let room_id = room_id.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            if let Err(error) = rooms.sync_presence(&room_id, &user).await {
                tracing::warn!(%error, room = %room_id, user, "could not record presence");
            }
        });
    }

    /// Stores whether `user` is online in a room (`last_seen` unset) or offline since
    /// now — as its streams are after the write. Attaches and detaches race on their
    /// writes (two connections, no order between them), so each writer writes what it
    /// sees, looks again once its write is done, and writes again if that changed:
    /// whoever changes presence last also writes last, and no member stays "online"
    /// in the store with no stream, nor "offline" with one, for longer than a write.
    /// A writer that keeps seeing changes stops after a few rounds: every change of
    /// presence starts a writer of its own, and the last one finishes the job.
    pub(crate) async fn sync_presence(&self, room_id: &RoomId, user: &str) -> Result<()> {
        let mut online = self.live.presence.is_online(room_id, user);
        for _ in 0..4 {
            let last_seen = (!online).then(UnixMicros::now);
            self.store.set_last_seen(room_id, user, last_seen).await?;
            let now_online = self.live.presence.is_online(room_id, user);
            if now_online == online {
                if !online {
                    self.deadlines_changed.notify_one();
                }
                return Ok(());
            }
            online = now_online;
        }
        Ok(())
    }
}

/// Locks a room, or fails with ROOM_NOT_FOUND.
async fn lock_existing(tx: &mut Tx, room_id: &RoomId) -> Result<Room> {
    tx.lock_room(room_id)
        .await?
        .ok_or_else(|| not_found(room_id))
}

/// Removes a member, returning it and the room after; `Slot::Claim` also frees the
/// user's room slot. Rows are touched member → user_rooms → rooms, so that a leave and
/// a join of one user never wait on each other in opposite orders.
async fn remove_member(
    tx: &mut Tx,
    room_id: &RoomId,
    user: &str,
    slot: Slot,
) -> Result<Option<(Member, Room)>> {
    let Some(removed) = tx.delete_member(room_id, user).await? else {
        return Ok(None);
    };
    if slot == Slot::Claim {
        tx.release_room_slot(user).await?;
    }
    let room = tx
        .change_member_count(room_id, -1, UnixMicros::now())
        .await?;
    Ok(Some((removed, room)))
}

/// Announces a committed leave (coalesced); a room left empty may start its
/// destroy-when-empty delay, so the expiry task looks again. The leaver's streams
/// were detached before the commit ([`Hubs::detach_user`]): a message committed after
/// the leave is published after that, so it never reaches them.
fn announce_leave(hubs: &Hubs, deadlines_changed: &Notify, room: &Room, member: Member) {
    hubs.member_changed(room, member, false);
    if room.member_count == 0 && room.settings.destroy_when_empty_after.is_some() {
        deadlines_changed.notify_one();
    }
}

fn not_found(room_id: &RoomId) -> Error {
    Error::RoomNotFound {
        room_id: room_id.to_string(),
    }
}
