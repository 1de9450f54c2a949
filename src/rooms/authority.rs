//! Who may do what to a room's members, decided once: the table [`may`] and the
//! ranks of [`Standing`], applied by [`judge`]; and who may send where mutes hold
//! ([`check_voice`]). Pure — it reads nothing and knows
//! neither the store nor the roster — so the moderation handle and the membership
//! writer (which judges kicks and bans against the rows its batch locked) both
//! import it, and neither imports the other for it.

use crate::domain::{MutedUntil, Role, RoomId, UnixMicros};
use crate::error::{Error, Result};

/// Where a caller stands in a room, weakest first: each outranks those before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Not a member.
    Outsider,
    Member,
    Moderator,
    Owner,
    /// An admin (by `--admin-users` or by token), member or not.
    Admin,
}

impl Standing {
    /// The standing of a caller who is an admin or not, with the role of their member
    /// row in the room (`None`: not a member).
    pub fn of(admin: bool, role: Option<Role>) -> Standing {
        match (admin, role) {
            (true, _) => Standing::Admin,
            (false, None) => Standing::Outsider,
            (false, Some(Role::Owner)) => Standing::Owner,
            (false, Some(Role::Moderator)) => Standing::Moderator,
            (false, Some(Role::Member)) => Standing::Member,
        }
    }
}

/// What may be done to a room's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make a member a moderator, or a moderator a member again.
    SetRole,
    /// Make another member the owner.
    TransferOwnership,
    /// Remove a member.
    Kick,
    /// Remove a user (if a member) and keep them out.
    Ban,
    /// Let a banned user in again.
    Unban,
    /// Read who is banned.
    ListBans,
    /// Keep a user (a member or not) from sending.
    Mute,
    /// Let a muted user send again.
    Unmute,
    /// Read who is muted.
    ListMutes,
}

impl Action {
    /// Whether the action is done to someone, who must rank below the doer.
    fn aims_at_a_member(self) -> bool {
        matches!(self, Action::Kick | Action::Ban | Action::Mute)
    }
}

/// Who may do what: the one table (the README's "Moderation" mirrors it).
pub fn may(standing: Standing, action: Action) -> bool {
    use Action::*;
    use Standing::*;
    match (standing, action) {
        (Admin | Owner, _) => true,
        (Moderator, Kick | Ban | Unban | ListBans | Mute | Unmute | ListMutes) => true,
        (Moderator, SetRole | TransferOwnership) => false,
        (Member | Outsider, _) => false,
    }
}

/// Whether `actor` may do `action` in `room_id`, to `user_id` whose role there is
/// `target` (`None`: not a member) — the table, then the ranks: a kick or a ban
/// reaches only those ranked below the doer (admins anyone, the owner moderators and
/// members, moderators members). Every refusal is PERMISSION_DENIED with its reason.
pub fn judge(
    actor: Standing,
    action: Action,
    target: Option<Role>,
    room_id: &RoomId,
    user_id: &str,
) -> Result<()> {
    let room = || room_id.to_string();
    if !may(actor, action) {
        return Err(match actor {
            Standing::Outsider => Error::NotAMember { room_id: room() },
            _ if may(Standing::Moderator, action) => Error::NotAModerator { room_id: room() },
            _ => Error::NotRoomOwner { room_id: room() },
        });
    }
    if action.aims_at_a_member() && Standing::of(false, target) >= actor {
        return Err(Error::Outranked {
            room_id: room(),
            user_id: user_id.to_string(),
        });
    }
    Ok(())
}

