//! Per-room fan-out.
//!
//! Each live room (one with at least one attached stream) has a `Hub`: a
//! [`Ring`] of recent events, which holds only what some stream has still to read
//! (an idle room's ring is empty and holds no storage). Publishing encodes an event
//! once and puts one shared copy in the ring; every attached stream reads the ring at
//! its own pace with its own cursor. Nothing is queued per stream, so an idle
//! subscriber costs a cursor, and a slow one cannot hold the room back: when it falls
//! more than the ring's length behind, its next read reports how far it lagged, and
//! the stream catches up on stored (CHAT) messages from the database by seq. Unstored
//! kinds (BARRAGE, COMMAND) are simply gone for it — the first thing dropped under
//! load.
//!
//! Member join/leave events are coalesced ([`super::members`]): changes within
//! `Hubs::coalesce_window` go out as one `MembersJoined`/`MembersLeft` frame per run
//! of the same kind.
//!
//! What a ring may hold is bounded in bytes as well as in slots, because a stream
//! that stops reading keeps every event it has not read alive:
//! - a message frame larger than [`INLINE_FRAME`] is held by the hub in a FIFO of at
//!   most `retained_bytes`; the ring only points at it ([`Held::Weak`]). A stream that
//!   reaches a frame already evicted treats it like a lag: CHAT is read from the
//!   store, BARRAGE and COMMAND are gone for it;
//! - a room update is one shared value per room ([`RoomState`]): the ring only says
//!   that the room changed, and a stream sends the latest state once, however many
//!   updates it missed. One copy of the room exists, not one per stream and update.
//!
//! A hub also keeps what it heard of mutes ([`MuteNews`]): the room's own `muted`
//! setting, in its state, and each user's latest mute or unmute since the hub began,
//! told as they happen rather than through the ring, so a stream that reads its ring
//! late still sends under the latest word.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;
use tokio_util::task::TaskTracker;

use super::broker::{Alone, Broker, Relayed, RoomEvent};
use super::members::{MemberChange, MemberChanges, coalesce, frames};
use super::mutes::MuteLog;
use super::ring::{Lagged, Receiver, Ring};
use crate::domain::{DetachReason, Member, MemberEvents, Message, MutedUntil, Room, RoomId};
use crate::proto::Frame;
use crate::proto::encode::event;

/// Message frames up to this size live in the ring itself; larger ones are held by
/// the hub under its byte budget.
pub const INLINE_FRAME: usize = 1024;

/// A message as streams deliver it: its frame and who may receive it.
#[derive(Debug)]
pub struct Delivery {
    pub frame: Frame,
    /// `None`: every attached stream.
    pub targets: Option<Vec<String>>,
}

/// A message in the ring: small ones in place, large ones held by the hub.
#[derive(Debug)]
pub enum Held {
    Inline(Delivery),
    /// Gone once the hub's byte budget evicted it.
    Weak(Weak<Delivery>),
}

/// Where a switching user's streams go. A detach is published before the change
/// commits (so that no message committed after it can reach the leaver first); the
/// streams follow into `to`, from `after_seq` on, once `committed` says the switch
/// held.
#[derive(Clone, Debug)]
pub struct Switch {
    pub to: RoomId,
    /// `to`'s last seq as the switch left it: what follows is new to the streams.
    pub after_seq: u64,
    /// `Some(true)` once committed, `Some(false)` if the switch failed; closed without
    /// a word if the call was abandoned (the store then tells).
    pub committed: tokio::sync::watch::Receiver<Option<bool>>,
}

/// What streams need of a room that changed: its version, whether it has a presence
/// timeout, and its `RoomUpdated` frame.
#[derive(Debug)]
pub struct RoomState {
    pub version: u64,
    pub presence_timeout: bool,
    /// The room's `muted` setting.
    pub muted: bool,
    pub frame: Frame,
}

/// What a hub heard of the mutes on one user: the room's latest state (`None`: not
/// updated since the hub began) and the user's latest mute (`Some(None)`: lifted;
/// `None`: nothing heard since the hub began).
#[derive(Debug, Default)]
pub struct MuteNews {
    pub room: Option<Arc<RoomState>>,
    pub member: Option<Option<MutedUntil>>,
}

