//! The NATS engine of the [`Relay`](super::relay::Relay): core pub/sub (at most
//! once), one subject for every room's events of this deployment.
//!
//! An event is its frame's wire bytes as the payload (none for a detach or a
//! deletion), and its kind, room, sending node and the rest in headers. Every node
//! receives every room's events and drops those of rooms it has no stream in (a lookup
//! each), and its own. The client reconnects by
//! itself; whatever the bus loses meanwhile, the store repairs (see [`super::repair`]).
//!
//! What the bus is trusted with: several deployments (staging and production, two
//! teams) may share one NATS server. Each publishes on subjects of its own — named by
//! the deployment's id, which the first node stores in the database, or by
//! `--nats-subject-prefix` — and every event carries an HMAC-SHA256 of its headers and
//! payload under the deployment's key, which is stored in the same database and never
//! sent. A node drops any event whose MAC does not verify: one of another deployment
//! that shares its subject by mistake, or one forged by whoever else can publish on
//! it. (A copy of a genuine event published again is accepted, as a retransmission
//! would be: CHAT is delivered by seq, once; BARRAGE and room events are idempotent or
//! best effort. NATS's own credentials and permissions decide who can publish.)

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use ring::hmac;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::relay::Queue;
use crate::domain::{DetachReason, RoomId};
use crate::error::{Error, Result};
use crate::live::{Hubs, Relayed, RoomEvent};
use crate::proto::Frame;

/// The last token of the events subject, after the prefix.
const EVENTS: &str = "events";
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
/// The event's MAC (base64): HMAC-SHA256 under the deployment's key of every other
/// header above, in this order, and the payload.
const MAC: &str = "Chatroom-Mac";
/// The headers a MAC covers, in the order it covers them.
const SIGNED: [&str; 10] = [
    NODE, ROOM, KIND, SEQ, TARGETS, VERSION, TIMEOUT, USER, REASON, TO,
];

/// How a node reaches NATS: the URL, and the credentials and TLS it needs.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub url: String,
    pub auth: Auth,
    /// A CA to verify the server's certificate with (TLS required).
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (TLS required).
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// How a node authenticates to NATS (besides a user and password in the URL).
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// The contents of a `.creds` file: a user JWT and its NKey seed.
    Creds(String),
    /// An NKey seed.
    NKey(String),
    Token(String),
    UserPassword(String, String),
}

impl std::fmt::Debug for Auth {
    /// Which kind, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Creds(_) => "Creds",
            Auth::NKey(_) => "NKey",
            Auth::Token(_) => "Token",
            Auth::UserPassword(..) => "UserPassword",
        })
    }
}

/// This deployment on the bus: the subject its nodes publish on, and the key of its
/// events' MACs.
#[derive(Clone)]
pub struct Deployment {
    subject: String,
    key: hmac::Key,
}

