//! Keeping order in a room: the actions — SetMemberRole, TransferOwnership,
//! KickMember, BanMember, UnbanMember, ListBans, MuteMember, UnmuteMember, ListMutes
//! — each judged by the one rule of who may do what to members
//! ([`super::authority`]).
//!
//! A caller's [`Standing`] in a room is read under the room's lock, in the same
//! transaction as the action, so a role changed or an ownership moved concurrently
//! is seen by one action or the other, never half. Kicks and bans change
//! membership, so they go through the roster, whose batch judges them against the
//! rows it locked (`roster::rules`); the rest run their own transaction here.
//!
//! A mute is stored (a sanction, kept by user: leaving and joining again does not
//! end it) and then announced to the room's hubs on every node, whose attached
//! streams send without a store read only while they know of no mute on their user
//! (see `live::Hubs::member_muted`); CHAT is judged in the message writer's
//! transaction either way.

use std::sync::Arc;
use std::time::Duration;

use super::authority::{Action, Standing, judge};
use super::feed::FeedNews;
use super::presence::Online;
use super::rates::Rates;
use super::roster::{Removal, Removed, Roster};
use super::{check_in_token, lock_existing};
use crate::domain::{
    Ban, Caller, Clock, FeedEntry, FeedKind, Member, Mute, MutedUntil, Page, PageRequest, Role,
    Room, RoomId, Sanction, SanctionKind, UserId,
};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::store::{Store, Tx};

/// The moderation handle.
#[derive(Clone)]
pub struct Moderation {
    pub(super) store: Store,
    pub(super) rates: Arc<Rates>,
    /// Where kicks and bans are applied (they remove members).
    pub(super) roster: Roster,
    /// Where an ownership change is announced.
    pub(super) hubs: Arc<Hubs>,
    /// The online count an announced room carries.
    pub(super) online: Online,
    /// When a room changed, when a ban was made and when it ends.
    pub(super) clock: Clock,
    /// Where the room feed's watches hear of role and ownership changes.
    pub(super) news: Arc<FeedNews>,
}

impl Moderation {
    /// Gives `user_id` the role `role` (moderator or member) in a room.
    pub async fn set_role(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
        role: Role,
    ) -> Result<Member> {
        if role == Role::Owner {
            return Err(Error::invalid(
                "role",
                "a room's owner changes with TransferOwnership",
            ));
        }
        let (mut tx, room, _) = self.begin(caller, room_id, Action::SetRole).await?;
        if room.owner_id == user_id.as_str() {
            return Err(Error::invalid(
                "user_id",
                "the owner's role changes only with TransferOwnership",
            ));
        }
        let before = tx.member(room_id, user_id.as_str()).await?.map(|m| m.role);
        let member = tx
            .set_member_role(room_id, user_id.as_str(), role)
            .await?
            .ok_or_else(|| member_not_found(room_id, user_id))?;
        let changed = (before != Some(role)).then(|| role_changed(room_id, &member, caller));
        self.news
            .commit(tx, changed.as_slice(), self.clock.now())
            .await?;
        Ok(member)
    }

