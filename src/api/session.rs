//! One `Subscribe` stream: attach and detach rooms, send messages, ping — and deliver
//! every attached room's events.
//!
//! The session is a single generator (no task or queue of its own per stream): it
//! waits on the client's frames, its sends in flight, and its rooms' hubs, and yields
//! frames as they come. Delivery of CHAT messages is tracked per room by seq:
//!
//! - attach subscribes to the hub *before* reading the room, so nothing committed in
//!   between is missed; messages at or below the attach point are skipped;
//! - with `after_seq`, stored messages after it are read from the database first, then
//!   live ones — duplicates at the seam are skipped by seq;
//! - a stream that falls behind its hub's ring is told it lagged and reads what it
//!   missed from the database, in order, then carries on live.
//!
//! So each stream gets every CHAT message after its attach point once, in seq order.
//! Memory per stream stays bounded: catching up reads a page at a time, and the
//! generator only reads more when the client has taken what it was given.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Status, Streaming};

use super::convert;
use crate::error::{Error, Result};
use crate::live::{DetachReason, Event, Frame};
use crate::pb;
use crate::pb::subscribe_request::Frame as Request;
use crate::pb::subscribe_response::Event as PbEvent;
use crate::rooms::Rooms;
use crate::rooms::model::{Caller, Message, Room, RoomId};

/// Stored messages read per page while catching up.
const CATCH_UP_PAGE: u32 = 256;

/// Attaches and catch-up reads in progress at once, server-wide. Each holds a
/// multi-kilobyte future while it waits for the database; after a restart thousands of
/// clients reconnect at once, and without a bound those futures (and the heap they
/// leave fragmented) would all exist together. Waiting for a permit costs a few bytes.
static DATABASE_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

/// Runs `work` once a [`DATABASE_WORK`] permit is free.
async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    let _permit = DATABASE_WORK.acquire().await.expect("never closed");
    Box::pin(work).await
}
/// Sends a stream may have in flight before the session stops reading its frames.
const MAX_SENDS_IN_FLIGHT: usize = 256;

/// Per-stream limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub max_rooms_per_stream: usize,
}

type SendResult = (String, Result<Message>);
type PendingSend = Pin<Box<dyn std::future::Future<Output = SendResult> + Send>>;

/// A room this stream receives.
struct Attached {
    room: Room,
    sender_name: String,
    /// Highest CHAT seq delivered (or the attach point).
    delivered: u64,
}

/// The stream's rooms. Dropping it (the client went away, or the stream ended)
/// detaches every room, so presence is right whichever way the stream ends.
struct Attachments {
    rooms: Rooms,
    user: String,
    attached: HashMap<RoomId, Attached>,
    events: StreamMap<RoomId, BroadcastStream<Arc<Event>>>,
}

impl Attachments {
    fn detach(&mut self, room_id: &RoomId) -> Option<Attached> {
        let attached = self.attached.remove(room_id)?;
        self.events.remove(room_id);
        self.rooms.hubs().release(room_id);
        self.rooms.stream_detached(&attached.room, &self.user);
        Some(attached)
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        let ids: Vec<RoomId> = self.attached.keys().cloned().collect();
        for id in ids {
            self.detach(&id);
        }
    }
}

/// What woke the session.
enum Step {
    Stop,
    Sent(SendResult),
    Room(RoomId, Result<Arc<Event>, BroadcastStreamRecvError>),
    Client(Option<std::result::Result<pb::SubscribeRequest, Status>>),
}

