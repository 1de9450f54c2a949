//! Joining and leaving: CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom. Each
//! hands its change to the membership writer ([`Roster`]), where its rules are
//! checked, in the same transaction as its writes.

use std::sync::Arc;

use super::check_in_token;
use super::presence::Online;
use super::rates::Rates;
use super::roster::Roster;
use crate::domain::{Caller, Member, NewRoom, Room, RoomId, RoomMove};
use crate::error::Result;

/// The membership handle: what joining and leaving need.
#[derive(Clone)]
pub struct Membership {
    /// The one writer of membership.
    pub(super) roster: Roster,
    pub(super) rates: Arc<Rates>,
    /// Fills in the online counts of the rooms answered.
    pub(super) online: Online,
}

impl Membership {
    /// Creates a room with the caller as its owner and first member.
    pub async fn create(
        &self,
        caller: &Caller,
        room: NewRoom,
        display_name: String,
    ) -> Result<Room> {
        check_in_token(caller, &room.id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        let display_name = caller.display_name(display_name);
        let room = self
            .roster
            .create(room, caller.user_id.as_str(), display_name)
            .await?;
        Ok(self.online.with_presence(room).await)
    }

    /// Joins an existing room; already being a member is not an error.
    pub async fn join(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        display_name: String,
    ) -> Result<Room> {
        check_in_token(caller, room_id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        let display_name = caller.display_name(display_name);
        let joined = self
            .roster
            .join_existing(room_id, caller.user_id.as_str(), display_name)
            .await?;
        Ok(self.online.with_presence(joined.room).await)
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
        check_in_token(caller, &room.id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        let display_name = caller.display_name(display_name);
        let joined = self
            .roster
            .enter(room, caller.user_id.as_str(), display_name)
            .await?;
        Ok((self.online.with_presence(joined.room).await, joined.created))
    }

    /// Leaves a room; not being a member is not an error. Returns the member removed.
    pub async fn leave(&self, caller: &Caller, room_id: &RoomId) -> Result<Option<Member>> {
        check_in_token(caller, room_id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        self.roster.leave(room_id, caller.user_id.as_str()).await
    }

    /// Leaves `from` and joins `to` in one transaction: if the join fails, the
    /// caller is still in `from`. A move never trips the per-user room limit.
    /// The caller's streams stop receiving `from` before the commit, like every
    /// leave, and follow into `to` once the commit says so.
    pub async fn switch(
        &self,
        caller: &Caller,
        rooms: &RoomMove,
        display_name: String,
    ) -> Result<Room> {
        check_in_token(caller, rooms.from())?;
        check_in_token(caller, rooms.to())?;
        self.rates.check_change(caller.user_id.as_str())?;
        let display_name = caller.display_name(display_name);
        let room = self
            .roster
            .switch(rooms, caller.user_id.as_str(), display_name)
            .await?;
        Ok(self.online.with_presence(room).await)
    }
}
