//! The one writer of membership: group commit of every change to who is in a room.
//!
//! CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom, KickMember and BanMember
//! hand their change to [`Roster`] and wait; so do the expiry task's presence-timeout
//! removals and destroy-when-empty deletions. No other code adds or removes member
//! rows, or writes member counts, users' room counts or bans (a member's role changes
//! under its room's lock in `moderation`). The task takes every change that is
//! waiting (up to [`MAX_BATCH`]) and applies them in one transaction, in the order they arrived
//! ([`apply`], [`rules`]): it creates the rooms CreateRoom and EnterRoom ask for, locks every
//! room of the batch (in id order, as every transaction locks rooms), checks the rules
//! against what it read, and writes the whole batch with a few statements — the new
//! member rows, the removed ones, the users' room counts, each room's member count
//! once, and last the batch's events of the room feed ([`feed`]). After the commit
//! it announces the changes in that same order, and only then answers.
//!
//! Why: a join changes its room's row (the member count). With one transaction per
//! join, each held that row from its update through its commit, so joins into one busy
//! room went one commit at a time, each with a dozen statements. Here a batch of them
//! costs one update of the row, a handful of statements and one commit. And since
//! every change goes through here, each rule is written once ([`rules`]).
//!
//! One user's changes apply in the order they were handed over: a batch holds at most
//! one change per user, and that user's later ones wait for the next batch. Deleting
//! an empty room is about the room alone: such deletions go in batches of their own,
//! so that nothing handed over after one is applied before it.

mod apply;
mod feed;
mod rules;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use super::writer::{self, Writer};
use crate::domain::{Ban, DetachReason, Member, NewRoom, Room, RoomId, RoomMove, UnixMicros};
use crate::error::{Error, Result};
use crate::store::Store;

/// Most changes applied by one transaction.
pub const MAX_BATCH: usize = 512;
/// Changes that may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;

/// A change handed to the writer.
enum Change {
    /// A change of one user's membership.
    Member(MemberChange),
    /// Destroy-when-empty: delete the room if, at `now`, it is still empty and its
    /// delay has passed.
    Destroy { room_id: RoomId, now: UnixMicros },
}

/// A change of `user_id`'s membership of `room_id`.
struct MemberChange {
    room_id: RoomId,
    user_id: String,
    kind: Kind,
}

enum Kind {
    /// JoinRoom; EnterRoom and CreateRoom also say which room to create.
    Join {
        display_name: String,
        create: Option<Create>,
    },
    /// LeaveRoom.
    Leave,
    /// A presence timeout: leave, if at `now` the member has been offline for longer
    /// than the room's presence timeout (re-checked under the room's lock).
    Expire { now: UnixMicros },
    /// SwitchRoom: leave `room_id` and join `to`, or neither.
    Switch { to: RoomId, display_name: String },
    /// KickMember and BanMember.
    Remove(Removal),
}

/// A kick or a ban: who does it (judged under the room's lock, against their member
/// row there), and for a ban, the ban.
pub struct Removal {
    pub by: String,
    pub by_admin: bool,
    /// A ban: the user is kept out, member or not. `None`: a kick.
    pub ban: Option<Ban>,
}

/// What a kick or a ban did: the room as it left it, the member removed (`None`: a
/// ban of a user who was not one), and the ban made.
pub struct Removed {
    pub room: Room,
    pub member: Option<Member>,
    pub ban: Option<Ban>,
}

/// The room a join creates when it does not exist.
struct Create {
    room: NewRoom,
    /// CreateRoom: a room that exists already is an error (EnterRoom joins it).
    must_be_new: bool,
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
    /// The room as the leave left it, and the member removed (`None`: was not one,
    /// or for a presence timeout, was not due).
    Left {
        room: Room,
        member: Option<Member>,
        reason: DetachReason,
    },
    Switched(Box<Switched>),
    /// A kick or a ban, and who did it.
    Removed {
        removed: Removed,
        by: String,
    },
    /// Whether an empty room was deleted.
    Destroyed(bool),
}

/// What a switch did: the rooms as it left them, the member it removed from `from`,
/// and the one it added to `to` (`None`: was a member of `to` already).
struct Switched {
    from: Room,
    left: Member,
    to: Room,
    joined: Option<Member>,
}

type Job = writer::Job<Change, Outcome>;

/// The handle callers use; cheap to clone. The writer task ends once every handle is
/// dropped and the changes already handed over are applied.
#[derive(Clone)]
pub struct Roster(Writer<Change, Outcome>);

