//! One `Subscribe` stream: attach and detach rooms, send messages, ping — and deliver
//! every attached room's events.
//!
//! The session is a single generator: it waits on the client's frames, its sends in
//! flight, its rooms' hubs and its one piece of database work, puts the frames each
//! produces in a small outbox, and yields them. Delivery of CHAT messages is tracked
//! per room by seq:
//!
//! - attach subscribes to the hub *before* reading the room, so nothing committed in
//!   between is missed; messages at or below the attach point are skipped;
//! - with `after_seq`, stored messages after it are read from the database first, then
//!   live ones — duplicates at the seam are skipped by seq;
//! - a stream that falls behind its hub's ring is told it lagged and reads what it
//!   missed from the database, in order, then carries on live.
//!
//! So each stream gets every CHAT message after its attach point once, in seq order.
//!
//! What a stream may make the server hold is bounded, whatever its client does:
//! - database work runs on tasks of its own ([`super::work`]), never inside the
//!   generator: the generator runs only while HTTP/2 lets it send, and a client that
//!   stops reading must not keep a pooled connection;
//! - catch-up reads a page at a time (by count and bytes), and the next page only once
//!   the last one is written;
//! - the client's frames are read as they arrive, also while work runs (h2 closes the
//!   whole connection when too many small frames wait unread), into a queue of at most
//!   [`MAX_QUEUED_FRAMES`]; a frame beyond that is answered at once with
//!   `TOO_MANY_PENDING_FRAMES`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Code, Status, Streaming};

use super::{convert, work};
use crate::domain::{Caller, DetachReason, Message, Room, RoomId};
use crate::error::{Error, Result};
use crate::live::hub::{Delivery, Held, Subscription, Switch};
use crate::live::{Event, Frame};
use crate::pb;
use crate::pb::subscribe_request::Frame as Request;
use crate::pb::subscribe_response::Event as PbEvent;
use crate::rooms::{Attachment, CatchUp, Rooms};

/// Stored messages read per page while catching up, at most.
const CATCH_UP_PAGE: u32 = 256;
/// Bytes of text and payload read per catch-up page, about (one message more at most).
const CATCH_UP_BYTES: u64 = 256 * 1024;
/// Sends a stream may have in flight; later ones wait in the queue.
const MAX_SENDS_IN_FLIGHT: usize = 256;
/// Client frames a stream may have waiting for their turn.
pub const MAX_QUEUED_FRAMES: usize = 256;
/// How long a stream following a switch waits for the switch to commit before it
/// lets the store decide.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes of text and payload of the sends waiting in a stream's queue, at most.
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// Per-stream limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub max_rooms_per_stream: usize,
}

/// A send handed over, resolving to its answer frame (ack or error).
type PendingSend = Pin<Box<dyn std::future::Future<Output = Frame> + Send>>;

/// A room this stream receives.
struct Attached {
    room_id: RoomId,
    sender_name: String,
    /// Highest CHAT seq delivered (or the attach point).
    delivered: u64,
    /// The room's version this stream last sent or was attached at.
    version: u64,
    /// Whether the room had a presence timeout at that version.
    presence_timeout: bool,
}

/// The rooms a stream receives: a handful at most (`--max-rooms-per-stream`), so a
/// vector searched by id, which costs one entry's size per room where a hash map
/// starts at a table of four.
#[derive(Default)]
struct AttachedRooms(Vec<Attached>);

impl AttachedRooms {
    fn get(&self, room_id: &RoomId) -> Option<&Attached> {
        self.0.iter().find(|a| a.room_id == *room_id)
    }

    fn get_mut(&mut self, room_id: &RoomId) -> Option<&mut Attached> {
        self.0.iter_mut().find(|a| a.room_id == *room_id)
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
        let i = self.0.iter().position(|a| a.room_id == *room_id)?;
        Some(self.0.swap_remove(i))
    }

    fn ids(&self) -> Vec<RoomId> {
        self.0.iter().map(|a| a.room_id.clone()).collect()
    }
}

