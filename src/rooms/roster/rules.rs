//! The rules of joining and leaving, checked in memory against a batch's locked
//! rooms, in arrival order: who may join (the per-user room limit first, then the
//! room's `max_members`), what a leave, a presence timeout and a switch change, and
//! the rows that follow ([`Plan`]). Nothing here reads or writes the store: `apply`
//! reads what the rules are checked against and writes the plan.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Create, Joined, Kind, MemberChange, Outcome, Removal, Removed, Switched};
use crate::domain::{Ban, DetachReason, Member, Role, Room, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::rooms::authority::{Action, Standing, judge};
use crate::rooms::not_found;

/// A `(room, user)` key of a member row.
pub(super) type Key = (String, String);

pub(super) fn key(room_id: &RoomId, user: &str) -> Key {
    (room_id.to_string(), user.to_string())
}

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
    /// The bans in force among the batch's joins (and bans made by the batch), with
    /// when each ends (`None`: when lifted).
    pub banned: HashMap<Key, Option<UnixMicros>>,
    pub limit: u32,
    pub now: UnixMicros,
    pub plan: Plan<'a>,
}

impl<'a> Rules<'a> {
    /// Decides change `i` of the batch, against the rooms as the earlier ones left
    /// them, and plans its rows.
    pub fn decide(&mut self, i: usize, change: &'a MemberChange) -> Result<Outcome> {
        match &change.kind {
            Kind::Join {
                display_name,
                create,
            } => self.join(i, change, display_name, create.as_ref()),
            Kind::Leave => self.leave(change, DetachReason::Left),
            Kind::Expire { .. } if !self.due.contains(&i) => self.not_due(change),
            Kind::Expire { .. } => self.leave(change, DetachReason::PresenceTimeout),
            Kind::Switch { to, display_name } => self.switch(change, to, display_name),
            Kind::Remove(removal) => self.remove(change, removal),
        }
    }

