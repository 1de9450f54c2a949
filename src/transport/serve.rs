//! The accept loop, and one task per connection that runs all of its streams.
//!
//! hyper's HTTP/2 server hands each stream to an executor: the future that calls the
//! service and then sends the answer's frames as its body yields them. With tokio's
//! executor every stream is a task of its own, and a room event that reaches 100
//! streams of one connection wakes 100 tasks, each of which queues one frame and wakes
//! the connection's task to write it: at a few messages per second those writes go
//! out one or two frames at a time, a system call per delivery (BENCHMARKS.md, session
//! 16). Here the executor is the connection's own task: [`Streams`] keeps the
//! connection's stream futures in a `FuturesUnordered` and polls those that were woken
//! before it lets hyper write, so every frame the event made ready leaves in one
//! write, and a subscriber costs a poll in a task that runs anyway instead of a task
//! switch.
//!
//! What a call does before its answer's first frame (authenticating, reading the
//! store, setting up a session) is still spawned on its own task ([`Handlers`]): it
//! may be slow or CPU-heavy, and a backend that sends many calls over one connection
//! keeps every core busy. Once spawned it is aborted if the stream goes away first, as
//! it would have been when dropped with its stream's task.
//!
//! Per-stream flow control is hyper's, unchanged: a stream without window waits in the
//! set without holding the others back.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt};
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tonic::body::Body;

use super::stall::{ConnectionInfo, Guarded};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 settings every connection is served with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The most streams a client may have open on one connection at once.
    pub max_streams_per_connection: u32,
    /// How often an idle connection is pinged (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// The service every call goes to, as the connections serve it (one name for the
/// bounds that [`serve`], each connection and [`Handlers`] share).
pub trait Calls:
    tower_service::Service<
        http::Request<Body>,
        Response = http::Response<Self::Answer>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The answer's body.
    type Answer: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> Calls for S
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Answer = B;
}

/// Serves `service` on every connection `incoming` yields until `shutdown`
/// completes; then stops accepting (the listener closes at once), asks every
/// connection to finish gracefully (HTTP/2 GOAWAY: calls in flight finish, no new
/// ones start) and returns once they all have.
pub async fn serve<S: Calls, IO>(
    service: S,
    incoming: impl Stream<Item = io::Result<Guarded<IO>>>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Every connection holds a receiver: the sender's `closed` is "all have ended".
    let (stop, stopped) = watch::channel(());
    {
        // Scoped so the listener closes as soon as accepting stops: a client that
        // connects while the rest drain is refused rather than left waiting.
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = incoming.next() => accepted,
            };
            match accepted {
                Some(Ok(io)) => {
                    let connection =
                        connection(io, service.clone(), settings.clone(), stopped.clone());
                    tokio::spawn(connection);
                }
                Some(Err(error)) => tracing::debug!(%error, "a connection was not accepted"),
                None => break,
            }
        }
    }
    let _ = stop.send(());
    drop(stopped);
    stop.closed().await;
}

/// Serves one connection until it closes (or, after `stop` changes, until its calls
/// in flight have finished).
async fn connection<S: Calls, IO>(
    io: Guarded<IO>,
    service: S,
    settings: Settings,
    mut stop: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut streams = Streams::default();
    let mut builder = auto::Builder::new(streams.executor());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_streams_per_connection)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    let handlers = Handlers {
        inner: service,
        connection: io.info(),
    };
    let served = builder.serve_connection(TokioIo::new(io), handlers);
    let mut served = pin!(served);
    let mut stopping = pin!(stop.changed());
    let mut asked_to_stop = false;
    let ended = poll_fn(|cx| {
        if !asked_to_stop && stopping.as_mut().poll(cx).is_ready() {
            asked_to_stop = true;
            served.as_mut().graceful_shutdown();
        }
        streams.run_beside(served.as_mut(), cx)
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(error = %error, "a connection ended with an error");
    }
}

/// A stream's future as hyper hands it over. Boxed: its type names the executor
/// (and hyper also spawns other kinds of task with it, for upgraded streams).
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's streams, run by the connection's own task: a slab of futures, and
/// the queue of those woken since their last poll.
///
/// Not a `FuturesUnordered`: it gives the executor back after two of its futures wake
/// themselves while polled, and every stream that hands over a frame does (h2 tells
/// the stream it has capacity again), so a room event's frames for a connection left
/// in one write per two or three streams. Here every stream woken is polled, then the
/// connection writes once.
#[derive(Default)]
struct Streams {
    slots: Vec<Option<Slot>>,
    /// Indices of `slots` that are empty, to be reused.
    free: Vec<usize>,
    woken: Arc<Woken>,
    /// The woken indices being polled now (kept to reuse its allocation), and how
    /// many of them were.
    polling: Vec<usize>,
    polled: usize,
    /// Handed over by hyper while it is polled (it holds the executor).
    arrived: Arc<Mutex<Vec<StreamFuture>>>,
}

