//! Everything that exists only on a node of a cluster (`--nats-url`): the only
//! module that knows a cluster exists. The composition root builds it once; the
//! rules and the hubs see it only through the interfaces they define below it.
//!
//! - [`relay`]: the hubs' [`crate::live::Broker`] — the queue of events to the other
//!   nodes; [`bus`]: the engine that carries them over NATS (subjects of the
//!   deployment's own, a MAC on every event) and applies the other nodes' events to
//!   this node's hubs.
//! - [`presence`]: the [`crate::live::PresenceLedger`] of a cluster — every node's
//!   streams written down under its lease, read back over every live node.
//! - [`lease`]: this node's lease, and the release of nodes whose lease ran out.
//! - [`repair`]: what the bus lost, read back from the store — a lost tail of
//!   messages, a lost update, deletion or detach.
//! - [`store`]: the SQL only a cluster runs (PostgreSQL), under the same
//!   fail-fast-while-the-database-is-away rule as every other statement.
//!
//! It imports `domain`, `error`, `proto`, `telemetry`, `live` and `store`; nothing
//! imports it but the composition root.

pub mod bus;
pub mod lease;
pub mod presence;
pub mod relay;
pub mod repair;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

/// This process as one node of a cluster.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: Arc<str>,
    /// How long the node's lease lasts: a node that stops renewing it is dead that
    /// long after, and its streams count offline.
    pub lease: Duration,
}
