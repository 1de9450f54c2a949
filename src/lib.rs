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
//! Arrows point inward: `api` → `rooms` → (`live`, `store`) → `domain`.
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
//! - [`transport`]: accepted connections, closed when one of their Subscribe streams
//!   stays unread (`--stalled-stream-timeout`).
//! - [`tls`]: TLS and mTLS on the listener — a handshake task per connection with a
//!   deadline, certificates reloaded on SIGHUP.
//! - [`api`]: the gRPC layer only — identity, request validation, the service, the
//!   Subscribe session loop ([`api::session`], also behind `Listen`), its route
//!   ([`api::subscribe`], which writes pre-encoded frames to HTTP/2), the tasks a stream's database work runs on
//!   ([`api::work`]: never inside the session, which runs only while its client reads)
//!   and the server's codec (which answers undecodable messages INVALID_ARGUMENT).
//! - [`domain`]: the types every layer imports — ids, rooms, members, messages, pages —
//!   parsed once at the edge.
//! - [`rooms`]: the rules — membership, limits, permissions, sending — and the two
//!   writers that group-commit changes: every change of membership
//!   ([`rooms::admissions`]) and messages ([`rooms::sequencer`]); presence, on one node
//!   or over a cluster ([`rooms::presence`]); the expiry of presence and empty rooms;
//!   history retention ([`rooms::retention`]); for a cluster node its lease
//!   ([`rooms::lease`]) and the repair of what the bus lost ([`rooms::tail`]). No
//!   tonic, no SQL.
//! - [`live`]: in-memory only: fan-out hubs, frames encoded once, this process's
//!   presence, and the relay of events to and from other nodes (NATS). It imports no
//!   store.
//! - [`proto`]: domain values and their protobuf form, both ways: requests decoded and
//!   validated once ([`proto::decode`]), answers and events encoded ([`proto::encode`]).
//! - [`store`]: SQL on PostgreSQL and SQLite — one text where the dialects agree, a
//!   file per dialect where they differ (the writers' batch statements, row locks);
//!   a cluster's nodes and presence (PostgreSQL only); failing fast while PostgreSQL
//!   is unreachable.
//! - [`pb`]: code generated from `proto/chatroom/v1/chatroom.proto` (the contract).
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
pub mod auth;
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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use transport::Guarded;

pub use config::Config;
pub use error::{Error, Result};

/// Code generated from the proto contract (package `chatroom.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("chatroom.v1");
}

/// The encoded descriptor set of the contract and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chatroom_descriptor.bin"));

