//! A stream's sends in flight.

use std::pin::Pin;

use futures_util::stream::FuturesUnordered;
use tokio_stream::Stream;

use crate::proto::Frame;

/// A send handed over, resolving to its answer frame (ack or error).
pub(super) type PendingSend = Pin<Box<dyn std::future::Future<Output = Frame> + Send>>;

/// A stream's sends in flight. Most streams only listen, so the set is made on the
/// first send (an empty `FuturesUnordered` is two heap allocations).
#[derive(Default)]
pub(super) struct Sends(Option<FuturesUnordered<PendingSend>>);

impl Sends {
    pub(super) fn push(&mut self, send: PendingSend) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(send);
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    pub(super) fn is_empty(&self) -> bool {
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
