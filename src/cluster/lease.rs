//! A cluster node's lease: how the other nodes know it is alive, and what happens to
//! its presence when it is not.
//!
//! A node announces itself in the store with a lease and renews it every third of
//! the lease. Each renewal also looks for nodes whose lease ran out — killed, cut off
//! from the database, frozen — and releases them: their members go offline as of
//! when the lease ran out, so presence timeouts count from then. One node releases
//! each dead node (the release deletes the node's row first; whoever deletes it does
//! the rest). A node that finds its own row gone was released while it could not
//! renew: it announces itself again and stores its presence anew.
//!
//! A node starting with the id of an earlier process (`--node-id`) releases that
//! process's presence first; it never touches the presence of live nodes. Stopping,
//! it releases its own.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::Node;
use super::presence::ClusterPresence;
use super::store::ClusterStore;
use crate::domain::Clock;
use crate::error::Result;
use crate::live::{Presence, ledger};

/// What keeping a node's lease needs.
#[derive(Clone, Debug)]
pub struct Lease {
    pub node: Node,
    pub store: ClusterStore,
    /// This process's streams, written down again after a release.
    pub memory: Arc<Presence>,
    pub ledger: Arc<ClusterPresence>,
    /// Rung when released members went offline: their presence timeouts start.
    pub deadlines_changed: Arc<Notify>,
    /// When released members went offline.
    pub clock: Clock,
}

impl Lease {
    /// Announces this node, after releasing what an earlier process with its id left.
    pub async fn announce(&self) -> Result<()> {
        let node = &self.node;
        self.store
            .release_node(&node.id, self.clock.now(), false)
            .await?;
        self.store.register_node(&node.id, node.lease).await
    }

    /// Renews this node's lease (announcing it and its presence again if it was
    /// released), then releases the nodes whose lease ran out.
    async fn keep(&self) -> Result<()> {
        let node = &self.node;
        if !self.store.renew_lease(&node.id, node.lease).await? {
            tracing::warn!(
                node = %node.id,
                "this node's lease ran out and other nodes released its presence; announcing it again"
            );
            self.store.register_node(&node.id, node.lease).await?;
            self.restore_presence().await?;
        }
        for (dead, lease_ended) in self.store.dead_nodes().await? {
            if let Some(offline) = self.store.release_node(&dead, lease_ended, true).await? {
                tracing::info!(
                    node = dead,
                    members_offline = offline,
                    "released a dead node"
                );
                if offline > 0 {
                    self.deadlines_changed.notify_one();
                }
            }
        }
        Ok(())
    }

    /// Writes this node's presence down again, every room and user it has streams
    /// for (after its lease ran out and other nodes released it).
    async fn restore_presence(&self) -> Result<()> {
        for (room_id, user) in self.memory.all() {
            if ledger::sync(&self.memory, self.ledger.as_ref(), &room_id, &user).await? {
                self.deadlines_changed.notify_one();
            }
        }
        Ok(())
    }
}

/// Starts renewing the node's lease; when `stop` turns true the node releases its
/// presence and the task ends.
pub fn start(lease: Lease, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let node = lease.node.clone();
        let mut ticks = tokio::time::interval(node.lease / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
            if let Err(error) = lease.keep().await {
                tracing::warn!(%error, node = %node.id, "could not renew this node's lease");
            }
        }
        if let Err(error) = lease
            .store
            .release_node(&node.id, lease.clock.now(), false)
            .await
        {
            tracing::warn!(%error, node = %node.id, "could not release this node on the way out");
        }
    })
}
