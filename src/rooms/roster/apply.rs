//! One batch of membership changes, applied in one transaction: read and lock what
//! the batch touches, check the rules ([`super::rules`]), write, detach the leavers'
//! streams, commit, announce.
//!
//! The rules are those of each change on its own: already being a member (or not
//! being one, for a leave) is not an error; the per-user room limit is checked before
//! the room's `max_members`; a switch moves the user's room slot with it (it never
//! trips the per-user limit); a leave frees its place for a later join in the batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{Notify, watch};

use super::rules::{Key, Plan, Rules, key};
use super::{Change, Create, Job, Joined, Kind, MemberChange, Outcome, Removed, Switched};
use crate::domain::{
    Clock, DetachReason, FeedEntry, FeedKind, Member, Room, RoomId, SanctionKind, UnixMicros,
};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::live::hub::Switch;
use crate::rooms::feed::FeedNews;
use crate::store::membership::MemberWrites;
use crate::store::{Store, Tx};

/// What applying a batch needs.
pub(super) struct Batches {
    pub store: Store,
    pub hubs: Arc<Hubs>,
    pub deadlines_changed: Arc<Notify>,
    pub max_rooms_per_user: u32,
    /// The time of a batch: when members joined, left, went offline.
    pub clock: Clock,
    /// Where the room feed's watches hear of a batch's events.
    pub news: Arc<FeedNews>,
}

/// Writes a batch's plan: its member writes together (one statement on PostgreSQL
/// where they can be), its bans.
async fn write(
    plan: &Plan<'_>,
    tx: &mut Tx,
    rooms: &HashMap<RoomId, Room>,
    now: UnixMicros,
) -> Result<()> {
    let added: Vec<(&RoomId, &Member)> = plan.added.iter().map(|(r, m)| (*r, m)).collect();
    let counts: Vec<(&RoomId, i64)> = plan.counts.iter().map(|(r, d)| (*r, *d)).collect();
    let writes = MemberWrites {
        added: &added,
        removed: &plan.removed,
        released: &plan.released,
        counts: &counts,
    };
    let (removed, stored_rooms) = tx.write_members(writes, now).await?;
    if removed != plan.removed.len() as u64 {
        return Err(Error::Internal(
            "a member row vanished under its room's lock".into(),
        ));
    }
    tx.put_sanctions(SanctionKind::Ban, &plan.banned, now)
        .await?;
    for stored in stored_rooms {
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

/// Members read back, by `(room, user)` key.
fn members_by_key(rows: Vec<(String, Member)>) -> HashMap<Key, Member> {
    rows.into_iter()
        .map(|(room, member)| ((room, member.user_id.clone()), member))
        .collect()
}

/// What the batch's rules are checked against, read under its rooms' locks.
struct Read {
    rooms: HashMap<RoomId, Room>,
    /// The member rows of the batch's users (and of those who kick or ban).
    members: HashMap<Key, Member>,
    /// The bans in force of the users who would join.
    banned: HashMap<Key, Option<UnixMicros>>,
}

/// Locks the rooms of a batch that exist (a switch's both) and reads which of the
/// batch's users (and of those who kick or ban) are members of them, and which of
/// those who would join are banned.
async fn lock_and_read(tx: &mut Tx, changes: &[&MemberChange], now: UnixMicros) -> Result<Read> {
    let mut ids: Vec<&RoomId> = Vec::with_capacity(changes.len());
    for change in changes {
        ids.push(&change.room_id);
        if let Kind::Switch { to, .. } = &change.kind {
            ids.push(to);
        }
    }
    let rooms = lock_by_id(tx, &ids).await?;
    let mut keys: Vec<(&str, &str)> = Vec::with_capacity(ids.len());
    for change in changes {
        let user = change.user_id.as_str();
        if rooms.contains_key(&change.room_id) {
            keys.push((change.room_id.as_str(), user));
        }
        if let Kind::Switch { to, .. } = &change.kind
            && rooms.contains_key(to)
        {
            keys.push((to.as_str(), user));
        }
        if let Kind::Remove(removal) = &change.kind
            && rooms.contains_key(&change.room_id)
        {
            keys.push((change.room_id.as_str(), removal.by.as_str()));
        }
    }
    let members = members_by_key(tx.members_among(&keys).await?);
    let joining: Vec<(&str, &str)> = changes
        .iter()
        .filter_map(|c| match &c.kind {
            Kind::Join { .. } => Some((&c.room_id, c.user_id.as_str())),
            Kind::Switch { to, .. } => Some((to, c.user_id.as_str())),
            _ => None,
        })
        .filter(|(room, user)| rooms.contains_key(*room) && !members.contains_key(&key(room, user)))
        .map(|(room, user)| (room.as_str(), user))
        .collect();
    let banned = tx
        .sanctions_among(SanctionKind::Ban, &joining, now)
        .await?
        .into_iter()
        .map(|(room, ban)| ((room, ban.user_id), ban.expires_at))
        .collect();
    Ok(Read {
        rooms,
        members,
        banned,
    })
}

/// Creates the missing rooms CreateRoom and EnterRoom ask for: the first such join
/// that claimed its slot creates the room (a join that may not join creates nothing).
/// Returns which change created each room; the rooms created are locked and added to
/// `rooms`.
async fn create_missing<'a>(
    tx: &mut Tx,
    changes: &[&'a MemberChange],
    claimed: &HashSet<String>,
    now: UnixMicros,
    rooms: &mut HashMap<RoomId, Room>,
    members: &mut HashMap<Key, Member>,
) -> Result<HashMap<&'a RoomId, usize>> {
    let mut creator: HashMap<&RoomId, usize> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        let Kind::Join {
            create: Some(Create { room: new, .. }),
            ..
        } = &change.kind
        else {
            continue;
        };
        if rooms.contains_key(&change.room_id) || !claimed.contains(&change.user_id) {
            continue;
        }
        if tx.insert_room(new, &change.user_id, now).await? {
            creator.insert(&change.room_id, i);
        } else {
            // Created by another transaction since the batch locked its rooms (the
            // insert waited for its commit): read its members among ours like the
            // others'.
            let keys: Vec<(&str, &str)> = changes
                .iter()
                .filter(|c| c.room_id == change.room_id)
                .map(|c| (c.room_id.as_str(), c.user_id.as_str()))
                .collect();
            members.extend(members_by_key(tx.members_among(&keys).await?));
        }
        let room = tx
            .lock_room(&change.room_id)
            .await?
            .ok_or_else(|| Error::Internal("a room just inserted is gone".into()))?;
        rooms.insert(room.id.clone(), room);
    }
    Ok(creator)
}

