//! A room's ring of recent events: one sender, many receivers, each reading every
//! event at its own pace with its own cursor.
//!
//! Like a broadcast channel, with one difference that matters when rooms are many
//! and small: the ring holds only what some receiver has still to read. A fixed ring
//! (`tokio::sync::broadcast`) allocates all its slots when the room goes live — 1,024
//! slots are 34 KiB, so 100,000 rooms with one quiet stream each would hold 3.4 GB
//! before anyone speaks. Here an event is dropped as soon as its last receiver read
//! it, the ring grows as far as the slowest receiver is behind (never past
//! `capacity`), and its storage is freed once everything was read. An idle room's
//! ring is a few words and its receivers' wakers.
//!
//! A receiver that falls `capacity` events behind loses the oldest: its next read
//! says how many it missed ([`Lagged`]) and goes on from the oldest still held.
//!
//! Bookkeeping: every event counts the receivers that have still to read it, set to
//! the receivers present when it was sent. A receiver reads events in order and only
//! comes after the events sent before it subscribed, so an event is read by all of
//! its receivers no later than every older one is: only events at the front reach
//! zero, and the ring pops them there. A receiver that goes away counts as having
//! read everything it had not.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio_stream::Stream;

/// Storage above this many events is freed when the ring empties (below it, kept:
/// a room that speaks now and then does not allocate for every message).
const KEEP_EMPTY: usize = 16;

/// A receiver fell this many events behind the ring and lost them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged(pub u64);

/// The sending side: sends to every receiver subscribed at the time. Dropping it
/// closes the ring: receivers read what is left, then end.
pub struct Ring<T> {
    shared: Arc<Shared<T>>,
}

/// One receiver's cursor.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The position of the next event to read.
    next: u64,
    /// Where this receiver's waker is in the waiting list, and for which round of it
    /// (a send empties the list and starts a new round).
    waiting: Option<(u64, usize)>,
    /// The waker registered there (to tell, without the lock, that it is current).
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// The position after the newest event, and the round of waiting (ended by each
    /// send): a receiver that has read up to `tail` and is registered for `round`
    /// has nothing to do, and knows it without taking the lock. Written only under
    /// the lock, so read there they are exact.
    tail: AtomicU64,
    round: AtomicU64,
}

struct State<T> {
    /// The position of `events[0]`.
    first: u64,
    events: VecDeque<Slot<T>>,
    receivers: usize,
    closed: bool,
    /// The wakers of receivers that read everything, in this round.
    waiting: Vec<Waker>,
}

struct Slot<T> {
    value: T,
    /// Receivers that have still to read it.
    unread: usize,
}

impl<T: Clone> Ring<T> {
    /// A ring that holds at most `capacity` unread events (at least one).
    pub fn new(capacity: usize) -> Self {
        Ring {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    first: 0,
                    events: VecDeque::new(),
                    receivers: 0,
                    closed: false,
                    waiting: Vec::new(),
                }),
                capacity: capacity.max(1),
                tail: AtomicU64::new(0),
                round: AtomicU64::new(0),
            }),
        }
    }

    /// A receiver of every event sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut state = self.shared.lock();
        state.receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            next: state.first + state.events.len() as u64,
            waiting: None,
            waker: None,
        }
    }

    /// How many receivers there are.
    pub fn receiver_count(&self) -> usize {
        self.shared.lock().receivers
    }

    /// Sends `value` to every receiver; returns how many there are (0: nobody, and
    /// the value is dropped).
    pub fn send(&self, value: T) -> usize {
        let (receivers, wakers, evicted) = {
            let mut state = self.shared.lock();
            if state.receivers == 0 {
                return 0;
            }
            let unread = state.receivers;
            state.events.push_back(Slot { value, unread });
            let evicted = if state.events.len() > self.shared.capacity {
                state.first += 1;
                state.events.pop_front()
            } else {
                None
            };
            let tail = state.first + state.events.len() as u64;
            self.shared.tail.store(tail, Ordering::Release);
            (unread, self.shared.end_round(&mut state), evicted)
        };
        drop(evicted);
        wakers.into_iter().for_each(Waker::wake);
        receivers
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.shared.lock();
            state.closed = true;
            self.shared.end_round(&mut state)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().expect("ring lock")
    }

    /// The round of waiting now (call with the lock held).
    fn round(&self) -> u64 {
        self.round.load(Ordering::Relaxed)
    }

    /// Ends the round of waiting (with the lock held as `state`): returns its
    /// wakers, to wake outside the lock.
    fn end_round(&self, state: &mut State<T>) -> Vec<Waker> {
        self.round.fetch_add(1, Ordering::Release);
        let next = Vec::with_capacity(state.waiting.len());
        std::mem::replace(&mut state.waiting, next)
    }
}

