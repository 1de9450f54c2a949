//! The composition root: the one place that knows every part and puts them
//! together. [`App::build`] checks the flags, opens the store, starts the writers
//! and — for a cluster node — the bus, the lease and the repair; [`App::serve`]
//! serves them on a listener until the shutdown future resolves, then stops every
//! task it started, in order. Whether this process is one node or a node of a
//! cluster is decided here, once ([`cluster`]). [`token`] is the `chatroom token`
//! command: it mints and checks tokens with the key the server's flags name.
//!
//! It may import every module; nothing imports it but `lib.rs`.

mod cluster;
mod gauges;
mod parts;
pub mod token;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tower_layer::Layer;

use crate::config::Config;
use crate::{api, auth, health, live, rooms, store, telemetry, tls, transport, web};

/// What `serve` fails with: a flag that cannot work, a store that cannot be opened,
/// or a task the server cannot run without that died.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server, built and running its tasks, not yet serving calls.
pub struct App {
    config: Config,
    store: store::Store,
    service: api::metered::Metered<api::routes::Routes>,
    cors: tower_http::cors::CorsLayer,
    tls: Option<Arc<tls::Tls>>,
    health_service: HealthServer<HealthService>,
    /// Turns true when the server stops (asked to, or a task it needs died).
    stop: Arc<watch::Sender<bool>>,
    tasks: Tasks,
}

/// Every task the server started, owned until it stops.
struct Tasks {
    /// Watches the tasks the server cannot serve without (writers; for a cluster
    /// node, the bus, the lease and the repair): one that dies stops the server.
    essential: JoinHandle<Result<(), health::WriterDied>>,
    /// Ends when the server stops; awaited so that each lets go of what it holds.
    background: Vec<JoinHandle<()>>,
    /// Has nothing to finish: aborted when the server stops.
    aborted: Vec<JoinHandle<()>>,
    /// Short tasks the rooms and hubs start (a presence write, a member-event flush,
    /// a relay waiting for a switch to commit): awaited, as they may write.
    short: TaskTracker,
}

impl App {
    /// Checks the flags, opens the store and starts every task; refuses flags that
    /// cannot work before anything is opened or written.
    pub async fn build(config: Config) -> Result<App, BoxError> {
        config.validate()?;
        let tokens = parts::token_verifier(&config)?;
        let nats = parts::nats_connection(&config)?;
        let cors = web::cors(&config.cors_origins)?;
        if let Some(addr) = config.metrics_listen {
            telemetry::serve_metrics(addr, api::metered::methods())?;
        }
        let tls = parts::tls(&config)?;
        let store = store::Store::connect(&config.database_url, config.db_pool_size).await?;
        let (stop_tx, stop) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let short = TaskTracker::new();

        let hubs = live::Hubs::new(
            config.room_buffer as usize,
            config.room_buffer_bytes,
            Duration::from_millis(config.member_event_window_ms),
            short.clone(),
        );
        let memory = Arc::new(live::Presence::new());
        let (hubs, ledger, joined) =
            Self::one_node_or_cluster(&config, &store, nats, hubs, &short).await?;
        let (rooms, mut essential) = Self::rooms(&config, &store, &hubs, &memory, ledger, &short);
        let bus = match joined {
            Some(joined) => {
                let started = joined
                    .start(&rooms, &memory, &store, &config, &stop)
                    .await?;
                essential.extend(started.essential);
                Some(started.bus)
            }
            None => None,
        };

        let (health, _) = tonic_health::server::health_reporter();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        // The database just answered (migrations ran): serving from the first call on.
        health::set(&health, ServingStatus::Serving).await;
        let mut background = Self::background(&config, &store, &rooms, &stop);
        background.push(tokio::spawn(health::watch_dependencies(
            store.clone(),
            bus,
            health.clone(),
            stop.clone(),
        )));
        let mut aborted = Vec::new();
        // Keys from a JWKS are fetched before the first call is served (a provider
        // that does not answer yet is retried in the background).
        if let Some(set) = tokens.as_ref().and_then(auth::Verifier::key_set) {
            aborted.push(set.clone().keep_fresh(stop.clone()).await);
        }
        let essential = tokio::spawn(health::watch_writers(
            essential,
            health.clone(),
            stop_tx.clone(),
        ));
        let service = Self::service(&config, rooms, tokens, stop.clone());
        Ok(App {
            config,
            store,
            service,
            cors,
            tls,
            health_service,
            stop: stop_tx,
            tasks: Tasks {
                essential,
                background,
                aborted,
                short,
            },
        })
    }