/// One event in a room's ring: what a stream needs to route it, and its encoded frame.
#[derive(Debug)]
pub enum Event {
    /// A message. `seq` is 0 for unstored kinds.
    Message { seq: u64, held: Held },
    /// A frame for every attached stream (member events).
    Broadcast(Frame),
    /// The room's name, attributes or settings changed (to `version`): streams send
    /// the room's latest state ([`Hubs::room_state`]) if they have not sent it yet.
    Updated { version: u64 },
    /// The streams of `user` must stop receiving this room; on a switch they move to
    /// `switched_to`. With `unless_admin`, streams whose caller is an admin stay: the
    /// user is no longer a member, and admins need not be one (a repair).
    Detach {
        user: String,
        reason: DetachReason,
        switched_to: Option<Box<Switch>>,
        unless_admin: bool,
    },
    /// The room was deleted: every stream detaches.
    Deleted,
    /// The store holds messages up to `seq`, some of which this node never published
    /// (another node's, lost on the bus): streams behind it read them from the store.
    Behind { seq: u64 },
}

struct Hub {
    sender: Ring<Arc<Event>>,
    /// Member changes waiting for the coalescing window to close.
    pending: Mutex<MemberChanges>,
    /// Large message frames the ring points at, oldest first, within the budget.
    retained: Mutex<Retained>,
    /// The room as its last update left it (`None`: not updated since the hub began).
    state: Mutex<Option<Arc<RoomState>>>,
    /// The highest seq published here (or known to be stored, see [`Hubs::behind`]).
    highest: std::sync::atomic::AtomicU64,
    /// What the hub heard of mutes since it began.
    mutes: Mutex<MuteLog>,
}

#[derive(Default)]
struct Retained {
    /// Each with the bytes it counts for.
    deliveries: VecDeque<(Arc<Delivery>, usize)>,
    bytes: usize,
}

/// Every live room's hub.
pub struct Hubs {
    rooms: Mutex<HashMap<RoomId, Arc<Hub>>>,
    capacity: usize,
    retained_bytes: usize,
    coalesce_window: Duration,
    /// Where events go besides this node's streams.
    broker: Arc<dyn Broker>,
    /// Owns the coalescing windows' flushes (the server awaits them when it stops).
    tasks: TaskTracker,
}

/// One stream's receipt of a room's events. Dropping it forgets the room's hub once
/// nobody else receives it, so however a stream ends — or a half-done attach is
/// abandoned — no hub is left behind.
pub struct Subscription {
    events: Option<Receiver<Arc<Event>>>,
    hubs: Arc<Hubs>,
    room: Arc<RoomId>,
}

impl Subscription {
    /// The room, shared (a stream keys its subscriptions by it).
    pub fn room(&self) -> &Arc<RoomId> {
        &self.room
    }
}

impl Stream for Subscription {
    type Item = Result<Arc<Event>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.events.as_mut() {
            Some(events) => Pin::new(events).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The receiver goes first: the hub is released once no receiver is left.
        self.events = None;
        self.hubs.release(&self.room);
    }
}

impl Hubs {
    /// Hubs whose rings hold `capacity` events and at most `retained_bytes` of large
    /// message frames, coalescing member events over `window` (on tasks `tasks` owns).
    pub fn new(
        capacity: usize,
        retained_bytes: usize,
        window: Duration,
        tasks: TaskTracker,
    ) -> Self {
        Hubs {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            retained_bytes,
            coalesce_window: window,
            broker: Arc::new(Alone),
            tasks,
        }
    }

    /// The same, publishing through `broker` too (a cluster node's relay to the
    /// other nodes).
    pub fn with_broker(self, broker: Arc<dyn Broker>) -> Self {
        Hubs { broker, ..self }
    }

    /// Starts receiving a room's events from now on.
    pub fn subscribe(self: &Arc<Self>, room: &RoomId) -> Subscription {
        let receiver = {
            let mut rooms = self.rooms.lock().expect("hubs lock");
            let hub = rooms.entry(room.clone()).or_insert_with(|| {
                Arc::new(Hub {
                    sender: Ring::new(self.capacity),
                    pending: Mutex::new(MemberChanges::default()),
                    retained: Mutex::new(Retained::default()),
                    state: Mutex::new(None),
                    highest: Default::default(),
                    mutes: Mutex::default(),
                })
            });
            hub.sender.subscribe()
        };
        Subscription {
            events: Some(receiver),
            hubs: Arc::clone(self),
            room: Arc::new(room.clone()),
        }
    }