    /// Makes `user_id`, a member, the room's owner; the previous owner, if still a
    /// member, becomes a plain member. Announced as a room update.
    pub async fn transfer_ownership(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Room> {
        let (mut tx, room, _) = self
            .begin(caller, room_id, Action::TransferOwnership)
            .await?;
        if room.owner_id == user_id.as_str() {
            return Ok(room);
        }
        let owner = tx
            .set_member_role(room_id, user_id.as_str(), Role::Owner)
            .await?
            .ok_or_else(|| member_not_found(room_id, user_id))?;
        let was_owner = tx
            .set_member_role(room_id, &room.owner_id, Role::Member)
            .await?;
        let now = self.clock.now();
        let room = tx.set_owner(room_id, user_id.as_str(), now).await?;
        let mut feed = vec![role_changed(room_id, &owner, caller)];
        feed.extend(was_owner.map(|m| role_changed(room_id, &m, caller)));
        feed.push(FeedEntry::room(
            room_id,
            FeedKind::Updated,
            caller.user_id.as_str(),
        ));
        self.news.commit(tx, &feed, now).await?;
        let room = self.online.with_presence(room).await;
        self.hubs.room_updated(&room);
        Ok(room)
    }

    /// Removes a member from a room (KickMember); their streams are detached, on
    /// every node, and the room told who removed them.
    pub async fn kick(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Member> {
        let removed = self.remove(caller, room_id, user_id, None).await?;
        removed
            .member
            .ok_or_else(|| Error::Internal("a kick removed nobody".into()))
    }

    /// Kicks `user_id` if a member and keeps them out of the room for `length`
    /// (`None`: until lifted) (BanMember).
    pub async fn ban(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
        length: Option<Duration>,
    ) -> Result<Ban> {
        let now = self.clock.now();
        let ban = Ban {
            user_id: user_id.to_string(),
            by: caller.user_id.to_string(),
            at: now,
            expires_at: length.map(|l| now.plus(l)),
        };
        let removed = self.remove(caller, room_id, user_id, Some(ban)).await?;
        removed
            .ban
            .ok_or_else(|| Error::Internal("a ban was answered as a kick".into()))
    }

    async fn remove(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
        ban: Option<Ban>,
    ) -> Result<Removed> {
        check_in_token(caller, room_id)?;
        if caller.user_id == *user_id {
            return Err(Error::invalid(
                "user_id",
                "is the caller: LeaveRoom leaves a room",
            ));
        }
        self.rates.check_change(caller.user_id.as_str())?;
        let removal = Removal {
            by: caller.user_id.to_string(),
            by_admin: caller.admin,
            ban,
        };
        self.roster.remove(room_id, user_id.as_str(), removal).await
    }

    /// Lifts a user's ban from a room (UnbanMember); lifting none is no error.
    pub async fn unban(&self, caller: &Caller, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let (mut tx, ..) = self.begin(caller, room_id, Action::Unban).await?;
        tx.lift_sanction(SanctionKind::Ban, room_id, user_id.as_str())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the bans in force in a room, by user id (ListBans).
    pub async fn bans(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        page: PageRequest,
    ) -> Result<Page<Ban>> {
        self.sanctions(caller, room_id, page, SanctionKind::Ban, Action::ListBans)
            .await
    }

    /// Keeps `user_id` (a member or not) from sending to a room for `length`
    /// (`None`: until lifted) (MuteMember): the same ranks as a kick. Every node's
    /// streams are told.
    pub async fn mute(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        user_id: &UserId,
        length: Option<Duration>,
    ) -> Result<Mute> {
        if caller.user_id == *user_id {
            return Err(Error::invalid("user_id", "is the caller"));
        }
        let (mut tx, _, actor) = self.begin(caller, room_id, Action::Mute).await?;
        let target = tx.member(room_id, user_id.as_str()).await?.map(|m| m.role);
        judge(actor, Action::Mute, target, room_id, user_id.as_str())?;
        let now = self.clock.now();
        let mute = Sanction {
            user_id: user_id.to_string(),
            by: caller.user_id.to_string(),
            at: now,
            expires_at: length.map(|l| now.plus(l)),
        };
        tx.put_sanctions(SanctionKind::Mute, &[(room_id, &mute)], now)
            .await?;
        tx.commit().await?;
        let until = MutedUntil(mute.expires_at);
        self.hubs
            .member_muted(room_id, user_id.as_str(), Some(until));
        Ok(mute)
    }

    /// Lifts a user's mute in a room (UnmuteMember); lifting none is no error. Every
    /// node's streams are told.
    pub async fn unmute(&self, caller: &Caller, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let (mut tx, ..) = self.begin(caller, room_id, Action::Unmute).await?;
        let lifted = tx
            .lift_sanction(SanctionKind::Mute, room_id, user_id.as_str())
            .await?;
        tx.commit().await?;
        if lifted {
            self.hubs.member_muted(room_id, user_id.as_str(), None);
        }
        Ok(())
    }

    /// A page of the mutes in force in a room, by user id (ListMutes).
    pub async fn mutes(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        page: PageRequest,
    ) -> Result<Page<Mute>> {
        self.sanctions(caller, room_id, page, SanctionKind::Mute, Action::ListMutes)
            .await
    }

    /// A page of the sanctions of `kind` in force in a room, by user id, for a caller
    /// who may `list` them.
    async fn sanctions(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        page: PageRequest,
        kind: SanctionKind,
        list: Action,
    ) -> Result<Page<Sanction>> {
        check_in_token(caller, room_id)?;
        if self.store.room(room_id).await?.is_none() {
            return Err(super::not_found(room_id));
        }
        let member = self.store.member(room_id, caller.user_id.as_str()).await?;
        let actor = Standing::of(caller.admin, member.map(|m| m.role));
        judge(actor, list, None, room_id, "")?;
        let sanctions = self
            .store
            .sanctions(
                kind,
                room_id,
                page.after.as_deref(),
                page.size + 1,
                self.clock.now(),
            )
            .await?;
        Ok(Page::from_overfetch(
            sanctions,
            page.size,
            |s: &Sanction| s.user_id.clone(),
        ))
    }

    /// Opens the transaction of an `action` in a room: the room locked, the caller's
    /// standing in it read, judged and returned (an action aimed at a member is
    /// judged again against them by the caller).
    async fn begin(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        action: Action,
    ) -> Result<(Tx, Room, Standing)> {
        check_in_token(caller, room_id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        let mut tx = self.store.begin().await?;
        let room = lock_existing(&mut tx, room_id).await?;
        let member = tx.member(&room.id, caller.user_id.as_str()).await?;
        let actor = Standing::of(caller.admin, member.map(|m| m.role));
        judge(actor, action, None, room_id, "")?;
        Ok((tx, room, actor))
    }
}

fn member_not_found(room_id: &RoomId, user_id: &UserId) -> Error {
    Error::MemberNotFound {
        room_id: room_id.to_string(),
        user_id: user_id.to_string(),
    }
}

/// The feed's event of `member`'s role, as `caller` just set it.
fn role_changed(room_id: &RoomId, member: &Member, caller: &Caller) -> FeedEntry {
    FeedEntry::member(
        room_id,
        FeedKind::RoleChanged,
        &member.user_id,
        caller.user_id.as_str(),
    )
    .with_role(member.role)
}
