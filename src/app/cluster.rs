//! A cluster node's parts (`--nats-url`): the deployment's identity on NATS, the bus,
//! the node's lease and the repair of what the bus loses. Built only here; a single
//! node builds none of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::BoxError;
use crate::config::Config;
use crate::live::nats::{self, Connection, Deployment};
use crate::{health, live, rooms, store};

/// A node that joined its deployment's bus, its tasks not started yet.
pub struct Joined {
    client: async_nats::Client,
    deployment: Deployment,
    queue: live::relay::Queue,
    hubs: Arc<live::Hubs>,
}

/// The tasks a cluster node cannot serve without, and what health watches.
pub struct Started {
    pub rooms: rooms::Rooms,
    pub essential: Vec<(&'static str, JoinHandle<()>)>,
    pub bus: health::Bus,
}

/// Connects to NATS under the deployment's identity (stored by its first node, read
/// by every other) and makes `hubs` relay what they publish to the other nodes.
pub async fn join(
    store: &store::Store,
    connection: Connection,
    subject_prefix: Option<&str>,
    hubs: live::Hubs,
) -> Result<(Arc<live::Hubs>, Joined), BoxError> {
    let candidate = Deployment::generate()?;
    let (id, key) = store.deployment((&candidate.0, &candidate.1)).await?;
    let deployment = Deployment::new(&id, &key, subject_prefix);
    tracing::info!(subject = deployment.subject(), "cluster events on NATS");
    let (relay, queue) = live::Relay::new();
    let client = nats::connect(&connection).await?;
    let hubs = Arc::new(hubs.relaying(relay));
    let joined = Joined {
        client,
        deployment,
        queue,
        hubs: hubs.clone(),
    };
    Ok((hubs, joined))
}

impl Joined {
    /// Makes `rooms` one node of the cluster (presence counted over every node),
    /// announces it, and starts the bus, the lease and the repair.
    pub async fn start(
        self,
        rooms: rooms::Rooms,
        config: &Config,
        stop: &watch::Receiver<bool>,
    ) -> Result<Started, BoxError> {
        let node = config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let rooms = rooms.on_node(rooms::Node {
            id: node.as_str().into(),
            lease: Duration::from_millis(config.node_lease_ms),
        });
        rooms.announce_node().await?;
        tracing::info!(node, "cluster node: messages relayed over NATS");
        let bus = health::Bus {
            client: self.client.clone(),
            grace: Duration::from_millis(config.nats_grace_ms),
        };
        let repair_every = Duration::from_millis(config.cluster_repair_interval_ms);
        let essential = vec![
            (
                "node lease",
                rooms::lease::start(rooms.clone(), stop.clone()),
            ),
            (
                "NATS relay",
                nats::start(
                    self.client,
                    node,
                    self.deployment,
                    self.queue,
                    self.hubs,
                    stop.clone(),
                ),
            ),
            (
                "cluster repair",
                rooms::tail::start(rooms.clone(), repair_every, stop.clone()),
            ),
        ];
        Ok(Started {
            rooms,
            essential,
            bus,
        })
    }
}