impl Batches {
    /// Applies a batch (all member changes, or all deletions: see `take_batch`),
    /// announces what it did, and answers each change.
    pub(super) async fn apply(&self, batch: Vec<Job>) {
        let (changes, answers): (Vec<Change>, Vec<_>) =
            batch.into_iter().map(|j| (j.change, j.answer)).unzip();
        let written = if changes.first().is_some_and(Change::is_destroy) {
            self.destroy(&changes).await
        } else {
            let members: Vec<&MemberChange> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Member(m) => Some(m),
                    Change::Destroy { .. } => None,
                })
                .collect();
            self.write(&members).await
        };
        match written {
            Ok(outcomes) => {
                self.announce(&outcomes);
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(outcome);
                }
            }
            Err(error) => {
                tracing::warn!(%error, batch = changes.len(), "applying membership changes failed");
                for answer in answers {
                    let _ = answer.send(Err(error.shared()));
                }
            }
        }
    }

    /// Applies member changes in one transaction; one answer per change, with the
    /// rooms as that change left them. An `Err` is the whole batch's: nothing was
    /// written.
    async fn write(&self, changes: &[&MemberChange]) -> Result<Vec<Result<Outcome>>> {
        let now = self.clock.now();
        let limit = self.max_rooms_per_user;
        let mut tx = self.store.begin().await?;

        // 1. Lock the rooms that exist (a switch's both), then read which of the
        //    batch's users are members of them, and which timed-out members are due.
        let Read {
            mut rooms,
            mut members,
            banned,
        } = lock_and_read(&mut tx, changes, now).await?;
        let due = due_to_expire(&mut tx, changes, &rooms).await?;

        // 2. The per-user room limit comes first: claim a slot for every join that may
        //    add a member (one that then adds none gives its slot back below).
        let joining: Vec<&str> = changes
            .iter()
            .filter(|c| {
                matches!(c.kind, Kind::Join { .. })
                    && !members.contains_key(&key(&c.room_id, &c.user_id))
            })
            .map(|c| c.user_id.as_str())
            .collect();
        let claimed: HashSet<String> = tx
            .claim_room_slots(&joining, limit)
            .await?
            .into_iter()
            .collect();

        // 3. Rooms CreateRoom and EnterRoom ask for.
        let creator =
            create_missing(&mut tx, changes, &claimed, now, &mut rooms, &mut members).await?;

        // 4. The rules, in arrival order, against the locked rooms.
        let mut rules = Rules {
            rooms,
            members,
            claimed,
            creator,
            due,
            banned,
            limit,
            now,
            plan: Plan::default(),
        };
        let outcomes: Vec<Result<Outcome>> = changes
            .iter()
            .enumerate()
            .map(|(i, &change)| rules.decide(i, change))
            .collect();
        let Rules {
            rooms,
            claimed,
            mut plan,
            ..
        } = rules;

        // 5. The writes, a statement each for the whole batch. Slots claimed by
        //    joins that added no member go back with the leavers'.
        let unused = joining
            .iter()
            .filter(|u| claimed.contains(**u) && !plan.admitted.contains(**u));
        plan.released.extend(unused);
        write(&plan, &mut tx, &rooms, now).await?;
        self.commit(tx, &outcomes, now).await?;
        Ok(outcomes)
    }

    /// Detaches the leavers' streams, then commits with the batch's events of the
    /// room feed.
    async fn commit(&self, tx: Tx, outcomes: &[Result<Outcome>], now: UnixMicros) -> Result<()> {
        // The leavers' streams stop receiving before the commit: the message writer
        // cannot commit into these rooms while this transaction holds them, so every
        // message committed after a leave is published after its detach. (Should the
        // commit fail, the streams were detached from a room their user is still in;
        // they may attach again. A switch's streams are told, and stay where they are.)
        let (committed, commit_outcome) = watch::channel(None);
        self.detach_leavers(outcomes, &commit_outcome);
        let result = self
            .news
            .commit(tx, &super::feed::entries(outcomes), now)
            .await;
        let _ = committed.send(Some(result.is_ok()));
        result
    }

    /// Stops the streams of the batch's leavers (a switch's with the room they go to,
    /// attached once `committed` says the commit held).
    fn detach_leavers(
        &self,
        outcomes: &[Result<Outcome>],
        committed: &watch::Receiver<Option<bool>>,
    ) {
        for outcome in outcomes.iter().flatten() {
            match outcome {
                Outcome::Left {
                    room,
                    member: Some(m),
                    reason,
                } => self.hubs.detach_user(&room.id, &m.user_id, *reason, None),
                Outcome::Removed {
                    removed:
                        Removed {
                            room,
                            member: Some(m),
                            ..
                        },
                    ..
                } => self
                    .hubs
                    .detach_user(&room.id, &m.user_id, DetachReason::Kicked, None),
                Outcome::Switched(moved) => {
                    let Switched { from, left, to, .. } = &**moved;
                    let switch = Switch {
                        to: to.id.clone(),
                        after_seq: to.last_seq,
                        committed: committed.clone(),
                    };
                    self.hubs.detach_user(
                        &from.id,
                        &left.user_id,
                        DetachReason::Switched,
                        Some(switch),
                    );
                }
                _ => {}
            }
        }
    }

    /// Deletes the rooms of a batch of deletions that are still empty and overdue.
    async fn destroy(&self, changes: &[Change]) -> Result<Vec<Result<Outcome>>> {
        let mut tx = self.store.begin().await?;
        let ids: Vec<&RoomId> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Destroy { room_id, .. } => Some(room_id),
                Change::Member(_) => None,
            })
            .collect();
        let mut rooms = lock_by_id(&mut tx, &ids).await?;
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut deleted = Vec::new();
        for change in changes {
            let Change::Destroy { room_id, now } = change else {
                return Err(Error::Internal("a member change among deletions".into()));
            };
            let destroy = match rooms.get(room_id) {
                Some(room) => {
                    room.member_count == 0
                        && room.settings.destroy_when_empty_after.is_some()
                        && tx.room_expired(room_id, *now).await?
                }
                None => false,
            };
            if destroy {
                tx.delete_room(room_id).await?;
                rooms.remove(room_id);
                deleted.push(FeedEntry::room(room_id, FeedKind::Deleted, ""));
            }
            outcomes.push(Ok(Outcome::Destroyed(destroy)));
        }
        self.news.commit(tx, &deleted, self.clock.now()).await?;
        for (change, outcome) in changes.iter().zip(&outcomes) {
            if let (Change::Destroy { room_id, .. }, Ok(Outcome::Destroyed(true))) =
                (change, outcome)
            {
                tracing::debug!(room = %room_id, "empty room destroyed");
                self.hubs.room_deleted(room_id);
            }
        }
        Ok(outcomes)
    }

    /// Announces the batch's joins and leaves in the order they were applied.
    fn announce(&self, outcomes: &[Result<Outcome>]) {
        for outcome in outcomes.iter().flatten() {
            match outcome {
                Outcome::Joined(Joined {
                    room,
                    member: Some(m),
                    ..
                }) => self.hubs.member_joined(room, m.clone()),
                Outcome::Left {
                    room,
                    member: Some(m),
                    reason,
                } => {
                    if *reason == DetachReason::PresenceTimeout {
                        tracing::debug!(room = %room.id, user = m.user_id, "presence timeout: member removed");
                    }
                    self.announce_leave(room, m.clone(), None);
                }
                Outcome::Removed {
                    removed:
                        Removed {
                            room,
                            member: Some(m),
                            ..
                        },
                    by,
                } => self.announce_leave(room, m.clone(), Some(by)),
                Outcome::Switched(moved) => {
                    let Switched {
                        from,
                        left,
                        to,
                        joined,
                    } = &**moved;
                    self.announce_leave(from, left.clone(), None);
                    if let Some(m) = joined {
                        self.hubs.member_joined(to, m.clone());
                    }
                }
                _ => {}
            }
        }
    }

    /// Announces a committed leave (coalesced), or a removal by `kicked_by`; a room
    /// left empty may start its destroy-when-empty delay, so the expiry task looks
    /// again. The leaver's streams were detached before the commit
    /// ([`Hubs::detach_user`]): a message committed after the leave is published
    /// after that, so it never reaches them.
    fn announce_leave(&self, room: &Room, member: Member, kicked_by: Option<&str>) {
        self.hubs.member_left(room, member, kicked_by);
        if room.member_count == 0 && room.settings.destroy_when_empty_after.is_some() {
            self.deadlines_changed.notify_one();
        }
    }
}

/// Locks the rooms of `ids` that exist; by id.
async fn lock_by_id(tx: &mut Tx, ids: &[&RoomId]) -> Result<HashMap<RoomId, Room>> {
    let rooms = tx.lock_rooms(ids).await?;
    Ok(rooms.into_iter().map(|r| (r.id.clone(), r)).collect())
}

/// The presence-timeout changes of a batch whose member is due: still offline since
/// the room's timeout before the change's `now`, as stored under the room's lock.
async fn due_to_expire(
    tx: &mut Tx,
    changes: &[&MemberChange],
    rooms: &HashMap<RoomId, Room>,
) -> Result<HashSet<usize>> {
    let mut due = HashSet::new();
    for (i, change) in changes.iter().enumerate() {
        let Kind::Expire { now } = change.kind else {
            continue;
        };
        let Some(timeout) = rooms
            .get(&change.room_id)
            .and_then(|r| r.settings.presence_timeout)
        else {
            continue;
        };
        let timeout = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let cutoff = UnixMicros(now.0.saturating_sub(timeout));
        if tx
            .member_offline_since(&change.room_id, &change.user_id, cutoff)
            .await?
        {
            due.insert(i);
        }
    }
    Ok(due)
}
