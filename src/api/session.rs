//! One `Subscribe` stream: attach and detach rooms, send messages, ping — and deliver
//! every attached room's events.
//!
//! The session is a single generator (no task or channel of its own per stream): it
//! waits on the client's frames, its sends in flight, and its rooms' hubs, puts the
//! frames each produces in a small outbox, and yields them. Everything that awaits the
//! database runs in a boxed future of its own, so the generator itself stays under
//! 1 KB (see `Session`). Delivery of CHAT messages is tracked per room by seq:
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

use std::collections::VecDeque;
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

/// Makes the future `start` returns once a [`DATABASE_WORK`] permit is free, and runs
/// it on the heap. Database futures are large; awaited in place they would make every
/// session's own state (which lives as long as the stream) that large too.
async fn bounded<T, F>(start: impl FnOnce() -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let _permit = DATABASE_WORK.acquire().await.expect("never closed");
    Box::pin(start()).await
}
/// Sends a stream may have in flight before the session stops reading its frames.
const MAX_SENDS_IN_FLIGHT: usize = 256;

/// Per-stream limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub max_rooms_per_stream: usize,
}

/// A send handed over, resolving to its answer frame (ack or error).
type PendingSend = Pin<Box<dyn std::future::Future<Output = Frame> + Send>>;

/// A room this stream receives.
struct Attached {
    room: Room,
    sender_name: String,
    /// Highest CHAT seq delivered (or the attach point).
    delivered: u64,
}

/// The rooms a stream receives: a handful at most (`--max-rooms-per-stream`), so a
/// vector searched by id, which costs one entry's size per room where a hash map
/// starts at a table of four.
#[derive(Default)]
struct AttachedRooms(Vec<Attached>);

impl AttachedRooms {
    fn get(&self, room_id: &RoomId) -> Option<&Attached> {
        self.0.iter().find(|a| a.room.id == *room_id)
    }

    fn get_mut(&mut self, room_id: &RoomId) -> Option<&mut Attached> {
        self.0.iter_mut().find(|a| a.room.id == *room_id)
    }

    fn contains(&self, room_id: &RoomId) -> bool {
        self.get(room_id).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn insert(&mut self, attached: Attached) {
        self.0.reserve_exact(1);
        self.0.push(attached);
    }

    fn remove(&mut self, room_id: &RoomId) -> Option<Attached> {
        let i = self.0.iter().position(|a| a.room.id == *room_id)?;
        Some(self.0.swap_remove(i))
    }

    fn ids(&self) -> Vec<RoomId> {
        self.0.iter().map(|a| a.room.id.clone()).collect()
    }
}

/// The stream's rooms. Dropping it (the client went away, or the stream ended)
/// detaches every room, so presence is right whichever way the stream ends.
struct Attachments {
    rooms: Rooms,
    user: String,
    attached: AttachedRooms,
    /// Keyed by a shared id: the map hands out a clone of the key with every event,
    /// and a `RoomId` clone would be an allocation per delivery.
    events: StreamMap<Arc<RoomId>, BroadcastStream<Arc<Event>>>,
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
        let ids = self.attached.ids();
        for id in ids {
            self.detach(&id);
        }
    }
}

/// A stream's sends in flight. Most streams only listen, so the set is made on the
/// first send (an empty `FuturesUnordered` is two heap allocations).
#[derive(Default)]
struct Sends(Option<FuturesUnordered<PendingSend>>);

