//! Reading and administering rooms: GetRoom, ListRooms, UpdateRoom, DeleteRoom,
//! ListMembers.

use std::sync::Arc;

use tokio::sync::Notify;

use super::feed::FeedNews;
use super::presence::Online;
use super::rates::Rates;
use super::readers::Readers;
use super::{check_in_token, lock_existing, not_found};
use crate::domain::Clock;
use crate::domain::{
    Caller, FeedEntry, FeedKind, Member, Page, PageRequest, Room, RoomFilter, RoomId, RoomPatch,
};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::store::Store;

/// The room administration handle: what reading, changing and deleting rooms, and
/// listing their members, need.
#[derive(Clone)]
pub struct Admin {
    pub(super) store: Store,
    pub(super) rates: Arc<Rates>,
    /// Where updates and deletions are announced.
    pub(super) hubs: Arc<Hubs>,
    pub(super) online: Online,
    pub(super) readers: Readers,
    /// Wakes the expiry task when a room's presence timeout changes.
    pub(super) deadlines_changed: Arc<Notify>,
    /// When a presence timeout starts.
    pub(super) clock: Clock,
    /// Where the room feed's watches hear of updates and deletions.
    pub(super) news: Arc<FeedNews>,
}

impl Admin {
    /// Reads a room (any caller whose token reaches it).
    pub async fn get(&self, caller: &Caller, room_id: &RoomId) -> Result<Room> {
        check_in_token(caller, room_id)?;
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        Ok(self.online.with_presence(room).await)
    }

    /// Lists rooms by id.
    pub async fn list(&self, filter: &RoomFilter, page: PageRequest) -> Result<Page<Room>> {
        let rooms = self
            .store
            .rooms(filter, page.after.as_deref(), page.size + 1)
            .await?;
        let rooms = self.online.with_presence_all(rooms).await;
        Ok(Page::from_overfetch(rooms, page.size, |r: &Room| {
            r.id.to_string()
        }))
    }

    /// Lists the caller's rooms by id (ListMyRooms): those its token reaches.
    pub async fn mine(&self, caller: &Caller, page: PageRequest) -> Result<Page<Room>> {
        let rooms = self
            .store
            .rooms_of(
                caller.user_id.as_str(),
                page.after.as_deref(),
                page.size + 1,
            )
            .await?;
        // The page ends where the read did, whatever the token leaves out of it.
        let mut page = Page::from_overfetch(rooms, page.size, |r: &Room| r.id.to_string());
        page.items.retain(|room| caller.may_enter(&room.id));
        page.items = self.online.with_presence_all(page.items).await;
        Ok(page)
    }

    /// Changes a room's name, settings (owner or admin) or attributes (any member).
    pub async fn update(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        patch: RoomPatch,
    ) -> Result<Room> {
        check_in_token(caller, room_id)?;
        self.rates.check_change(caller.user_id.as_str())?;
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
        let had_timeout = room.settings.presence_timeout.is_some();
        if patch.apply(&mut room)? {
            let now = self.clock.now();
            // On one node `last_seen` is kept only while a room has a presence
            // timeout: a room gaining one starts it for every member not attached
            // (a cluster keeps `last_seen` always, through each node's presence rows).
            if !had_timeout
                && room.settings.presence_timeout.is_some()
                && !self.online.records_every_room()
            {
                tx.offline_since(room_id, now).await?;
            }
            room = tx.update_room(&room, now).await?;
            let by = caller.user_id.as_str();
            let updated = FeedEntry::room(room_id, FeedKind::Updated, by);
            self.news.commit(tx, &[updated], now).await?;
            room = self.online.with_presence(room).await;
            self.hubs.room_updated(&room);
            // A new or shorter presence timeout may be due sooner.
            self.deadlines_changed.notify_one();
            return Ok(room);
        }
        Ok(self.online.with_presence(room).await)
    }

    /// Deletes a room with its members and history (owner or admin).
    pub async fn delete(&self, caller: &Caller, room_id: &RoomId) -> Result<()> {
        check_in_token(caller, room_id)?;
        self.rates.check_change(caller.user_id.as_str())?;
        let mut tx = self.store.begin().await?;
        let room = lock_existing(&mut tx, room_id).await?;
        if !caller.admin && room.owner_id != caller.user_id.as_str() {
            return Err(Error::NotRoomOwner {
                room_id: room_id.to_string(),
            });
        }
        tx.delete_room(room_id).await?;
        let deleted = FeedEntry::room(room_id, FeedKind::Deleted, caller.user_id.as_str());
        self.news.commit(tx, &[deleted], self.clock.now()).await?;
        self.hubs.room_deleted(room_id);
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
        self.readers.check_can_read(caller, room_id).await?;
        let members = if online_only {
            // Online members are few: read just those rows.
            let mut members = Vec::new();
            for user in self
                .online
                .online_users(room_id, page.after.as_deref(), page.size + 1)
                .await?
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
        let users: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let online = self.online.online_among(room_id, &users).await?;
        let members = members
            .into_iter()
            .map(|mut m| {
                m.online = online.contains(&m.user_id);
                m
            })
            .collect();
        Ok(Page::from_overfetch(members, page.size, |m: &Member| {
            m.user_id.clone()
        }))
    }
}