/// Serves the chatroom service, health and reflection on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish and closes the database.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if config.nats_url.is_some() && !store::Store::is_postgres_url(&config.database_url) {
        // Nodes share their rooms through the database: a SQLite file is one process's.
        return Err(Error::invalid(
            "nats_url",
            "a cluster (--nats-url) needs a shared PostgreSQL database: --database-url must be postgres://",
        )
        .into());
    }
    // Flags that cannot work are refused before anything is opened or written.
    let tokens = config.token_verifier()?;
    let nats = nats_connection(&config)?;
    let cors = web::cors(&config.cors_origins)?;
    if let Some(addr) = config.metrics_listen {
        telemetry::serve_metrics(addr)?;
    }
    let tls = match config.tls_files()? {
        Some(files) => Some(Arc::new(tls::Tls::load(files)?)),
        None => None,
    };
    let store = store::Store::connect(&config.database_url, config.db_pool_size).await?;
    tracing::info!(
        dialect = store.dialect(),
        addr = %listener.local_addr()?,
        "chatroom serving"
    );

    // Members online when the last process ended have been offline since. In a
    // cluster the other nodes' members may be online right now: a starting node
    // releases only what an earlier process of its own id left (`announce_node`).
    if config.nats_url.is_none() {
        store.mark_all_offline(domain::UnixMicros::now()).await?;
    }

    let hubs = live::Hubs::new(
        config.room_buffer as usize,
        config.room_buffer_bytes,
        Duration::from_millis(config.member_event_window_ms),
    );
    let (hubs, relayed) = match &nats {
        Some(connection) => {
            // The deployment's identity on a NATS that others may share: stored by
            // its first node, read by every other.
            let candidate = live::nats::Deployment::generate()?;
            let (id, key) = store.deployment((&candidate.0, &candidate.1)).await?;
            let deployment =
                live::nats::Deployment::new(&id, &key, config.nats_subject_prefix.as_deref());
            tracing::info!(subject = deployment.subject(), "cluster events on NATS");
            let (relay, queue) = live::Relay::new();
            let client = live::nats::connect(connection).await?;
            (hubs.relaying(relay), Some((client, deployment, queue)))
        }
        None => (hubs, None),
    };
    let hubs = Arc::new(hubs);
    let (sequencer, writer) = rooms::Sequencer::start(store.clone(), hubs.clone());
    let live = rooms::LiveParts {
        hubs: hubs.clone(),
        presence: Arc::new(live::Presence::new()),
        sequencer,
    };
    let limits = rooms::Limits {
        max_rooms_per_user: config.max_rooms_per_user,
        messages: domain::MessageLimits {
            max_text_bytes: config.max_text_bytes,
            max_payload_bytes: config.max_payload_bytes,
        },
        sends: rooms::rates::Rate {
            per_second: config.send_rate,
            burst: config.send_burst,
        },
        room_changes: rooms::rates::Rate {
            per_second: config.room_change_rate,
            burst: config.room_change_burst,
        },
        max_streams_per_user: config.max_streams_per_user,
    };
    let (rooms, admissions) =
        rooms::Rooms::new(store.clone(), live, limits, config.admin_users.clone());
    let node = config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let rooms = match &relayed {
        Some(_) => {
            let rooms = rooms.on_node(rooms::Node {
                id: node.as_str().into(),
                lease: Duration::from_millis(config.node_lease_ms),
            });
            rooms.announce_node().await?;
            rooms
        }
        None => rooms,
    };

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // A cluster node: messages to and from the other nodes, and the repair of what
    // the bus loses.
    let mut bus = None;
    let cluster: Vec<(&'static str, tokio::task::JoinHandle<()>)> = match relayed {
        Some((client, deployment, queue)) => {
            tracing::info!(node, "cluster node: messages relayed over NATS");
            bus = Some(health::Bus {
                client: client.clone(),
                grace: Duration::from_millis(config.nats_grace_ms),
            });
            vec![
                (
                    "node lease",
                    rooms::lease::start(rooms.clone(), stop.clone()),
                ),
                (
                    "NATS relay",
                    live::nats::start(client, node, deployment, queue, hubs.clone(), stop.clone()),
                ),
                (
                    "cluster repair",
                    rooms::tail::start(
                        rooms.clone(),
                        Duration::from_millis(config.cluster_repair_interval_ms),
                        stop.clone(),
                    ),
                ),
            ]
        }
        None => Vec::new(),
    };
    let expiry = rooms::expiry::start(rooms.clone(), stop.clone());
    let retention = rooms::retention::start(
        store.clone(),
        rooms::retention::Retention {
            max_age: config.history_retention,
            max_per_room: config.history_max_per_room,
        },
        stop.clone(),
    );
    if config.metrics_listen.is_some() {
        tokio::spawn(sample_gauges(
            store.clone(),
            rooms.hubs().clone(),
            stop.clone(),
        ));
    }
    // Keys from a JWKS are fetched before the first call is served (a provider that
    // does not answer yet is retried in the background).
    let jwks = match tokens.as_ref().and_then(|t| t.key_set()) {
        Some(set) => Some(set.clone().keep_fresh(stop.clone()).await),
        None => None,
    };
    let session_limits = api::SessionLimits {
        max_rooms_per_stream: config.max_rooms_per_stream as usize,
    };
    let service = api::subscribe::WithSubscribe::new(
        api::ChatRoomApi::new(rooms, session_limits, tokens, stop.clone()),
        max_request_bytes(&config),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // The database just answered (migrations ran): serving from the first call on.
    health::set(&health_reporter, ServingStatus::Serving).await;
    let health_task = tokio::spawn(health::watch_dependencies(
        store.clone(),
        bus,
        health_reporter.clone(),
        stop.clone(),
    ));
    // A cluster node without its relay, lease or repair would serve stale presence
    // and miss other nodes' events: those tasks are supervised like the writers.
    let mut essential = vec![
        ("message writer", writer),
        ("membership writer", admissions),
    ];
    essential.extend(cluster);
    let writers = tokio::spawn(health::watch_writers(
        essential,
        health_reporter,
        stop_tx.clone(),
    ));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Shutdown order: stop accepting and tell Subscribe streams to end (they answer
    // their sends in flight, then end with UNAVAILABLE); tonic waits for in-flight
    // calls; then the writers store what they were handed and the store closes. The
    // stop comes from the caller's `shutdown`, or from a writer that died.
    let shutdown = {
        let mut stopped = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => {
                    let _ = stop_tx.send(true);
                }
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        }
    };
    // Keepalive reaps connections whose client vanished without closing them (power
    // loss, a NAT that forgot the mapping): nothing else would end their streams.
    let keepalive = (config.keepalive_interval_secs > 0)
        .then(|| Duration::from_secs(config.keepalive_interval_secs));
    // A live client that does not read a stream is not reaped by keepalive (its
    // HTTP/2 layer answers pings): `transport` closes its connection instead.
    let stall_after = (config.stalled_stream_timeout_secs > 0)
        .then(|| Duration::from_secs(config.stalled_stream_timeout_secs));
    // Browsers: gRPC-Web (HTTP/1.1 or HTTP/2) on the same port, translated to gRPC
    // before any service sees it, behind CORS for the pages of `--cors-origins`.
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout_secs)))
        .layer(cors)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let result = match &tls {
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener, stall_after), shutdown)
                .await
        }
        Some(tls) => {
            let reload = tokio::spawn(reload_on_sighup(tls.clone(), stop.clone()));
            let served = router
                .serve_with_incoming_shutdown(
                    tls_incoming(listener, tls.clone(), stall_after),
                    shutdown,
                )
                .await;
            reload.abort();
            served
        }
    };

    let _ = health_task.await;
    if let Some(jwks) = jwks {
        jwks.abort();
    }
    // The expiry task holds the last handles to the writers besides the service.
    let _ = expiry.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    let writers = writers.await?;
    store.close().await;
    tracing::info!("chatroom stopped");
    result?;
    Ok(writers?)
}

