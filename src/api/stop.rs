//! The server's stop, as every Subscribe stream waits for it.
//!
//! Each stream must end when the server stops. A future per stream waiting on the
//! server's `watch` (with a gate in front, so that it was not polled at every
//! delivery) held 192 bytes for the stream's whole life. Here the streams share one
//! list of wakers: a stream keeps its place in it and the waker it put there, checks
//! one flag when polled, and the stop wakes every stream in the list once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use slab::Slab;
use tokio::sync::watch;

/// The server's stop, shared by the streams.
#[derive(Clone)]
pub struct Stop(Arc<Shared>);

struct Shared {
    stopped: AtomicBool,
    /// The streams waiting for the stop, by their key.
    waiting: Mutex<Slab<Waker>>,
}

impl Stop {
    /// The stop that fires once `stop` turns true (or its sender is gone), from a task
    /// of its own.
    pub fn following(mut stop: watch::Receiver<bool>) -> Stop {
        let signal = Stop(Arc::new(Shared {
            stopped: AtomicBool::new(false),
            waiting: Mutex::new(Slab::new()),
        }));
        let fired = signal.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
            fired.fire();
        });
        signal
    }

    /// Stops: every stream waiting is woken, and every later poll finds it stopped.
    fn fire(&self) {
        self.0.stopped.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.waiting());
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// A stream's wait for the stop.
    pub fn wait(&self) -> StopWait {
        StopWait {
            stop: self.clone(),
            place: None,
        }
    }

    fn stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Acquire)
    }

    fn waiting(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.0.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One stream's wait: its place in the list, and the waker it put there. Leaves the
/// list when dropped.
pub struct StopWait {
    stop: Stop,
    place: Option<(usize, Waker)>,
}

impl StopWait {
    /// Ready once the server stops; until then the task polling it is woken then.
    /// Costs one atomic load while the polling task stays the same (a stream's does).
    pub fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.stopped() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.place
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        let mut waiting = self.stop.waiting();
        // Checked again under the lock: a stop that took the list before has set the
        // flag before it did.
        if self.stop.stopped() {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        match &mut self.place {
            Some((key, registered)) => {
                waiting[*key] = waker.clone();
                *registered = waker;
            }
            None => self.place = Some((waiting.insert(waker.clone()), waker)),
        }
        Poll::Pending
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        // After the stop the list is empty and takes no new places: nothing to leave.
        if let Some((key, _)) = self.place.take()
            && !self.stop.stopped()
        {
            self.stop.waiting().try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wakes.
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Counted>, Waker) {
        let count = Arc::new(Counted(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Polls `wait` from the task that `waker` wakes.
    fn poll(wait: &mut StopWait, waker: &Waker) -> Poll<()> {
        wait.poll_stopped(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn the_stop_wakes_every_stream_waiting_once_and_stays_stopped() {
        let (tx, rx) = watch::channel(false);
        let stop = Stop::following(rx);
        let (a_count, a) = counted();
        let (b_count, b) = counted();
        let (mut wait_a, mut wait_b) = (stop.wait(), stop.wait());
        assert!(poll(&mut wait_a, &a).is_pending());
        assert!(poll(&mut wait_b, &b).is_pending());
        // Polled again by the same task: registered once.
        assert!(poll(&mut wait_a, &a).is_pending());
        assert_eq!(stop.waiting().len(), 2);
        // A stream that ends leaves the list.
        drop(wait_b);
        assert_eq!(stop.waiting().len(), 1);

        tx.send(true).unwrap();
        for _ in 0..100 {
            if stop.stopped() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(a_count.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(b_count.0.load(Ordering::SeqCst), 0, "it had left");
        assert!(poll(&mut wait_a, &a).is_ready());
        let mut late = stop.wait();
        assert!(poll(&mut late, &a).is_ready());
        assert!(stop.waiting().is_empty());
    }

    #[tokio::test]
    async fn a_stream_polled_by_another_task_moves_its_place_to_it() {
        let (_tx, rx) = watch::channel(false);
        let stop = Stop::following(rx);
        let (_, a) = counted();
        let (b_count, b) = counted();
        let mut wait = stop.wait();
        assert!(poll(&mut wait, &a).is_pending());
        assert!(poll(&mut wait, &b).is_pending());
        assert_eq!(stop.waiting().len(), 1);
        stop.fire();
        assert_eq!(
            b_count.0.load(Ordering::SeqCst),
            1,
            "the latest task is woken"
        );
    }
}
