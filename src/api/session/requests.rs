//! Client frames: queued in order, then answered or turned into database work.

use super::frames::{detached_frame, error_frame, send_answer};
use super::*;
use crate::domain::DetachReason;
use crate::error::{Error, Result};
use crate::proto::encode::event;
use crate::rooms::{Handing, Sent};

impl Session {
    /// Takes a client frame: queued for its turn, or refused when the queue is full.
    pub(super) fn enqueue(&mut self, request: pb::SubscribeRequest) {
        let action = Action::Request(request);
        let bytes = action.bytes();
        if self.queued.len() < MAX_QUEUED_FRAMES && self.queued_bytes + bytes <= MAX_QUEUED_BYTES {
            self.queued_bytes += bytes;
            self.queued.push_back(action);
        } else if let Action::Request(request) = action {
            self.outbox.push_back(error_frame(
                request.request_id,
                Error::TooManyPendingFrames {
                    limit: MAX_QUEUED_FRAMES as u32,
                },
            ));
        }
    }

    /// Whether the next queued action may run now (sends wait while too many are in
    /// flight).
    pub(super) fn next_ready(&self) -> bool {
        self.queued
            .front()
            .is_some_and(|a| !(a.is_send() && self.sends.len() >= MAX_SENDS_IN_FLIGHT))
    }

    /// Takes the next action off the queue: answers it, or starts its database work.
    pub(super) fn take_next(&mut self) {
        let Some(action) = self.queued.pop_front() else {
            return;
        };
        self.queued_bytes -= action.bytes();
        match action {
            Action::Request(request) => self.handle_request(request),
            Action::Follow(switch) => {
                // Follow the user into the room it switched to, from now on.
                if !self.state.attached.contains(&switch.to) {
                    let (room_id, after) = (switch.to, switch.after_seq);
                    self.start_attach(None, room_id, Some(after), Some(switch.committed));
                }
            }
        }
    }

    /// Answers one client frame (or starts the work that will).
    pub(super) fn handle_request(&mut self, request: pb::SubscribeRequest) {
        let request_id = request.request_id;
        let answer = match request.frame {
            Some(Request::Attach(attach)) => {
                match decode::room_id("attach.room_id", attach.room_id) {
                    Ok(room_id) => {
                        self.start_attach(Some(request_id), room_id, attach.after_seq, None);
                        None
                    }
                    Err(error) => Some(error_frame(request_id, error)),
                }
            }
            Some(Request::Detach(detach)) => Some(self.detach(request_id, detach.room_id)),
            Some(Request::Send(send)) => self.send(request_id, send),
            Some(Request::Ping(_)) => Some(Frame::reply(request_id, event::pong())),
            Some(Request::RefreshToken(refresh)) => self.refresh(request_id, refresh.token),
            None => Some(error_frame(
                request_id,
                Error::invalid(
                    "frame",
                    "set one of attach, detach, send, ping, refresh_token",
                ),
            )),
        };
        if let Some(answer) = answer {
            self.outbox.push_back(answer);
        }
    }

    /// A `detach` frame: the stream stops receiving the room, at once.
    fn detach(&mut self, request_id: String, room_id: String) -> Frame {
        let detached = decode::room_id("detach.room_id", room_id).and_then(|room_id| {
            match self.state.detach(&room_id) {
                Some(_) => Ok(room_id),
                None => Err(Error::NotAttached {
                    room_id: room_id.to_string(),
                }),
            }
        });
        match detached {
            Ok(room_id) => {
                self.catch_up.retain(|r| *r != room_id);
                detached_frame(request_id, &room_id, DetachReason::Requested)
            }
            Err(error) => error_frame(request_id, error),
        }
    }

