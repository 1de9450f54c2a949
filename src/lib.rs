//! # chatroom
//!
//! A gRPC chat-room service. Backend services create, enter and leave rooms with unary
//! RPCs and exchange messages over one bidirectional `Subscribe` stream. Rooms,
//! membership and history are stored durably (PostgreSQL, or an embedded SQLite file
//! by default); live fan-out happens in memory.
//!
//! ## Layout
//!
//! `ARCHITECTURE.md` in the repository explains the layers and the hot paths and why
//! they are shaped so; in brief:
//!
//! Arrows point down: `app` (the composition root) → `api` → `rooms` → (`live`,
//! `cluster`, `store`) → `proto` → `domain`. No import runs back up.
//!
//! - `app` (private): [`App::build`] checks the flags, opens the store and starts
//!   every task; [`App::serve`] serves until shutdown and stops them. One node or a
//!   node of a cluster is decided there, once. [`token`]: `chatroom token`, which
//!   mints a development token or checks one with the key the flags name.
//!
//! - [`config`]: the command line and its environment twins.
//! - [`health`]: what the health service says — the watcher of the database (and of
//!   NATS, for a cluster node), and the supervision of the writer tasks and a cluster
//!   node's relay, lease and repair (one that dies stops the server, which then exits
//!   non-zero).
//! - [`error`]: the domain error enum; [`api::status`] holds its one mapping to gRPC.
//! - [`auth`]: bearer tokens (`--auth jwt`) verified into a caller — keys, claims, and
//!   a reason for every refusal; `api` hands it the token's text. [`auth::jwks`]
//!   keeps a provider's published keys fresh.
//! - [`telemetry`]: logs (text or JSON), spans (per call and per stream, exported over
//!   OTLP with `--otlp-endpoint`) and Prometheus metrics, each metric named once.
//! - [`web`]: what browsers need — gRPC-Web on the same port, CORS for
//!   `--cors-origins` (pages receive with the server-streaming `Listen`).
//! - [`transport`]: the accept loop and one task per connection that runs all of its
//!   streams, so a room event leaves each connection in one write; connections are
//!   closed when one of their Subscribe streams stays unread
//!   (`--stalled-stream-timeout`).
//! - [`tls`]: TLS and mTLS on the listener — a handshake task per connection with a
//!   deadline, certificates reloaded on SIGHUP.
//! - [`api`]: the gRPC layer only — identity, the unary handlers, the service as
//!   served ([`api::routes`]) under one span-and-metrics layer ([`api::metered`]),
//!   Subscribe and Listen opened once ([`api::streams`]), the client's frames
//!   decoded (`api::inbound`), the session loop ([`api::session`]), its body, which
//!   writes pre-encoded frames to HTTP/2 ([`api::body`]), polled only when something
//!   it waits on woke it (`api::gate`), the server's stop as streams wait for it
//!   (`api::stop`),
//!   the tasks a stream's database work runs on ([`api::work`]:
//!   never inside the session, which runs only while its client reads) and the
//!   server's codec (which answers undecodable messages INVALID_ARGUMENT).
//! - [`domain`]: the types every layer imports — ids, rooms, members, messages, pages —
//!   parsed once at the edge; and the [`domain::Clock`] every rule reads the time
//!   from and every timer waits on (the system's; in a test, one the test moves).
//! - [`rooms`]: the rules — membership, limits, permissions, sending — as handles,
//!   one file each, that list what they hold ([`rooms::Rooms`] bundles them), and the
//!   writers that group-commit changes: every change of membership
//!   ([`rooms::roster`]) and messages ([`rooms::sequencer`], a task per share of the
//!   rooms); presence, on one node
//!   or over a cluster ([`rooms::presence`]); the expiry of presence and empty rooms;
//!   history retention ([`rooms::retention`]). No tonic, no SQL, and no
//!   question whether it runs in a cluster.
//! - [`live`]: in-memory only: fan-out hubs and this process's presence, and the two
//!   interfaces a cluster plugs into: the [`live::Broker`] the hubs publish through
//!   and the [`live::PresenceLedger`] presence is written to. It imports no store.
//! - [`cluster`]: everything that exists only with `--nats-url` — the relay and its
//!   NATS bus, every node's presence, the node lease, the repair of what the bus
//!   lost, and the SQL only a cluster runs.
//! - [`proto`]: the wire format, at the bottom: the code generated from
//!   `proto/chatroom/v1/chatroom.proto` (the contract, [`proto::pb`]), its descriptor
//!   set, requests decoded and validated once ([`proto::decode`]), answers and every
//!   event encoded ([`proto::encode`]), and [`proto::Frame`] (an event encoded once).
//! - [`store`]: SQL on PostgreSQL and SQLite — one text where the dialects agree, a
//!   file per dialect where they differ (the writers' batch statements, row locks);
//!   failing fast while PostgreSQL is unreachable, for a cluster's statements too
//!   ([`store::Shared`]).
//!
//! What a client can make the server hold is bounded, and released by whoever set it
//! up: a stream holds one piece of database work and no connection longer than a
//! statement, a queue of at most 256 frames, one catch-up page (256 messages or
//! 256 KiB); a room's ring holds `--room-buffer` events and `--room-buffer-bytes` of
//! large frames, and one shared copy of the room; HTTP/2 keepalive reaps connections
//! whose client vanished. `tests/hostile/` tries each of these from outside.
//!
//! [`serve`] runs the whole server on a listener until a shutdown future resolves;
//! `main.rs` calls it with the configured address and SIGTERM/SIGINT, tests call it on
//! port 0. The `chatroom-bench` binary (`src/bin/chatroom-bench/`) drives a running
//! server over gRPC and prints figures (BENCHMARKS.md).

pub mod api;
mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod health;
pub mod live;
pub mod proto;
pub mod rooms;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod web;

pub use app::{App, BoxError, token};
pub use config::Config;
pub use error::{Error, Result};
pub use proto::{FILE_DESCRIPTOR_SET, pb};

/// Serves the chatroom service, health and reflection on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish and closes the database: [`App::build`]
/// then [`App::serve`].
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), BoxError> {
    App::build(config).await?.serve(listener, shutdown).await
}
