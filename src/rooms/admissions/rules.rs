//! The rules of joining and leaving, checked in memory against a batch's locked
//! rooms, in arrival order: who may join (the per-user room limit first, then the
//! room's `max_members`), what a leave, a presence timeout and a switch change, and
//! the rows that follow ([`Plan`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::apply::{Key, key};
use super::{Create, Joined, MemberChange, Outcome, Switched};
use crate::domain::{DetachReason, Member, Role, Room, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::rooms::not_found;
use crate::store::Tx;

/// What step 4 of `Batches::write` checks the rules against, and the rows it
/// plans to change.
pub(super) struct Rules<'a> {
    /// The batch's rooms, locked, as the changes so far left them.
    pub rooms: HashMap<RoomId, Room>,
    /// The batch's users' member rows in them.
    pub members: HashMap<Key, Member>,
    /// Users who claimed a room slot (the per-user limit allowed one more room).
    pub claimed: HashSet<String>,
    /// The change that created each room created in this batch.
    pub creator: HashMap<&'a RoomId, usize>,
    /// The presence-timeout changes whose member is due.
    pub due: HashSet<usize>,
    pub limit: u32,
    pub now: UnixMicros,
    pub plan: Plan<'a>,
}

impl<'a> Rules<'a> {
    /// Change `i`, a join (creating the room first, for CreateRoom and EnterRoom).
    pub fn join(
        &mut self,
        i: usize,
        change: &'a MemberChange,
        display_name: &str,
        create: Option<&Create>,
    ) -> Result<Outcome> {
        let room_id = &change.room_id;
        let user = change.user_id.as_str();
        let Some(room) = self.rooms.get_mut(room_id) else {
            // Missing after step 3: a create here could not claim its slot.
            return Err(match create {
                Some(_) => Error::TooManyRooms { limit: self.limit },
                None => not_found(room_id),
            });
        };
        let created = self.creator.get(room_id) == Some(&i);
        if create.is_some_and(|c| c.must_be_new) && !created {
            return Err(Error::RoomExists {
                room_id: room_id.to_string(),
            });
        }
        let member = if self.members.contains_key(&key(room_id, user)) {
            None
        } else if !self.claimed.contains(user) {
            return Err(Error::TooManyRooms { limit: self.limit });
        } else {
            let member = admit(room, user, display_name, self.now)?;
            self.plan.add(room_id, &member);
            self.plan.admitted.insert(user);
            Some(member)
        };
        Ok(Outcome::Joined(Joined {
            room: room.clone(),
            created,
            member,
        }))
    }

    /// A leave, or a presence timeout that is due.
    pub fn leave(&mut self, change: &'a MemberChange, reason: DetachReason) -> Result<Outcome> {
        let room_id = &change.room_id;
        let user = change.user_id.as_str();
        let room = self
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| not_found(room_id))?;
        let member = self.members.remove(&key(room_id, user));
        if member.is_some() {
            self.plan.remove(room, room_id, user);
            self.plan.released.push(user);
        }
        Ok(Outcome::Left {
            room: room.clone(),
            member,
            reason,
        })
    }

    /// A presence timeout whose member is not due (any more): nothing changes.
    pub fn not_due(&self, change: &MemberChange) -> Result<Outcome> {
        let room = self
            .rooms
            .get(&change.room_id)
            .ok_or_else(|| not_found(&change.room_id))?;
        Ok(Outcome::Left {
            room: room.clone(),
            member: None,
            reason: DetachReason::PresenceTimeout,
        })
    }

    /// A switch from `change.room_id` to `to`: both, or neither.
    pub fn switch(
        &mut self,
        change: &'a MemberChange,
        to: &'a RoomId,
        display_name: &str,
    ) -> Result<Outcome> {
        let from = &change.room_id;
        let user = change.user_id.as_str();
        if to == from {
            return Err(Error::invalid(
                "to_room_id",
                "must differ from from_room_id",
            ));
        }
        let [Some(from_room), Some(to_room)] = self.rooms.get_disjoint_mut([from, to]) else {
            let missing = if self.rooms.contains_key(from) {
                to
            } else {
                from
            };
            return Err(not_found(missing));
        };
        let Some(left) = self.members.get(&key(from, user)).cloned() else {
            return Err(Error::NotAMember {
                room_id: from.to_string(),
            });
        };
        let joined = if self.members.contains_key(&key(to, user)) {
            // A member of `to` already: the move frees the slot `from` held.
            self.plan.released.push(user);
            None
        } else {
            // The user's slot moves with it: no claim, so no per-user limit.
            let member = admit(to_room, user, display_name, self.now)?;
            self.plan.add(to, &member);
            Some(member)
        };
        self.members.remove(&key(from, user));
        self.plan.remove(from_room, from, user);
        Ok(Outcome::Switched(Box::new(Switched {
            from: from_room.clone(),
            left,
            to: to_room.clone(),
            joined,
        })))
    }
}

