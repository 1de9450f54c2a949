//! The domain's types, which every layer imports. Values that come from outside are
//! parsed into these once, at the edge (`api/`), so everything inward can trust them;
//! the store reads rows back into them. Nothing here knows gRPC or SQL.
//!
//! - [`feed`] — the room feed's events (WatchRooms);
//! - [`ids`] — `RoomId`, `UserId`, `Caller`;
//! - [`room`] — `Room`, its settings, attributes and changes, `DetachReason`;
//! - [`member`] — `Member`, `Role`;
//! - [`message`] — `Draft`, `Message`, kinds, limits, history ranges;
//! - [`page`] — page requests and pages;
//! - [`text`] — the rules for names and text every store must be able to hold;
//! - [`mod@time`] — `UnixMicros`, and the [`Clock`] the service reads it from;
//! - [`dialect`] — which database a `--database-url` names.

pub mod dialect;
pub mod feed;
pub mod ids;
pub mod member;
pub mod message;
pub mod page;
pub mod room;
pub mod text;
pub mod time;

pub use dialect::Dialect;
pub use feed::{FeedEntry, FeedEvent, FeedKind};
pub use ids::*;
pub use member::*;
pub use message::*;
pub use page::*;
pub use room::*;
pub use text::*;
pub use time::*;
