//! The composition root's cluster half (`--nats-url`): the deployment's identity on
//! NATS, the hubs' relay, the presence ledger of every node, the lease and the
//! repair. A single node builds none of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::BoxError;
use crate::cluster::Node;
use crate::cluster::bus::{self, Connection, Deployment};
use crate::cluster::lease::{self, Lease};
use crate::cluster::presence::ClusterPresence;
use crate::cluster::relay::{Queue, Relay};
use crate::cluster::repair::{self, Repair};
use crate::cluster::store::ClusterStore;
use crate::config::Config;
use crate::{health, live, rooms, store};

/// A node that joined its deployment's bus, its tasks not started yet.
pub struct Joined {
    pub node: Node,
    pub store: ClusterStore,
    pub hubs: Arc<live::Hubs>,
    /// Written down under this node's lease, read over every node.
    pub ledger: Arc<ClusterPresence>,
    client: async_nats::Client,
    deployment: Deployment,
    queue: Queue,
}

/// Connects to NATS under the deployment's identity (stored by its first node, read
/// by every other), makes `hubs` relay what they publish to the other nodes, and
/// announces this node (after releasing what an earlier process of its id left).
pub async fn join(
    config: &Config,
    store: &store::Store,
    connection: Connection,
    hubs: live::Hubs,
    tasks: &TaskTracker,
) -> Result<Joined, BoxError> {
    let cluster = ClusterStore::new(store).ok_or("a cluster needs PostgreSQL")?;
    let candidate = Deployment::generate()?;
    let (id, key) = cluster.deployment((&candidate.0, &candidate.1)).await?;
    let deployment = Deployment::new(&id, &key, config.nats_subject_prefix.as_deref());
    tracing::info!(subject = deployment.subject(), "cluster events on NATS");
    let (relay, queue) = Relay::new(tasks.clone());
    let client = bus::connect(&connection).await?;
    let node = Node {
        id: config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
            .into(),
        lease: Duration::from_millis(config.node_lease_ms),
    };
    Ok(Joined {
        ledger: Arc::new(ClusterPresence::new(
            cluster.clone(),
            node.clone(),
            config.clock.clone(),
        )),
        node,
        store: cluster,
        hubs: Arc::new(hubs.with_broker(Arc::new(relay))),
        client,
        deployment,
        queue,
    })
}

/// The tasks a cluster node cannot serve without, and what health watches.
pub struct Started {
    pub essential: Vec<(&'static str, JoinHandle<()>)>,
    pub bus: health::Bus,
}

impl Joined {
    /// Announces the node and starts the bus, the lease and the repair.
    pub async fn start(
        self,
        rooms: &rooms::Rooms,
        memory: &Arc<live::Presence>,
        store: &store::Store,
        config: &Config,
        stop: &watch::Receiver<bool>,
    ) -> Result<Started, BoxError> {
        let lease = Lease {
            node: self.node.clone(),
            store: self.store.clone(),
            memory: memory.clone(),
            ledger: self.ledger.clone(),
            deadlines_changed: rooms.deadlines_changed().clone(),
            clock: config.clock.clone(),
        };
        lease.announce().await?;
        tracing::info!(node = %self.node.id, "cluster node: messages relayed over NATS");
        let bus = health::Bus {
            client: self.client.clone(),
            grace: Duration::from_millis(config.nats_grace_ms),
        };
        let repair = Repair {
            hubs: self.hubs.clone(),
            memory: memory.clone(),
            store: store.clone(),
            cluster: self.store,
            clock: config.clock.clone(),
        };
        let repair_every = Duration::from_millis(config.cluster_repair_interval_ms);
        let engine = bus::start(
            self.client,
            self.node.id.to_string(),
            self.deployment,
            self.queue,
            self.hubs,
            stop.clone(),
        );
        let essential = vec![
            ("node lease", lease::start(lease, stop.clone())),
            ("NATS relay", engine),
            (
                "cluster repair",
                repair::start(repair, repair_every, stop.clone()),
            ),
        ];
        Ok(Started { essential, bus })
    }
}
