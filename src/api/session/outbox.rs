//! The frames a stream has ready for its client, in order.

use std::collections::VecDeque;

use crate::proto::Frame;

/// Frames ready for the client, in order. Most events make one frame, taken before the
/// next comes, so the first waits in a slot of its own and only a second one queued
/// behind it makes a queue: an idle stream keeps no queue's allocation (four frames'
/// worth once it received anything).
#[derive(Default)]
pub(super) struct Outbox {
    /// The next frame; `None` only when `more` is empty too.
    first: Option<Frame>,
    more: VecDeque<Frame>,
}

/// Queue capacity a stream keeps once drained; a larger one (a catch-up page) is freed.
const KEPT: usize = 8;

impl Outbox {
    pub(super) fn push_back(&mut self, frame: Frame) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.more.push_back(frame);
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Frame> {
        let frame = self.first.take()?;
        self.first = self.more.pop_front();
        Some(frame)
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        *self = Outbox::default();
    }

    /// Frees a drained queue that grew past what one turn usually needs.
    pub(super) fn trim(&mut self) {
        if self.more.is_empty() && self.more.capacity() > KEPT {
            self.more = VecDeque::new();
        }
    }
}

#[cfg(test)]
impl std::ops::Index<usize> for Outbox {
    type Output = Frame;

    fn index(&self, i: usize) -> &Frame {
        match i {
            0 => self.first.as_ref().expect("a frame"),
            _ => &self.more[i - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode::event;

    fn frame(id: &str) -> Frame {
        Frame::reply(id.to_string(), event::pong())
    }

    fn wires(frames: impl IntoIterator<Item = Frame>) -> Vec<Vec<u8>> {
        frames.into_iter().map(|f| f.wire().to_vec()).collect()
    }

    #[test]
    fn frames_come_out_in_the_order_they_went_in() {
        let mut outbox = Outbox::default();
        outbox.push_back(frame("a"));
        outbox.push_back(frame("b"));
        assert_eq!(outbox.len(), 2);
        let first = outbox.pop_front().unwrap();
        outbox.push_back(frame("c"));
        let rest = std::iter::from_fn(|| outbox.pop_front());
        let out = wires(std::iter::once(first).chain(rest));
        assert_eq!(out, wires(["a", "b", "c"].map(frame)));
        assert!(outbox.is_empty());
    }

    #[test]
    fn one_frame_at_a_time_needs_no_queue() {
        let mut outbox = Outbox::default();
        for id in ["a", "b", "c"] {
            outbox.push_back(frame(id));
            assert_eq!(wires(outbox.pop_front()), wires([frame(id)]));
        }
        assert!(outbox.pop_front().is_none());
        assert_eq!(outbox.more.capacity(), 0);
    }
}
