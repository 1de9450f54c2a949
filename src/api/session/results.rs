//! What a stream's database work found, applied; catch-up; events that wait in a ring.

use super::frames::{attached_event, detached_frame, error_frame, history_truncated_frame};
use super::route::{Routed, route};
use super::*;
use crate::domain::DetachReason;
use crate::error::Error;
use crate::proto::encode::event;

impl Session {
    /// Starts reading the next page of stored messages for a room catching up.
    pub(super) fn start_catch_up(&mut self, room_id: RoomId) {
        let Some(from) = self.state.attached.get(&room_id).map(|a| a.delivered) else {
            return;
        };
        let rooms = self.state.rooms.clone();
        let caller = self.caller.clone();
        self.spawn(
            move || async move {
                let page = rooms
                    .messages
                    .catch_up(&caller, &room_id, from, CATCH_UP_PAGE, CATCH_UP_BYTES)
                    .await;
                Done::CatchUp { room_id, page }
            },
            None,
        );
    }

    /// Queues a catch-up of a room unless one is queued already.
    pub(super) fn needs_catch_up(&mut self, room_id: &RoomId) {
        if !self.catch_up.contains(room_id) {
            crate::telemetry::catch_up_queued();
            self.catch_up.push_back(room_id.clone());
        }
    }

    /// Applies what a piece of database work found.
    pub(super) fn finish(
        &mut self,
        work: Work,
        done: std::result::Result<Done, tokio::task::JoinError>,
    ) {
        let done = match done {
            Ok(done) => done,
            Err(error) => {
                let error = Error::Internal(format!("a stream's database work failed: {error}"));
                self.outbox.push_back(error_frame(String::new(), error));
                return;
            }
        };
        match done {
            Done::Attach {
                request_id,
                room_id,
                after_seq,
                found,
            } => {
                let answer = found.map(|access| self.attached(work, &room_id, after_seq, *access));
                let frame = match (request_id, answer) {
                    (Some(id), Ok(event)) => Frame::reply(id, event),
                    (Some(id), Err(error)) => error_frame(id, error),
                    (None, Ok(event)) => Frame::event(event),
                    (None, Err(error)) => error_frame(String::new(), error),
                };
                self.outbox.push_back(frame);
            }
            Done::CatchUp { room_id, page } => self.caught_up(room_id, page),
            Done::Refreshed {
                request_id,
                verified,
            } => {
                let answer = verified.and_then(|caller| self.refreshed(caller));
                self.outbox.push_back(match answer {
                    Ok(event) => Frame::reply(request_id, event),
                    Err(error) => error_frame(request_id, error),
                });
            }
        }
    }

    /// Records a room the stream may attach (its access read) and says so: the
    /// `attached` event, and a catch-up queued when it resumes from before the head.
    fn attached(
        &mut self,
        work: Work,
        room_id: &RoomId,
        after_seq: Option<u64>,
        access: Access,
    ) -> event::Event {
        let subscription = work.subscription.expect("an attach subscribes");
        let room = access.room.clone();
        let online = access.online;
        let last = room.last_seq;
        let truncated = after_seq.is_some_and(|after| access.history_truncated(after));
        // Resuming from before the kept history: `attached` says so, and the
        // catch-up starts where history does (no second notice).
        let resume = after_seq.map(|after| match truncated {
            true => access.history_from.saturating_sub(1),
            false => after,
        });
        let delivered = resume.map_or(last, |after| after.min(last));
        tracing::debug!(%room_id, ?after_seq, last_seq = last, truncated, "attached");
        self.state.record(subscription, access, delivered);
        if delivered < last {
            self.needs_catch_up(room_id);
        }
        // The user counts as online from this stream on.
        let room = self.state.rooms.streams.presence_at_attach(room, online);
        attached_event(room, truncated)
    }

