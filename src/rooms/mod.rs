//! The rules of rooms: who may do what, limits, and what each operation changes.
//!
//! Every operation that changes state runs in one store transaction that first locks
//! the rooms it touches, then checks the rules against what it read, then writes. A
//! failed check drops the transaction, so nothing is written. This module knows
//! neither gRPC nor SQL.

pub mod model;

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::live::Presence;
use crate::store::{Store, Tx};
use model::{
    Caller, Member, NewRoom, Page, PageRequest, Role, Room, RoomFilter, RoomId, RoomPatch,
    UnixMicros, UserId,
};

/// Limits that apply across rooms.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most rooms one user may be a member of; 0 means unlimited.
    pub max_rooms_per_user: u32,
}

/// Room operations, as the API layer calls them.
#[derive(Clone)]
pub struct Rooms {
    store: Store,
    presence: Arc<Presence>,
    limits: Limits,
    admins: Arc<HashSet<String>>,
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
        presence: Arc<Presence>,
        limits: Limits,
        admins: impl IntoIterator<Item = String>,
    ) -> Self {
        Rooms {
            store,
            presence,
            limits,
            admins: Arc::new(admins.into_iter().collect()),
        }
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
        let owner = caller.user_id.as_str();
        let (room, _) = self
            .add_member(&mut tx, caller, &room.id, owner, display_name, Slot::Claim)
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
        let mut tx = self.store.begin().await?;
        let room = lock_existing(&mut tx, room_id).await?;
        let (room, _) = self
            .join_locked(&mut tx, caller, room, display_name, Slot::Claim)
            .await?;
        tx.commit().await?;
        Ok(self.with_presence(room))
    }

    /// Creates the room, or joins it if it exists; true when this call created it.
    ///
    /// Atomic because the insert is `ON CONFLICT DO NOTHING`: of concurrent callers
    /// exactly one inserts; the others wait for its commit, see the row, and join.
    pub async fn enter(
        &self,
        caller: &Caller,
        room: NewRoom,
        display_name: String,
    ) -> Result<(Room, bool)> {
        let mut tx = self.store.begin().await?;
        let created = tx
            .insert_room(&room, caller.user_id.as_str(), UnixMicros::now())
            .await?;
        let room = if created {
            let owner = caller.user_id.as_str();
            self.add_member(&mut tx, caller, &room.id, owner, display_name, Slot::Claim)
                .await?
                .0
        } else {
            let existing = lock_existing(&mut tx, &room.id).await?;
            self.join_locked(&mut tx, caller, existing, display_name, Slot::Claim)
                .await?
                .0
        };
        tx.commit().await?;
        Ok((self.with_presence(room), created))
    }

    /// Leaves a room; not being a member is not an error. Returns the member removed.
    pub async fn leave(&self, caller: &Caller, room_id: &RoomId) -> Result<Option<Member>> {
        let mut tx = self.store.begin().await?;
        lock_existing(&mut tx, room_id).await?;
        let left = remove_member(&mut tx, room_id, caller.user_id.as_str(), Slot::Claim).await?;
        tx.commit().await?;
        Ok(left)
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
            return Err(Error::RoomNotFound {
                room_id: from.to_string(),
            });
        }
        let to_room = to_room.ok_or_else(|| Error::RoomNotFound {
            room_id: to.to_string(),
        })?;
        let user = caller.user_id.as_str();
        if remove_member(&mut tx, from, user, Slot::Move)
            .await?
            .is_none()
        {
            return Err(Error::NotAMember {
                room_id: from.to_string(),
            });
        }
        let (room, joined) = self
            .join_locked(&mut tx, caller, to_room, display_name, Slot::Move)
            .await?;
        if joined.is_none() {
            // Already a member of `to`: the move freed the slot `from` held.
            tx.release_room_slot(user).await?;
        }
        tx.commit().await?;
        Ok(self.with_presence(room))
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
        tx.commit().await
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
            for user in self
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
                m.online = self.presence.is_online(room_id, &m.user_id);
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

    /// Joins a locked room unless the caller is already a member. Returns the room
    /// and the new member (`None` when nothing changed).
    async fn join_locked(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        room: Room,
        display_name: String,
        slot: Slot,
    ) -> Result<(Room, Option<Member>)> {
        if tx
            .member(&room.id, caller.user_id.as_str())
            .await?
            .is_some()
        {
            return Ok((room, None));
        }
        let max = room.settings.max_members;
        if max > 0 && room.member_count >= max {
            return Err(Error::RoomFull {
                room_id: room.id.to_string(),
                max_members: max,
            });
        }
        let (room, member) = self
            .add_member(tx, caller, &room.id, &room.owner_id, display_name, slot)
            .await?;
        Ok((room, Some(member)))
    }

    /// Inserts the caller as a member of a locked room it is not in, claiming a room
    /// slot unless the join is part of a move. The room's owner rejoins as owner.
    async fn add_member(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        room_id: &RoomId,
        owner_id: &str,
        display_name: String,
        slot: Slot,
    ) -> Result<(Room, Member)> {
        let user = caller.user_id.as_str();
        let limit = self.limits.max_rooms_per_user;
        if slot == Slot::Claim && !tx.claim_room_slot(user, limit).await? {
            return Err(Error::TooManyRooms { limit });
        }
        let now = UnixMicros::now();
        let member = Member {
            user_id: user.to_string(),
            display_name,
            role: if owner_id == user {
                Role::Owner
            } else {
                Role::Member
            },
            online: false,
            joined_at: now,
        };
        tx.insert_member(room_id, &member).await?;
        let room = tx.change_member_count(room_id, 1, now).await?;
        Ok((room, member))
    }

    /// Fills in the live presence counts.
    fn with_presence(&self, mut room: Room) -> Room {
        room.online_count = self.presence.online_count(&room.id);
        room
    }
}

/// Locks a room, or fails with ROOM_NOT_FOUND.
async fn lock_existing(tx: &mut Tx, room_id: &RoomId) -> Result<Room> {
    tx.lock_room(room_id)
        .await?
        .ok_or_else(|| not_found(room_id))
}

/// Removes a member from a locked room; `Slot::Claim` also frees the user's room slot.
async fn remove_member(
    tx: &mut Tx,
    room_id: &RoomId,
    user: &str,
    slot: Slot,
) -> Result<Option<Member>> {
    let removed = tx.delete_member(room_id, user).await?;
    if removed.is_some() {
        tx.change_member_count(room_id, -1, UnixMicros::now())
            .await?;
        if slot == Slot::Claim {
            tx.release_room_slot(user).await?;
        }
    }
    Ok(removed)
}

fn not_found(room_id: &RoomId) -> Error {
    Error::RoomNotFound {
        room_id: room_id.to_string(),
    }
}