/// The largest request worth decoding: the biggest SendMessage the message limits
/// allow (text, payload, every target) or the biggest attribute set a room may
/// have, whichever is larger, plus room for the other fields. Anything bigger is
/// refused by size alone, before it is buffered whole (tonic's default is 4 MiB).
fn max_request_bytes(config: &Config) -> usize {
    use domain::{
        MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTE_VALUE_CHARS, MAX_ATTRIBUTES, MAX_TARGETS,
        MAX_USER_ID_LEN,
    };
    const HEADROOM: usize = 64 * 1024;
    let message =
        config.max_text_bytes + config.max_payload_bytes + MAX_TARGETS * (MAX_USER_ID_LEN + 4);
    // Four bytes per character at most, and a few of framing per entry.
    let attributes =
        MAX_ATTRIBUTES * (4 * (MAX_ATTRIBUTE_KEY_CHARS + MAX_ATTRIBUTE_VALUE_CHARS) + 8);
    message.max(attributes) + HEADROOM
}

/// Accepted connections with Nagle's algorithm off: acks and events are small frames
/// that must leave at once, not wait for more bytes (tonic's own `tcp_nodelay` applies
/// only to listeners it binds itself).
fn incoming(
    listener: TcpListener,
    stall_after: Option<Duration>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Guarded<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(Guarded::new(stream, stall_after))
    })
}

/// Connections through their TLS handshake, Nagle off. Each handshake runs on a task
/// of its own (with a deadline), so one slow or hostile client never holds up the
/// accepts of others; a failed one is logged and dropped.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<tls::Tls>,
    stall_after: Option<Duration>,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<Guarded<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