/// The member a join adds to `room` (counted in), or why the room takes no more.
fn admit(room: &mut Room, user: &str, display_name: &str, now: UnixMicros) -> Result<Member> {
    let max = room.settings.max_members;
    if max != 0 && room.member_count >= max {
        return Err(Error::RoomFull {
            room_id: room.id.to_string(),
            max_members: max,
        });
    }
    room.member_count += 1;
    Ok(Member {
        user_id: user.to_string(),
        display_name: display_name.to_string(),
        // The room's owner rejoins as its owner.
        role: if room.owner_id == user {
            Role::Owner
        } else {
            Role::Member
        },
        online: false,
        joined_at: now,
    })
}

/// The rows a batch changes, gathered while its rules are checked.
#[derive(Default)]
pub(super) struct Plan<'a> {
    added: Vec<(&'a RoomId, Member)>,
    removed: Vec<(&'a str, &'a str)>,
    /// Users whose join added a member (their claimed slot stays taken).
    pub admitted: HashSet<&'a str>,
    /// Users who hold one room fewer.
    pub released: Vec<&'a str>,
    /// Each room's change of member count.
    counts: BTreeMap<&'a RoomId, i64>,
}

impl<'a> Plan<'a> {
    fn add(&mut self, room_id: &'a RoomId, member: &Member) {
        *self.counts.entry(room_id).or_default() += 1;
        self.added.push((room_id, member.clone()));
    }

    fn remove(&mut self, room: &mut Room, room_id: &'a RoomId, user: &'a str) {
        room.member_count = room.member_count.saturating_sub(1);
        *self.counts.entry(room_id).or_default() -= 1;
        self.removed.push((room_id.as_str(), user));
    }

    /// Writes the plan: a statement each for the whole batch.
    pub async fn write(
        &self,
        tx: &mut Tx,
        rooms: &HashMap<RoomId, Room>,
        now: UnixMicros,
    ) -> Result<()> {
        let added: Vec<(&RoomId, &Member)> = self.added.iter().map(|(r, m)| (*r, m)).collect();
        tx.insert_members(&added).await?;
        if tx.delete_members(&self.removed).await? != self.removed.len() as u64 {
            return Err(Error::Internal(
                "a member row vanished under its room's lock".into(),
            ));
        }
        tx.release_room_slots(&self.released).await?;
        let counts: Vec<(&RoomId, i64)> = self.counts.iter().map(|(r, d)| (*r, *d)).collect();
        for stored in tx.add_member_counts(&counts, now).await? {
            // Every other writer of member counts locks the room first; a difference
            // would mean one does not, and the batch must not commit on it.
            if rooms.get(&stored.id).map(|r| r.member_count) != Some(stored.member_count) {
                return Err(Error::Internal(format!(
                    "member count of room {} changed under its lock",
                    stored.id
                )));
            }
        }
        Ok(())
    }
}