    /// Applies a catch-up page: its messages the stream has not had, in order (a gap
    /// said as `history_truncated`), and the next page queued if there is more.
    fn caught_up(&mut self, room_id: RoomId, page: Result<CatchUp>) {
        match page {
            Ok(CatchUp { messages, more }) => {
                if more {
                    self.catch_up.push_front(room_id.clone());
                }
                for message in messages {
                    if let Some(a) = self.state.attached.get_mut(&room_id)
                        && message.seq > a.delivered
                    {
                        if message.seq > a.delivered + 1 {
                            // Stored seqs have no holes: the ones skipped were
                            // deleted by retention before this stream read them.
                            self.outbox
                                .push_back(history_truncated_frame(&room_id, message.seq));
                        }
                        a.delivered = message.seq;
                        self.outbox
                            .push_back(Frame::event(event::message(&message)));
                    }
                }
            }
            Err(error @ (Error::NotAMember { .. } | Error::RoomNotFound { .. })) => {
                // Left (or deleted) while behind: nothing more from this room. How
                // it was left is in the room's ring (leaves, switches and timeouts
                // are published before they commit): route what waits there, so a
                // switch is followed; failing that, it left.
                self.route_waiting(&room_id);
                self.catch_up.retain(|r| *r != room_id);
                if self.state.detach(&room_id).is_some() {
                    let reason = match error {
                        Error::RoomNotFound { .. } => DetachReason::RoomDeleted,
                        _ => DetachReason::Left,
                    };
                    self.outbox
                        .push_back(detached_frame(String::new(), &room_id, reason));
                }
            }
            Err(error) => self.outbox.push_back(error_frame(String::new(), error)),
        }
    }

    /// Takes a fresh token's caller for the stream, if it is the same user and
    /// reaches every room the stream has attached; its `exp`, roles and rooms apply
    /// from now on. Otherwise the stream goes on with the token it has.
    fn refreshed(&mut self, caller: Caller) -> Result<event::Event> {
        if caller.user_id != self.caller.user_id {
            return Err(Error::TokenRefused {
                reason: "TOKEN_SUBJECT_CHANGED",
                description: format!(
                    "the token is for {:?}, the stream for {:?}: a stream keeps its user",
                    caller.user_id.as_str(),
                    self.caller.user_id.as_str()
                ),
            });
        }
        if let Some(room_id) = self
            .state
            .attached
            .room_ids()
            .find(|room| !caller.may_enter(room))
        {
            return Err(Error::RoomNotInToken {
                room_id: room_id.to_string(),
            });
        }
        self.expiry = super::expiry_timer(&caller, self.state.rooms.clock());
        let refreshed = event::token_refreshed(caller.expires_at);
        self.caller = caller;
        Ok(refreshed)
    }

    /// Routes the events waiting in one room's ring now, without waiting for more.
    pub(super) fn route_waiting(&mut self, room_id: &RoomId) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let Some((key, subscription)) = self
                .state
                .events
                .iter_mut()
                .find(|(key, _)| key.as_ref() == room_id)
            else {
                return;
            };
            let key = Arc::clone(key);
            let event = match Pin::new(subscription).poll_next(&mut cx) {
                std::task::Poll::Ready(Some(Ok(event))) => event,
                std::task::Poll::Ready(Some(Err(Lagged(_)))) => continue,
                _ => return,
            };
            let rooms = &self.state.rooms;
            let routed = route(
                &mut self.state.attached,
                &self.state.user,
                self.caller.admin,
                &key,
                &event,
                || rooms.hubs().room_state(&key),
                &mut self.outbox,
            );
            self.follow(&key, routed);
        }
    }

    /// Does what routing an event asked for besides its frames.
    pub(super) fn follow(&mut self, room_id: &RoomId, routed: Routed) {
        if routed.detach.is_some() {
            self.state.detach(room_id);
            self.catch_up.retain(|r| r != room_id);
            return self.follow_switch(routed.switched_to);
        }
        if routed.gap {
            self.needs_catch_up(room_id);
        }
        if routed.now_present {
            self.state
                .rooms
                .streams
                .stream_now_present(room_id, self.caller.user_id.as_str());
        }
    }

    /// Follows the user into the room it switched to, next.
    pub(super) fn follow_switch(&mut self, switched_to: Option<Box<Switch>>) {
        if let Some(switch) = switched_to {
            self.queued.push_front(Action::Follow(switch));
        }
    }
}
