//! Identifiers: rooms, users, and who is calling.

use std::fmt;

use crate::error::{Error, Result};

/// Longest room id, in bytes (ids are ASCII).
pub const MAX_ROOM_ID_LEN: usize = 128;
/// Longest user id, in bytes (ids are visible ASCII).
pub const MAX_USER_ID_LEN: usize = 128;

/// A room's id: 1–128 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    /// Validates a client-supplied id. The error names the field `room_id`; use
    /// [`Error::in_field`] where the id arrives under another name.
    pub fn parse(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::invalid("room_id", "must not be empty"));
        }
        if id.len() > MAX_ROOM_ID_LEN {
            return Err(Error::invalid(
                "room_id",
                format!("must be at most {MAX_ROOM_ID_LEN} characters"),
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(Error::invalid(
                "room_id",
                format!("may contain only A-Z a-z 0-9 . _ : - (found {bad:?})"),
            ));
        }
        Ok(RoomId(id))
    }

    /// A fresh server-made id (a UUIDv7, so ids sort by creation time).
    pub fn generate() -> Self {
        RoomId(uuid::Uuid::now_v7().to_string())
    }

    /// An id read back from the store, which only ever holds validated ids.
    pub(crate) fn from_stored(id: String) -> Self {
        RoomId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's id: 1–128 visible ASCII characters (it travels in request metadata).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_USER_ID_LEN {
            return Err(Error::invalid(
                "user_id",
                format!("must be 1 to {MAX_USER_ID_LEN} characters"),
            ));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "user_id",
                "must be visible ASCII characters without spaces",
            ));
        }
        Ok(UserId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is making a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: UserId,
    /// Admins may act in any room without being a member.
    pub admin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_follow_the_contract() {
        assert!(RoomId::parse("lobby.main:1_a-b").is_ok());
        assert!(RoomId::parse("a".repeat(128)).is_ok());
        assert!(RoomId::parse("a".repeat(129)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("has space").is_err());
        assert!(RoomId::parse("ünïcode").is_err());
        assert!(RoomId::parse("slash/no").is_err());
    }

    #[test]
    fn generated_room_ids_are_valid() {
        let id = RoomId::generate();
        assert_eq!(RoomId::parse(id.as_str()).unwrap(), id);
    }
}
