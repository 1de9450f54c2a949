//! What a batch of membership changes tells the room feed (WatchRooms): each
//! change's events in the order the changes were applied, written last in the
//! batch's transaction (`Tx::append_feed`).

use super::{Joined, Outcome, Removed, Switched};
use crate::domain::{FeedEntry, FeedKind, Member, Room};
use crate::error::Result;

/// The events of a batch's outcomes (a failed change made none).
pub(super) fn entries(outcomes: &[Result<Outcome>]) -> Vec<FeedEntry> {
    let mut entries = Vec::new();
    for outcome in outcomes.iter().flatten() {
        match outcome {
            Outcome::Joined(Joined {
                room,
                created,
                member,
            }) => {
                if *created {
                    entries.push(FeedEntry::member(
                        &room.id,
                        FeedKind::Created,
                        &room.owner_id,
                        "",
                    ));
                }
                if let Some(m) = member {
                    joined(&mut entries, room, m);
                }
            }
            Outcome::Left {
                room,
                member: Some(m),
                ..
            } => left(&mut entries, room, FeedKind::MemberLeft, &m.user_id, ""),
            Outcome::Removed {
                removed: Removed { room, member, ban },
                by,
            } => {
                let kind = match ban {
                    Some(_) => FeedKind::MemberBanned,
                    None => FeedKind::MemberKicked,
                };
                let user = member
                    .as_ref()
                    .map(|m| m.user_id.as_str())
                    .or(ban.as_ref().map(|b| b.user_id.as_str()));
                match (member, user) {
                    (Some(_), Some(user)) => left(&mut entries, room, kind, user, by),
                    // A ban of a user who was not a member: nobody left.
                    (None, Some(user)) => {
                        entries.push(FeedEntry::member(&room.id, kind, user, by));
                    }
                    (_, None) => {}
                }
            }
            Outcome::Switched(moved) => {
                let Switched {
                    from,
                    left: member,
                    to,
                    joined: added,
                } = &**moved;
                left(
                    &mut entries,
                    from,
                    FeedKind::MemberLeft,
                    &member.user_id,
                    "",
                );
                if let Some(m) = added {
                    joined(&mut entries, to, m);
                }
            }
            Outcome::Destroyed(_) | Outcome::Left { member: None, .. } => {}
        }
    }
    entries
}

/// A member joined `room` (as the join left it): it is occupied if they are its one
/// member.
fn joined(entries: &mut Vec<FeedEntry>, room: &Room, member: &Member) {
    entries.push(
        FeedEntry::member(&room.id, FeedKind::MemberJoined, &member.user_id, "")
            .with_role(member.role),
    );
    if room.member_count == 1 {
        entries.push(FeedEntry::room(&room.id, FeedKind::Occupied, ""));
    }
}

/// A member left `room` (as the leave left it) as `kind` says: it is empty if they
/// were its last.
fn left(entries: &mut Vec<FeedEntry>, room: &Room, kind: FeedKind, user: &str, by: &str) {
    entries.push(FeedEntry::member(&room.id, kind, user, by));
    if room.member_count == 0 {
        entries.push(FeedEntry::room(&room.id, FeedKind::Empty, ""));
    }
}
