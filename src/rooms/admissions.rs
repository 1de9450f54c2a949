//! The one writer of joins and leaves: group commit of membership changes.
//!
//! JoinRoom, EnterRoom and LeaveRoom hand their change to [`Admissions`] and wait. Its
//! task takes every change that is waiting (up to [`MAX_BATCH`]) and applies them in
//! one transaction, in the order they arrived: it creates the rooms EnterRoom asks
//! for, locks every room of the batch (in id order, as every transaction locks rooms),
//! checks the rules against what it read, and writes the whole batch with a few
//! statements — the new member rows, the removed ones, the users' room counts, and
//! each room's member count once. After the commit it announces the joins and leaves
//! in that same order, and only then answers.
//!
//! Why: a join changes its room's row (the member count). With one transaction per
//! join, each held that row from its update through its commit, so joins into one busy
//! room went one commit at a time, each with a dozen statements. Here a batch of them
//! costs one update of the row, a handful of statements and one commit.
//!
//! The rules are those of a join or leave on its own: already being a member (or not
//! being one, for a leave) is not an error; the per-user room limit is checked before
//! the room's `max_members`; a leave frees its place for a later join in the batch.
//! One user's changes apply in the order they were handed over: a batch holds at most
//! one change per user, and that user's later ones wait for the next batch.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use super::writer::{self, Writer};