    /// The room as its latest update left it, if it was updated while live.
    pub fn room_state(&self, room: &RoomId) -> Option<Arc<RoomState>> {
        let hub = self.hub(room)?;
        let state = hub.state.lock().expect("room state lock");
        state.clone()
    }

    /// What this node heard of the mutes on `user` in a room since its hub began.
    pub fn mute_news(&self, room: &RoomId, user: &str) -> MuteNews {
        let Some(hub) = self.hub(room) else {
            return MuteNews::default();
        };
        let state = hub.state.lock().expect("room state lock").clone();
        let member = hub.mutes.lock().expect("mutes lock").latest(user);
        MuteNews {
            room: state,
            member,
        }
    }

    /// Tells every node's streams that `user` was muted in a room until `mute` says
    /// (`None`: the mute was lifted).
    pub fn member_muted(&self, room: &RoomId, user: &str, mute: Option<MutedUntil>) {
        self.broker.publish(room, &mut || RoomEvent::MuteChanged {
            user: user.to_string(),
            mute,
        });
        self.member_muted_here(room, user, mute);
    }

    /// Tells this node's streams that `user` was muted in a room (or no longer is).
    pub fn member_muted_here(&self, room: &RoomId, user: &str, mute: Option<MutedUntil>) {
        if let Some(hub) = self.hub(room) {
            hub.mutes.lock().expect("mutes lock").record(user, mute);
        }
    }

    /// Forgets a room's hub once its last receiver is gone (call after dropping one).
    fn release(&self, room: &RoomId) {
        let mut rooms = self.rooms.lock().expect("hubs lock");
        if rooms
            .get(room)
            .is_some_and(|hub| hub.sender.receiver_count() == 0)
        {
            rooms.remove(room);
        }
    }

    fn hub(&self, room: &RoomId) -> Option<Arc<Hub>> {
        self.rooms.lock().expect("hubs lock").get(room).cloned()
    }

