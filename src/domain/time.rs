//! Time as the store keeps it.

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time, in microseconds since the Unix epoch (what the store keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMicros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }
}