/// Runs one Subscribe stream for `caller` until the client cancels it, or has closed
/// its side and no room is left attached, or `stop` turns true (then sends in flight
/// are answered and the stream ends with UNAVAILABLE, so clients reconnect and resume).
pub fn run(
    rooms: Rooms,
    caller: Caller,
    limits: SessionLimits,
    mut inbound: Streaming<pb::SubscribeRequest>,
    mut stop: watch::Receiver<bool>,
) -> impl Stream<Item = std::result::Result<Frame, Status>> + Send + 'static {
    async_stream::stream! {
        let mut state = Attachments {
            rooms: rooms.clone(),
            user: caller.user_id.to_string(),
            attached: HashMap::new(),
            events: StreamMap::new(),
        };
        let mut sends: FuturesUnordered<PendingSend> = FuturesUnordered::new();
        // Rooms whose stored messages must be read before live ones, in order.
        let mut catch_up: VecDeque<RoomId> = VecDeque::new();
        // One future for the whole session: re-creating it on every turn of the loop
        // registered and dropped a waiter each time (a tenth of the fan-out profile).
        let mut stopped = Box::pin(async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        });
        let mut stopping = false;
        // The client half-closed: no more frames, but events go on until it cancels,
        // the server stops, or no room is left.
        let mut inbound_done = false;
        loop {
            if inbound_done && state.attached.is_empty() && sends.is_empty() && catch_up.is_empty() {
                break;
            }
            if stopping {
                while let Some(sent) = sends.next().await {
                    yield Ok(send_answer(sent));
                }
                yield Err(Status::unavailable("the server is shutting down; reconnect and resume"));
                break;
            }
            // Catching up comes first, one page at a time.
            if let Some(room_id) = catch_up.pop_front() {
                let Some(from) = state.attached.get(&room_id).map(|a| a.delivered) else { continue };
                match bounded(rooms.history_after(&room_id, from, CATCH_UP_PAGE)).await {
                    Ok(page) => {
                        if page.len() == CATCH_UP_PAGE as usize {
                            catch_up.push_front(room_id.clone());
                        }
                        for message in page {
                            if let Some(a) = state.attached.get_mut(&room_id) && message.seq > a.delivered {
                                a.delivered = message.seq;
                                yield Ok(Frame::event(PbEvent::Message((&message).into())));
                            }
                        }
                    }
                    Err(error) => yield Ok(error_frame(String::new(), error)),
                }
                continue;
            }
            let step = tokio::select! {
                biased;
                () = &mut stopped => Step::Stop,
                Some(sent) = sends.next(), if !sends.is_empty() => Step::Sent(sent),
                Some((room, event)) = state.events.next(), if !state.events.is_empty() => Step::Room(room, event),
                frame = inbound.next(), if !inbound_done && sends.len() < MAX_SENDS_IN_FLIGHT => Step::Client(frame),
            };
            match step {
                Step::Stop => stopping = true,
                Step::Sent(sent) => yield Ok(send_answer(sent)),
                Step::Client(None) => inbound_done = true,
                Step::Client(Some(Err(_))) => break,
                Step::Client(Some(Ok(request))) => {
                    let request_id = request.request_id;
                    match request.frame {
                        Some(Request::Attach(attach)) => {
                            let attached = match convert::room_id("attach.room_id", attach.room_id) {
                                Ok(room_id) => bounded(attach_room(&mut state, &caller, limits, room_id, attach.after_seq)).await,
                                Err(error) => Err(error),
                            };
                            match attached {
                                Ok((room, needs_catch_up)) => {
                                    if needs_catch_up {
                                        catch_up.push_back(room.id.clone());
                                    }
                                    yield Ok(Frame::reply(request_id, attached_event(room)));
                                }
                                Err(error) => yield Ok(error_frame(request_id, error)),
                            }
                        }
                        Some(Request::Detach(detach)) => {
                            let detached = convert::room_id("detach.room_id", detach.room_id).and_then(|room_id| {
                                state.detach(&room_id).map(|_| room_id.clone()).ok_or(Error::NotAttached { room_id: room_id.to_string() })
                            });
                            match detached {
                                Ok(room_id) => yield Ok(detached_frame(request_id, &room_id, DetachReason::Requested)),
                                Err(error) => yield Ok(error_frame(request_id, error)),
                            }
                        }
                        Some(Request::Send(send)) => match convert::draft(send, rooms.message_limits()) {
                            Err(error) => yield Ok(error_frame(request_id, error)),
                            Ok(draft) => {
                                // Handed over here, in frame order; only the answers are awaited
                                // concurrently, so one stream's messages keep their order.
                                let name = state.attached.get(&draft.room_id).map(|a| a.sender_name.clone());
                                match Box::pin(rooms.submit(&caller, draft, name.as_deref())).await {
                                    Ok(sent) => sends.push(Box::pin(async move { (request_id, sent.answer().await) })),
                                    Err(error) => yield Ok(error_frame(request_id, error)),
                                }
                            }
                        },
                        Some(Request::Ping(_)) => yield Ok(Frame::reply(request_id, PbEvent::Pong(pb::Pong {}))),
                        None => yield Ok(error_frame(request_id, Error::invalid("frame", "set one of attach, detach, send, ping"))),
                    }
                }
                Step::Room(room_id, Ok(event)) => {
                    let routed = route(&mut state, &room_id, &event);
                    for frame in routed.frames {
                        yield Ok(frame);
                    }
                    if routed.now_present
                        && let Err(error) = rooms.mark_online(&room_id, caller.user_id.as_str()).await
                    {
                        tracing::warn!(%error, room = %room_id, "could not record presence");
                    }
                    if routed.gap {
                        catch_up.push_back(room_id);
                    }
                    if let Some(to) = routed.switched_to {
                        // Follow the user into the room it switched to, from now on.
                        match bounded(attach_room(&mut state, &caller, limits, to.id.clone(), Some(to.last_seq))).await {
                            Ok((room, needs_catch_up)) => {
                                if needs_catch_up {
                                    catch_up.push_back(room.id.clone());
                                }
                                yield Ok(Frame::event(attached_event(room)));
                            }
                            Err(Error::AlreadyAttached { .. }) => {}
                            Err(error) => yield Ok(error_frame(String::new(), error)),
                        }
                    }
                }
                Step::Room(room_id, Err(BroadcastStreamRecvError::Lagged(_))) => {
                    // Too slow for the ring: check it may still receive the room (it may
                    // have missed its own detach), then read what it missed from the store.
                    match bounded(rooms.attach(&caller, &room_id)).await {
                        Ok(_) => catch_up.push_back(room_id),
                        Err(error) => {
                            state.detach(&room_id);
                            let reason = match error {
                                Error::RoomNotFound { .. } => DetachReason::RoomDeleted,
                                _ => DetachReason::Left,
                            };
                            yield Ok(detached_frame(String::new(), &room_id, reason));
                        }
                    }
                }
            }
        }
    }
}

