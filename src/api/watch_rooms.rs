//! WatchRooms as it is served: the room feed's pages ([`crate::rooms::feed`]) as
//! responses, on one of the caller's stream slots, until the client goes away, the
//! server stops (UNAVAILABLE: resume elsewhere from the last position seen) or the
//! caller's token expires (TOKEN_EXPIRED: a server stream has no way to present a
//! fresh one, so the backend opens a new watch with it, from where it was).

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::session::{self, Sessions};
use crate::domain::Caller;
use crate::error::Error;
use crate::proto::pb;
use crate::rooms::feed::FeedPage;
use crate::rooms::streams::StreamSlot;

/// A watch's responses.
pub type Watch = Pin<Box<dyn Stream<Item = Result<pb::WatchRoomsResponse, Status>> + Send>>;

/// What woke a watch.
enum Step {
    Page(Option<crate::error::Result<FeedPage>>),
    Stop,
    Expired,
}

/// Opens `caller`'s watch from after `after` (refused before any response when the
/// feed cannot serve it); it holds `slot` until it ends.
pub(super) async fn open(
    sessions: &Sessions,
    caller: Caller,
    slot: StreamSlot,
    after: Option<u64>,
) -> Result<Watch, Error> {
    let mut expiry = session::expiry_timer(&caller, sessions.rooms.clock());
    let feed = sessions.rooms.feed.watch(caller, after).await?;
    let mut stop = sessions.stop.clone();
    Ok(Box::pin(async_stream::stream! {
        let _slot = slot;
        let mut feed = std::pin::pin!(feed);
        loop {
            let step = tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => Step::Stop,
                () = session::expired(&mut expiry) => Step::Expired,
                page = feed.next() => Step::Page(page),
            };
            match step {
                Step::Page(Some(Ok(page))) => yield Ok(pb::WatchRoomsResponse {
                    events: page.events.into_iter().map(Into::into).collect(),
                    position: page.position,
                }),
                Step::Page(Some(Err(error))) => {
                    yield Err(Status::from(error));
                    break;
                }
                Step::Page(None) => break,
                Step::Stop => {
                    yield Err(session::shutting_down());
                    break;
                }
                Step::Expired => {
                    yield Err(session::token_expired(
                        "open a new watch with a fresh token, after the last position seen",
                    ));
                    break;
                }
            }
        }
    }))
}