impl<T> State<T> {
    /// Drops the events at the front that every receiver read, and the storage once
    /// nothing is left.
    fn pop_read(&mut self) {
        while self.events.front().is_some_and(|slot| slot.unread == 0) {
            self.events.pop_front();
            self.first += 1;
        }
        if self.events.is_empty() && self.events.capacity() > KEEP_EMPTY {
            self.events = VecDeque::new();
        }
    }
}

impl<T: Clone> Stream for Receiver<T> {
    type Item = Result<T, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.waits_already(cx.waker()) {
            return Poll::Pending;
        }
        let shared = Arc::clone(&this.shared);
        let mut state = shared.lock();
        if this.next < state.first {
            let missed = state.first - this.next;
            this.next = state.first;
            return Poll::Ready(Some(Err(Lagged(missed))));
        }
        let index = (this.next - state.first) as usize;
        if let Some(slot) = state.events.get_mut(index) {
            let value = slot.value.clone();
            slot.unread -= 1;
            let front_read = index == 0 && slot.unread == 0;
            this.next += 1;
            if front_read {
                state.pop_read();
            }
            // Read up to the newest: wait for the next send now, under this lock,
            // so that the poll that follows finds nothing new without taking it.
            if this.next == state.first + state.events.len() as u64 && !state.closed {
                this.register(&mut state, cx.waker());
            }
            return Poll::Ready(Some(Ok(value)));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        this.register(&mut state, cx.waker());
        Poll::Pending
    }
}

impl<T> Receiver<T> {
    /// Whether this receiver has read everything sent and `waker` is registered for
    /// the next send, as far as can be told without the lock (a send under way is
    /// either seen here or wakes `waker` once done).
    fn waits_already(&self, waker: &Waker) -> bool {
        let Some((round, _)) = self.waiting else {
            return false;
        };
        self.shared.round.load(Ordering::Acquire) == round
            && self.shared.tail.load(Ordering::Acquire) == self.next
            && self.waker.as_ref().is_some_and(|w| w.will_wake(waker))
    }

