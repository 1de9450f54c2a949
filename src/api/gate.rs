//! A future or stream polled only when something woke it since it last returned
//! `Pending`.
//!
//! A Subscribe stream's task is woken for many reasons — a room's event, the client's
//! frame, h2 telling it its send window moved, its own frame going out — and each
//! wake polls whatever the task waits on: the body, the session, and within it the
//! client's frames and every attached room. Most of those polls find nothing new, and
//! some are not cheap (reading the client's frames takes h2's lock). Gated, each is
//! polled only after its own waker fired, and otherwise answers `Pending` for the cost
//! of one atomic swap. (The server's stop is one flag the session reads: `stop.rs`.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_stream::Stream;

/// Whether the gated future was woken since its last `Pending`, and the task to
/// wake when it is.
struct Wakes {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `inner`, polled only when it was woken since it last returned `Pending` (and on
/// its first poll, and after each `Ready`, when nothing waits to wake it).
pub struct Gated<T> {
    wakes: Arc<Wakes>,
    /// The waker `inner` is polled with: [`Wakes`], made a `Waker` once.
    waker: Waker,
    inner: T,
}

impl<T> Gated<T> {
    pub fn new(inner: T) -> Self {
        let wakes = Arc::new(Wakes {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            waker: Waker::from(wakes.clone()),
            wakes,
            inner,
        }
    }

    /// Polls `inner` with `poll` if it was woken (`Pending` otherwise), registering
    /// `cx`'s task to be woken in its place.
    fn poll_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut T, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        self.wakes.task.register(cx.waker());
        if !self.wakes.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut self.inner, &mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // A `Ready` leaves nothing registered to wake it: poll it next time.
            self.wakes.woken.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut()
            .poll_with(cx, |inner, cx| Pin::new(inner).poll(cx))
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut()
            .poll_with(cx, |inner, cx| Pin::new(inner).poll_next(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, pending (and registered) before.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Counts how often the task was woken.
    struct Task(AtomicUsize);
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_the_inner_future_only_after_it_was_woken() {
        let (polls, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let inner_waker = Arc::new(std::sync::Mutex::new(None));
        let mut gated = Gated::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        });
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "the first poll reaches it");
        // Woken for some other reason: the inner future is not polled again.
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // Its own waker fires: the task is woken, and the next poll reaches it.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // After Ready nothing is registered: the next poll reaches it again.
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_wake_during_the_inner_poll_is_kept() {
        /// Wakes itself while being polled, then is pending: it must be polled again.
        struct WakesItself(usize);
        impl Future for WakesItself {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                if self.0 == 3 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let mut gated = Gated::new(WakesItself(0));
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
    }
}
