//! The NATS engine of the [`Relay`](super::relay::Relay): core pub/sub (at most
//! once), one subject for every room's events.
//!
//! An event is its frame's wire bytes as the payload (none for a detach or a
//! deletion), and its kind, room, sending node and the rest in headers. Every node
//! receives every room's events and drops those of rooms it has no stream in (a lookup
//! each), and its own. The client reconnects by
//! itself; whatever the bus loses meanwhile, the store repairs (see `relay`).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::Hubs;
use super::frame::Frame;
use super::relay::{Queue, Relayed, RoomEvent};
use crate::domain::{DetachReason, RoomId};
use crate::error::{Error, Result};

/// The subject every node publishes and subscribes on.
const SUBJECT: &str = "chatroom.v1.messages";
const NODE: &str = "Chatroom-Node";
const ROOM: &str = "Chatroom-Room";
/// Which event: message, broadcast, updated, detach, deleted.
const KIND: &str = "Chatroom-Kind";
/// A message's seq; a switch's `after_seq`.
const SEQ: &str = "Chatroom-Seq";
/// Targets as a JSON array of user ids (absent: every stream).
const TARGETS: &str = "Chatroom-Targets";
const VERSION: &str = "Chatroom-Version";
/// "1" when the updated room has a presence timeout.
const TIMEOUT: &str = "Chatroom-Presence-Timeout";
/// The detached user, as a JSON string (user ids may hold any character).
const USER: &str = "Chatroom-User";
const REASON: &str = "Chatroom-Reason";
/// Where a switched user's streams follow.
const TO: &str = "Chatroom-To";

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
    mut queue: Queue,
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
                            match published {
                                Ok(()) => crate::telemetry::bus("out"),
                                Err(error) => tracing::debug!(%error, "a message did not reach NATS"),
                            }
                        }
                        () = stopped(&mut stop) => return,
                    }
                }
                received = inbound.next() => {
                    let Some(received) = received else { return };
                    if let Some(message) = decode(&node, &received) {
                        crate::telemetry::bus("in");
                        hubs.apply_relayed(message);
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

fn encode(node: &str, relayed: Relayed) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(NODE, node);
    headers.insert(ROOM, relayed.room.as_str());
    let payload = match relayed.event {
        RoomEvent::Message {
            seq,
            frame,
            targets,
        } => {
            headers.insert(KIND, "message");
            headers.insert(SEQ, seq.to_string().as_str());
            if let Some(targets) = &targets {
                let json = serde_json::to_string(targets).unwrap_or_default();
                headers.insert(TARGETS, json.as_str());
            }
            frame.wire().clone()
        }
        RoomEvent::Broadcast(frame) => {
            headers.insert(KIND, "broadcast");
            frame.wire().clone()
        }
        RoomEvent::Updated {
            version,
            presence_timeout,
            frame,
        } => {
            headers.insert(KIND, "updated");
            headers.insert(VERSION, version.to_string().as_str());
            headers.insert(TIMEOUT, if presence_timeout { "1" } else { "0" });
            frame.wire().clone()
        }
        RoomEvent::Detach {
            user,
            reason,
            switched_to,
        } => {
            headers.insert(KIND, "detach");
            headers.insert(
                USER,
                serde_json::to_string(&user).unwrap_or_default().as_str(),
            );
            headers.insert(REASON, reason_name(reason));
            if let Some((to, after_seq)) = switched_to {
                headers.insert(TO, to.as_str());
                headers.insert(SEQ, after_seq.to_string().as_str());
            }
            Bytes::new()
        }
        RoomEvent::Deleted => {
            headers.insert(KIND, "deleted");
            Bytes::new()
        }
    };
    (headers, payload)
}

/// An event another node sent; `None` for this node's own, and for anything that is
/// not one of ours.
fn decode(node: &str, received: &async_nats::Message) -> Option<Relayed> {
    let headers = received.headers.as_ref()?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    if header(NODE)? == node {
        return None;
    }
    let room = RoomId::parse(header(ROOM)?).ok()?;
    let frame = || Frame::from_wire(received.payload.clone());
    let event = match header(KIND)? {
        "message" => RoomEvent::Message {
            seq: header(SEQ)?.parse().ok()?,
            frame: frame()?,
            targets: match header(TARGETS) {
                Some(json) => Some(serde_json::from_str(json).ok()?),
                None => None,
            },
        },
        "broadcast" => RoomEvent::Broadcast(frame()?),
        "updated" => RoomEvent::Updated {
            version: header(VERSION)?.parse().ok()?,
            presence_timeout: header(TIMEOUT)? == "1",
            frame: frame()?,
        },
        "detach" => RoomEvent::Detach {
            user: serde_json::from_str(header(USER)?).ok()?,
            reason: reason_named(header(REASON)?)?,
            switched_to: match header(TO) {
                Some(to) => Some((RoomId::parse(to).ok()?, header(SEQ)?.parse().ok()?)),
                None => None,
            },
        },
        "deleted" => RoomEvent::Deleted,
        _ => return None,
    };
    Some(Relayed { room, event })
}

fn reason_name(reason: DetachReason) -> &'static str {
    match reason {
        DetachReason::Requested => "requested",
        DetachReason::Left => "left",
        DetachReason::Switched => "switched",
        DetachReason::RoomDeleted => "room_deleted",
        DetachReason::PresenceTimeout => "presence_timeout",
    }
}

fn reason_named(name: &str) -> Option<DetachReason> {
    [
        DetachReason::Requested,
        DetachReason::Left,
        DetachReason::Switched,
        DetachReason::RoomDeleted,
        DetachReason::PresenceTimeout,
    ]
    .into_iter()
    .find(|r| reason_name(*r) == name)
}