impl Roster {
    /// Starts the writer task (returned, for its supervision), announcing through
    /// `live`'s hubs on its clock. Leaves that empty a room wake `deadlines_changed`
    /// (a destroy-when-empty delay may start); the feed's watches hear from `news`.
    pub fn start(
        store: Store,
        live: &crate::rooms::Parts,
        deadlines_changed: Arc<Notify>,
        max_rooms_per_user: u32,
        news: Arc<crate::rooms::feed::FeedNews>,
    ) -> (Roster, tokio::task::JoinHandle<()>) {
        let batches = apply::Batches {
            store,
            hubs: live.hubs.clone(),
            deadlines_changed,
            max_rooms_per_user,
            clock: live.clock.clone(),
            news,
        };
        let (writer, task) = Writer::start("membership writer", QUEUE, |queue| run(batches, queue));
        (Roster(writer), task)
    }

    /// Creates a room with `user_id` as its owner and first member (CreateRoom).
    pub async fn create(&self, room: NewRoom, user_id: &str, display_name: String) -> Result<Room> {
        let room_id = room.id.clone();
        let create = Create {
            room,
            must_be_new: true,
        };
        Ok(self
            .join(&room_id, user_id, display_name, Some(create))
            .await?
            .room)
    }

    /// Joins `user_id` to a room (JoinRoom); already being a member is not an error.
    pub async fn join_existing(
        &self,
        room_id: &RoomId,
        user_id: &str,
        display_name: String,
    ) -> Result<Joined> {
        self.join(room_id, user_id, display_name, None).await
    }

    /// Joins `user_id` to a room, creating it first from `room` if it does not exist
    /// (EnterRoom).
    pub async fn enter(
        &self,
        room: NewRoom,
        user_id: &str,
        display_name: String,
    ) -> Result<Joined> {
        let room_id = room.id.clone();
        let create = Create {
            room,
            must_be_new: false,
        };
        self.join(&room_id, user_id, display_name, Some(create))
            .await
    }

    async fn join(
        &self,
        room_id: &RoomId,
        user_id: &str,
        display_name: String,
        create: Option<Create>,
    ) -> Result<Joined> {
        let kind = Kind::Join {
            display_name,
            create,
        };
        match self.apply(room_id, user_id, kind).await? {
            Outcome::Joined(joined) => Ok(joined),
            _ => Err(mismatch("join")),
        }
    }

    /// Removes `user_id` from a room; returns the member removed.
    pub async fn leave(&self, room_id: &RoomId, user_id: &str) -> Result<Option<Member>> {
        match self.apply(room_id, user_id, Kind::Leave).await? {
            Outcome::Left { member, .. } => Ok(member),
            _ => Err(mismatch("leave")),
        }
    }

    /// Kicks or bans `user_id` from a room, as `removal` says, if its doer may.
    pub async fn remove(
        &self,
        room_id: &RoomId,
        user_id: &str,
        removal: Removal,
    ) -> Result<Removed> {
        match self.apply(room_id, user_id, Kind::Remove(removal)).await? {
            Outcome::Removed { removed, .. } => Ok(removed),
            _ => Err(mismatch("removal")),
        }
    }

    /// Moves `user_id` from `from` to `to` in one transaction: if the join fails, the
    /// user is still in `from`. Returns `to` as the move left it.
    pub async fn switch(
        &self,
        rooms: &RoomMove,
        user_id: &str,
        display_name: String,
    ) -> Result<Room> {
        let kind = Kind::Switch {
            to: rooms.to().clone(),
            display_name,
        };
        match self.apply(rooms.from(), user_id, kind).await? {
            Outcome::Switched(switched) => Ok(switched.to),
            _ => Err(mismatch("switch")),
        }
    }