    /// Change `i`, a join (creating the room first, for CreateRoom and EnterRoom).
    fn join(
        &mut self,
        i: usize,
        change: &'a MemberChange,
        display_name: &str,
        create: Option<&Create>,
    ) -> Result<Outcome> {
        let room_id = &change.room_id;
        let user = change.user_id.as_str();
        let exists = self.rooms.contains_key(room_id);
        if !exists && create.is_none() {
            return Err(not_found(room_id));
        }
        let created = self.creator.get(room_id) == Some(&i);
        if exists && !created && create.is_some_and(|c| c.must_be_new) {
            return Err(Error::RoomExists {
                room_id: room_id.to_string(),
            });
        }
        let is_member = self.members.contains_key(&key(room_id, user));
        if !is_member {
            check_not_banned(&self.banned, room_id, user)?;
        }
        // The per-user room limit: a join that would add a member needs a slot. (A
        // room to create is missing here exactly when its join got none: step 3
        // creates rooms only for joins that claimed one.)
        if !is_member && !self.claimed.contains(user) {
            return Err(Error::TooManyRooms { limit: self.limit });
        }
        let room = self
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| Error::Internal("a room to create was not created".into()))?;
        let member = if is_member {
            None
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
    fn leave(&mut self, change: &'a MemberChange, reason: DetachReason) -> Result<Outcome> {
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

    /// A kick or a ban, judged against the doer's and the target's rows as the batch
    /// left them so far: the member removed (a ban needs no member), the ban planned.
    fn remove(&mut self, change: &'a MemberChange, removal: &'a Removal) -> Result<Outcome> {
        let room_id = &change.room_id;
        let user = change.user_id.as_str();
        let room = self
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| not_found(room_id))?;
        let role = |user: &str| self.members.get(&key(room_id, user)).map(|m| m.role);
        let actor = Standing::of(removal.by_admin, role(&removal.by));
        let action = match removal.ban {
            Some(_) => Action::Ban,
            None => Action::Kick,
        };
        let target = role(user);
        judge(actor, action, target, room_id, user)?;
        if target.is_none() && removal.ban.is_none() {
            return Err(Error::MemberNotFound {
                room_id: room_id.to_string(),
                user_id: user.to_string(),
            });
        }
        let member = self.members.remove(&key(room_id, user));
        if member.is_some() {
            self.plan.remove(room, room_id, user);
            self.plan.released.push(user);
        }
        if let Some(ban) = &removal.ban {
            self.banned.insert(key(room_id, user), ban.expires_at);
            self.plan.banned.push((room_id, ban));
        }
        Ok(Outcome::Removed {
            removed: Removed {
                room: room.clone(),
                member,
                ban: removal.ban.clone(),
            },
            by: removal.by.clone(),
        })
    }

    /// A presence timeout whose member is not due (any more): nothing changes.
    fn not_due(&self, change: &MemberChange) -> Result<Outcome> {
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
    fn switch(
        &mut self,
        change: &'a MemberChange,
        to: &'a RoomId,
        display_name: &str,
    ) -> Result<Outcome> {
        // Two different rooms: a switch is handed over only as a `RoomMove`.
        let from = &change.room_id;
        let user = change.user_id.as_str();
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
            check_not_banned(&self.banned, to, user)?;
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

/// Fails with BANNED if `user` is kept out of `room_id`.
fn check_not_banned(
    banned: &HashMap<Key, Option<UnixMicros>>,
    room_id: &RoomId,
    user: &str,
) -> Result<()> {
    match banned.get(&key(room_id, user)) {
        Some(&expires_at) => Err(Error::Banned {
            room_id: room_id.to_string(),
            expires_at_us: expires_at.map(|t| t.0),
        }),
        None => Ok(()),
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
    pub added: Vec<(&'a RoomId, Member)>,
    pub removed: Vec<(&'a str, &'a str)>,
    /// Users whose join added a member (their claimed slot stays taken).
    pub admitted: HashSet<&'a str>,
    /// Users who hold one room fewer.
    pub released: Vec<&'a str>,
    /// Each room's change of member count.
    pub counts: BTreeMap<&'a RoomId, i64>,
    /// Bans made.
    pub banned: Vec<(&'a RoomId, &'a Ban)>,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewRoom, RoomSettings};

    fn id(room: &str) -> RoomId {
        RoomId::parse(room).unwrap()
    }

    /// A locked room: `members` of at most `max` (0: unlimited), owned by "owner".
    fn room(room_id: &str, max: u32, members: u32) -> Room {
        Room {
            id: id(room_id),
            name: room_id.into(),
            attributes: Default::default(),
            owner_id: "owner".into(),
            settings: RoomSettings {
                max_members: max,
                ..Default::default()
            },
            member_count: members,
            online_count: 0,
            last_seq: 0,
            version: 1,
            created_at: UnixMicros(0),
            updated_at: UnixMicros(0),
        }
    }

    fn member(user: &str) -> Member {
        Member {
            user_id: user.into(),
            display_name: user.into(),
            role: Role::Member,
            online: false,
            joined_at: UnixMicros(0),
        }
    }

    fn change(user: &str, room: &str, kind: Kind) -> MemberChange {
        MemberChange {
            room_id: id(room),
            user_id: user.into(),
            kind,
        }
    }

    fn join(user: &str, room: &str) -> MemberChange {
        let kind = Kind::Join {
            display_name: user.into(),
            create: None,
        };
        change(user, room, kind)
    }

    fn switch(user: &str, from: &str, to: &str) -> MemberChange {
        let kind = Kind::Switch {
            to: id(to),
            display_name: user.into(),
        };
        change(user, from, kind)
    }

    /// Rules over `rooms`, where `members` are `(room, user)` rows and `claimed` the
    /// users whose room slot was claimed.
    fn rules<'a>(rooms: Vec<Room>, members: &[(&str, &str)], claimed: &[&str]) -> Rules<'a> {
        Rules {
            rooms: rooms.into_iter().map(|r| (r.id.clone(), r)).collect(),
            members: members
                .iter()
                .map(|(r, u)| (key(&id(r), u), member(u)))
                .collect(),
            claimed: claimed.iter().map(|u| u.to_string()).collect(),
            creator: HashMap::new(),
            due: HashSet::new(),
            banned: HashMap::new(),
            limit: 3,
            now: UnixMicros(1),
            plan: Plan::default(),
        }
    }

    /// What a decision came to, as the error reason a client would see.
    fn reason(outcome: &Result<Outcome>) -> &'static str {
        match outcome {
            Ok(_) => "ok",
            Err(Error::RoomFull { .. }) => "ROOM_FULL",
            Err(Error::TooManyRooms { .. }) => "TOO_MANY_ROOMS",
            Err(Error::RoomExists { .. }) => "ROOM_EXISTS",
            Err(Error::RoomNotFound { .. }) => "ROOM_NOT_FOUND",
            Err(Error::NotAMember { .. }) => "NOT_A_MEMBER",
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn a_leave_frees_a_place_for_a_later_join_of_the_batch() {
        let changes = [
            join("b", "r"),
            change("a", "r", Kind::Leave),
            join("c", "r"),
        ];
        let mut rules = rules(
            vec![room("r", 2, 2)],
            &[("r", "owner"), ("r", "a")],
            &["b", "c"],
        );
        let outcomes: Vec<_> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| rules.decide(i, c))
            .collect();
        let reasons: Vec<_> = outcomes.iter().map(reason).collect();
        assert_eq!(reasons, ["ROOM_FULL", "ok", "ok"]);
        assert_eq!(rules.rooms[&id("r")].member_count, 2);
        assert_eq!(rules.plan.counts.get(&id("r")), Some(&0));
        assert_eq!(rules.plan.removed, [("r", "a")]);
        assert_eq!(rules.plan.added.len(), 1);
        assert_eq!(rules.plan.added[0].1.user_id, "c");
        assert_eq!(rules.plan.released, ["a"]);
        assert!(rules.plan.admitted.contains("c") && !rules.plan.admitted.contains("b"));
    }

    #[test]
    fn the_room_limit_is_checked_before_max_members() {
        let changes = [join("a", "full")];
        let mut rules = rules(vec![room("full", 1, 1)], &[("full", "owner")], &[]);
        assert_eq!(reason(&rules.decide(0, &changes[0])), "TOO_MANY_ROOMS");
        assert!(rules.plan.added.is_empty());
    }

    #[test]
    fn the_owner_rejoins_as_owner_and_a_member_joins_once() {
        let changes = [join("owner", "r"), join("a", "r")];
        let mut rules = rules(vec![room("r", 0, 1)], &[("r", "a")], &["owner"]);
        let Ok(Outcome::Joined(joined)) = rules.decide(0, &changes[0]) else {
            panic!("the owner joins");
        };
        assert_eq!(joined.member.unwrap().role, Role::Owner);
        let Ok(Outcome::Joined(again)) = rules.decide(1, &changes[1]) else {
            panic!("a member's join is no error");
        };
        assert!(again.member.is_none());
        assert_eq!(rules.rooms[&id("r")].member_count, 2);
    }

    #[test]
    fn a_switch_into_a_full_room_changes_neither() {
        let changes = [switch("a", "from", "full")];
        let mut rules = rules(
            vec![room("from", 0, 2), room("full", 1, 1)],
            &[("from", "a"), ("from", "owner"), ("full", "owner")],
            &[],
        );
        assert_eq!(reason(&rules.decide(0, &changes[0])), "ROOM_FULL");
        assert_eq!(rules.rooms[&id("from")].member_count, 2);
        assert!(rules.members.contains_key(&key(&id("from"), "a")));
        assert!(rules.plan.removed.is_empty() && rules.plan.counts.is_empty());
    }

    #[test]
    fn a_switch_moves_the_slot_and_into_a_room_already_joined_frees_it() {
        // No slot was claimed: a move needs none, even at the limit.
        let changes = [switch("a", "x", "y"), switch("b", "x", "y")];
        let mut rules = rules(
            vec![room("x", 0, 2), room("y", 0, 1)],
            &[("x", "a"), ("x", "b"), ("y", "b")],
            &[],
        );
        assert_eq!(reason(&rules.decide(0, &changes[0])), "ok");
        assert_eq!(reason(&rules.decide(1, &changes[1])), "ok");
        assert_eq!(rules.rooms[&id("x")].member_count, 0);
        assert_eq!(rules.rooms[&id("y")].member_count, 2);
        // Only b, already in y, holds one room fewer.
        assert_eq!(rules.plan.released, ["b"]);
        assert_eq!(rules.plan.removed, [("x", "a"), ("x", "b")]);
    }

    fn create(user: &str, room: &str) -> MemberChange {
        let new = NewRoom {
            id: id(room),
            name: room.into(),
            attributes: Default::default(),
            settings: RoomSettings::default(),
        };
        let kind = Kind::Join {
            display_name: user.into(),
            create: Some(Create {
                room: new,
                must_be_new: true,
            }),
        };
        change(user, room, kind)
    }

    #[test]
    fn create_room_on_a_taken_id_is_room_exists() {
        let changes = [create("a", "r")];
        let mut rules = rules(vec![room("r", 0, 1)], &[("r", "owner")], &["a"]);
        assert_eq!(reason(&rules.decide(0, &changes[0])), "ROOM_EXISTS");
        assert!(rules.plan.added.is_empty());
    }

    #[test]
    fn a_missing_room_is_too_many_rooms_for_a_create_and_not_found_for_a_join() {
        // Step 3 created nothing: neither user could claim a slot.
        let changes = [create("a", "r"), join("b", "r")];
        let mut rules = rules(Vec::new(), &[], &[]);
        assert_eq!(reason(&rules.decide(0, &changes[0])), "TOO_MANY_ROOMS");
        assert_eq!(reason(&rules.decide(1, &changes[1])), "ROOM_NOT_FOUND");
    }
}
