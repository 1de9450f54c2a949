//! What a room's hub heard of mutes, for the streams that send without asking the
//! store: the latest word on each user since the hub began ([`MuteLog`], bounded).
//! A stream reads it with the room's state as `hub::MuteNews`.

use std::collections::HashMap;

use crate::domain::MutedUntil;

/// Most users whose mutes a hub remembers; past it the hub forgets them and answers
/// for everyone that a mute may hold (see `MuteLog`).
pub const MUTE_LOG_USERS: usize = 4096;

/// Each user's latest mute (`None`: lifted) heard since a hub began. Bounded: a
/// moderator may mute users without end (rate limited only when `--room-change-rate`
/// is set), and every live hub would remember them all. Past [`MUTE_LOG_USERS`] it
/// forgets them and says of every user that a mute may hold, so their streams ask
/// the store before each send of a kind no writer checks: slower, never wrong.
#[derive(Debug, Default)]
pub(super) struct MuteLog {
    latest: HashMap<String, Option<MutedUntil>>,
    overflowed: bool,
}

impl MuteLog {
    pub(super) fn record(&mut self, user: &str, mute: Option<MutedUntil>) {
        if self.overflowed {
            return;
        }
        if self.latest.len() >= MUTE_LOG_USERS && !self.latest.contains_key(user) {
            self.latest = HashMap::new();
            self.overflowed = true;
            return;
        }
        self.latest.insert(user.to_string(), mute);
    }

    pub(super) fn latest(&self, user: &str) -> Option<Option<MutedUntil>> {
        if self.overflowed {
            return Some(Some(MutedUntil(None)));
        }
        self.latest.get(user).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UnixMicros;

    /// The mute log keeps each user's latest word up to its bound; past it, it
    /// forgets them all and says of everyone that a mute may hold.
    #[test]
    fn the_mute_log_is_bounded_and_errs_towards_asking_the_store() {
        let mut log = MuteLog::default();
        let until = Some(MutedUntil(Some(UnixMicros(5))));
        log.record("bob", until);
        assert_eq!(log.latest("bob"), Some(until));
        log.record("bob", None);
        assert_eq!(log.latest("bob"), Some(None));
        assert_eq!(log.latest("carol"), None);
        for i in 1..MUTE_LOG_USERS {
            log.record(&format!("user{i}"), None);
        }
        assert_eq!(log.latest.len(), MUTE_LOG_USERS);
        log.record("bob", until);
        assert!(!log.overflowed, "a user already there takes no room");
        log.record("one-too-many", None);
        assert!(log.overflowed && log.latest.is_empty());
        for user in ["bob", "carol", "one-too-many"] {
            assert_eq!(log.latest(user), Some(Some(MutedUntil(None))), "{user}");
        }
    }
}
