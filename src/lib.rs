//! # chatroom
//!
//! A gRPC chat-room service. Backend services create, enter and leave rooms with unary
//! RPCs and exchange messages over one bidirectional `Subscribe` stream. Rooms,
//! membership and history are stored durably (PostgreSQL, or an embedded SQLite file
//! by default); live fan-out happens in memory.
//!
//! ## Layout
//!
//! Arrows point inward: `api` → `rooms` → (`live`, `store`).
//!
//! - [`config`]: the command line and its environment twins.
//! - [`error`]: the domain error enum; [`api::status`] holds its one mapping to gRPC.
//! - [`api`]: the gRPC layer only — identity, proto ↔ domain conversion, the service.
//! - [`rooms`]: the rules — membership, limits, permissions. No tonic, no SQL.
//! - [`live`]: in-memory live state (presence of attached streams).
//! - [`store`]: SQL, with a PostgreSQL and a SQLite backend sharing one query text.
//! - [`pb`]: code generated from `proto/chatroom/v1/chatroom.proto` (the contract).
//!
//! [`serve`] runs the whole server on a listener until a shutdown future resolves;
//! `main.rs` calls it with the configured address and SIGTERM/SIGINT, tests call it on
//! port 0.

pub mod api;
pub mod config;
pub mod error;
pub mod live;
pub mod rooms;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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

/// How often the health service checks that the database answers.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Sets up logging once, from the configured filter (`RUST_LOG` wins when set).
pub fn init_telemetry(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // A second call (tests start several servers) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Serves the chatroom service, health and reflection on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish and closes the database.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = store::Store::connect(&config.database_url, config.db_pool_size).await?;
    tracing::info!(
        dialect = store.dialect(),
        addr = %listener.local_addr()?,
        "chatroom serving"
    );

    let presence = Arc::new(live::Presence::new());
    let limits = rooms::Limits {
        max_rooms_per_user: config.max_rooms_per_user,
    };
    let rooms = rooms::Rooms::new(store.clone(), presence, limits, config.admin_users.clone());
    let service =
        pb::chat_room_service_server::ChatRoomServiceServer::new(api::ChatRoomApi::new(rooms));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(watch_database(store.clone(), health_reporter));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;

    health_task.abort();
    store.close().await;
    tracing::info!("chatroom stopped");
    Ok(result?)
}

/// Reflection over every served type: the contract, health, and `google.rpc` error
/// details (so grpcurl can describe the health service and print `ErrorInfo`).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps the health service's status in step with the database: NOT_SERVING while it
/// does not answer, SERVING once it does again.
async fn watch_database(store: store::Store, reporter: HealthReporter) {
    const SERVICE: &str =
        <pb::chat_room_service_server::ChatRoomServiceServer<api::ChatRoomApi> as tonic::server::NamedService>::NAME;
    let mut last = None;
    loop {
        let ping = tokio::time::timeout(HEALTH_CHECK_INTERVAL, store.ping()).await;
        let status = match ping.unwrap_or_else(|_| Err(Error::Unavailable("ping timed out".into())))
        {
            Ok(()) => ServingStatus::Serving,
            Err(error) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!(%error, "database unreachable; health is NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE, status).await;
            last = Some(status);
        }
        tokio::time::sleep(HEALTH_CHECK_INTERVAL).await;
    }
}