/// Whether a sender standing `standing` in a room may send there at `now`, the room
/// muted as a whole or not, under their own `mute` if any (expired or not): admins
/// always; the owner and moderators unless muted themselves; anyone else only while
/// neither holds. Refused PERMISSION_DENIED MUTED, saying which mute.
pub fn check_voice(
    standing: Standing,
    room_muted: bool,
    mute: Option<MutedUntil>,
    now: UnixMicros,
    room_id: &RoomId,
) -> Result<()> {
    if standing == Standing::Admin {
        return Ok(());
    }
    if let Some(mute) = mute.filter(|m| m.holds_at(now)) {
        return Err(Error::Muted {
            room_id: room_id.to_string(),
            room_wide: false,
            expires_at_us: mute.0.map(|t| t.0),
        });
    }
    if room_muted && standing < Standing::Moderator {
        return Err(Error::Muted {
            room_id: room_id.to_string(),
            room_wide: true,
            expires_at_us: None,
        });
    }
    Ok(())
}

/// Whether a caller standing `standing` in a room may recall or edit the message
/// at `seq` there, sent at `sent_at` by them (`own`) or by someone else, at `now`:
/// the owner, moderators and admins always; its sender within `window` of sending
/// it (RECALL_WINDOW_PASSED after); no one else (NOT_A_MODERATOR).
pub fn check_amend(
    standing: Standing,
    own: bool,
    sent_at: UnixMicros,
    now: UnixMicros,
    window: std::time::Duration,
    room_id: &RoomId,
    seq: u64,
) -> Result<()> {
    if standing >= Standing::Moderator {
        return Ok(());
    }
    if !own {
        return Err(Error::NotAModerator {
            room_id: room_id.to_string(),
        });
    }
    if now < sent_at.plus(window) {
        return Ok(());
    }
    Err(Error::RecallWindowPassed {
        room_id: room_id.to_string(),
        seq,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(actor: Standing, action: Action, target: Option<Role>) -> &'static str {
        let room = RoomId::parse("r").unwrap();
        match judge(actor, action, target, &room, "u") {
            Ok(()) => "ok",
            Err(Error::NotAMember { .. }) => "NOT_A_MEMBER",
            Err(Error::NotAModerator { .. }) => "NOT_A_MODERATOR",
            Err(Error::NotRoomOwner { .. }) => "NOT_ROOM_OWNER",
            Err(Error::Outranked { .. }) => "OUTRANKED",
            Err(other) => panic!("unexpected: {other}"),
        }
    }

    /// Mutes: the table and the ranks as kicks'; admins always speak, the owner and
    /// moderators through a room-wide mute but not their own.
    #[test]
    fn mutes_reach_down_and_hold_by_standing() {
        use Role::*;
        assert_eq!(
            judged(Standing::Moderator, Action::Mute, Some(Member)),
            "ok"
        );
        assert_eq!(
            judged(Standing::Moderator, Action::Mute, Some(Moderator)),
            "OUTRANKED"
        );
        assert_eq!(judged(Standing::Owner, Action::Mute, Some(Moderator)), "ok");
        assert_eq!(
            judged(Standing::Member, Action::Unmute, None),
            "NOT_A_MODERATOR"
        );
        assert_eq!(judged(Standing::Moderator, Action::ListMutes, None), "ok");

        let room = RoomId::parse("r").unwrap();
        let now = UnixMicros(1_000);
        let lifted = Some(MutedUntil(None));
        let expired = Some(MutedUntil(Some(UnixMicros(1_000))));
        let voice = |standing, room_muted, mute| match check_voice(
            standing, room_muted, mute, now, &room,
        ) {
            Ok(()) => "ok",
            Err(Error::Muted {
                room_wide: true, ..
            }) => "room",
            Err(Error::Muted {
                room_wide: false,
                expires_at_us: None,
                ..
            }) => "member",
            Err(other) => panic!("unexpected: {other}"),
        };
        assert_eq!(voice(Standing::Member, false, None), "ok");
        assert_eq!(voice(Standing::Member, false, expired), "ok");
        assert_eq!(voice(Standing::Member, false, lifted), "member");
        assert_eq!(voice(Standing::Member, true, None), "room");
        assert_eq!(voice(Standing::Outsider, true, None), "room");
        assert_eq!(voice(Standing::Moderator, true, None), "ok");
        assert_eq!(voice(Standing::Owner, true, None), "ok");
        assert_eq!(voice(Standing::Moderator, true, lifted), "member");
        assert_eq!(voice(Standing::Owner, false, lifted), "member");
        assert_eq!(voice(Standing::Admin, true, lifted), "ok");
    }

    /// Recall and edit: moderators and up always, the sender within the window.
    #[test]
    fn amendments_by_standing_and_window() {
        let room = RoomId::parse("r").unwrap();
        let window = std::time::Duration::from_secs(120);
        let sent = UnixMicros(0);
        let amend = |standing, own, now_s: i64| match check_amend(
            standing,
            own,
            sent,
            UnixMicros(now_s * 1_000_000),
            window,
            &room,
            7,
        ) {
            Ok(()) => "ok",
            Err(Error::NotAModerator { .. }) => "NOT_A_MODERATOR",
            Err(Error::RecallWindowPassed { .. }) => "RECALL_WINDOW_PASSED",
            Err(other) => panic!("unexpected: {other}"),
        };
        assert_eq!(amend(Standing::Member, true, 119), "ok");
        assert_eq!(amend(Standing::Member, true, 120), "RECALL_WINDOW_PASSED");
        assert_eq!(amend(Standing::Member, false, 1), "NOT_A_MODERATOR");
        assert_eq!(amend(Standing::Outsider, false, 1), "NOT_A_MODERATOR");
        for standing in [Standing::Moderator, Standing::Owner, Standing::Admin] {
            assert_eq!(amend(standing, false, 10_000), "ok");
            assert_eq!(amend(standing, true, 10_000), "ok");
        }
        let never = check_amend(
            Standing::Member,
            true,
            sent,
            sent,
            std::time::Duration::ZERO,
            &room,
            7,
        );
        assert!(matches!(never, Err(Error::RecallWindowPassed { .. })));
    }

    /// The table: only the owner and admins manage roles and ownership.
    #[test]
    fn only_owners_and_admins_manage_roles() {
        for action in [Action::SetRole, Action::TransferOwnership] {
            assert!(may(Standing::Admin, action));
            assert!(may(Standing::Owner, action));
            assert!(!may(Standing::Moderator, action));
            assert!(!may(Standing::Member, action));
            assert!(!may(Standing::Outsider, action));
            assert_eq!(judged(Standing::Moderator, action, None), "NOT_ROOM_OWNER");
            assert_eq!(judged(Standing::Outsider, action, None), "NOT_A_MEMBER");
        }
    }

    /// Kicks and bans reach only those ranked below the doer; a member is told it
    /// takes a moderator.
    #[test]
    fn kicks_and_bans_reach_down_only() {
        use Role::*;
        for action in [Action::Kick, Action::Ban] {
            let cases = [
                (Standing::Admin, Some(Owner), "ok"),
                (Standing::Owner, Some(Moderator), "ok"),
                (Standing::Owner, Some(Owner), "OUTRANKED"),
                (Standing::Moderator, Some(Member), "ok"),
                (Standing::Moderator, None, "ok"),
                (Standing::Moderator, Some(Moderator), "OUTRANKED"),
                (Standing::Moderator, Some(Owner), "OUTRANKED"),
                (Standing::Member, Some(Member), "NOT_A_MODERATOR"),
                (Standing::Outsider, Some(Member), "NOT_A_MEMBER"),
            ];
            for (actor, target, expected) in cases {
                assert_eq!(
                    judged(actor, action, target),
                    expected,
                    "{actor:?} {action:?} {target:?}"
                );
            }
        }
        assert_eq!(judged(Standing::Moderator, Action::Unban, None), "ok");
        assert_eq!(
            judged(Standing::Member, Action::ListBans, None),
            "NOT_A_MODERATOR"
        );
    }
}
