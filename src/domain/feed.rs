//! The room feed: what happened to rooms, across all of them, in one order — what a
//! backend watches (WatchRooms) to keep its own state without polling.

use super::{Role, RoomId, UnixMicros};

/// What happened to a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedKind {
    Created,
    Updated,
    Deleted,
    /// The room got its first member.
    Occupied,
    /// The room's last member left.
    Empty,
    MemberJoined,
    MemberLeft,
    MemberKicked,
    MemberBanned,
    RoleChanged,
}

impl FeedKind {
    /// Every kind, in the order of their numbers (`number`).
    pub const ALL: [FeedKind; 10] = [
        FeedKind::Created,
        FeedKind::Updated,
        FeedKind::Deleted,
        FeedKind::Occupied,
        FeedKind::Empty,
        FeedKind::MemberJoined,
        FeedKind::MemberLeft,
        FeedKind::MemberKicked,
        FeedKind::MemberBanned,
        FeedKind::RoleChanged,
    ];

    /// The kind's number, as stored and as the contract numbers it (1 to 10).
    pub fn number(self) -> i32 {
        match self {
            FeedKind::Created => 1,
            FeedKind::Updated => 2,
            FeedKind::Deleted => 3,
            FeedKind::Occupied => 4,
            FeedKind::Empty => 5,
            FeedKind::MemberJoined => 6,
            FeedKind::MemberLeft => 7,
            FeedKind::MemberKicked => 8,
            FeedKind::MemberBanned => 9,
            FeedKind::RoleChanged => 10,
        }
    }

    /// The kind numbered `number`.
    pub fn from_number(number: i64) -> Option<FeedKind> {
        FeedKind::ALL
            .into_iter()
            .find(|k| i64::from(k.number()) == number)
    }
}

/// An event as a transaction writes it (the store gives it its position and time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub room_id: RoomId,
    pub kind: FeedKind,
    /// The member concerned (the owner, for `Created`); empty for other room events.
    pub user_id: String,
    /// Who did it, when someone other than `user_id` did; empty otherwise.
    pub by: String,
    /// The member's role, for `MemberJoined` and `RoleChanged`.
    pub role: Option<Role>,
}

impl FeedEntry {
    /// An event about the room itself, done by `by` (empty: by the server).
    pub fn room(room_id: &RoomId, kind: FeedKind, by: &str) -> FeedEntry {
        FeedEntry {
            room_id: room_id.clone(),
            kind,
            user_id: String::new(),
            by: by.to_string(),
            role: None,
        }
    }

    /// An event about `user_id`, a member (or a banned user), done by `by`.
    pub fn member(room_id: &RoomId, kind: FeedKind, user_id: &str, by: &str) -> FeedEntry {
        FeedEntry {
            room_id: room_id.clone(),
            kind,
            user_id: user_id.to_string(),
            by: by.to_string(),
            role: None,
        }
    }

    /// This event, with the member's role.
    pub fn with_role(self, role: Role) -> FeedEntry {
        FeedEntry {
            role: Some(role),
            ..self
        }
    }
}

/// An event as the feed keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEvent {
    /// 1, 2, 3, … across all rooms, in the order the events were committed.
    pub position: u64,
    pub at: UnixMicros,
    pub entry: FeedEntry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_number_and_reads_back() {
        for kind in FeedKind::ALL {
            assert_eq!(FeedKind::from_number(i64::from(kind.number())), Some(kind));
        }
        let mut numbers: Vec<i32> = FeedKind::ALL.iter().map(|k| k.number()).collect();
        numbers.dedup();
        assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
        assert_eq!(FeedKind::from_number(0), None);
    }
}