struct Slot {
    future: StreamFuture,
    state: Arc<StreamWaker>,
    /// `state` as a `Waker`, made once.
    waker: Waker,
}

/// Which streams were woken, and the connection's task to wake for them.
#[derive(Default)]
struct Woken {
    queue: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

/// One stream's waker: queues its index once until the stream is polled again.
struct StreamWaker {
    index: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.woken.queue).push(self.index);
            self.woken.task.wake();
        }
    }
}

/// How many times one turn of the connection's task polls its woken streams and
/// then the connection before it lets other tasks run: a stream that handed over a
/// frame is woken once more by h2, so two are the usual turn.
const ROUNDS: usize = 8;

/// Most streams polled before the connection writes. Every frame they hand h2 waits
/// in the connection's queue until the write, and that queue keeps the room of its
/// longest length for the connection's life: without a bound, a client opening a
/// thousand streams at once left 320 bytes per stream there. A room event reaches a
/// connection's streams in one write up to this many.
const WRITE_EVERY: usize = 256;

impl Streams {
    fn executor(&self) -> Executor {
        Executor(self.arrived.clone())
    }

    /// Polls the streams that were woken (up to [`WRITE_EVERY`]), then the connection,
    /// so the frames they queued leave in the connection's one write; again while
    /// streams wait to be polled or the connection accepted new ones. Streams still running when the connection
    /// ends have nobody left to answer and are dropped with it.
    fn run_beside<C: Future>(
        &mut self,
        mut connection: Pin<&mut C>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        self.woken.task.register(cx.waker());
        for _ in 0..ROUNDS {
            self.admit();
            if self.polled == self.polling.len() {
                self.polling.clear();
                self.polled = 0;
                std::mem::swap(&mut self.polling, &mut *lock(&self.woken.queue));
            }
            let end = self.polling.len().min(self.polled + WRITE_EVERY);
            while self.polled < end {
                let index = self.polling[self.polled];
                self.polled += 1;
                self.poll_stream(index);
            }
            if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                return Poll::Ready(ended);
            }
            if self.polled == self.polling.len()
                && lock(&self.woken.queue).is_empty()
                && lock(&self.arrived).is_empty()
            {
                return Poll::Pending;
            }
        }
        // Still more to do: after the other tasks have had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Takes in the streams hyper handed over, each queued for its first poll.
    fn admit(&mut self) {
        let arrived = std::mem::take(&mut *lock(&self.arrived));
        for future in arrived {
            let index = self.free.pop().unwrap_or(self.slots.len());
            let waker = Arc::new(StreamWaker {
                index,
                queued: AtomicBool::new(false),
                woken: self.woken.clone(),
            });
            waker.wake_by_ref();
            let slot = Some(Slot {
                future,
                waker: Waker::from(waker.clone()),
                state: waker,
            });
            match self.slots.get_mut(index) {
                Some(empty) => *empty = slot,
                None => self.slots.push(slot),
            }
        }
    }