    /// Removes every member of `due` whose presence timeout has passed at `now`
    /// (re-checked under its room's lock), handing them over together so that they
    /// share transactions; how many were removed.
    pub async fn expire(&self, due: Vec<(RoomId, String)>, now: UnixMicros) -> Result<usize> {
        let mut answers = Vec::with_capacity(due.len());
        for (room_id, user_id) in due {
            let change = Change::Member(MemberChange {
                room_id,
                user_id,
                kind: Kind::Expire { now },
            });
            answers.push(self.0.hand_over(change).await?);
        }
        let mut removed = 0;
        for answer in answers {
            match answer.await {
                Ok(Outcome::Left {
                    member: Some(_), ..
                }) => removed += 1,
                // Gone since it was found due: nothing to remove.
                Ok(_) | Err(Error::RoomNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(removed)
    }

    /// Deletes a room if, at `now`, it is empty and its destroy-when-empty delay has
    /// passed (re-checked under its lock); true when it was deleted.
    pub async fn destroy(&self, room_id: &RoomId, now: UnixMicros) -> Result<bool> {
        let change = Change::Destroy {
            room_id: room_id.clone(),
            now,
        };
        match self.0.hand_over(change).await?.await? {
            Outcome::Destroyed(done) => Ok(done),
            _ => Err(mismatch("destroy")),
        }
    }

    async fn apply(&self, room_id: &RoomId, user_id: &str, kind: Kind) -> Result<Outcome> {
        let change = Change::Member(MemberChange {
            room_id: room_id.clone(),
            user_id: user_id.to_string(),
            kind,
        });
        self.0.hand_over(change).await?.await
    }
}

fn mismatch(change: &str) -> Error {
    Error::Internal(format!("a {change} was answered as another change"))
}

/// The writer's task: applies batches of changes until every handle is gone.
async fn run(batches: apply::Batches, mut queue: mpsc::Receiver<Job>) {
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
        let (size, started) = (batch.len(), std::time::Instant::now());
        batches.apply(batch).await;
        crate::telemetry::batch(
            crate::telemetry::Writer::Membership,
            size,
            started.elapsed(),
        );
    }
}

/// Takes the next batch off the front of `waiting`: at most [`MAX_BATCH`] changes,
/// one per user; either member changes or room deletions, never both (the kind at the
/// front decides, and the first change of the other kind ends the batch). What stays
/// keeps its order.
fn take_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let deletions = matches!(
        waiting.front(),
        Some(Job {
            change: Change::Destroy { .. },
            ..
        })
    );
    let mut users: HashSet<String> = HashSet::new();
    let mut ended = false;
    let mut batch = Vec::new();
    let mut rest = VecDeque::new();
    for job in waiting.drain(..) {
        ended = ended || batch.len() == MAX_BATCH || deletions != job.change.is_destroy();
        // Once a user has a change held back, its later ones are held back too.
        let take = !ended
            && match &job.change {
                Change::Member(m) => users.insert(m.user_id.clone()),
                Change::Destroy { .. } => true,
            };
        if take {
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *waiting = rest;
    batch
}

impl Change {
    fn is_destroy(&self) -> bool {
        matches!(self, Change::Destroy { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: &str, room: &str) -> Job {
        Job {
            change: Change::Member(MemberChange {
                room_id: RoomId::parse(room).unwrap(),
                user_id: user.into(),
                kind: Kind::Leave,
            }),
            answer: tokio::sync::oneshot::channel().0,
        }
    }

    fn destroy(room: &str) -> Job {
        Job {
            change: Change::Destroy {
                room_id: RoomId::parse(room).unwrap(),
                now: UnixMicros(0),
            },
            answer: tokio::sync::oneshot::channel().0,
        }
    }

    /// `user@room` for member changes, `-room` for deletions.
    fn keys(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match &j.change {
                Change::Member(m) => format!("{}@{}", m.user_id, m.room_id),
                Change::Destroy { room_id, .. } => format!("-{room_id}"),
            })
            .collect()
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
        assert_eq!(keys(&batch), ["a@r1", "b@r1", "c@r1"]);
        let rest: Vec<Job> = waiting.drain(..).collect();
        assert_eq!(keys(&rest), ["a@r2", "b@r2"]);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_changes() {
        let mut waiting: VecDeque<Job> = (0..MAX_BATCH + 5)
            .map(|i| job(&format!("u{i}"), "r"))
            .collect();
        assert_eq!(take_batch(&mut waiting).len(), MAX_BATCH);
        assert_eq!(waiting.len(), 5);
        assert_eq!(
            keys(&waiting.make_contiguous()[..1]),
            [format!("u{MAX_BATCH}@r")]
        );
    }

    #[test]
    fn deletions_go_in_batches_of_their_own_in_order() {
        let mut waiting: VecDeque<Job> =
            [job("a", "r1"), destroy("r2"), job("b", "r2"), destroy("r3")]
                .into_iter()
                .collect();
        // Nothing after the deletion joins the first batch, though user b is new.
        assert_eq!(keys(&take_batch(&mut waiting)), ["a@r1"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["-r2"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["b@r2"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["-r3"]);
        assert!(waiting.is_empty());

        let mut waiting: VecDeque<Job> = [destroy("r1"), destroy("r2"), job("a", "r1")]
            .into_iter()
            .collect();
        assert_eq!(keys(&take_batch(&mut waiting)), ["-r1", "-r2"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["a@r1"]);
    }
}