use super::{announce_leave, not_found};
use crate::domain::{DetachReason, Member, NewRoom, Role, Room, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::store::Store;

/// Most changes applied by one transaction.
pub const MAX_BATCH: usize = 512;
/// Changes that may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;

/// A join or a leave, as handed to the writer.
struct Change {
    room_id: RoomId,
    user_id: String,
    kind: Kind,
}

enum Kind {
    /// Join (JoinRoom), creating the room first when it does not exist (EnterRoom).
    Join {
        display_name: String,
        create: Option<NewRoom>,
    },
    Leave,
}

/// What a join did.
pub struct Joined {
    /// The room as this join left it.
    pub room: Room,
    /// Whether this join created the room.
    pub created: bool,
    /// The new member; `None` when the user already was one (nothing changed).
    pub member: Option<Member>,
}

/// What a change did.
enum Outcome {
    Joined(Joined),
    /// The room as the leave left it, and the member removed (`None`: was not one).
    Left {
        room: Room,
        member: Option<Member>,
    },
}

type Job = writer::Job<Change, Outcome>;

/// The handle callers use; cheap to clone. The writer task ends once every handle is
/// dropped and the changes already handed over are applied.
#[derive(Clone)]
pub struct Admissions(Writer<Change, Outcome>);

impl Admissions {
    /// Starts the writer task (returned, for its supervision). Leaves that empty a
    /// room wake `deadlines_changed` (a destroy-when-empty delay may start).
    pub fn start(
        store: Store,
        hubs: Arc<Hubs>,
        deadlines_changed: Arc<Notify>,
        max_rooms_per_user: u32,
    ) -> (Admissions, tokio::task::JoinHandle<()>) {
        let batches = Batches {
            store,
            hubs,
            deadlines_changed,
            max_rooms_per_user,
        };
        let (writer, task) = Writer::start("membership writer", QUEUE, |queue| batches.run(queue));
        (Admissions(writer), task)
    }

    /// Joins `user_id` to a room, creating it first from `create` if it does not exist.
    pub async fn join(
        &self,
        room_id: &RoomId,
        user_id: &str,
        display_name: String,
        create: Option<NewRoom>,
    ) -> Result<Joined> {
        let kind = Kind::Join {
            display_name,
            create,
        };
        match self.apply(room_id, user_id, kind).await? {
            Outcome::Joined(joined) => Ok(joined),
            Outcome::Left { .. } => Err(Error::Internal("a join answered as a leave".into())),
        }
    }

    /// Removes `user_id` from a room; returns the member removed.
    pub async fn leave(&self, room_id: &RoomId, user_id: &str) -> Result<Option<Member>> {
        match self.apply(room_id, user_id, Kind::Leave).await? {
            Outcome::Left { member, .. } => Ok(member),
            Outcome::Joined(_) => Err(Error::Internal("a leave answered as a join".into())),
        }
    }

    async fn apply(&self, room_id: &RoomId, user_id: &str, kind: Kind) -> Result<Outcome> {
        let change = Change {
            room_id: room_id.clone(),
            user_id: user_id.to_string(),
            kind,
        };
        self.0.hand_over(change).await?.await
    }
}

impl Change {
    /// The `(room, user)` key of the member row the change is about.
    fn key(&self) -> (String, String) {
        (self.room_id.to_string(), self.user_id.clone())
    }
}

/// Members read back, by `(room, user)` key.
fn members_by_key(rows: Vec<(String, Member)>) -> HashMap<(String, String), Member> {
    rows.into_iter()
        .map(|(room, member)| ((room, member.user_id.clone()), member))
        .collect()
}

/// The writer's task: applies batches of changes.
struct Batches {
    store: Store,
    hubs: Arc<Hubs>,
    deadlines_changed: Arc<Notify>,
    max_rooms_per_user: u32,
}

impl Batches {
    async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut received = Vec::with_capacity(MAX_BATCH);
        loop {
            if waiting.is_empty() {
                if queue.recv_many(&mut received, MAX_BATCH).await == 0 {
                    return;
                }
            } else {
                // Changes held back from the last batch go first; take what else is
                // waiting without blocking on it.
                while received.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => received.push(job),
                        Err(_) => break,
                    }
                }
            }
            waiting.extend(received.drain(..));
            let batch = take_batch(&mut waiting);
            self.apply_batch(batch).await;
        }
    }

    async fn apply_batch(&self, batch: Vec<Job>) {
        let (changes, answers): (Vec<Change>, Vec<_>) =
            batch.into_iter().map(|j| (j.change, j.answer)).unzip();
        match self.write(&changes).await {
            Ok(outcomes) => {
                self.announce(&outcomes);
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(outcome);
                }
            }
            Err(error) => {
                tracing::warn!(%error, batch = changes.len(), "applying joins and leaves failed");
                for answer in answers {
                    let _ = answer.send(Err(error.shared()));
                }
            }
        }
    }

    /// Applies a batch in one transaction; one answer per change, with the room as
    /// that change left it. An `Err` is the whole batch's: nothing was written.
    async fn write(&self, changes: &[Change]) -> Result<Vec<Result<Outcome>>> {
        let now = UnixMicros::now();
        let mut tx = self.store.begin().await?;

        // 1. Lock the rooms that exist, then read which of the batch's users are
        //    members of them.
        let ids: Vec<&RoomId> = changes.iter().map(|c| &c.room_id).collect();
        let mut rooms: HashMap<RoomId, Room> = tx
            .lock_rooms(&ids)
            .await?
            .into_iter()
            .map(|room| (room.id.clone(), room))
            .collect();
        let keys: Vec<(&str, &str)> = changes
            .iter()
            .filter(|c| rooms.contains_key(&c.room_id))
            .map(|c| (c.room_id.as_str(), c.user_id.as_str()))
            .collect();
        let mut members = members_by_key(tx.members_among(&keys).await?);

        // 2. The per-user room limit comes first: claim a slot for every join that may
        //    add a member (one that then adds none gives its slot back below).
        let joining: Vec<&str> = changes
            .iter()
            .filter(|c| matches!(c.kind, Kind::Join { .. }) && !members.contains_key(&c.key()))
            .map(|c| c.user_id.as_str())
            .collect();
        let claimed: HashSet<String> = tx
            .claim_room_slots(&joining, self.max_rooms_per_user)
            .await?
            .into_iter()
            .collect();

        // 3. Rooms EnterRoom asks for: the first such join that claimed its slot
        //    creates a missing room (a join that may not join creates nothing).
        let mut creator: HashMap<&RoomId, usize> = HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            let Kind::Join {
                create: Some(new), ..
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
                // Created by another transaction since step 1 (the insert waited for
                // its commit): read its members among ours like the others'.
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

        // 4. The rules, in arrival order, against the locked rooms.
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut added: Vec<(&RoomId, Member)> = Vec::new();
        let mut removed: Vec<(&str, &str)> = Vec::new();
        let mut admitted: HashSet<&str> = HashSet::new();
        let mut released: Vec<&str> = Vec::new();
        let mut counts: BTreeMap<&RoomId, i64> = BTreeMap::new();
        for (i, change) in changes.iter().enumerate() {
            let Some(room) = rooms.get_mut(&change.room_id) else {
                // Missing after step 3: an EnterRoom here could not claim its slot.
                outcomes.push(Err(match change.kind {
                    Kind::Join {
                        create: Some(_), ..
                    } => Error::TooManyRooms {
                        limit: self.max_rooms_per_user,
                    },
                    _ => not_found(&change.room_id),
                }));
                continue;
            };
            let key = change.key();
            let user = change.user_id.as_str();
            match &change.kind {
                Kind::Join { display_name, .. } => {
                    let created = creator.get(&change.room_id) == Some(&i);
                    let member = if members.contains_key(&key) {
                        None
                    } else if !claimed.contains(user) {
                        outcomes.push(Err(Error::TooManyRooms {
                            limit: self.max_rooms_per_user,
                        }));
                        continue;
                    } else if room.settings.max_members != 0
                        && room.member_count >= room.settings.max_members
                    {
                        outcomes.push(Err(Error::RoomFull {
                            room_id: change.room_id.to_string(),
                            max_members: room.settings.max_members,
                        }));
                        continue;
                    } else {
                        let member = Member {
                            user_id: change.user_id.clone(),
                            display_name: display_name.clone(),
                            role: if room.owner_id == user {
                                Role::Owner
                            } else {
                                Role::Member
                            },
                            online: false,
                            joined_at: now,
                        };
                        room.member_count += 1;
                        admitted.insert(user);
                        *counts.entry(&change.room_id).or_default() += 1;
                        added.push((&change.room_id, member.clone()));
                        Some(member)
                    };
                    outcomes.push(Ok(Outcome::Joined(Joined {
                        room: room.clone(),
                        created,
                        member,
                    })));
                }
                Kind::Leave => {
                    let member = members.remove(&key);
                    if member.is_some() {
                        room.member_count = room.member_count.saturating_sub(1);
                        *counts.entry(&change.room_id).or_default() -= 1;
                        removed.push((change.room_id.as_str(), user));
                        released.push(user);
                    }
                    outcomes.push(Ok(Outcome::Left {
                        room: room.clone(),
                        member,
                    }));
                }
            }
        }

        // 5. The writes, a statement each for the whole batch. Slots claimed by
        //    joins that added no member go back with the leavers'.
        released.extend(
            joining
                .iter()
                .filter(|u| claimed.contains(**u) && !admitted.contains(**u)),
        );
        let added_refs: Vec<(&RoomId, &Member)> = added.iter().map(|(r, m)| (*r, m)).collect();
        tx.insert_members(&added_refs).await?;
        if tx.delete_members(&removed).await? != removed.len() as u64 {
            return Err(Error::Internal(
                "a member row vanished under its room's lock".into(),
            ));
        }
        tx.release_room_slots(&released).await?;
        let counts: Vec<(&RoomId, i64)> = counts.into_iter().collect();
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
        // The leavers' streams stop receiving before the commit: the message writer
        // cannot commit into these rooms while this transaction holds them, so every
        // message committed after a leave is published after its detach. (Should the
        // commit fail, the streams were detached from a room their user is still in;
        // they may attach again.)
        for outcome in &outcomes {
            if let Ok(Outcome::Left {
                room,
                member: Some(m),
            }) = outcome
            {
                self.hubs
                    .detach_user(&room.id, &m.user_id, DetachReason::Left, None);
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Announces the batch's joins and leaves in the order they were applied.
    fn announce(&self, outcomes: &[Result<Outcome>]) {
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Joined(Joined {
                    room,
                    member: Some(m),
                    ..
                })) => {
                    self.hubs.member_changed(room, m.clone(), true);
                }
                Ok(Outcome::Left {
                    room,
                    member: Some(m),
                }) => announce_leave(&self.hubs, &self.deadlines_changed, room, m.clone()),
                _ => {}
            }
        }
    }
}

