//! Members of rooms.

use super::UnixMicros;

/// A member's role in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Member,
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