    /// Polls one woken stream (a stale index, woken by a stream that has ended since,
    /// polls the stream in its place once more, which futures allow).
    fn poll_stream(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        // Cleared first: a wake while it is polled queues it again.
        slot.state.queued.store(false, Ordering::Release);
        if slot
            .future
            .as_mut()
            .poll(&mut Context::from_waker(&slot.waker))
            .is_ready()
        {
            self.slots[index] = None;
            self.free.push(index);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What hyper spawns a stream's future with: it lands in [`Streams`].
#[derive(Clone)]
struct Executor(Arc<Mutex<Vec<StreamFuture>>>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Executor {
    fn execute(&self, stream: F) {
        // Outside tokio's cooperative budget: it is the task's, 128 operations a
        // turn, and 1,000 streams of one connection spent it before the connection
        // could write (a burst to 10,000 streams over 10 connections ran at 0.3 M
        // deliveries/s instead of 0.8 M). [`ROUNDS`] bounds a turn instead.
        lock(&self.0).push(Box::pin(tokio::task::unconstrained(stream)));
    }
}

/// The service as one connection's calls see it: each request carries its
/// connection, and each call's handler runs on a task of its own.
#[derive(Clone)]
struct Handlers<S> {
    inner: S,
    connection: ConnectionInfo,
}

/// hyper's own service trait, not tower's through `TowerToHyperService`: that keeps
/// the service and the request inside each stream's future for as long as the
/// stream lives (0.5 KiB per idle stream); here they move into the handler's task.
impl<S: Calls> hyper::service::Service<http::Request<Incoming>> for Handlers<S> {
    type Response = http::Response<S::Answer>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.connection.clone());
        let mut inner = self.inner.clone();
        let handler = AbortOnDropHandle::new(tokio::spawn(async move {
            let Ok(()) = poll_fn(|cx| inner.poll_ready(cx)).await;
            let Ok(response) = inner.call(request.map(Body::new)).await;
            response
        }));
        // A handler that panicked: hyper resets the stream.
        Box::pin(async move { handler.await.map_err(BoxError::from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A stream that logs each poll, wakes itself while polled (as hyper's does after
    /// handing h2 a frame) the first `self_wakes` times, and ends after `polls` polls.
    fn stream(log: &Log, name: &'static str, self_wakes: usize, polls: usize) -> StreamFuture {
        let log = log.clone();
        let mut polled = 0;
        Box::pin(std::future::poll_fn(move |cx| {
            polled += 1;
            lock(&log).push(format!("{name}{polled}"));
            if polled >= polls {
                return Poll::Ready(());
            }
            if polled <= self_wakes {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }))
    }

    fn turn(streams: &mut Streams, log: &Log) -> Poll<()> {
        let waker = Waker::noop();
        let mut connection = pin!(std::future::poll_fn(|_| {
            lock(log).push("write".into());
            Poll::<()>::Pending
        }));
        streams.run_beside(connection.as_mut(), &mut Context::from_waker(waker))
    }

    #[test]
    fn every_woken_stream_is_polled_before_the_connection_writes() {
        let log = Log::default();
        let mut streams = Streams::default();
        let executor = streams.executor();
        for name in ["a", "b", "c", "d"] {
            hyper::rt::Executor::execute(&executor, stream(&log, name, 1, 3));
        }
        assert!(turn(&mut streams, &log).is_pending());
        // Each stream woke itself once while polled: all four are polled, the
        // connection writes once, then the self-woken ones are polled again.
        assert_eq!(
            *lock(&log),
            [
                "a1", "b1", "c1", "d1", "write", "a2", "b2", "c2", "d2", "write"
            ]
        );
        lock(&log).clear();
        assert!(turn(&mut streams, &log).is_pending());
        assert_eq!(*lock(&log), ["write"], "nothing woken, nothing polled");

        // A stream woken from outside is polled once and ends; its slot is reused.
        let state = streams.slots[1].as_ref().unwrap().state.clone();
        state.wake_by_ref();
        state.wake_by_ref();
        lock(&log).clear();
        assert!(turn(&mut streams, &log).is_pending());
        assert_eq!(*lock(&log), ["b3", "write"]);
        assert!(streams.slots[1].is_none());
        hyper::rt::Executor::execute(&executor, stream(&log, "e", 0, 2));
        lock(&log).clear();
        assert!(turn(&mut streams, &log).is_pending());
        assert_eq!(*lock(&log), ["e1", "write"]);
        assert!(streams.slots[1].is_some(), "the free slot was reused");
        // The ended stream's waker, woken late, polls the slot's new stream.
        state.wake_by_ref();
        lock(&log).clear();
        assert!(turn(&mut streams, &log).is_pending());
        assert_eq!(*lock(&log), ["e2", "write"]);
    }

    #[test]
    fn the_connection_writes_after_every_so_many_streams() {
        let log = Log::default();
        let mut streams = Streams::default();
        let executor = streams.executor();
        for _ in 0..WRITE_EVERY + 10 {
            hyper::rt::Executor::execute(&executor, stream(&log, "s", 0, 2));
        }
        assert!(turn(&mut streams, &log).is_pending());
        let writes: Vec<usize> = lock(&log)
            .iter()
            .enumerate()
            .filter(|(_, entry)| *entry == "write")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            writes,
            [WRITE_EVERY, WRITE_EVERY + 11],
            "every stream polled once"
        );
    }

    #[test]
    fn a_stream_that_keeps_waking_itself_gives_other_tasks_their_turn() {
        let log = Log::default();
        let mut streams = Streams::default();
        hyper::rt::Executor::execute(
            &streams.executor(),
            stream(&log, "s", usize::MAX, usize::MAX),
        );
        assert!(turn(&mut streams, &log).is_pending());
        assert_eq!(
            lock(&log)
                .iter()
                .filter(|entry| entry.starts_with('s'))
                .count(),
            ROUNDS
        );
    }
}