/// Takes the next batch off the front of `waiting`: at most [`MAX_BATCH`] changes and
/// one per user. What stays keeps its order.
fn take_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let mut users: HashSet<String> = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = VecDeque::new();
    for job in waiting.drain(..) {
        // Once a user has a change held back, its later ones are held back too.
        let first_of_user = users.insert(job.change.user_id.clone());
        if first_of_user && batch.len() < MAX_BATCH {
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *waiting = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: &str, room: &str) -> Job {
        Job {
            change: Change {
                room_id: RoomId::parse(room).unwrap(),
                user_id: user.into(),
                kind: Kind::Leave,
            },
            answer: tokio::sync::oneshot::channel().0,
        }
    }

    fn keys(jobs: &[Job]) -> Vec<(String, String)> {
        jobs.iter().map(|j| j.change.key()).collect()
    }

    #[test]
    fn a_batch_holds_one_change_per_user_and_keeps_the_order() {
        let mut waiting: VecDeque<Job> = [
            job("a", "r1"),
            job("b", "r1"),
            job("a", "r2"),
            job("c", "r1"),
            job("b", "r2"),
        ]
        .into_iter()
        .collect();
        let batch = take_batch(&mut waiting);
        let k = |r: &str, u: &str| (r.to_string(), u.to_string());
        assert_eq!(keys(&batch), vec![k("r1", "a"), k("r1", "b"), k("r1", "c")]);
        let rest: Vec<Job> = waiting.drain(..).collect();
        assert_eq!(keys(&rest), vec![k("r2", "a"), k("r2", "b")]);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_changes() {
        let mut waiting: VecDeque<Job> = (0..MAX_BATCH + 5)
            .map(|i| job(&format!("u{i}"), "r"))
            .collect();
        assert_eq!(take_batch(&mut waiting).len(), MAX_BATCH);
        assert_eq!(waiting.len(), 5);
        assert_eq!(waiting[0].change.user_id, format!("u{MAX_BATCH}"));
    }
}
