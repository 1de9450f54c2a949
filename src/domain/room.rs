//! Rooms: their settings, attributes, changes and listing filter, and why a stream
//! stops receiving one.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{RoomId, UnixMicros, check_no_nul};
use crate::error::{Error, Result};

/// Most attributes a room may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, in characters.
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 128;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 4096;

/// A room's free-form metadata, kept sorted so it reads back the same everywhere.
pub type Attributes = BTreeMap<String, String>;

/// Checks attribute keys and values, and that there are at most [`MAX_ATTRIBUTES`]
/// (refused as soon as one too many is seen, so 10,000 cost no more than 65). Keys
/// are identifiers a client shows and matches on: no control characters. Values are
/// free text (a newline is fine), only without NUL.
pub fn check_attributes<'a>(
    field: &str,
    attributes: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    for (count, (key, value)) in attributes.into_iter().enumerate() {
        if count == MAX_ATTRIBUTES {
            return Err(Error::invalid(
                field,
                format!("at most {MAX_ATTRIBUTES} attributes are allowed"),
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid(
                field,
                "keys must not contain control characters",
            ));
        }
        check_no_nul(field, value)?;
        let keys = key.chars().count();
        if keys == 0 || keys > MAX_ATTRIBUTE_KEY_CHARS {
            return Err(Error::invalid(
                field,
                format!("keys must be 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters"),
            ));
        }
        if value.chars().count() > MAX_ATTRIBUTE_VALUE_CHARS {
            return Err(Error::invalid(
                field,
                format!("value of {key:?} must be at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// Which member join/leave events a room emits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemberEvents {
    #[default]
    All,
    None,
}

/// A room's behaviour settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSettings {
    /// 0 means unlimited.
    pub max_members: u32,
    pub member_events: MemberEvents,
    /// Delete the room this long after it becomes empty; `None` keeps it forever.
    pub destroy_when_empty_after: Option<Duration>,
    /// Remove a member with no attached stream for this long; `None` (or zero on the
    /// wire) means membership lasts until LeaveRoom.
    pub presence_timeout: Option<Duration>,
    /// A plain member sends at most one CHAT per this long; `None` (or zero on the
    /// wire): no limit.
    pub slow_mode_interval: Option<Duration>,
    /// Only the owner, moderators and admins may send.
    pub muted: bool,
}

/// A room as stored, with live presence counts filled in by [`crate::rooms::Rooms`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub attributes: Attributes,
    pub owner_id: String,
    pub settings: RoomSettings,
    pub member_count: u32,
    pub online_count: u32,
    pub last_seq: u64,
    pub version: u64,
    pub created_at: UnixMicros,
    pub updated_at: UnixMicros,
}

/// What a new room starts with.
#[derive(Clone, Debug)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub attributes: Attributes,
    pub settings: RoomSettings,
}

/// A change to a room; `None` and empty fields leave things as they are.
#[derive(Clone, Debug, Default)]
pub struct RoomPatch {
    pub name: Option<String>,
    pub settings: Option<RoomSettings>,
    pub set_attributes: Attributes,
    pub remove_attribute_keys: Vec<String>,
    pub expected_version: Option<u64>,
}

impl RoomPatch {
    /// Whether the patch touches what only the owner or an admin may change.
    pub fn needs_owner(&self) -> bool {
        self.name.is_some() || self.settings.is_some()
    }

    fn is_empty(&self) -> bool {
        !self.needs_owner()
            && self.set_attributes.is_empty()
            && self.remove_attribute_keys.is_empty()
    }

    /// Applies the patch to `room` (in place), checking the result's attribute count.
    pub(crate) fn apply(self, room: &mut Room) -> Result<bool> {
        if self.is_empty() {
            return Ok(false);
        }
        if let Some(name) = self.name {
            room.name = name;
        }
        if let Some(settings) = self.settings {
            room.settings = settings;
        }
        for key in &self.remove_attribute_keys {
            room.attributes.remove(key);
        }
        room.attributes.extend(self.set_attributes);
        if room.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid(
                "set_attributes",
                format!("the room would have more than {MAX_ATTRIBUTES} attributes"),
            ));
        }
        Ok(true)
    }
}

/// Which rooms ListRooms returns.
#[derive(Clone, Debug, Default)]
pub struct RoomFilter {
    /// Exact name; empty: any.
    pub name: String,
    /// Name prefix; empty: any.
    pub name_prefix: String,
}

/// Why a stream stops receiving a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachReason {
    Requested,
    Left,
    Switched,
    RoomDeleted,
    PresenceTimeout,
    /// Removed by a kick or a ban.
    Kicked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_limits() {
        let mut attrs = Attributes::new();
        for i in 0..64 {
            attrs.insert(format!("k{i}"), "v".into());
        }
        assert!(check_attributes("attributes", &attrs).is_ok());
        attrs.insert("one-more".into(), "v".into());
        assert!(check_attributes("attributes", &attrs).is_err());
        let empty_key = Attributes::from([(String::new(), "v".into())]);
        assert!(check_attributes("attributes", &empty_key).is_err());
        let control_key = Attributes::from([("k\n".to_string(), "v".into())]);
        assert!(check_attributes("attributes", &control_key).is_err());
        let newline_value = Attributes::from([("k".to_string(), "line\nline".into())]);
        assert!(check_attributes("attributes", &newline_value).is_ok());
    }
}
