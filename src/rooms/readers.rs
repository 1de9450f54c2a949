//! Who may receive a room: the check every history read, catch-up page, send outside
//! a stream and stream attach makes — a member, under their display name, or an
//! admin, under their user id. Anyone else is refused NOT_A_MEMBER, or BANNED if a
//! ban keeps them out.

use super::authority::{Standing, check_voice};
use super::{check_in_token, not_found, sender_name};
use crate::domain::{Caller, Clock, MutedUntil, Room, RoomId, SanctionKind};
use crate::error::{Error, Result};
use crate::store::Store;

/// The read-access handle.
#[derive(Clone)]
pub struct Readers {
    pub(super) store: Store,
    /// Which bans are in force.
    pub(super) clock: Clock,
}

impl Readers {
    pub(super) fn new(store: &Store, clock: &Clock) -> Readers {
        Readers {
            store: store.clone(),
            clock: clock.clone(),
        }
    }
}

/// What a caller who may receive a room reads of it in one statement.
#[derive(Clone, Debug)]
pub struct Reading {
    pub room: Room,
    /// The name the caller goes by there.
    pub sender_name: String,
    /// The seq the room's kept history starts from.
    pub history_from: u64,
    /// The caller's standing there.
    pub standing: Standing,
    /// The caller's mute there, expired or not.
    pub mute: Option<MutedUntil>,
}

impl Reading {
    /// Fails MUTED if a mute keeps the caller from sending to the room now.
    pub fn check_voice(&self, now: crate::domain::UnixMicros) -> Result<()> {
        let room = &self.room;
        check_voice(self.standing, room.settings.muted, self.mute, now, &room.id)
    }
}

impl Readers {
    /// The room, if the caller may receive it (a member or an admin), with the name
    /// the caller goes by there, the seq its kept history starts from and what the
    /// mutes need.
    pub(super) async fn readable(&self, caller: &Caller, room_id: &RoomId) -> Result<Reading> {
        let user = caller.user_id.as_str();
        let found = self
            .store
            .room_for_reader(room_id, user)
            .await?
            .ok_or_else(|| not_found(room_id))?;
        let Some(sender_name) = sender_name(caller.admin, user, found.display_name.as_deref())
        else {
            // Refused either way; which reason, the bans say (read only here, off
            // every path that succeeds).
            let now = self.clock.now();
            let ban = self
                .store
                .sanction(SanctionKind::Ban, room_id, user, now)
                .await?;
            return Err(match ban {
                Some(ban) => Error::Banned {
                    room_id: room_id.to_string(),
                    expires_at_us: ban.expires_at.map(|t| t.0),
                },
                None => Error::NotAMember {
                    room_id: room_id.to_string(),
                },
            });
        };
        Ok(Reading {
            room: found.room,
            sender_name,
            history_from: found.kept_from,
            standing: Standing::of(caller.admin, found.role),
            mute: found.mute,
        })
    }

    /// Fails unless the caller's token reaches the room, the room exists, and the
    /// caller may receive it (a member or an admin).
    pub(super) async fn check_can_read(&self, caller: &Caller, room_id: &RoomId) -> Result<()> {
        check_in_token(caller, room_id)?;
        self.readable(caller, room_id).await.map(drop)
    }
}