/// Attaches a room to the stream. Returns it and whether stored messages after the
/// attach point must be read first (`after_seq` below the room's last seq).
async fn attach_room(
    state: &mut Attachments,
    caller: &Caller,
    limits: SessionLimits,
    room_id: RoomId,
    after_seq: Option<u64>,
) -> Result<(Room, bool)> {
    if state.attached.contains_key(&room_id) {
        return Err(Error::AlreadyAttached {
            room_id: room_id.to_string(),
        });
    }
    if state.attached.len() >= limits.max_rooms_per_stream {
        return Err(Error::TooManyRooms {
            limit: u32::try_from(limits.max_rooms_per_stream).unwrap_or(u32::MAX),
        });
    }
    // Subscribe before reading the room: whatever commits in between is in the ring.
    let receiver = state.rooms.hubs().subscribe(&room_id);
    let attachment = match state.rooms.attach(caller, &room_id).await {
        Ok(a) => a,
        Err(error) => {
            drop(receiver);
            state.rooms.hubs().release(&room_id);
            return Err(error);
        }
    };
    state
        .rooms
        .stream_attached(&attachment.room, &state.user)
        .await;
    let room = state.rooms.with_presence(attachment.room);
    let last = room.last_seq;
    let delivered = after_seq.map_or(last, |after| after.min(last));
    state
        .events
        .insert(room_id.clone(), BroadcastStream::new(receiver));
    state.attached.insert(
        room_id,
        Attached {
            room: room.clone(),
            sender_name: attachment.sender_name,
            delivered,
        },
    );
    Ok((room, delivered < last))
}

/// What one hub event means for this stream.
#[derive(Default)]
struct Routed {
    frames: Vec<Frame>,
    /// A seq was skipped: read the gap from the store.
    gap: bool,
    /// The user switched rooms: attach this one.
    switched_to: Option<Room>,
    /// The room gained a presence timeout: record the user online before anything else
    /// this stream does, so that a detach right after cannot be overtaken by it.
    now_present: bool,
}

fn route(state: &mut Attachments, room_id: &RoomId, event: &Event) -> Routed {
    let mut routed = Routed::default();
    match event {
        Event::Message {
            seq,
            targets,
            frame,
        } => {
            if targets.as_ref().is_some_and(|t| !t.contains(&state.user)) {
                return routed;
            }
            if *seq == 0 {
                routed.frames.push(frame.clone());
            } else if let Some(a) = state.attached.get_mut(room_id) {
                if *seq == a.delivered + 1 {
                    a.delivered = *seq;
                    routed.frames.push(frame.clone());
                } else if *seq > a.delivered + 1 {
                    routed.gap = true;
                }
            }
        }
        Event::Broadcast(frame) => routed.frames.push(frame.clone()),
        Event::Updated { room, frame } => {
            if let Some(a) = state.attached.get_mut(room_id) {
                // Online all along: a presence timeout starts when the stream goes away.
                routed.now_present = a.room.settings.presence_timeout.is_none()
                    && room.settings.presence_timeout.is_some();
                a.room = (**room).clone();
            }
            routed.frames.push(frame.clone());
        }
        Event::Detach {
            user,
            reason,
            switched_to,
        } => {
            if *user == state.user && state.detach(room_id).is_some() {
                routed
                    .frames
                    .push(detached_frame(String::new(), room_id, *reason));
                routed.switched_to = switched_to.as_deref().cloned();
            }
        }
        Event::Deleted => {
            if state.detach(room_id).is_some() {
                routed
                    .frames
                    .push(Frame::event(PbEvent::RoomDeleted(pb::RoomDeleted {
                        room_id: room_id.to_string(),
                    })));
                routed.frames.push(detached_frame(
                    String::new(),
                    room_id,
                    DetachReason::RoomDeleted,
                ));
            }
        }
    }
    routed
}

fn attached_event(room: Room) -> PbEvent {
    PbEvent::Attached(pb::RoomAttached {
        room: Some(room.into()),
        history_truncated: false,
    })
}

fn detached_frame(request_id: String, room_id: &RoomId, reason: DetachReason) -> Frame {
    Frame::reply(
        request_id,
        PbEvent::Detached(pb::RoomDetached {
            room_id: room_id.to_string(),
            reason: pb::DetachReason::from(reason) as i32,
        }),
    )
}

fn send_answer((request_id, result): SendResult) -> Frame {
    match result {
        Ok(message) => Frame::reply(
            request_id,
            PbEvent::SendAck(pb::SendAck {
                message: Some((&message).into()),
            }),
        ),
        Err(error) => error_frame(request_id, error),
    }
}

/// A failed client frame, as a `StreamError` event (the stream goes on).
fn error_frame(request_id: String, error: Error) -> Frame {
    let (code, reason) = error.code_and_reason();
    Frame::reply(
        request_id,
        PbEvent::Error(pb::StreamError {
            code: code as i32,
            reason: reason.to_string(),
            message: error.to_string(),
        }),
    )
}
