//! A backend's WatchRooms, as the tests drive it: open from a position, take the
//! next events, and check that the feed says nothing more.

use std::time::Duration;

use chatroom::pb;
use tonic::{Status, Streaming};

use crate::{Client, WAIT};

/// An event as the tests compare them: kind, room, user, by, role.
pub type Seen = (pb::RoomFeedEventKind, String, String, String, pb::Role);

/// What a test expects of an event.
pub fn seen(kind: pb::RoomFeedEventKind, room: &str, user: &str, by: &str, role: pb::Role) -> Seen {
    (kind, room.into(), user.into(), by.into(), role)
}

/// An open watch.
pub struct Watch {
    stream: Streaming<pb::WatchRoomsResponse>,
    /// How far the test has taken: the last event's `position` it took.
    pub position: u64,
    /// Events received but not taken yet.
    ahead: std::collections::VecDeque<pb::RoomFeedEvent>,
}

impl Watch {
    /// Opens a watch from after `after` (`None`: from now); its first response has no
    /// events and says where it starts.
    pub async fn open(client: &Client, after: Option<u64>) -> Result<Watch, Status> {
        let request = pb::WatchRoomsRequest {
            after_position: after,
        };
        let mut stream = client.clone().watch_rooms(request).await?.into_inner();
        let first = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the watch's first response comes at once")?
            .expect("the watch ended before its first response");
        assert!(
            first.events.is_empty(),
            "the first response has no events: {first:?}"
        );
        if let Some(after) = after {
            assert_eq!(
                first.position, after,
                "a resumed watch starts where it was asked to"
            );
        }
        Ok(Watch {
            stream,
            position: first.position,
            ahead: Default::default(),
        })
    }

    /// The next `n` events: each right after the one before it, each response's
    /// `position` its last event's (the caller's token names every room). What a
    /// response brings past them waits for the next call; `position` is the last
    /// event's taken, where a resume would start.
    pub async fn take(&mut self, n: usize) -> Vec<pb::RoomFeedEvent> {
        while self.ahead.len() < n {
            let response = self.next().await.expect("the watch goes on");
            let mut before = self.ahead.back().map_or(self.position, |e| e.position);
            for event in &response.events {
                assert_eq!(event.position, before + 1, "no gap, no repeat: {event:?}");
                before = event.position;
            }
            let last = response.events.last().expect("a later response has events");
            assert_eq!(response.position, last.position);
            self.ahead.extend(response.events);
        }
        let events: Vec<pb::RoomFeedEvent> = self.ahead.drain(..n).collect();
        self.position = events.last().map_or(self.position, |e| e.position);
        events
    }

    /// The next response, or the status the watch ended with.
    pub async fn next(&mut self) -> Result<pb::WatchRoomsResponse, Status> {
        tokio::time::timeout(WAIT, self.stream.message())
            .await
            .expect("the watch answers within the wait")?
            .ok_or_else(|| Status::cancelled("the watch ended"))
    }

    /// Fails if an event was received and not taken, or comes within `quiet`.
    pub async fn says_nothing_for(&mut self, quiet: Duration) {
        assert!(self.ahead.is_empty(), "events not taken: {:?}", self.ahead);
        if let Ok(next) = tokio::time::timeout(quiet, self.stream.message()).await {
            panic!("the watch said nothing more, until: {next:?}");
        }
    }
}

/// What a test compares of events.
pub fn seen_all(events: &[pb::RoomFeedEvent]) -> Vec<Seen> {
    events
        .iter()
        .map(|e| {
            (
                e.kind(),
                e.room_id.clone(),
                e.user_id.clone(),
                e.by_user_id.clone(),
                e.role(),
            )
        })
        .collect()
}
