//! Members of rooms.

use super::UnixMicros;

/// A member's role in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Member,
    /// A member the owner (or an admin) trusts to keep order.
    Moderator,
}

/// A member of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub display_name: String,
    pub role: Role,
    pub online: bool,
    pub joined_at: UnixMicros,
}

/// A moderator's sanction on a user in a room (a ban: kept out), until a time or
/// until lifted. Mutes are to be the second kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sanction {
    /// Who is sanctioned.
    pub user_id: String,
    /// Who sanctioned them.
    pub by: String,
    /// When.
    pub at: UnixMicros,
    /// When it ends by itself; `None`: when lifted.
    pub expires_at: Option<UnixMicros>,
}

/// What a sanction keeps a user from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanctionKind {
    /// The room: joining, entering, switching in, attaching (BanMember).
    Ban,
}

/// A sender as the message writer reads them, in the transaction that stores their
/// message: their member row, and what slow mode needs.
#[derive(Clone, Debug)]
pub struct Speaker {
    pub member: Member,
    /// The room's `slow_mode_interval`.
    pub slow_mode_interval: Option<std::time::Duration>,
    /// Their last CHAT that slow mode counted.
    pub last_chat_at: Option<UnixMicros>,
}

/// A user kept out of a room (BanMember).
pub type Ban = Sanction;
