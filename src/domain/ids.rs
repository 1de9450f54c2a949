//! Identifiers: rooms, users, and who is calling.

use std::fmt;
use std::sync::Arc;

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

/// A move from one room to another (a switch): two different rooms, checked once,
/// here, so that nothing past the request's decoding has to ask again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMove {
    from: RoomId,
    to: RoomId,
}

impl RoomMove {
    /// Fails, naming the field `to_room_id`, when both are the same room.
    pub fn new(from: RoomId, to: RoomId) -> Result<Self> {
        if from == to {
            return Err(Error::invalid(
                "to_room_id",
                "must differ from from_room_id",
            ));
        }
        Ok(RoomMove { from, to })
    }

    pub fn from(&self) -> &RoomId {
        &self.from
    }

    pub fn to(&self) -> &RoomId {
        &self.to
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
    /// What the caller's token says beyond who it is; `None` without one. Shared:
    /// every stream keeps its caller, and clones it per attach.
    pub grants: Option<Arc<Grants>>,
    /// When the caller's token expires (Unix seconds, its `exp`); `None` without one.
    /// A stream ends then, unless it presented a fresh one.
    pub expires_at: Option<u64>,
}

/// What a token grants beyond an identity.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// The display name to use where a request leaves it empty (`name`).
    pub name: Option<String>,
    /// The rooms the token is limited to (`rooms`); `None`: any room.
    pub rooms: Option<RoomScope>,
}

impl Caller {
    /// A caller with no token: any room, no default name.
    pub fn new(user_id: UserId, admin: bool) -> Self {
        Caller {
            user_id,
            admin,
            grants: None,
            expires_at: None,
        }
    }

    /// The display name for a join: the requested one, or the token's when the
    /// request leaves it empty.
    pub fn display_name(&self, requested: String) -> String {
        match self.grants.as_ref().and_then(|g| g.name.as_ref()) {
            Some(name) if requested.is_empty() => name.clone(),
            _ => requested,
        }
    }

    /// Whether the caller's token lets it into `room` (no token limit: any room).
    pub fn may_enter(&self, room: &RoomId) -> bool {
        self.grants
            .as_ref()
            .and_then(|g| g.rooms.as_ref())
            .is_none_or(|scope| scope.allows(room))
    }
}

/// Rooms a token is limited to: exact ids, and prefixes (written with a trailing
/// `*`: `live-42*` allows `live-42` and `live-42.chat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomScope {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl RoomScope {
    /// Parses the patterns of a token's `rooms` claim. Exact ids must be valid room
    /// ids; a prefix is any text before one trailing `*` (empty: every room).
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        let mut scope = RoomScope {
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        for pattern in patterns {
            let pattern = pattern.as_ref();
            match pattern.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => scope.prefixes.push(prefix.to_string()),
                _ => scope
                    .exact
                    .push(RoomId::parse(pattern).map_err(|e| e.in_field("rooms"))?.0),
            }
        }
        Ok(scope)
    }

    /// Whether `room` is one of the scope's rooms.
    pub fn allows(&self, room: &RoomId) -> bool {
        let id = room.as_str();
        self.exact.iter().any(|e| e == id) || self.prefixes.iter().any(|p| id.starts_with(p))
    }
}

/// The patterns as a token's `rooms` claim writes them, comma-separated.
impl std::fmt::Display for RoomScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let exact = self.exact.iter().map(|id| id.to_string());
        let prefixes = self.prefixes.iter().map(|p| format!("{p}*"));
        let patterns: Vec<String> = exact.chain(prefixes).collect();
        if patterns.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&patterns.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_scopes_allow_exact_ids_and_prefixes() {
        let scope = RoomScope::parse(&["lobby", "live-42*"]).unwrap();
        let allows = |id: &str| scope.allows(&RoomId::parse(id).unwrap());
        assert!(allows("lobby"));
        assert!(!allows("lobby2"), "an exact id is not a prefix");
        assert!(allows("live-42") && allows("live-42.chat"));
        assert!(!allows("live-4") && !allows("other"));
        assert!(
            RoomScope::parse(&["*"])
                .unwrap()
                .allows(&RoomId::parse("any").unwrap())
        );
        assert!(RoomScope::parse(&["a*b*"]).is_err(), "one trailing * only");
        assert!(RoomScope::parse(&["bad id"]).is_err());
        assert!(RoomScope::parse::<&str>(&[]).unwrap().exact.is_empty());
        let nothing = RoomScope::parse::<&str>(&[]).unwrap();
        assert!(
            !nothing.allows(&RoomId::parse("lobby").unwrap()),
            "an empty claim allows none"
        );
    }

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
