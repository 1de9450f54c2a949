//! Joining and leaving: CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom.

use super::*;

impl Rooms {
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
            .join_in(&mut tx, caller, &room.id, display_name, UserSlot::Counted)
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
        slot: UserSlot,
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
        if slot == UserSlot::Counted && !tx.claim_room_slot(user, limit).await? {
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
        let Some((left, from_room)) = remove_member(&mut tx, from, user, UserSlot::Moves).await?
        else {
            return Err(Error::NotAMember {
                room_id: from.to_string(),
            });
        };
        let (room, joined) = self
            .join_in(&mut tx, caller, to, display_name, UserSlot::Moves)
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
}