/// The stream's rooms. A room is recorded here in the same synchronous step that
/// counts the user online in it, and dropping this (the client went away, or the
/// stream ended) detaches every room, so presence is right whichever way the stream
/// ends. A subscription whose attach is still being checked is held by the
/// [`Work`] doing it, and forgets its hub if that is abandoned.
struct Attachments {
    rooms: Rooms,
    user: String,
    attached: AttachedRooms,
    /// Keyed by a shared id: the map hands out a clone of the key with every event,
    /// and a `RoomId` clone would be an allocation per delivery.
    events: StreamMap<Arc<RoomId>, Subscription>,
}

impl Attachments {
    fn detach(&mut self, room_id: &RoomId) -> Option<Attached> {
        let attached = self.attached.remove(room_id)?;
        // Whether the presence timeout applies is the room's latest word on it, which
        // this stream may not have read yet (it may be far behind).
        let timeout = self
            .rooms
            .hubs()
            .room_state(room_id)
            .filter(|state| state.room.version > attached.version)
            .map_or(attached.presence_timeout, |state| {
                state.room.settings.presence_timeout.is_some()
            });
        self.events.remove(room_id);
        self.rooms.stream_detached(room_id, &self.user, timeout);
        Some(attached)
    }

    /// Records an attach whose check passed: the stream receives the room from now on.
    fn record(&mut self, subscription: Subscription, attachment: Attachment, delivered: u64) {
        let room = &attachment.room;
        self.rooms.stream_attached(room, &self.user);
        self.events
            .insert(Arc::clone(subscription.room()), subscription);
        self.attached.insert(Attached {
            room_id: room.id.clone(),
            sender_name: attachment.sender_name,
            delivered,
            version: room.version,
            presence_timeout: room.settings.presence_timeout.is_some(),
        });
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
    Worked(std::result::Result<Done, tokio::task::JoinError>),
    Sent(Frame),
    Room(Arc<RoomId>, Result<Arc<Event>, BroadcastStreamRecvError>),
    Client(Option<std::result::Result<pb::SubscribeRequest, Status>>),
}

/// Something the stream does in its turn, in order.
enum Action {
    /// A client frame.
    Request(pb::SubscribeRequest),
    /// Follow the user into the room it switched to.
    Follow(Box<Switch>),
}

impl Action {
    fn is_send(&self) -> bool {
        matches!(
            self,
            Action::Request(pb::SubscribeRequest {
                frame: Some(Request::Send(_)),
                ..
            })
        )
    }

    /// The bytes it holds that count against [`MAX_QUEUED_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            Action::Request(pb::SubscribeRequest {
                frame: Some(Request::Send(send)),
                ..
            }) => send.text.len() + send.payload.len(),
            _ => 0,
        }
    }
}

/// The stream's database work in progress, on a task of its own.
struct Work {
    task: JoinHandle<Done>,
    /// An attach's subscription, made before the read so nothing is missed; dropped
    /// (and the hub released) if the stream ends first.
    subscription: Option<Subscription>,
}

/// What a piece of database work found.
enum Done {
    Attach {
        /// `None`: following a switch (answered as an event).
        request_id: Option<String>,
        room_id: RoomId,
        after_seq: Option<u64>,
        found: Result<Attachment>,
    },
    CatchUp {
        room_id: RoomId,
        page: Result<CatchUp>,
    },
}

/// Outbox capacity a stream keeps once drained; a larger one (a catch-up page) is freed.
const OUTBOX_KEPT: usize = 8;