    /// Publishes messages (a room's, in seq order), here and through the broker. Each
    /// is encoded once, and only if someone receives it: a room nobody receives
    /// costs a lookup (on one node).
    pub fn publish_messages<'a>(
        &self,
        room: &RoomId,
        messages: impl IntoIterator<Item = &'a Message>,
    ) {
        let hub = self.hub(room);
        let targets = |m: &Message| (!m.to_user_ids.is_empty()).then(|| m.to_user_ids.clone());
        for message in messages {
            let mut encoded = None;
            self.broker.publish(room, &mut || RoomEvent::Message {
                seq: message.seq,
                frame: encoded
                    .get_or_insert_with(|| Frame::event(event::message(message)))
                    .clone(),
                targets: targets(message),
            });
            if let Some(hub) = &hub {
                let frame = encoded.unwrap_or_else(|| Frame::event(event::message(message)));
                self.deliver(hub, message.seq, frame, targets(message));
            }
        }
    }

    /// Applies an event another node relayed, to this node's streams only.
    pub fn apply_relayed(&self, relayed: Relayed) {
        let room = &relayed.room;
        match relayed.event {
            RoomEvent::Deleted => self.delete_here(room),
            RoomEvent::Detach {
                user,
                reason,
                switched_to,
            } => {
                let switched_to = switched_to.map(|(to, after_seq)| Switch {
                    to,
                    after_seq,
                    // Relayed once committed.
                    committed: tokio::sync::watch::channel(Some(true)).1,
                });
                self.detach_here(room, &user, reason, switched_to);
            }
            event => {
                let Some(hub) = self.hub(room) else { return };
                match event {
                    RoomEvent::Message {
                        seq,
                        frame,
                        targets,
                    } => self.deliver(&hub, seq, frame, targets),
                    RoomEvent::Broadcast(frame) => {
                        let streams = hub.sender.send(Arc::new(Event::Broadcast(frame)));
                        crate::telemetry::delivered(streams);
                    }
                    RoomEvent::Updated {
                        version,
                        presence_timeout,
                        muted,
                        frame,
                    } => update(
                        &hub,
                        RoomState {
                            version,
                            presence_timeout,
                            muted,
                            frame,
                        },
                    ),
                    RoomEvent::MuteChanged { user, mute } => {
                        self.member_muted_here(room, &user, mute);
                    }
                    RoomEvent::Deleted | RoomEvent::Detach { .. } => {}
                }
            }
        }
    }

    fn deliver(&self, hub: &Hub, seq: u64, frame: Frame, targets: Option<Vec<String>>) {
        let target_bytes: usize = targets.iter().flatten().map(String::len).sum();
        let size = frame.wire().len() + target_bytes;
        let delivery = Delivery { frame, targets };
        let held = if size <= INLINE_FRAME {
            Held::Inline(delivery)
        } else {
            let delivery = Arc::new(delivery);
            let weak = Arc::downgrade(&delivery);
            let mut retained = hub.retained.lock().expect("retained lock");
            retained.bytes += size;
            retained.deliveries.push_back((delivery, size));
            // The newest always stays: every stream reading live gets it.
            while retained.bytes > self.retained_bytes && retained.deliveries.len() > 1 {
                let (_, evicted) = retained.deliveries.pop_front().expect("not empty");
                retained.bytes -= evicted;
            }
            Held::Weak(weak)
        };
        hub.highest
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
        let streams = hub.sender.send(Arc::new(Event::Message { seq, held }));
        crate::telemetry::delivered(streams);
    }

    /// How many rooms are live (have a stream attached here).
    pub fn live_room_count(&self) -> usize {
        self.rooms.lock().expect("hubs lock").len()
    }

    /// The live rooms (those with a stream attached here).
    pub fn live_rooms(&self) -> Vec<RoomId> {
        self.rooms
            .lock()
            .expect("hubs lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The store holds a room's messages up to `stored`: if this node published fewer,
    /// its streams are told to read the rest from the store.
    pub fn behind(&self, room: &RoomId, stored: u64) {
        let Some(hub) = self.hub(room) else { return };
        let before = hub
            .highest
            .fetch_max(stored, std::sync::atomic::Ordering::Relaxed);
        if before < stored {
            crate::telemetry::bus_gap();
            hub.sender.send(Arc::new(Event::Behind { seq: stored }));
        }
    }

    /// The version of the room's state this node's streams were last told.
    pub fn room_version(&self, room: &RoomId) -> Option<u64> {
        self.room_state(room).map(|s| s.version)
    }

    /// Tells every stream the room changed: the new state replaces the hub's one
    /// (older states are freed once no stream is sending them).
    pub fn room_updated(&self, room: &Room) {
        let hub = self.hub(&room.id);
        let mut state = None;
        self.broker.publish(&room.id, &mut || {
            let state = state.get_or_insert_with(|| RoomState::of(room));
            RoomEvent::Updated {
                version: state.version,
                presence_timeout: state.presence_timeout,
                muted: state.muted,
                frame: state.frame.clone(),
            }
        });
        if let Some(hub) = hub {
            update(&hub, state.unwrap_or_else(|| RoomState::of(room)));
        }
    }

    /// Tells this node's streams the room changed (and nobody else: a repair).
    pub fn room_updated_here(&self, room: &Room) {
        if let Some(hub) = self.hub(&room.id) {
            update(&hub, RoomState::of(room));
        }
    }

    /// Tells every stream the room is gone, and forgets the hub.
    pub fn room_deleted(&self, room: &RoomId) {
        self.broker.publish(room, &mut || RoomEvent::Deleted);
        self.delete_here(room);
    }

    /// Tells this node's streams the room is gone (and nobody else: a repair).
    pub fn delete_here(&self, room: &RoomId) {
        let hub = self.rooms.lock().expect("hubs lock").remove(room);
        if let Some(hub) = hub {
            hub.sender.send(Arc::new(Event::Deleted));
        }
    }

    /// Detaches every stream of `user` from `room` at once. The other nodes are told
    /// too; of a switch, once it committed (they cannot wait on this node's commit).
    pub fn detach_user(
        &self,
        room: &RoomId,
        user: &str,
        reason: DetachReason,
        switched_to: Option<Switch>,
    ) {
        let detach = |switched_to| RoomEvent::Detach {
            user: user.to_string(),
            reason,
            switched_to,
        };
        match &switched_to {
            None => self.broker.publish(room, &mut || detach(None)),
            Some(switch) => self.broker.publish_once_committed(
                room,
                detach(Some((switch.to.clone(), switch.after_seq))),
                switch.committed.clone(),
            ),
        }
        self.detach_here(room, user, reason, switched_to);
    }

    /// Detaches `user`'s streams on this node (and nobody else's: a repair).
    pub fn detach_here(
        &self,
        room: &RoomId,
        user: &str,
        reason: DetachReason,
        switched_to: Option<Switch>,
    ) {
        let Some(hub) = self.hub(room) else { return };
        hub.sender.send(Arc::new(Event::Detach {
            user: user.to_string(),
            reason,
            switched_to: switched_to.map(Box::new),
            unless_admin: false,
        }));
    }

    /// Detaches the streams of `user`, found not to be a member, on this node — except
    /// those whose caller is an admin, who may watch a room without being a member (a
    /// repair: whether a stream's caller is an admin is the caller's, a token's
    /// `roles` claim included, and only the stream knows it).
    pub fn detach_non_member_here(&self, room: &RoomId, user: &str) {
        let Some(hub) = self.hub(room) else { return };
        hub.sender.send(Arc::new(Event::Detach {
            user: user.to_string(),
            reason: DetachReason::Left,
            switched_to: None,
            unless_admin: true,
        }));
    }

    /// Announces a join (`room` as it is after it), coalesced with others in the
    /// same window.
    pub fn member_joined(&self, room: &Room, member: Member) {
        self.member_changed(room, member, true, None);
    }

    /// Announces a leave (`room` as it is after it), or a removal by `kicked_by`,
    /// coalesced with others in the same window.
    pub fn member_left(&self, room: &Room, member: Member, kicked_by: Option<&str>) {
        self.member_changed(room, member, false, kicked_by.map(str::to_string));
    }

    /// Suppressed rooms still go through here so that the order of events stays the
    /// same; their frames are simply not sent.
    fn member_changed(&self, room: &Room, member: Member, joined: bool, kicked_by: Option<String>) {
        let change = MemberChange {
            joined,
            member,
            member_count: room.member_count,
            suppressed: room.settings.member_events == MemberEvents::None,
            kicked_by,
        };
        let Some(hub) = self.hub(&room.id) else {
            // No stream here to coalesce for: the other nodes (if any) get the change
            // alone.
            if change.suppressed {
                return;
            }
            let mut change = Some(change);
            self.broker.publish(&room.id, &mut || {
                let changes = change.take().into_iter().collect();
                let frame = frames(&room.id, coalesce(changes)).next();
                RoomEvent::Broadcast(frame.expect("a change not suppressed makes a frame"))
            });
            return;
        };
        let mut pending = hub.pending.lock().expect("pending lock");
        pending.changes.push(change);
        if !pending.flush_scheduled {
            pending.flush_scheduled = true;
            let room_id = room.id.clone();
            let hub = Arc::clone(&hub);
            let broker = self.broker.clone();
            let window = self.coalesce_window;
            self.tasks.spawn(async move {
                tokio::time::sleep(window).await;
                flush(&room_id, &hub, broker.as_ref());
            });
        }
    }
}

impl RoomState {
    /// The state of `room`, its frame encoded.
    fn of(room: &Room) -> RoomState {
        RoomState {
            version: room.version,
            presence_timeout: room.settings.presence_timeout.is_some(),
            muted: room.settings.muted,
            frame: Frame::event(event::room_updated(room)),
        }
    }
}

/// Makes `state` the hub's room state and tells the streams, unless the hub has that
/// version or a newer one already. (The frame is encoded before, outside the lock.)
fn update(hub: &Hub, state: RoomState) {
    let version = state.version;
    {
        let mut current = hub.state.lock().expect("room state lock");
        if current.as_ref().is_some_and(|s| s.version >= version) {
            return;
        }
        *current = Some(Arc::new(state));
    }
    hub.sender.send(Arc::new(Event::Updated { version }));
}

/// Sends the pending member changes as one frame per run of joins or leaves, here
/// and to the other nodes.
fn flush(room_id: &RoomId, hub: &Hub, broker: &dyn Broker) {
    let changes = {
        let mut pending = hub.pending.lock().expect("pending lock");
        pending.flush_scheduled = false;
        std::mem::take(&mut pending.changes)
    };
    for frame in frames(room_id, coalesce(changes)) {
        broker.publish(room_id, &mut || RoomEvent::Broadcast(frame.clone()));
        hub.sender.send(Arc::new(Event::Broadcast(frame)));
    }
}