impl Deployment {
    /// The deployment `id` (as stored) with its `key`; its subject is
    /// `PREFIX.events`, the prefix `chatroom.<id>` unless `prefix` names one.
    pub fn new(id: &str, key: &[u8], prefix: Option<&str>) -> Deployment {
        let subject = match prefix {
            Some(prefix) => format!("{prefix}.{EVENTS}"),
            None => format!("chatroom.{id}.{EVENTS}"),
        };
        Deployment {
            subject,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// A fresh identity for a deployment's first node to store: an id for subjects
    /// (32 hex digits) and a 32-byte key, from the system's secure random source.
    pub fn generate() -> Result<(String, Vec<u8>)> {
        use ring::rand::SecureRandom;
        let random = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; 48];
        random
            .fill(&mut bytes)
            .map_err(|_| Error::Internal("no secure random numbers for the deployment".into()))?;
        let id = bytes[..16].iter().map(|b| format!("{b:02x}")).collect();
        Ok((id, bytes[16..].to_vec()))
    }

    /// The subject every node of this deployment publishes and subscribes on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The MAC of an event's headers and payload.
    fn sign(&self, headers: &async_nats::HeaderMap, payload: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        signed_input(headers, payload, |part| context.update(part));
        context.sign()
    }

    /// Whether an event carries a MAC of this deployment's key.
    fn verify(&self, headers: &async_nats::HeaderMap, payload: &[u8]) -> bool {
        let Some(mac) = headers.get(MAC) else {
            return false;
        };
        let Ok(mac) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(mac.as_str()) else {
            return false;
        };
        let mut input = Vec::with_capacity(256 + payload.len());
        signed_input(headers, payload, |part| input.extend_from_slice(part));
        hmac::verify(&self.key, &input, &mac).is_ok()
    }
}

/// What a MAC covers, unambiguously: each signed header as a presence byte and its
/// length-prefixed value, then the payload.
fn signed_input(headers: &async_nats::HeaderMap, payload: &[u8], mut feed: impl FnMut(&[u8])) {
    for name in SIGNED {
        match headers.get(name) {
            Some(value) => {
                let value = value.as_str().as_bytes();
                feed(&[1]);
                feed(&(value.len() as u64).to_be_bytes());
                feed(value);
            }
            None => feed(&[0]),
        }
    }
    feed(payload);
}

/// Connects to NATS as `connection` says. A server that is not up yet is retried in
/// the background (the node serves meanwhile; its streams heal from the store), and
/// so is one that refuses the credentials: each refusal is logged, and health says
/// NOT_SERVING once the bus has been away for its grace period.
pub async fn connect(connection: &Connection) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                // The client is closed when the node stops.
                async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                // Refused credentials, TLS failures, slow consumers, lame duck mode.
                other => tracing::warn!(event = %other, "NATS"),
            }
        });
    options = match &connection.auth {
        Auth::None => options,
        Auth::Creds(creds) => options
            .credentials(creds)
            .map_err(|e| Error::invalid("nats_creds", e.to_string()))?,
        Auth::NKey(seed) => options.nkey(seed.clone()),
        Auth::Token(token) => options.token(token.clone()),
        Auth::UserPassword(user, password) => {
            options.user_and_password(user.clone(), password.clone())
        }
    };
    if let Some(ca) = &connection.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &connection.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
        .connect(connection.url.as_str())
        .await
        .map_err(|e| Error::invalid("nats_url", e.to_string()))
}