impl Sends {
    fn push(&mut self, send: PendingSend) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(send);
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Stream for Sends {
    type Item = Frame;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Frame>> {
        match self.0.as_mut() {
            Some(sends) => Pin::new(sends).poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// What woke the session.
enum Step {
    Stop,
    Sent(Frame),
    Room(Arc<RoomId>, Result<Arc<Event>, BroadcastStreamRecvError>),
    Client(Option<std::result::Result<pb::SubscribeRequest, Status>>),
}

/// Outbox capacity a stream keeps once drained; a larger one (a catch-up page) is freed.
const OUTBOX_KEPT: usize = 8;

/// What a stream keeps between frames.
///
/// The generator in [`run`] holds this and little else across its yields: work that
/// needs large futures (database reads, handing a message over) runs in boxed futures
/// that exist only while it runs. A generator's state is as large as the most it holds
/// at any await, for as long as the stream lives, so awaiting such work in place would
/// make every idle stream cost what its busiest moment needed.
struct Session {
    caller: Caller,
    limits: SessionLimits,
    state: Attachments,
    sends: Sends,
    /// Rooms whose stored messages must be read before live ones, in order.
    catch_up: VecDeque<RoomId>,
    /// Frames ready for the client, in order.
    outbox: VecDeque<Frame>,
    /// The client half-closed: no more frames, but events go on until it cancels, the
    /// server stops, or no room is left.
    inbound_done: bool,
}

impl Session {
    fn finished(&self) -> bool {
        self.inbound_done
            && self.state.attached.is_empty()
            && self.sends.is_empty()
            && self.catch_up.is_empty()
    }

    /// Frees a drained outbox that grew past [`OUTBOX_KEPT`].
    fn trim_outbox(&mut self) {
        if self.outbox.is_empty() && self.outbox.capacity() > OUTBOX_KEPT {
            self.outbox = VecDeque::new();
        }
    }

    /// Reads the next page of stored messages for a room catching up.
    async fn catch_up_page(&mut self, room_id: RoomId) {
        let Some(from) = self.state.attached.get(&room_id).map(|a| a.delivered) else {
            return;
        };
        let rooms = &self.state.rooms;
        match bounded(|| rooms.history_after(&room_id, from, CATCH_UP_PAGE)).await {
            Ok(page) => {
                if page.len() == CATCH_UP_PAGE as usize {
                    self.catch_up.push_front(room_id.clone());
                }
                for message in page {
                    if let Some(a) = self.state.attached.get_mut(&room_id)
                        && message.seq > a.delivered
                    {
                        a.delivered = message.seq;
                        self.outbox
                            .push_back(Frame::event(PbEvent::Message((&message).into())));
                    }
                }
            }
            Err(error) => self.outbox.push_back(error_frame(String::new(), error)),
        }
    }

    /// Answers one client frame.
    async fn handle_request(&mut self, request: pb::SubscribeRequest) {
        let request_id = request.request_id;
        let answer = match request.frame {
            Some(Request::Attach(attach)) => {
                let attached = match convert::room_id("attach.room_id", attach.room_id) {
                    Ok(room_id) => self.attach(room_id, attach.after_seq).await,
                    Err(error) => Err(error),
                };
                match attached {
                    Ok(room) => Frame::reply(request_id, attached_event(room)),
                    Err(error) => error_frame(request_id, error),
                }
            }
            Some(Request::Detach(detach)) => {
                let detached = convert::room_id("detach.room_id", detach.room_id).and_then(
                    |room_id| match self.state.detach(&room_id) {
                        Some(_) => Ok(room_id),
                        None => Err(Error::NotAttached {
                            room_id: room_id.to_string(),
                        }),
                    },
                );
                match detached {
                    Ok(room_id) => detached_frame(request_id, &room_id, DetachReason::Requested),
                    Err(error) => error_frame(request_id, error),
                }
            }
            Some(Request::Send(send)) => {
                match convert::draft(send, self.state.rooms.message_limits()) {
                    Err(error) => error_frame(request_id, error),
                    Ok(draft) => {
                        // Handed over here, in frame order; only the answers are awaited
                        // concurrently, so one stream's messages keep their order.
                        let name = self
                            .state
                            .attached
                            .get(&draft.room_id)
                            .map(|a| a.sender_name.clone());
                        let rooms = &self.state.rooms;
                        match Box::pin(rooms.submit(&self.caller, draft, name.as_deref())).await {
                            Ok(sent) => {
                                self.sends.push(Box::pin(async move {
                                    send_answer(request_id, sent.answer().await)
                                }));
                                return;
                            }
                            Err(error) => error_frame(request_id, error),
                        }
                    }
                }
            }
            Some(Request::Ping(_)) => Frame::reply(request_id, PbEvent::Pong(pb::Pong {})),
            None => error_frame(
                request_id,
                Error::invalid("frame", "set one of attach, detach, send, ping"),
            ),
        };
        self.outbox.push_back(answer);
    }

    /// Attaches a room to the stream, queueing a catch-up when `after_seq` is behind.
    async fn attach(&mut self, room_id: RoomId, after_seq: Option<u64>) -> Result<Room> {
        let (caller, limits, state) = (&self.caller, self.limits, &mut self.state);
        let (room, needs_catch_up) =
            bounded(|| attach_room(state, caller, limits, room_id, after_seq)).await?;
        if needs_catch_up {
            self.catch_up.push_back(room.id.clone());
        }
        Ok(room)
    }

    /// What a routed event asks for besides its frames: recording presence, following
    /// a switch into the new room.
    async fn follow_up(&mut self, room_id: RoomId, routed: Routed) {
        if routed.now_present
            && let Err(error) = self
                .state
                .rooms
                .mark_online(&room_id, self.caller.user_id.as_str())
                .await
        {
            tracing::warn!(%error, room = %room_id, "could not record presence");
        }
        if let Some(to) = routed.switched_to {
            // Follow the user into the room it switched to, from now on.
            match self.attach(to.id.clone(), Some(to.last_seq)).await {
                Ok(room) => self.outbox.push_back(Frame::event(attached_event(room))),
                Err(Error::AlreadyAttached { .. }) => {}
                Err(error) => self.outbox.push_back(error_frame(String::new(), error)),
            }
        }
    }

    /// The stream fell behind the room's ring: check it may still receive the room (it
    /// may have missed its own detach), then read what it missed from the store.
    async fn lagged(&mut self, room_id: RoomId) {
        let (rooms, caller) = (&self.state.rooms, &self.caller);
        match bounded(|| rooms.attach(caller, &room_id)).await {
            Ok(_) => self.catch_up.push_back(room_id),
            Err(error) => {
                self.state.detach(&room_id);
                let reason = match error {
                    Error::RoomNotFound { .. } => DetachReason::RoomDeleted,
                    _ => DetachReason::Left,
                };
                self.outbox
                    .push_back(detached_frame(String::new(), &room_id, reason));
            }
        }
    }
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
        let mut s = Session {
            state: Attachments {
                rooms,
                user: caller.user_id.to_string(),
                attached: AttachedRooms::default(),
                events: StreamMap::with_capacity(1),
            },
            caller,
            limits,
            sends: Sends::default(),
            catch_up: VecDeque::new(),
            outbox: VecDeque::new(),
            inbound_done: false,
        };
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
        loop {
            while let Some(frame) = s.outbox.pop_front() {
                yield Ok(frame);
            }
            s.trim_outbox();
            if s.finished() {
                break;
            }
            if stopping {
                while let Some(sent) = s.sends.next().await {
                    yield Ok(sent);
                }
                yield Err(Status::unavailable("the server is shutting down; reconnect and resume"));
                break;
            }
            // Catching up comes first, one page at a time.
            if let Some(room_id) = s.catch_up.pop_front() {
                Box::pin(s.catch_up_page(room_id)).await;
                continue;
            }
            let step = tokio::select! {
                biased;
                () = &mut stopped => Step::Stop,
                Some(sent) = s.sends.next(), if !s.sends.is_empty() => Step::Sent(sent),
                Some((room, event)) = s.state.events.next(), if !s.state.events.is_empty() => Step::Room(room, event),
                frame = inbound.next(), if !s.inbound_done && s.sends.len() < MAX_SENDS_IN_FLIGHT => Step::Client(frame),
            };
            match step {
                Step::Stop => stopping = true,
                Step::Sent(answer) => s.outbox.push_back(answer),
                Step::Client(None) => s.inbound_done = true,
                Step::Client(Some(Err(_))) => break,
                Step::Client(Some(Ok(request))) => Box::pin(s.handle_request(request)).await,
                // The hot path: routing is synchronous and allocates nothing of its own.
                Step::Room(room_id, Ok(event)) => {
                    let routed = route(&mut s.state, &room_id, &event, &mut s.outbox);
                    if routed.gap {
                        s.catch_up.push_back(RoomId::clone(&room_id));
                    }
                    if routed.now_present || routed.switched_to.is_some() {
                        Box::pin(s.follow_up(RoomId::clone(&room_id), routed)).await;
                    }
                }
                Step::Room(room_id, Err(BroadcastStreamRecvError::Lagged(_))) => {
                    Box::pin(s.lagged(RoomId::clone(&room_id))).await;
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
    if state.attached.contains(&room_id) {
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
        .insert(Arc::new(room_id.clone()), BroadcastStream::new(receiver));
    state.attached.insert(Attached {
        room: room.clone(),
        sender_name: attachment.sender_name,
        delivered,
    });
    Ok((room, delivered < last))
}

/// What one hub event means for this stream.
#[derive(Default)]
struct Routed {
    /// A seq was skipped: read the gap from the store.
    gap: bool,
    /// The user switched rooms: attach this one.
    switched_to: Option<Box<Room>>,
    /// The room gained a presence timeout: record the user online before anything else
    /// this stream does, so that a detach right after cannot be overtaken by it.
    now_present: bool,
}

/// Routes one hub event: its frames (if any are for this stream) go to `outbox`.
fn route(
    state: &mut Attachments,
    room_id: &RoomId,
    event: &Event,
    outbox: &mut VecDeque<Frame>,
) -> Routed {
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
                outbox.push_back(frame.clone());
            } else if let Some(a) = state.attached.get_mut(room_id) {
                if *seq == a.delivered + 1 {
                    a.delivered = *seq;
                    outbox.push_back(frame.clone());
                } else if *seq > a.delivered + 1 {
                    routed.gap = true;
                }
            }
        }
        Event::Broadcast(frame) => outbox.push_back(frame.clone()),
        Event::Updated { room, frame } => {
            if let Some(a) = state.attached.get_mut(room_id) {
                // Online all along: a presence timeout starts when the stream goes away.
                routed.now_present = a.room.settings.presence_timeout.is_none()
                    && room.settings.presence_timeout.is_some();
                a.room = (**room).clone();
            }
            outbox.push_back(frame.clone());
        }
        Event::Detach {
            user,
            reason,
            switched_to,
        } => {
            if *user == state.user && state.detach(room_id).is_some() {
                outbox.push_back(detached_frame(String::new(), room_id, *reason));
                routed.switched_to = switched_to.clone();
            }
        }
        Event::Deleted => {
            if state.detach(room_id).is_some() {
                outbox.push_back(Frame::event(PbEvent::RoomDeleted(pb::RoomDeleted {
                    room_id: room_id.to_string(),
                })));
                outbox.push_back(detached_frame(
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

fn send_answer(request_id: String, result: Result<Message>) -> Frame {
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
