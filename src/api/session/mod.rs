//! One `Subscribe` stream: attach and detach rooms, send messages, ping — and deliver
//! every attached room's events.
//!
//! The session is one loop, polled by hand ([`SessionStream`]): it waits on the
//! client's frames, its sends in flight, its rooms' hubs and its one piece of
//! database work, puts the frames each produces in a small outbox, and hands them to
//! the response body one at a time. Delivery of CHAT messages is tracked per room by
//! seq:
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
//!   session: the session runs only while HTTP/2 lets it send, and a client that
//!   stops reading must not keep a pooled connection;
//! - catch-up reads a page at a time (by count and bytes), and the next page only once
//!   the last one is written;
//! - the client's frames are read as they arrive, also while work runs (h2 closes the
//!   whole connection when too many small frames wait unread), into a queue of at most
//!   [`MAX_QUEUED_FRAMES`]; a frame beyond that is answered at once with
//!   `TOO_MANY_PENDING_FRAMES`.
//!
//! The files: this one has the loop ([`run`]) and the stream's state; `requests.rs`
//! takes client frames (queued in order) and answers them or starts their work;
//! `results.rs` applies what the work found (attaches, catch-up pages); `route.rs`
//! decides what one hub event means for the stream (pure, unit-tested);
//! `attached.rs` records attached rooms with their presence; `frames.rs` and
//! `sends.rs` build answers and hold sends in flight.

mod attached;
mod frames;
mod outbox;
mod requests;
mod results;
mod route;
mod sends;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Code, Status};

