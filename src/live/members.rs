//! Member join/leave events, coalesced: changes within a hub's window go out as one
//! `MembersJoined` / `MembersLeft` frame per run of the same kind (leaves by the same
//! remover: a kick names who kicked).

use crate::domain::{Member, RoomId};
use crate::proto::Frame;
use crate::proto::encode::event;
use crate::proto::pb;

#[derive(Default)]
pub(super) struct MemberChanges {
    pub changes: Vec<MemberChange>,
    pub flush_scheduled: bool,
}

pub(super) struct MemberChange {
    pub joined: bool,
    pub member: Member,
    pub member_count: u32,
    pub suppressed: bool,
    /// A leave that was a kick or a ban: who did it.
    pub kicked_by: Option<String>,
}

/// A run of joins or of leaves (by the same remover, if any), announced as one
/// frame.
#[derive(Debug, PartialEq)]
pub(super) struct Run {
    joined: bool,
    members: Vec<pb::Member>,
    member_count: u32,
    kicked_by: Option<String>,
}

/// Coalesces member changes, in order, into runs of joins or leaves (suppressed ones
/// are left out).
pub(super) fn coalesce(changes: Vec<MemberChange>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for change in changes.into_iter().filter(|c| !c.suppressed) {
        match runs.last_mut() {
            // Concurrent changes are announced after their commits, in no set order,
            // so a run reports the count after all of them: a run of joins only adds
            // (its largest count), a run of leaves only removes (its smallest).
            Some(run) if run.joined == change.joined && run.kicked_by == change.kicked_by => {
                run.members.push(change.member.into());
                run.member_count = if change.joined {
                    run.member_count.max(change.member_count)
                } else {
                    run.member_count.min(change.member_count)
                };
            }
            _ => runs.push(Run {
                joined: change.joined,
                members: vec![change.member.into()],
                member_count: change.member_count,
                kicked_by: change.kicked_by,
            }),
        }
    }
    runs
}

/// The `MembersJoined` / `MembersLeft` frame of each run.
pub(super) fn frames(room_id: &RoomId, runs: Vec<Run>) -> impl Iterator<Item = Frame> + '_ {
    runs.into_iter().map(move |run| {
        let Run {
            joined,
            members,
            member_count,
            kicked_by,
        } = run;
        Frame::event(event::members_changed(
            room_id,
            joined,
            members,
            member_count,
            kicked_by.unwrap_or_default(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, UnixMicros};

    fn change(user: &str, joined: bool, member_count: u32, suppressed: bool) -> MemberChange {
        MemberChange {
            kicked_by: None,
            joined,
            member: Member {
                user_id: user.into(),
                display_name: String::new(),
                role: Role::Member,
                online: false,
                joined_at: UnixMicros(0),
            },
            member_count,
            suppressed,
        }
    }

    fn users(run: &Run) -> Vec<&str> {
        run.members.iter().map(|m| m.user_id.as_str()).collect()
    }

    #[test]
    fn changes_coalesce_into_runs_with_the_count_after_them() {
        let runs = coalesce(vec![
            change("a", true, 3, false),
            change("b", true, 2, false), // committed before a, announced after
            change("c", false, 1, false),
            change("d", false, 2, false),
            change("e", true, 2, false),
        ]);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            (runs[0].joined, users(&runs[0]), runs[0].member_count),
            (true, vec!["a", "b"], 3)
        );
        assert_eq!(
            (runs[1].joined, users(&runs[1]), runs[1].member_count),
            (false, vec!["c", "d"], 1)
        );
        assert_eq!(
            (runs[2].joined, users(&runs[2]), runs[2].member_count),
            (true, vec!["e"], 2)
        );
    }

    #[test]
    fn kicks_by_one_remover_make_a_run_of_their_own() {
        let kicked = |user, by: &str, count| MemberChange {
            kicked_by: Some(by.into()),
            ..change(user, false, count, false)
        };
        let runs = coalesce(vec![
            change("a", false, 4, false),
            kicked("b", "mod", 3),
            kicked("c", "mod", 2),
            kicked("d", "owner", 1),
        ]);
        let summary: Vec<_> = runs
            .iter()
            .map(|r| (users(r), r.kicked_by.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (vec!["a"], None),
                (vec!["b", "c"], Some("mod")),
                (vec!["d"], Some("owner")),
            ]
        );
    }

    #[test]
    fn suppressed_changes_are_left_out() {
        let runs = coalesce(vec![
            change("a", true, 1, true),
            change("b", false, 0, true),
        ]);
        assert!(runs.is_empty());
    }
}
