//! The NATS engine of the [`Relay`](super::relay::Relay): core pub/sub (at most
//! once), one subject for every room's messages.
//!
//! A message is its frame's wire bytes as the payload, and its room, seq, targets and
//! sending node in headers. Every node receives every room's messages and drops those
//! of rooms it has no stream in (a lookup each), and its own. The client reconnects by
//! itself; whatever the bus loses meanwhile, the store repairs (see `relay`).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::Hubs;
use super::frame::Frame;
use super::relay::Relayed;
use crate::domain::RoomId;
use crate::error::{Error, Result};

/// The subject every node publishes and subscribes on.
const SUBJECT: &str = "chatroom.v1.messages";
const NODE: &str = "Chatroom-Node";
const ROOM: &str = "Chatroom-Room";
const SEQ: &str = "Chatroom-Seq";
/// Targets as a JSON array of user ids (absent: every stream).
const TARGETS: &str = "Chatroom-Targets";

/// Connects to NATS at `url`. A server that is not up yet is retried in the background
/// (the node serves meanwhile; its streams heal from the store).
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| Error::invalid("nats_url", e.to_string()))
}

/// Starts the engine's task: it publishes what `queue` hands it and publishes what the
/// other nodes send to `hubs`, until `stop` turns true.
pub fn start(
    client: async_nats::Client,
    node: String,
    mut queue: mpsc::Receiver<Relayed>,
    hubs: Arc<Hubs>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut inbound = match client.subscribe(SUBJECT).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::error!(%error, "could not subscribe to NATS: no messages from other nodes");
                return;
            }
        };
        loop {
            tokio::select! {
                outbound = queue.recv() => {
                    let Some(message) = outbound else { return };
                    let (headers, payload) = encode(&node, message);
                    // While NATS is away a publish may wait for room in the client's
                    // buffer; shutting down does not.
                    tokio::select! {
                        published = client.publish_with_headers(SUBJECT, headers, payload) => {
                            if let Err(error) = published {
                                tracing::debug!(%error, "a message did not reach NATS");
                            }
                        }
                        () = stopped(&mut stop) => return,
                    }
                }
                received = inbound.next() => {
                    let Some(received) = received else { return };
                    if let Some(message) = decode(&node, &received) {
                        hubs.publish_relayed(message);
                    }
                }
                () = stopped(&mut stop) => return,
            }
        }
    })
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not kept: it is
/// not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn encode(node: &str, message: Relayed) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(NODE, node);
    headers.insert(ROOM, message.room.as_str());
    headers.insert(SEQ, message.seq.to_string().as_str());
    if let Some(targets) = &message.targets {
        let json = serde_json::to_string(targets).unwrap_or_default();
        headers.insert(TARGETS, json.as_str());
    }
    (headers, message.frame.wire().clone())
}

/// A message another node sent; `None` for this node's own, and for anything that is
/// not one of ours.
fn decode(node: &str, received: &async_nats::Message) -> Option<Relayed> {
    let headers = received.headers.as_ref()?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    if header(NODE)? == node {
        return None;
    }
    let room = RoomId::parse(header(ROOM)?).ok()?;
    let seq = header(SEQ)?.parse().ok()?;
    let targets = match header(TARGETS) {
        Some(json) => Some(serde_json::from_str(json).ok()?),
        None => None,
    };
    let frame = Frame::from_wire(received.payload.clone())?;
    Some(Relayed {
        room,
        seq,
        frame,
        targets,
    })
}