    /// A `send` frame: handed over in frame order, answered when its answer comes
    /// (`None`: not yet).
    fn send(&mut self, request_id: String, send: pb::SendMessageRequest) -> Option<Frame> {
        let draft = match decode::draft(send, self.state.rooms.message_limits()) {
            Ok(draft) => draft,
            Err(error) => return Some(error_frame(request_id, error)),
        };
        let rooms = &self.state.rooms;
        // Attached: the stream's name for the room, unless a mute may hold on an
        // unstored kind (CHAT is judged by the writer, whose transaction reads mutes).
        let name = self
            .state
            .attached
            .get(&draft.room_id)
            .filter(|a| {
                draft.kind.is_stored() || {
                    let news = rooms.hubs().mute_news(&draft.room_id, &self.state.user);
                    !a.may_be_muted(&news, rooms.clock().now())
                }
            })
            .map(|a| a.sender_name.clone());
        if name.is_none() && !draft.kind.is_stored() {
            // Membership and mutes are read from the store: on a task of its own.
            let rooms = rooms.clone();
            let caller = self.caller.clone();
            let task = self
                .pool
                .spawn(move || async move { rooms.messages.send(&caller, draft, None).await });
            self.sends.push(Box::pin(async move {
                let sent = task.await.unwrap_or_else(|error| {
                    Err(Error::Internal(format!("a send failed: {error}")))
                });
                send_answer(request_id, sent)
            }));
            return None;
        }
        // Handed over here, in frame order; only the answers are awaited
        // concurrently, so one stream's messages keep their order. Should the writer's
        // queue be full, the stream takes nothing else until it has room.
        match rooms
            .messages
            .hand_over(&self.caller, draft, name.as_deref())
        {
            Handing::Done(sent) => self.sent(request_id, sent),
            Handing::Waiting(sending) => {
                self.handing = Some(Box::new(HandOver {
                    request_id,
                    sending,
                }));
                None
            }
        }
    }

    /// A send handed over (its answer to come), or its error frame.
    pub(super) fn sent(&mut self, request_id: String, sent: Result<Sent>) -> Option<Frame> {
        match sent {
            Ok(sent) => {
                self.sends.push(Box::pin(async move {
                    send_answer(request_id, sent.answer().await)
                }));
                None
            }
            Err(error) => Some(error_frame(request_id, error)),
        }
    }

    /// A `refresh_token` frame: verified as work (it may wait for a JWKS fetch).
    fn refresh(&mut self, request_id: String, token: String) -> Option<Frame> {
        let Some(tokens) = self.tokens.clone() else {
            return Some(error_frame(
                request_id,
                Error::invalid(
                    "refresh_token",
                    "this server identifies callers by x-user-id (--auth header): there is no token to refresh",
                ),
            ));
        };
        self.spawn(
            move || async move {
                let verified = tokens.verify(&token).await;
                Done::Refreshed {
                    request_id,
                    verified,
                }
            },
            None,
        );
        None
    }

    /// Starts attaching a room: subscribes to its hub first (whatever commits from now
    /// on is in the ring), then checks access and reads the room on a task — after
    /// `switch` says its switch committed, when following one.
    pub(super) fn start_attach(
        &mut self,
        request_id: Option<String>,
        room_id: RoomId,
        after_seq: Option<u64>,
        switch: Option<tokio::sync::watch::Receiver<Option<bool>>>,
    ) {
        let refused = if self.state.attached.contains(&room_id) {
            Some(Error::AlreadyAttached {
                room_id: room_id.to_string(),
            })
        } else {
            self.limits.check_rooms(self.state.attached.len() + 1).err()
        };
        if let Some(error) = refused {
            self.outbox
                .push_back(error_frame(request_id.unwrap_or_default(), error));
            return;
        }
        let subscription = self.state.rooms.hubs().subscribe(&room_id);
        let rooms = self.state.rooms.clone();
        let caller = self.caller.clone();
        self.spawn(
            move || async move {
                let failed = match switch {
                    Some(committed) => switch_failed(committed).await,
                    None => false,
                };
                let found = if failed {
                    // The user is not in the room to follow.
                    Err(Error::NotAMember {
                        room_id: room_id.to_string(),
                    })
                } else {
                    rooms.streams.access(&caller, &room_id).await.map(Box::new)
                };
                Done::Attach {
                    request_id,
                    room_id,
                    after_seq,
                    found,
                }
            },
            Some(subscription),
        );
    }
}

/// Whether the switch a stream follows failed, as its commit signal says within
/// [`FOLLOW_WAIT`]. Abandoned or slow: not known to have failed (the store decides).
async fn switch_failed(mut committed: tokio::sync::watch::Receiver<Option<bool>>) -> bool {
    let outcome = tokio::time::timeout(FOLLOW_WAIT, committed.wait_for(Option::is_some)).await;
    matches!(outcome, Ok(Ok(outcome)) if *outcome == Some(false))
}
