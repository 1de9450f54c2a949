//! Connections that stop reading a Subscribe stream are closed (`--stalled-stream-timeout`).
//!
//! HTTP/2 flow control stops the server from sending on a stream whose client does
//! not read it: hyper then stops polling the stream's body until the client gives
//! window again, and offers the service no way to end that stream meanwhile. What
//! such a stream holds is bounded (its session, its place in each room's ring, one of
//! its user's stream slots, its presence), but it would hold it for as long as the
//! client keeps the connection alive — keepalive pings are answered by the client's
//! HTTP/2 layer whether or not its application reads.
//!
//! So every accepted connection is wrapped in a [`Guarded`] that can be closed from
//! outside, and each Subscribe body counts its polls and says whether the last one
//! handed a frame over ([`Progress`]: an atomic store per poll, no clock read — at
//! 40 messages/s the clock was 3 % of the server's CPU). A body that handed over a
//! frame and has not been polled again for the timeout is blocked on the client's
//! window: a watch task per connection (started with its first stream, gone with its
//! last) notes when each count last changed, and closes the whole connection when
//! one is blocked that long — the only way left to end the stream. Its streams
//! end, its slots and presence are released, and the client reconnects and resumes
//! with `after_seq`. A stream with nothing to send is idle, not stalled, however long.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One accepted connection's state: whether it was closed, and its streams' progress.
pub struct Connection {
    stall_after: Option<Duration>,
    closed: AtomicBool,
    /// The connection task's read waker: closing wakes it so it sees the close.
    reader: AtomicWaker,
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    progress: Vec<Watched>,
    watched: bool,
}

/// The connection a request came on, as [`super::serve`] hands it to the service (in
/// the request's extensions).
#[derive(Clone)]
pub struct ConnectionInfo(pub Arc<Connection>);

/// How many times a Subscribe body was polled, and whether the last poll handed over
/// a frame (the low bit). Only the body's task writes it.
pub struct Progress {
    polls: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            polls: AtomicU64::new(0),
        }
    }

    /// Records a poll of the body; `ready` when it handed something over.
    pub fn polled(&self, ready: bool) {
        let count = self.polls.load(Ordering::Relaxed) >> 1;
        self.polls
            .store((count + 1) << 1 | u64::from(ready), Ordering::Relaxed);
    }
}

/// What the watch last saw of one stream's [`Progress`], and since when.
struct Watched {
    progress: Weak<Progress>,
    seen: u64,
    since: Instant,
}

impl Watched {
    fn new(progress: &Arc<Progress>, now: Instant) -> Self {
        Watched {
            progress: Arc::downgrade(progress),
            seen: progress.polls.load(Ordering::Relaxed),
            since: now,
        }
    }

    /// Whether, as of `now`, the body handed over a frame and was not polled again
    /// for more than `after`: the client's window is shut. (A stall is seen between
    /// `after` and `after` plus the watch's tick past the body's last poll.)
    fn stalled(&mut self, now: Instant, after: Duration) -> bool {
        let Some(progress) = self.progress.upgrade() else {
            return false;
        };
        let polls = progress.polls.load(Ordering::Relaxed);
        if polls != self.seen {
            self.seen = polls;
            self.since = now;
            return false;
        }
        polls & 1 == 1 && now.duration_since(self.since) > after
    }
}

impl Connection {
    /// A connection whose streams count as stalled after `stall_after` (`None`:
    /// never).
    pub fn new(stall_after: Option<Duration>) -> Arc<Connection> {
        Arc::new(Connection {
            stall_after,
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            streams: Mutex::default(),
        })
    }

    /// Starts watching one more stream; `None` when stalls are not watched.
    pub fn watch_stream(self: &Arc<Self>) -> Option<Arc<Progress>> {
        let stall_after = self.stall_after?;
        // A new stream has handed over nothing yet: not blocked.
        let progress = Arc::new(Progress::new());
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .progress
            .push(Watched::new(&progress, Instant::now()));
        if !streams.watched {
            streams.watched = true;
            tokio::spawn(watch(Arc::downgrade(self), stall_after));
        }
        Some(progress)
    }

    /// Closes the connection: its reads and writes fail from now on.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Watches a connection's streams until it has none left (or is gone), closing it
/// when one of them stalls.
async fn watch(connection: Weak<Connection>, stall_after: Duration) {
    let tick = (stall_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let Some(connection) = connection.upgrade() else {
            return;
        };
        if connection.is_closed() {
            return;
        }
        let stalled = {
            let mut streams = connection.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.progress.retain(|w| w.progress.strong_count() > 0);
            if streams.progress.is_empty() {
                streams.watched = false;
                return;
            }
            let now = Instant::now();
            streams
                .progress
                .iter_mut()
                .any(|w| w.stalled(now, stall_after))
        };
        if stalled {
            tracing::warn!(
                after = ?stall_after,
                "closing a connection: one of its Subscribe streams has not been read"
            );
            connection.close();
            return;
        }
    }
}

/// An accepted connection that [`Connection::close`] can end.
pub struct Guarded<IO> {
    io: IO,
    connection: Arc<Connection>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, stall_after: Option<Duration>) -> Self {
        Guarded {
            io,
            connection: Connection::new(stall_after),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "closed: a Subscribe stream of this connection stalled",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.connection.stall_after.is_some() {
            self.connection.reader.register(cx.waker());
            if self.connection.is_closed() {
                return Poll::Ready(Err(closed()));
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.connection.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.connection.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> Guarded<IO> {
    /// What the connection's requests carry in their extensions.
    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo(self.connection.clone())
    }
}

/// Accepted connections with Nagle's algorithm off: acks and events are small frames
/// that must leave at once, not wait for more bytes.
pub fn incoming(
    listener: tokio::net::TcpListener,
    stall_after: Option<Duration>,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(Guarded::new(stream, stall_after))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_stalled_only_when_blocked_after_handing_over() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let after = Duration::from_millis(10);
        let progress = Arc::new(Progress::new());
        let mut watched = Watched::new(&progress, t0);
        assert!(
            !watched.stalled(at(30), after),
            "opened, nothing handed over"
        );
        progress.polled(false);
        assert!(!watched.stalled(at(60), after), "polled: seen as progress");
        assert!(!watched.stalled(at(200), after), "idle is never stalled");
        progress.polled(true);
        assert!(!watched.stalled(at(210), after), "just handed over");
        assert!(
            !watched.stalled(at(215), after),
            "not blocked for long enough"
        );
        assert!(watched.stalled(at(230), after), "blocked for 20 ms");
        assert!(!watched.stalled(at(230), Duration::from_secs(1)));
        progress.polled(true);
        assert!(
            !watched.stalled(at(240), after),
            "polled again: the client read"
        );
        drop(progress);
        assert!(
            !watched.stalled(at(900), after),
            "a stream that ended is not stalled"
        );
    }
}