/// What a stream keeps between frames.
///
/// The generator in [`run`] holds this and little else across its yields: database
/// work runs on tasks of its own and sends are boxed futures. A generator's state is
/// as large as the most it holds at any await, for as long as the stream lives, so
/// awaiting such work in place would make every idle stream cost what its busiest
/// moment needed.
struct Session {
    caller: Caller,
    limits: SessionLimits,
    state: Attachments,
    sends: Sends,
    /// The one piece of database work in progress.
    /// Boxed: most of a stream's life it has none, and the generator keeps this field's
    /// size for all of it.
    work: Option<Box<Work>>,
    /// Rooms whose stored messages must be read before live ones, in order.
    catch_up: VecDeque<RoomId>,
    /// What waits for its turn (client frames, follows), in order.
    queued: VecDeque<Action>,
    queued_bytes: usize,
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
            && self.work.is_none()
            && self.queued.is_empty()
    }

    /// Frees a drained outbox that grew past [`OUTBOX_KEPT`], and a drained queue:
    /// most streams send a few frames and then only listen, and a queue's slots are
    /// a request's full size each.
    fn trim(&mut self) {
        if self.outbox.is_empty() && self.outbox.capacity() > OUTBOX_KEPT {
            self.outbox = VecDeque::new();
        }
        if self.queued.is_empty() && self.queued.capacity() > 0 {
            self.queued = VecDeque::new();
        }
    }

    /// Starts the work `make` returns on a task of its own.
    fn spawn<F>(
        &mut self,
        make: impl FnOnce() -> F + Send + 'static,
        subscription: Option<Subscription>,
    ) where
        F: std::future::Future<Output = Done> + Send + 'static,
    {
        let task = work::spawn(make);
        self.work = Some(Box::new(Work { task, subscription }));
    }

    /// Takes a client frame: queued for its turn, or refused when the queue is full.
    fn enqueue(&mut self, request: pb::SubscribeRequest) {
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
    fn next_ready(&self) -> bool {
        self.queued
            .front()
            .is_some_and(|a| !(a.is_send() && self.sends.len() >= MAX_SENDS_IN_FLIGHT))
    }

    /// Starts reading the next page of stored messages for a room catching up.
    fn start_catch_up(&mut self, room_id: RoomId) {
        let Some(from) = self.state.attached.get(&room_id).map(|a| a.delivered) else {
            return;
        };
        let rooms = self.state.rooms.clone();
        let caller = self.caller.clone();
        self.spawn(
            move || async move {
                let page = rooms
                    .catch_up(&caller, &room_id, from, CATCH_UP_PAGE, CATCH_UP_BYTES)
                    .await;
                Done::CatchUp { room_id, page }
            },
            None,
        );
    }

    /// Queues a catch-up of a room unless one is queued already.
    fn needs_catch_up(&mut self, room_id: &RoomId) {
        if !self.catch_up.contains(room_id) {
            self.catch_up.push_back(room_id.clone());
        }
    }

    /// Applies what a piece of database work found.
    fn finish(&mut self, work: Work, done: std::result::Result<Done, tokio::task::JoinError>) {
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
                let answer = match found {
                    Ok(attachment) => {
                        let subscription = work.subscription.expect("an attach subscribes");
                        let room = attachment.room.clone();
                        let last = room.last_seq;
                        let delivered = after_seq.map_or(last, |after| after.min(last));
                        self.state.record(subscription, attachment, delivered);
                        if delivered < last {
                            self.needs_catch_up(&room_id);
                        }
                        // The user counts as online from this stream on.
                        let room = self.state.rooms.with_presence(room);
                        Ok(attached_event(room))
                    }
                    Err(error) => Err(error),
                };
                let frame = match (request_id, answer) {
                    (Some(id), Ok(event)) => Frame::reply(id, event),
                    (Some(id), Err(error)) => error_frame(id, error),
                    (None, Ok(event)) => Frame::event(event),
                    (None, Err(error)) => error_frame(String::new(), error),
                };
                self.outbox.push_back(frame);
            }
            Done::CatchUp { room_id, page } => match page {
                Ok(CatchUp { messages, more }) => {
                    if more {
                        self.catch_up.push_front(room_id.clone());
                    }
                    for message in messages {
                        if let Some(a) = self.state.attached.get_mut(&room_id)
                            && message.seq > a.delivered
                        {
                            a.delivered = message.seq;
                            self.outbox
                                .push_back(Frame::event(PbEvent::Message((&message).into())));
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
            },
        }
    }

    /// Routes the events waiting in one room's ring now, without waiting for more.
    fn route_waiting(&mut self, room_id: &RoomId) {
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
                std::task::Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => continue,
                _ => return,
            };
            let routed = route(&mut self.state, &key, &event, &mut self.outbox);
            self.follow(&key, routed);
        }
    }

    /// Does what routing an event asked for besides its frames.
    fn follow(&mut self, room_id: &RoomId, routed: Routed) {
        if routed.gap {
            self.needs_catch_up(room_id);
        }
        if routed.now_present {
            self.state
                .rooms
                .stream_now_present(room_id, self.caller.user_id.as_str());
        }
        if let Some(switch) = routed.switched_to {
            self.queued.push_front(Action::Follow(switch));
        }
    }

    /// Takes the next action off the queue: answers it, or starts its database work.
    async fn take_next(&mut self) {
        let Some(action) = self.queued.pop_front() else {
            return;
        };
        self.queued_bytes -= action.bytes();
        match action {
            Action::Request(request) => self.handle_request(request).await,
            Action::Follow(switch) => {
                // Follow the user into the room it switched to, from now on.
                if !self.state.attached.contains(&switch.to.id) {
                    let (room_id, after) = (switch.to.id.clone(), switch.to.last_seq);
                    self.start_attach(None, room_id, Some(after), Some(switch.committed));
                }
            }
        }
    }

    /// Answers one client frame (or starts the work that will).
    async fn handle_request(&mut self, request: pb::SubscribeRequest) {
        let request_id = request.request_id;
        let answer = match request.frame {
            Some(Request::Attach(attach)) => {
                match convert::room_id("attach.room_id", attach.room_id) {
                    Ok(room_id) => {
                        self.start_attach(Some(request_id), room_id, attach.after_seq, None);
                        return;
                    }
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
                    Ok(room_id) => {
                        self.catch_up.retain(|r| *r != room_id);
                        detached_frame(request_id, &room_id, DetachReason::Requested)
                    }
                    Err(error) => error_frame(request_id, error),
                }
            }
            Some(Request::Send(send)) => {
                match convert::draft(send, self.state.rooms.message_limits()) {
                    Err(error) => error_frame(request_id, error),
                    Ok(draft) => {
                        let name = self
                            .state
                            .attached
                            .get(&draft.room_id)
                            .map(|a| a.sender_name.clone());
                        let rooms = &self.state.rooms;
                        if name.is_none() && !draft.kind.is_stored() {
                            // Membership is read from the store: on a task of its own.
                            let rooms = rooms.clone();
                            let caller = self.caller.clone();
                            let task = work::spawn(move || async move {
                                rooms.send(&caller, draft, None).await
                            });
                            self.sends.push(Box::pin(async move {
                                let sent = task.await.unwrap_or_else(|error| {
                                    Err(Error::Internal(format!("a send failed: {error}")))
                                });
                                send_answer(request_id, sent)
                            }));
                            return;
                        }
                        // Handed over here, in frame order; only the answers are awaited
                        // concurrently, so one stream's messages keep their order.
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

    /// Starts attaching a room: subscribes to its hub first (whatever commits from now
    /// on is in the ring), then checks access and reads the room on a task — after
    /// `switch` says its switch committed, when following one.
    fn start_attach(
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
        } else if self.state.attached.len() >= self.limits.max_rooms_per_stream {
            Some(Error::TooManyRooms {
                limit: u32::try_from(self.limits.max_rooms_per_stream).unwrap_or(u32::MAX),
            })
        } else {
            None
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
                if let Some(mut committed) = switch {
                    let outcome =
                        tokio::time::timeout(FOLLOW_WAIT, committed.wait_for(Option::is_some));
                    if let Ok(Ok(outcome)) = outcome.await
                        && *outcome == Some(false)
                    {
                        // The switch failed: the user is not in the room to follow.
                        let found = Err(Error::NotAMember {
                            room_id: room_id.to_string(),
                        });
                        return Done::Attach {
                            request_id,
                            room_id,
                            after_seq,
                            found,
                        };
                    }
                }
                let found = rooms.attach(&caller, &room_id).await;
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

/// Runs one Subscribe stream for `caller` until the client cancels it, or has closed
/// its side and no room is left attached, or `stop` turns true (then sends in flight
/// are answered and the stream ends with UNAVAILABLE, so clients reconnect and resume).
/// A frame that is not a valid `SubscribeRequest` ends it with INVALID_ARGUMENT.
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
            work: None,
            catch_up: VecDeque::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
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
            s.trim();
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
            if s.work.is_none() {
                // Catching up comes first, one page at a time, each once the last one
                // is written; then what waits in the queue.
                if let Some(room_id) = s.catch_up.pop_front() {
                    s.start_catch_up(room_id);
                    continue;
                }
                if s.next_ready() {
                    Box::pin(s.take_next()).await;
                    continue;
                }
            }
            let idle = s.work.is_none();
            let step = tokio::select! {
                biased;
                () = &mut stopped => Step::Stop,
                done = work_done(&mut s.work), if !idle => Step::Worked(done),
                Some(sent) = s.sends.next(), if !s.sends.is_empty() => Step::Sent(sent),
                Some((room, event)) = s.state.events.next(), if idle && !s.state.events.is_empty() => Step::Room(room, event),
                frame = inbound.next(), if !s.inbound_done => Step::Client(frame),
            };
            match step {
                Step::Stop => stopping = true,
                Step::Worked(done) => {
                    let work = s.work.take().expect("work in progress");
                    s.finish(*work, done);
                }
                Step::Sent(answer) => s.outbox.push_back(answer),
                Step::Client(None) => s.inbound_done = true,
                Step::Client(Some(Err(status))) => {
                    // A frame that does not decode ends the stream with its status; any
                    // other error is the client going away.
                    if status.code() == Code::InvalidArgument {
                        yield Err(status);
                    }
                    break;
                }
                Step::Client(Some(Ok(request))) => s.enqueue(request),
                // The hot path: routing is synchronous and allocates nothing of its own.
                Step::Room(room_id, Ok(event)) => {
                    let routed = route(&mut s.state, &room_id, &event, &mut s.outbox);
                    s.follow(&room_id, routed);
                }
                Step::Room(room_id, Err(BroadcastStreamRecvError::Lagged(_))) => {
                    // Fell behind the ring: read what it missed from the store, which
                    // also checks that it may still receive the room.
                    s.needs_catch_up(&room_id);
                }
            }
        }
    }
}

/// The result of the work in progress (pending forever when there is none: `select!`
/// makes every branch's future, also those it will not poll).
async fn work_done(
    work: &mut Option<Box<Work>>,
) -> std::result::Result<Done, tokio::task::JoinError> {
    match work {
        Some(work) => (&mut work.task).await,
        None => std::future::pending().await,
    }
}

/// What one hub event means for this stream.
#[derive(Default)]
struct Routed {
    /// A seq was skipped (or its frame was already evicted): read from the store.
    gap: bool,
    /// The user switched rooms: attach this one.
    switched_to: Option<Box<Switch>>,
    /// The room gained a presence timeout: record the user online.
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
        Event::Message { seq, held } => {
            let upgraded;
            let delivery: &Delivery = match held {
                Held::Inline(delivery) => delivery,
                Held::Weak(weak) => {
                    upgraded = weak.upgrade();
                    match upgraded.as_deref() {
                        Some(delivery) => delivery,
                        None => {
                            // Evicted by the room's byte budget: CHAT is read from
                            // the store, the other kinds are gone for this stream.
                            routed.gap = *seq > 0
                                && state
                                    .attached
                                    .get(room_id)
                                    .is_some_and(|a| *seq > a.delivered);
                            return routed;
                        }
                    }
                }
            };
            if delivery
                .targets
                .as_ref()
                .is_some_and(|t| !t.contains(&state.user))
            {
                return routed;
            }
            if *seq == 0 {
                outbox.push_back(delivery.frame.clone());
            } else if let Some(a) = state.attached.get_mut(room_id) {
                if *seq == a.delivered + 1 {
                    a.delivered = *seq;
                    outbox.push_back(delivery.frame.clone());
                } else if *seq > a.delivered + 1 {
                    routed.gap = true;
                }
            }
        }
        Event::Broadcast(frame) => outbox.push_back(frame.clone()),
        Event::Updated { version } => {
            let Some(a) = state.attached.get_mut(room_id) else {
                return routed;
            };
            if *version <= a.version {
                return routed;
            }
            // The latest state, once: several updates this stream has not sent yet
            // go out as the newest of them.
            if let Some(latest) = state.rooms.hubs().room_state(room_id)
                && latest.room.version > a.version
            {
                let timeout = latest.room.settings.presence_timeout.is_some();
                // Online all along: a presence timeout starts when the stream goes away.
                routed.now_present = timeout && !a.presence_timeout;
                a.presence_timeout = timeout;
                a.version = latest.room.version;
                outbox.push_back(latest.frame.clone());
            }
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

/// A failed client frame, as a `StreamError` event (the stream goes on). Clients get
/// the code, the reason and the same message a unary call would carry.
fn error_frame(request_id: String, error: Error) -> Frame {
    let (code, reason) = error.code_and_reason();
    Frame::reply(
        request_id,
        PbEvent::Error(pb::StreamError {
            code: code as i32,
            reason: reason.to_string(),
            message: error.public_message(),
        }),
    )
}