    /// Waits for the next send, registered once per round: a stream polled again
    /// before anything came (a task polls all it waits on when any wakes it)
    /// updates its place instead of taking another.
    fn register(&mut self, state: &mut State<T>, waker: &Waker) {
        let round = self.shared.round();
        match self.waiting {
            Some((r, at)) if r == round => {
                if !state.waiting[at].will_wake(waker) {
                    state.waiting[at] = waker.clone();
                }
            }
            _ => {
                self.waiting = Some((round, state.waiting.len()));
                state.waiting.push(waker.clone());
            }
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receivers -= 1;
        let from = self.next.saturating_sub(state.first) as usize;
        for slot in state.events.iter_mut().skip(from) {
            slot.unread -= 1;
        }
        state.pop_read();
        // Let go of the task this receiver would have woken.
        if let Some((round, at)) = self.waiting
            && round == self.shared.round()
        {
            state.waiting[at] = Waker::noop().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn ready<T: Clone>(receiver: &mut Receiver<T>) -> Option<Option<Result<T, Lagged>>> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(receiver).poll_next(&mut cx) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    fn held<T>(ring: &Ring<T>) -> (usize, usize) {
        let state = ring.shared.lock();
        (state.events.len(), state.events.capacity())
    }

    #[test]
    fn every_receiver_reads_every_event_from_when_it_subscribed() {
        let ring = Ring::new(8);
        assert_eq!(ring.send(0), 0, "nobody subscribed: dropped");
        let mut a = ring.subscribe();
        assert_eq!(ring.send(1), 1);
        let mut b = ring.subscribe();
        assert_eq!(ring.send(2), 2);
        assert_eq!(ready(&mut a), Some(Some(Ok(1))));
        assert_eq!(ready(&mut a), Some(Some(Ok(2))));
        assert_eq!(ready(&mut a), None, "nothing more yet");
        assert_eq!(ready(&mut b), Some(Some(Ok(2))));
        assert_eq!(ready(&mut b), None);
    }

    #[test]
    fn an_event_is_dropped_once_its_last_receiver_read_it() {
        let ring = Ring::new(1024);
        let mut a = ring.subscribe();
        let mut b = ring.subscribe();
        for i in 0..100 {
            ring.send(Arc::new(i));
        }
        assert_eq!(held(&ring).0, 100);
        for _ in 0..100 {
            ready(&mut a);
        }
        assert_eq!(held(&ring).0, 100, "b has read none");
        for _ in 0..40 {
            ready(&mut b);
        }
        assert_eq!(held(&ring).0, 60);
        drop(b);
        assert_eq!(
            held(&ring),
            (0, 0),
            "b gone: everything read, storage freed"
        );
        ring.send(Arc::new(7));
        assert_eq!(ready(&mut a).map(|r| r.map(|v| *v.unwrap())), Some(Some(7)));
        assert_eq!(held(&ring).0, 0);
        assert!(held(&ring).1 <= KEEP_EMPTY, "small storage is kept");
    }

    #[test]
    fn a_receiver_behind_by_more_than_the_capacity_lags() {
        let ring = Ring::new(4);
        let mut slow = ring.subscribe();
        for i in 0..10 {
            ring.send(i);
        }
        assert_eq!(held(&ring).0, 4, "never more than the capacity");
        assert_eq!(ready(&mut slow), Some(Some(Err(Lagged(6)))));
        for i in 6..10 {
            assert_eq!(ready(&mut slow), Some(Some(Ok(i))));
        }
        assert_eq!(held(&ring).0, 0);
    }

    #[test]
    fn dropping_the_ring_ends_receivers_after_what_is_left() {
        let ring = Ring::new(4);
        let mut a = ring.subscribe();
        ring.send(1);
        drop(ring);
        assert_eq!(ready(&mut a), Some(Some(Ok(1))));
        assert_eq!(ready(&mut a), Some(None));
    }

    #[test]
    fn polling_again_while_waiting_takes_no_more_room() {
        let ring: Ring<u32> = Ring::new(4);
        let mut a = ring.subscribe();
        for _ in 0..100 {
            assert_eq!(ready(&mut a), None);
        }
        assert_eq!(ring.shared.lock().waiting.len(), 1);
        assert_eq!(ring.receiver_count(), 1);
        drop(a);
        assert_eq!(ring.receiver_count(), 0);
    }

    /// Registered first from one context (an attach's check polls with a waker of
    /// its own), then waited on by a task: the task's waker replaces the first, so
    /// the send wakes the task.
    #[tokio::test]
    async fn a_receiver_polled_by_another_task_is_woken_there() {
        let ring = Ring::new(4);
        let mut a = ring.subscribe();
        assert_eq!(
            ready(&mut a),
            None,
            "registered with a waker that does nothing"
        );
        let reader = tokio::spawn(async move { a.next().await });
        tokio::task::yield_now().await;
        ring.send(9u32);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
        assert_eq!(got.expect("woken").expect("joined"), Some(Ok(9)));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let ring = Ring::new(4);
        let mut a = ring.subscribe();
        let reader = tokio::spawn(async move { a.next().await });
        tokio::task::yield_now().await;
        ring.send(5u32);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
        assert_eq!(got.expect("woken").expect("joined"), Some(Ok(5)));
    }

    /// Receivers on other threads, some slower than the sender: each sees the values
    /// in order, what it missed accounted for by `Lagged`, and the ring ends empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn receivers_on_other_threads_see_everything_in_order_or_know_what_they_missed() {
        const SENT: u64 = 20_000;
        let ring = Ring::new(64);
        let mut readers = Vec::new();
        for slow in [false, false, true, true] {
            let mut receiver = ring.subscribe();
            readers.push(tokio::spawn(async move {
                let (mut expected, mut got) = (0, 0);
                while let Some(item) = receiver.next().await {
                    match item {
                        Ok(value) => {
                            assert_eq!(value, expected, "in order, nothing skipped");
                            expected += 1;
                            got += 1;
                        }
                        Err(Lagged(missed)) => expected += missed,
                    }
                    if slow && expected % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                assert_eq!(expected, SENT, "every value read or counted as missed");
                got
            }));
        }
        let shared = Arc::clone(&ring.shared);
        tokio::task::spawn_blocking(move || {
            for i in 0..SENT {
                ring.send(i);
            }
        })
        .await
        .expect("sender");
        for reader in readers {
            assert!(reader.await.expect("reader") > 0);
        }
        let state = shared.lock();
        assert_eq!((state.events.len(), state.receivers), (0, 0));
    }
}
