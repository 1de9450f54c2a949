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

/// A moderator's sanction on a user in a room (a ban: kept out; a mute: kept from
/// sending), until a time or until lifted.
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
    /// Sending to the room, every kind of message (MuteMember).
    Mute,
}

/// A mute on a user in a room, as the send rules read it: until a time, or until
/// lifted (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutedUntil(pub Option<UnixMicros>);

impl MutedUntil {
    /// Whether it still holds at `now`.
    pub fn holds_at(self, now: UnixMicros) -> bool {
        self.0.is_none_or(|until| until > now)
    }
}

/// A sender as the message writer reads them, in the transaction that stores their
/// message: their member row, and what mutes and slow mode need.
#[derive(Clone, Debug)]
pub struct Speaker {
    pub member: Member,
    /// The room's `slow_mode_interval`.
    pub slow_mode_interval: Option<std::time::Duration>,
    /// Their last CHAT that slow mode counted.
    pub last_chat_at: Option<UnixMicros>,
    /// The room's `muted` setting.
    pub room_muted: bool,
    /// Their mute in the room, expired or not (`None`: none stored).
    pub mute: Option<MutedUntil>,
}

/// A user kept out of a room (BanMember).
pub type Ban = Sanction;

/// A user kept from sending to a room (MuteMember).
pub type Mute = Sanction;