    /// The rooms over `store` and the writers they need, named: the tasks the server
    /// cannot serve without.
    fn rooms(
        config: &Config,
        store: &store::Store,
        hubs: &Arc<live::Hubs>,
        memory: &Arc<live::Presence>,
        ledger: Arc<dyn live::PresenceLedger>,
        short: &TaskTracker,
    ) -> (rooms::Rooms, Vec<(&'static str, JoinHandle<()>)>) {
        let lanes = store.concurrent_writers(config.message_writers);
        let (sequencer, message_writers) =
            rooms::Sequencer::start(store.clone(), hubs.clone(), config.recall_window, lanes);
        let parts = rooms::Parts {
            hubs: hubs.clone(),
            presence: memory.clone(),
            ledger,
            sequencer,
            tasks: short.clone(),
            clock: config.clock.clone(),
        };
        let (rooms, membership_writer) = rooms::Rooms::new(
            store.clone(),
            parts,
            parts::limits(config),
            config.admin_users.clone(),
        );
        let mut essential: Vec<_> = message_writers
            .into_iter()
            .map(|task| ("message writer", task))
            .collect();
        essential.push(("membership writer", membership_writer));
        (rooms, essential)
    }

    /// The chatroom service over `rooms`: every call spanned and metered, in one layer.
    fn service(
        config: &Config,
        rooms: rooms::Rooms,
        tokens: Option<auth::Verifier>,
        stop: watch::Receiver<bool>,
    ) -> api::metered::Metered<api::routes::Routes> {
        let limits = api::SessionLimits {
            max_rooms_per_stream: config.max_rooms_per_stream as usize,
        };
        let routes = api::routes::Routes::new(
            api::ChatRoomApi::new(rooms, limits, tokens, stop),
            parts::max_request_bytes(config),
        );
        tower_layer::Layer::layer(&api::metered::MeteredLayer, routes)
    }

    /// One node or a node of a cluster: decided here, once. A cluster node joins its
    /// deployment's bus (its hubs relay through it, its ledger is every node's); a
    /// single node's hubs are alone and its ledger is its own store.
    async fn one_node_or_cluster(
        config: &Config,
        store: &store::Store,
        nats: Option<crate::cluster::bus::Connection>,
        hubs: live::Hubs,
        short: &TaskTracker,
    ) -> Result<
        (
            Arc<live::Hubs>,
            Arc<dyn live::PresenceLedger>,
            Option<cluster::Joined>,
        ),
        BoxError,
    > {
        match nats {
            Some(connection) => {
                let joined = cluster::join(config, store, connection, hubs, short).await?;
                Ok((joined.hubs.clone(), joined.ledger.clone(), Some(joined)))
            }
            None => {
                // Members online when the last process ended have been offline
                // since. (A cluster node releases only what an earlier process of its
                // own id left: the other nodes' members may be online right now.)
                store.mark_all_offline(config.clock.now()).await?;
                let ledger = Arc::new(rooms::presence::OneNode::new(
                    store.clone(),
                    config.clock.clone(),
                ));
                Ok((Arc::new(hubs), ledger, None))
            }
        }
    }

    /// The tasks every server runs besides its writers: expiry, history and feed
    /// retention, and gauge sampling where metrics are served.
    fn background(
        config: &Config,
        store: &store::Store,
        rooms: &rooms::Rooms,
        stop: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![rooms::expiry::start(rooms.expiry.clone(), stop.clone())];
        tasks.extend(rooms::retention::start(
            store.clone(),
            rooms::retention::Retention {
                max_age: config.history_retention,
                max_per_room: config.history_max_per_room,
            },
            config.clock.clone(),
            stop.clone(),
        ));
        tasks.push(rooms::feed::start_pruning(
            store.clone(),
            config.room_feed_retention,
            config.clock.clone(),
            stop.clone(),
        ));
        if config.metrics_listen.is_some() {
            tasks.push(tokio::spawn(gauges::sample(
                store.clone(),
                rooms.hubs().clone(),
                stop.clone(),
            )));
        }
        tasks
    }

    /// Serves the chatroom service, health and reflection on `listener` until
    /// `shutdown` resolves (or a task the server needs dies), then lets in-flight
    /// calls finish, stops every task and closes the database.
    ///
    /// Shutdown order: stop accepting and tell Subscribe streams to end (they answer
    /// their sends in flight, then end with UNAVAILABLE); `transport::serve` waits for
    /// in-flight calls; then the writers store what they were handed and the store closes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        tracing::info!(
            dialect = self.store.dialect(),
            addr = %listener.local_addr()?,
            "chatroom serving"
        );
        let App {
            config,
            store,
            service,
            cors,
            tls,
            health_service,
            stop,
            mut tasks,
        } = self;
        let stopped = stop.subscribe();
        // For the tasks started while serving (the SIGHUP reload).
        let stop_signal = stop.subscribe();
        let shutdown = async move {
            let mut stopped = stopped;
            tokio::select! {
                () = shutdown => {
                    let _ = stop.send(true);
                }
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        };
        // Browsers: gRPC-Web (HTTP/1.1 or HTTP/2) on the same port, translated to gRPC
        // before any service sees it, behind CORS for the pages of `--cors-origins`.
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(service)
            .prepare();
        let service = cors.layer(tonic_web::GrpcWebLayer::new().layer(routes));
        // A live client that does not read a stream is not reaped by keepalive (its
        // HTTP/2 layer answers pings): `transport` closes its connection instead.
        let stall_after = (config.stalled_stream_timeout_secs > 0)
            .then(|| Duration::from_secs(config.stalled_stream_timeout_secs));
        let settings = settings(&config);
        match tls {
            None => {
                let incoming = transport::incoming(listener, stall_after);
                transport::serve(service, incoming, settings, shutdown).await;
            }
            Some(tls) => {
                let reload = tls::reload_on_sighup(tls.clone(), stop_signal);
                tasks.aborted.push(tokio::spawn(reload));
                let incoming = tls::incoming(listener, tls, stall_after);
                transport::serve(service, incoming, settings, shutdown).await;
            }
        }
        let essential = tasks.finish().await;
        store.close().await;
        tracing::info!("chatroom stopped");
        essential
    }
}

impl Tasks {
    /// Once the server stopped: aborts what has nothing to finish, waits for the
    /// rest (the expiry task and the short tasks hold the last handles to the writers
    /// besides the service), and says whether a task the server needed died.
    async fn finish(self) -> Result<(), BoxError> {
        for task in &self.aborted {
            task.abort();
        }
        for task in self.background {
            let _ = task.await;
        }
        self.short.close();
        self.short.wait().await;
        Ok(self.essential.await??)
    }
}

/// The gRPC server's HTTP/2 settings. Keepalive reaps connections whose client
/// vanished without closing them (power loss, a NAT that forgot the mapping):
/// nothing else would end their streams.
fn settings(config: &Config) -> transport::Settings {
    transport::Settings {
        max_streams_per_connection: config.max_streams_per_connection,
        keepalive_interval: (config.keepalive_interval_secs > 0)
            .then(|| Duration::from_secs(config.keepalive_interval_secs)),
        keepalive_timeout: Duration::from_secs(config.keepalive_timeout_secs),
    }
}

/// Reflection over every served type: the contract, health, and `google.rpc` error
/// details (so grpcurl can describe the health service and print `ErrorInfo`).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