use super::gate::Gated;
use super::stop::{Stop, StopWait};
use super::work;
use crate::auth::Verifier;
use crate::domain::{Caller, Clock, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::live::Event;
use crate::live::hub::{Subscription, Switch};
use crate::live::ring::Lagged;
use crate::proto::Frame;
use crate::proto::decode;
use crate::proto::pb;
use crate::proto::pb::subscribe_request::Frame as Request;
use crate::rooms::streams::StreamSlot;
use crate::rooms::{Access, CatchUp, Rooms};
use attached::{AttachedRooms, StreamRooms};
use outbox::Outbox;
use sends::Sends;

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

impl SessionLimits {
    /// Fails with TOO_MANY_ROOMS when a stream would have `rooms` rooms attached,
    /// more than it may.
    pub fn check_rooms(&self, rooms: usize) -> Result<()> {
        if rooms > self.max_rooms_per_stream {
            return Err(Error::TooManyRooms {
                limit: u32::try_from(self.max_rooms_per_stream).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }
}

/// What every stream of one server shares.
#[derive(Clone)]
pub struct Sessions {
    pub rooms: Rooms,
    pub limits: SessionLimits,
    /// Verifies `refresh_token` frames (`None` with `--auth header`).
    pub tokens: Option<Arc<Verifier>>,
    /// The turns of the streams' database work.
    pub work: work::Pool,
    /// Turns true when the server starts shutting down: streams end.
    pub stop: watch::Receiver<bool>,
    /// The same, as Subscribe streams wait for it.
    pub server_stop: Stop,
}

/// What woke the session.
enum Step {
    Stop,
    /// The stream's token expired (past the clock leeway) and was not refreshed.
    Expired,
    Worked(std::result::Result<Done, tokio::task::JoinError>),
    Sent(Frame),
    Room(Arc<RoomId>, Result<Arc<Event>, Lagged>),
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

/// A send waiting to be handed to its writer, and the frame it answers.
struct HandOver {
    request_id: String,
    sending: Pin<Box<dyn Future<Output = Result<crate::rooms::Sent>> + Send>>,
}

/// What a piece of database work found.
enum Done {
    Attach {
        /// `None`: following a switch (answered as an event).
        request_id: Option<String>,
        room_id: RoomId,
        after_seq: Option<u64>,
        /// Boxed: the room is large next to a catch-up's answer.
        found: Result<Box<Access>>,
    },
    CatchUp {
        room_id: RoomId,
        page: Result<CatchUp>,
    },
    /// A `refresh_token` frame's token, verified (or why not).
    Refreshed {
        request_id: String,
        verified: Result<Caller>,
    },
}

/// What a stream keeps between frames.
///
/// A stream holds this and little else between polls: database work runs on tasks of
/// its own, sends are boxed futures, and a send is handed to its writer without
/// waiting unless the writer's queue is full. Every stream keeps this struct's size
/// for its whole life, so what only a busy moment needs is boxed or made on demand.
struct Session {
    caller: Caller,
    limits: SessionLimits,
    /// Where its database work takes its turn.
    pool: work::Pool,
    /// Verifies `refresh_token` frames (`None` with `--auth header`).
    tokens: Option<Arc<Verifier>>,
    /// Fires when the caller's token has expired (past the leeway); `None` without a
    /// token. Boxed: most streams have none, and a timer is large.
    expiry: Option<Timer>,
    state: StreamRooms,
    sends: Sends,
    /// The one piece of database work in progress.
    /// Boxed: most of a stream's life it has none, and the stream keeps this field's
    /// size for all of it.
    work: Option<Box<Work>>,
    /// A send waiting for room in its writer's queue (rare: the queue holds
    /// thousands); boxed, like the work.
    handing: Option<Box<HandOver>>,
    /// Rooms whose stored messages must be read before live ones, in order.
    catch_up: VecDeque<RoomId>,
    /// What waits for its turn (client frames, follows), in order.
    queued: VecDeque<Action>,
    queued_bytes: usize,
    /// Frames ready for the client, in order.
    outbox: Outbox,
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
            && self.handing.is_none()
            && self.queued.is_empty()
    }

    /// Frees a drained outbox queue that grew past a turn's usual need, and a drained
    /// frame queue: most streams send a few frames and then only listen, and a queue's
    /// slots are a request's full size each.
    fn trim(&mut self) {
        self.outbox.trim();
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
        let task = self.pool.spawn(make);
        self.work = Some(Box::new(Work { task, subscription }));
    }
}

/// Runs one Subscribe stream for `caller` until the client cancels it, or has closed
/// its side and no room is left attached, or the server stops (then sends in flight
/// are answered and the stream ends with UNAVAILABLE, so clients reconnect and resume).
/// A frame that is not a valid `SubscribeRequest` ends it with INVALID_ARGUMENT.
pub fn run<I>(sessions: &Sessions, caller: Caller, slot: StreamSlot, inbound: I) -> SessionStream<I>
where
    I: Stream<Item = std::result::Result<pb::SubscribeRequest, Status>> + Send + Unpin + 'static,
{
    SessionStream(Some(Live {
        session: Session::new(sessions, caller),
        stop: sessions.server_stop.wait(),
        // Gated: a room's event wakes the stream, and polling h2's inbound side again
        // each time found nothing but cost a tenth of a delivery's instructions
        // (BENCHMARKS.md).
        inbound: Gated::new(inbound),
        phase: Phase::Running,
        _slot: slot,
    }))
}

/// A Subscribe stream's frames: its session, polled by hand.
///
/// Not an `async` generator: a generator keeps room for everything any of its awaits
/// holds, and its own machinery beside (≈ 1 KB a stream); this holds the session's
/// state, its wait for the server's stop and the gate of the client's frames, and each
/// poll runs the session's loop (`Live::turn`) until it has a frame or must wait.
pub struct SessionStream<I>(Option<Live<I>>);

/// A stream that has not ended: dropping it frees what the stream held (its rooms'
/// subscriptions, the user's stream slot).
struct Live<I> {
    session: Session,
    /// The server's stop.
    stop: StopWait,
    inbound: Gated<I>,
    phase: Phase,
    /// Dropping it frees the user's slot.
    _slot: StreamSlot,
}

/// Where a stream is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// The server is stopping: what is routed goes out, then the sends in flight.
    Stopping,
    /// Answering the sends in flight, then UNAVAILABLE.
    Draining,
}

/// What a turn of the session's loop came to.
enum Turn {
    Frame(Frame),
    Wait,
    /// The stream ends, with this status (`None`: without one).
    End(Option<Status>),
}

impl<I> Stream for SessionStream<I>
where
    I: Stream<Item = std::result::Result<pb::SubscribeRequest, Status>> + Unpin,
{
    type Item = std::result::Result<Frame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(live) = this.0.as_mut() else {
            return Poll::Ready(None);
        };
        match live.turn(cx) {
            Turn::Frame(frame) => Poll::Ready(Some(Ok(frame))),
            Turn::Wait => Poll::Pending,
            Turn::End(status) => {
                this.0 = None;
                Poll::Ready(status.map(Err))
            }
        }
    }
}

impl<I> Live<I>
where
    I: Stream<Item = std::result::Result<pb::SubscribeRequest, Status>> + Unpin,
{
    /// Runs the session until it has a frame for the client, must wait, or ends.
    fn turn(&mut self, cx: &mut Context<'_>) -> Turn {
        let s = &mut self.session;
        loop {
            if self.phase == Phase::Draining {
                return match Pin::new(&mut s.sends).poll_next(cx) {
                    Poll::Ready(Some(sent)) => Turn::Frame(sent),
                    Poll::Ready(None) => Turn::End(Some(shutting_down())),
                    Poll::Pending => Turn::Wait,
                };
            }
            if let Some(frame) = s.outbox.pop_front() {
                return Turn::Frame(frame);
            }
            // A send waiting for room in its writer's queue holds the stream's turn:
            // its frames keep their order.
            if let Some(handing) = &mut s.handing {
                let Poll::Ready(sent) = handing.sending.as_mut().poll(cx) else {
                    return Turn::Wait;
                };
                let HandOver { request_id, .. } = *s.handing.take().expect("a hand-over");
                if let Some(frame) = s.sent(request_id, sent) {
                    s.outbox.push_back(frame);
                }
                continue;
            }
            s.trim();
            if s.finished() {
                return Turn::End(None);
            }
            if self.phase == Phase::Stopping {
                self.phase = Phase::Draining;
                continue;
            }
            if s.work.is_none() {
                // Catching up comes first, one page at a time, each once the last one
                // is written; then what waits in the queue.
                if let Some(room_id) = s.catch_up.pop_front() {
                    s.start_catch_up(room_id);
                    continue;
                }
                if s.next_ready() {
                    s.take_next();
                    continue;
                }
            }
            let Poll::Ready(step) = next_step(s, &mut self.stop, &mut self.inbound, cx) else {
                return Turn::Wait;
            };
            match s.take(step) {
                Next::Go => {}
                Next::Stopping => {
                    self.phase = Phase::Stopping;
                    s.route_ready();
                }
                Next::End(status) => return Turn::End(status),
            }
        }
    }
}

/// What wakes the session next, in this order: the server's stop, the token's expiry,
/// the work in progress, a send's answer, a room's event (not while work is in
/// progress: its frames come first), a client frame. Each source polled and found
/// pending has registered the stream to be woken.
fn next_step<I>(
    s: &mut Session,
    stop: &mut StopWait,
    inbound: &mut Gated<I>,
    cx: &mut Context<'_>,
) -> Poll<Step>
where
    I: Stream<Item = std::result::Result<pb::SubscribeRequest, Status>> + Unpin,
{
    if stop.poll_stopped(cx).is_ready() {
        return Poll::Ready(Step::Stop);
    }
    if let Some(timer) = &mut s.expiry
        && timer.as_mut().poll(cx).is_ready()
    {
        return Poll::Ready(Step::Expired);
    }
    let idle = s.work.is_none();
    if let Some(work) = &mut s.work
        && let Poll::Ready(done) = Pin::new(&mut work.task).poll(cx)
    {
        return Poll::Ready(Step::Worked(done));
    }
    if !s.sends.is_empty()
        && let Poll::Ready(Some(sent)) = Pin::new(&mut s.sends).poll_next(cx)
    {
        return Poll::Ready(Step::Sent(sent));
    }
    if idle
        && !s.state.events.is_empty()
        && let Poll::Ready(Some((room, event))) = Pin::new(&mut s.state.events).poll_next(cx)
    {
        return Poll::Ready(Step::Room(room, event));
    }
    if !s.inbound_done
        && let Poll::Ready(frame) = Pin::new(inbound).poll_next(cx)
    {
        return Poll::Ready(Step::Client(frame));
    }
    Poll::Pending
}

/// Whether a stream goes on after a step.
enum Next {
    Go,
    /// The server is stopping: answer the sends in flight, then end.
    Stopping,
    /// It ends, with this status (`None`: the client went away; nobody reads it).
    End(Option<Status>),
}

impl Session {
    /// A stream of `caller`'s, nothing attached yet.
    fn new(sessions: &Sessions, caller: Caller) -> Session {
        Session {
            state: StreamRooms {
                rooms: sessions.rooms.clone(),
                user: caller.user_id.to_string(),
                attached: AttachedRooms::default(),
                events: StreamMap::with_capacity(1),
            },
            expiry: expiry_timer(&caller, sessions.rooms.clock()),
            caller,
            limits: sessions.limits,
            pool: sessions.work.clone(),
            tokens: sessions.tokens.clone(),
            sends: Sends::default(),
            work: None,
            handing: None,
            catch_up: VecDeque::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            outbox: Outbox::default(),
            inbound_done: false,
        }
    }

    /// Routes the room events the hubs hold for this stream now, at the server's
    /// stop: the stop and an event can wake the stream together, and the stop is
    /// taken first, so a message committed before the stop would be left in the ring
    /// unsent. (Not while work is in progress: its frames come first; a gap is not
    /// read any more — the client resumes from its last seq when it reconnects.)
    fn route_ready(&mut self) {
        use futures_util::FutureExt as _;
        while self.work.is_none()
            && let Some(Some((room, event))) = self.state.events.next().now_or_never()
        {
            let _ = self.take(Step::Room(room, event));
        }
    }

    /// Takes one step.
    fn take(&mut self, step: Step) -> Next {
        match step {
            Step::Stop => return Next::Stopping,
            Step::Expired => {
                // Unary calls with this token are refused from now on; so is the
                // stream. A client refreshes before `exp` to go on.
                return Next::End(Some(token_expired(
                    "send refresh_token before its exp, or open a new stream with a fresh token",
                )));
            }
            Step::Worked(done) => {
                let work = self.work.take().expect("work in progress");
                self.finish(*work, done);
            }
            Step::Sent(answer) => self.outbox.push_back(answer),
            Step::Client(None) => self.inbound_done = true,
            Step::Client(Some(Err(status))) => {
                // A frame that does not decode, or is over the size limit, ends the
                // stream with its status; any other error is the client going away.
                let told = matches!(
                    status.code(),
                    Code::InvalidArgument | Code::ResourceExhausted
                );
                return Next::End(told.then_some(status));
            }
            Step::Client(Some(Ok(request))) => self.enqueue(request),
            // The hot path: routing is synchronous and allocates nothing of its own.
            Step::Room(room_id, Ok(event)) => {
                let routed = route::route(
                    &mut self.state.attached,
                    &self.state.user,
                    self.caller.admin,
                    &room_id,
                    &event,
                    || self.state.rooms.hubs().room_state(&room_id),
                    &mut self.outbox,
                );
                self.follow(&room_id, routed);
            }
            Step::Room(room_id, Err(Lagged(missed))) => {
                crate::telemetry::lagged(missed);
                // Fell behind the ring: read what it missed from the store, which
                // also checks that it may still receive the room.
                self.needs_catch_up(&room_id);
            }
        }
        Next::Go
    }
}

/// The timer of a caller's token expiry: the first second at which a unary call
/// with the token is refused (`exp` plus the leeway every check allows is still
/// accepted, in whole seconds).
/// The timer runs on the rules' clock.
pub(super) fn expiry_timer(caller: &Caller, clock: &Clock) -> Option<Timer> {
    let expires_at = caller.expires_at?;
    let refused_from = expires_at.saturating_add(crate::auth::LEEWAY_SECS + 1);
    let refused_from = UnixMicros(
        i64::try_from(refused_from)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000),
    );
    let left = refused_from.since(clock.now());
    let clock = clock.clone();
    Some(Box::pin(async move { clock.sleep(left).await }))
}

/// A token's expiry timer.
pub(super) type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when the token's timer fires (pending forever without one).
pub(super) async fn expired(expiry: &mut Option<Timer>) {
    match expiry {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How a stream whose token expired ends (`what_to_do`: how the client goes on).
pub(super) fn token_expired(what_to_do: &str) -> Status {
    Status::from(Error::TokenRefused {
        reason: "TOKEN_EXPIRED",
        description: format!("the stream's token expired: {what_to_do}"),
    })
}

/// How a stream ends when the server stops.
pub(super) fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; reconnect and resume")
}