/// Starts the engine's task: it publishes what `queue` hands it and publishes what the
/// other nodes send to `hubs`, until `stop` turns true.
pub fn start(
    client: async_nats::Client,
    node: String,
    deployment: Deployment,
    mut queue: Queue,
    hubs: Arc<Hubs>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let subject = deployment.subject().to_string();
        let mut inbound = match client.subscribe(subject.clone()).await {
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
                    let (headers, payload) = encode(&node, &deployment, message);
                    // While NATS is away a publish may wait for room in the client's
                    // buffer; shutting down does not.
                    tokio::select! {
                        published = client.publish_with_headers(subject.clone(), headers, payload) => {
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
                    match decode(&node, &deployment, &received) {
                        Ok(Some(message)) => {
                            crate::telemetry::bus("in");
                            hubs.apply_relayed(message);
                        }
                        Ok(None) => {}
                        Err(Refused) => {
                            crate::telemetry::bus("refused");
                            tracing::debug!("dropped an event from the bus whose MAC does not verify");
                        }
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

fn encode(node: &str, deployment: &Deployment, relayed: Relayed) -> (async_nats::HeaderMap, Bytes) {
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
    let mac = deployment.sign(&headers, &payload);
    headers.insert(
        MAC,
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(mac.as_ref())
            .as_str(),
    );
    (headers, payload)
}

/// An event that is not this deployment's: its MAC does not verify.
#[derive(Debug, PartialEq)]
struct Refused;

/// An event another node of this deployment sent; `None` for this node's own, and
/// for one that does not parse; [`Refused`] when its MAC does not verify.
fn decode(
    node: &str,
    deployment: &Deployment,
    received: &async_nats::Message,
) -> std::result::Result<Option<Relayed>, Refused> {
    let Some(headers) = received.headers.as_ref() else {
        return Err(Refused);
    };
    if !deployment.verify(headers, &received.payload) {
        return Err(Refused);
    }
    Ok(parse(node, headers, &received.payload))
}

/// The event in authenticated headers and payload; `None` for this node's own.
fn parse(node: &str, headers: &async_nats::HeaderMap, payload: &Bytes) -> Option<Relayed> {
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    if header(NODE)? == node {
        return None;
    }
    let room = RoomId::parse(header(ROOM)?).ok()?;
    let frame = || Frame::from_wire(payload.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pb;
    use crate::proto::pb::subscribe_response::Event as PbEvent;

    fn deployment(key: &[u8]) -> Deployment {
        Deployment::new("d1", key, None)
    }

    fn message(headers: async_nats::HeaderMap, payload: Bytes) -> async_nats::Message {
        async_nats::Message {
            subject: "chatroom.d1.events".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers: Some(headers),
            status: None,
            description: None,
        }
    }

    fn events() -> Vec<Relayed> {
        let room = RoomId::parse("room.with.dots").unwrap();
        let frame = Frame::event(PbEvent::Message(pb::Message {
            seq: 7,
            text: "hello".into(),
            ..Default::default()
        }));
        let relayed = |event| Relayed {
            room: room.clone(),
            event,
        };
        vec![
            relayed(RoomEvent::Message {
                seq: 7,
                frame: frame.clone(),
                targets: Some(vec!["a\"b".into(), "ü".into()]),
            }),
            relayed(RoomEvent::Message {
                seq: 0,
                frame: frame.clone(),
                targets: None,
            }),
            relayed(RoomEvent::Broadcast(frame.clone())),
            relayed(RoomEvent::Updated {
                version: 3,
                presence_timeout: true,
                frame: frame.clone(),
            }),
            relayed(RoomEvent::Detach {
                user: "user\twith tab".into(),
                reason: DetachReason::Switched,
                switched_to: Some((RoomId::parse("next").unwrap(), 42)),
            }),
            relayed(RoomEvent::Detach {
                user: "u".into(),
                reason: DetachReason::PresenceTimeout,
                switched_to: None,
            }),
            relayed(RoomEvent::Deleted),
        ]
    }

    #[test]
    fn every_event_survives_the_bus_and_a_node_ignores_its_own() {
        let d = deployment(b"key");
        for event in events() {
            let expected = format!("{event:?}");
            let (headers, payload) = encode("node-a", &d, event);
            let received = message(headers, payload);
            let decoded = decode("node-b", &d, &received).unwrap().unwrap();
            assert_eq!(format!("{decoded:?}"), expected);
            assert!(matches!(decode("node-a", &d, &received), Ok(None)));
        }
    }

    #[test]
    fn events_of_another_key_or_altered_are_refused() {
        let ours = deployment(b"our key");
        let theirs = Deployment::new("d1", b"their key", None);
        for event in events() {
            let (headers, payload) = encode("node-a", &theirs, event.clone());
            assert_eq!(
                decode("node-b", &ours, &message(headers, payload)).err(),
                Some(Refused),
                "another deployment's {event:?}"
            );
            let (headers, payload) = encode("node-a", &ours, event.clone());
            // A header changed, the payload changed, the MAC removed: refused.
            let mut changed = headers.clone();
            changed.insert(ROOM, "other-room");
            assert_eq!(
                decode("node-b", &ours, &message(changed, payload.clone())).err(),
                Some(Refused)
            );
            let mut tampered = payload.to_vec();
            tampered.push(0);
            assert_eq!(
                decode("node-b", &ours, &message(headers.clone(), tampered.into())).err(),
                Some(Refused)
            );
            let mut unsigned = async_nats::HeaderMap::new();
            for name in SIGNED {
                if let Some(value) = headers.get(name) {
                    unsigned.insert(name, value.as_str());
                }
            }
            assert_eq!(
                decode("node-b", &ours, &message(unsigned, payload)).err(),
                Some(Refused)
            );
        }
    }

    #[test]
    fn subjects_are_the_deployments_own_or_the_prefix_given() {
        let (id, key) = Deployment::generate().unwrap();
        let (other_id, other_key) = Deployment::generate().unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!((&id, &key), (&other_id, &other_key));
        assert_eq!(
            Deployment::new(&id, &key, None).subject(),
            format!("chatroom.{id}.events")
        );
        assert_eq!(
            Deployment::new(&id, &key, Some("acme.staging")).subject(),
            "acme.staging.events"
        );
    }
}