> {
    let (ready, connections) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, say: try again shortly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, ready) = (tls.clone(), ready.clone());
            tokio::spawn(async move {
                match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = ready.send(Ok(Guarded::new(stream, stall_after))).await;
                    }
                    Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Reads the TLS files again on every SIGHUP and whenever they change, until the
/// server stops. New connections get the new certificates; established ones keep
/// theirs.
async fn reload_on_sighup(tls: Arc<tls::Tls>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: TLS files reload only when they change");
            None
        }
    };
    let mut seen = tls.stamp();
    let mut checks = tokio::time::interval(tls::CHANGE_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            Some(()) = async { hangups.as_mut()?.recv().await } => "SIGHUP",
            _ = checks.tick() => {
                if tls.stamp() == seen {
                    continue;
                }
                "the files changed"
            }
            _ = stop.wait_for(|stop| *stop) => return,
        };
        seen = tls.stamp();
        match tls.reload() {
            Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
            Err(error) => {
                tracing::warn!(why, %error, "TLS reload failed; the previous certificates stay")
            }
        }
    }
}

/// Samples what is a level rather than an event (live rooms, database connections)
/// for the metrics, every second, until the server stops.
async fn sample_gauges(
    store: store::Store,
    hubs: Arc<live::Hubs>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (in_use, idle) = store.connections();
        telemetry::db_connections(in_use, idle);
        telemetry::rooms_live(hubs.live_room_count());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reflection over every served type: the contract, health, and `google.rpc` error
/// details (so grpcurl can describe the health service and print `ErrorInfo`).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// How to reach NATS, if this is a cluster node: every `--nats-*` option needs
/// `--nats-url`; one way to authenticate at most; `--nats-tls-cert` and
/// `--nats-tls-key` go together; every file named must be readable (refused
/// before anything starts, not at the first reconnect).
fn nats_connection(config: &Config) -> Result<Option<live::nats::Connection>> {
    use live::nats::{Auth, Connection};
    let Some(url) = &config.nats_url else {
        let given = [
            ("nats_subject_prefix", config.nats_subject_prefix.is_some()),
            ("nats_creds", config.nats_creds.is_some()),
            ("nats_nkey", config.nats_nkey.is_some()),
            ("nats_token", config.nats_token.is_some()),
            ("nats_user", config.nats_user.is_some()),
            ("nats_password", config.nats_password.is_some()),
            ("nats_tls_ca", config.nats_tls_ca.is_some()),
            ("nats_tls_cert", config.nats_tls_cert.is_some()),
            ("nats_tls_key", config.nats_tls_key.is_some()),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(Error::invalid(
                *field,
                "NATS options need a cluster: give --nats-url too",
            )),
            None => Ok(None),
        };
    };
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
    };
    let mut ways = Vec::new();
    if let Some(path) = &config.nats_creds {
        // As written: the file's sections end with line breaks, which its parser
        // needs.
        let creds = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid("nats_creds", format!("cannot read {}: {e}", path.display()))
        })?;
        ways.push(Auth::Creds(creds));
    }
    if let Some(path) = &config.nats_nkey {
        ways.push(Auth::NKey(read("nats_nkey", path)?));
    }
    if let Some(token) = &config.nats_token {
        ways.push(Auth::Token(token.clone()));
    }
    match (&config.nats_user, &config.nats_password) {
        (Some(user), Some(password)) => {
            ways.push(Auth::UserPassword(user.clone(), password.clone()))
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "nats_user",
                "--nats-user and --nats-password go together",
            ));
        }
    }
    if ways.len() > 1 {
        return Err(Error::invalid(
            "nats_creds",
            "give one way to authenticate to NATS: --nats-creds, --nats-nkey, --nats-token, or --nats-user with --nats-password",
        ));
    }
    let tls_client = match (&config.nats_tls_cert, &config.nats_tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(Error::invalid(
                "nats_tls_cert",
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
    };
    for (field, path) in [
        ("nats_tls_ca", config.nats_tls_ca.as_ref()),
        ("nats_tls_cert", config.nats_tls_cert.as_ref()),
        ("nats_tls_key", config.nats_tls_key.as_ref()),
    ] {
        if let Some(path) = path {
            read(field, path)?;
        }
    }
    Ok(Some(Connection {
        url: url.clone(),
        auth: ways.pop().unwrap_or_default(),
        tls_ca: config.nats_tls_ca.clone(),
        tls_client,
    }))
}
