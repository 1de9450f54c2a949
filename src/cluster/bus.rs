//! The NATS engine of the [`Relay`](super::relay::Relay): core pub/sub (at most
//! once), one subject for every room's events of this deployment.
//!
//! An event is a prost message ([`Envelope`]: the sending node, the room, and the
//! event with its frame's wire bytes), signed ([`Signed`]), as the payload. Every node
//! receives every room's events and drops those of rooms it has no stream in (a lookup
//! each), and its own. The client reconnects by
//! itself; whatever the bus loses meanwhile, the store repairs (see [`super::repair`]).
//!
//! What the bus is trusted with: several deployments (staging and production, two
//! teams) may share one NATS server. Each publishes on subjects of its own — named by
//! the deployment's id, which the first node stores in the database, or by
//! `--nats-subject-prefix` — and every event carries an HMAC-SHA256 of its envelope's
//! bytes under the deployment's key, which is stored in the same database and never
//! sent. A node drops any event whose MAC does not verify: one of another deployment
//! that shares its subject by mistake, or one forged by whoever else can publish on
//! it. (A copy of a genuine event published again is accepted, as a retransmission
//! would be: CHAT is delivered by seq, once; BARRAGE and room events are idempotent or
//! best effort. NATS's own credentials and permissions decide who can publish.)

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use ring::hmac;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::relay::Queue;
use crate::domain::{MutedUntil, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::live::{Hubs, Relayed, RoomEvent};
use crate::proto::{Frame, decode, pb};
use crate::telemetry::BusEvent;

/// The last token of the events subject, after the prefix.
const EVENTS: &str = "events";

/// What goes on the bus: an [`Envelope`]'s bytes, as they were signed, and their MAC
/// (HMAC-SHA256 under the deployment's key). Bytes, not a nested message: a MAC
/// covers exactly what was sent, with nothing to re-encode the same way.
#[derive(Clone, PartialEq, prost::Message)]
struct Signed {
    #[prost(bytes = "bytes", tag = "1")]
    envelope: Bytes,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
}

/// One room event, as the node that sent it put it.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(string, tag = "2")]
    room: String,
    #[prost(oneof = "Event", tags = "3, 4, 5, 6, 7, 8")]
    event: Option<Event>,
}

/// [`RoomEvent`], field for field; frames as their wire bytes.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Event {
    #[prost(message, tag = "3")]
    Message(MessageEvent),
    #[prost(bytes = "bytes", tag = "4")]
    Broadcast(Bytes),
    #[prost(message, tag = "5")]
    Updated(Updated),
    #[prost(message, tag = "6")]
    Detach(Detach),
    #[prost(message, tag = "7")]
    Deleted(Deleted),
    #[prost(message, tag = "8")]
    MuteChanged(MuteChanged),
}

#[derive(Clone, PartialEq, prost::Message)]
struct MessageEvent {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    frame: Bytes,
    /// Absent: every stream.
    #[prost(message, optional, tag = "3")]
    targets: Option<Targets>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Targets {
    #[prost(string, repeated, tag = "1")]
    users: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Updated {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(bool, tag = "2")]
    presence_timeout: bool,
    #[prost(bytes = "bytes", tag = "3")]
    frame: Bytes,
    #[prost(bool, tag = "4")]
    muted: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MuteChanged {
    #[prost(string, tag = "1")]
    user: String,
    /// False: the mute was lifted.
    #[prost(bool, tag = "2")]
    muted: bool,
    /// When a mute ends; absent: when lifted.
    #[prost(int64, optional, tag = "3")]
    until_us: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Detach {
    #[prost(string, tag = "1")]
    user: String,
    /// The contract's own enum: its names are written once, in the proto.
    #[prost(enumeration = "pb::DetachReason", tag = "2")]
    reason: i32,
    #[prost(message, optional, tag = "3")]
    switched_to: Option<SwitchedTo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SwitchedTo {
    #[prost(string, tag = "1")]
    room: String,
    #[prost(uint64, tag = "2")]
    after_seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Deleted {}

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

    /// The MAC of an envelope's bytes.
    fn sign(&self, envelope: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, envelope)
    }

    /// Whether `mac` is this deployment's MAC of `envelope`.
    fn verify(&self, envelope: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.key, envelope, mac).is_ok()
    }
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
                    let payload = encode(&node, &deployment, message);
                    // While NATS is away a publish may wait for room in the client's
                    // buffer; shutting down does not.
                    tokio::select! {
                        published = client.publish(subject.clone(), payload) => {
                            match published {
                                Ok(()) => crate::telemetry::bus(BusEvent::Out),
                                Err(error) => tracing::debug!(%error, "a message did not reach NATS"),
                            }
                        }
                        () = stopped(&mut stop) => return,
                    }
                }
                received = inbound.next() => {
                    let Some(received) = received else { return };
                    match decode(&node, &deployment, &received.payload) {
                        Ok(Some(message)) => {
                            crate::telemetry::bus(BusEvent::In);
                            hubs.apply_relayed(message);
                        }
                        Ok(None) => {}
                        Err(Refused) => {
                            crate::telemetry::bus(BusEvent::Refused);
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

/// An event as it goes on the bus.
fn encode(node: &str, deployment: &Deployment, relayed: Relayed) -> Bytes {
    let event = match relayed.event {
        RoomEvent::Message {
            seq,
            frame,
            targets,
        } => Event::Message(MessageEvent {
            seq,
            frame: frame.into_wire(),
            targets: targets.map(|users| Targets { users }),
        }),
        RoomEvent::Broadcast(frame) => Event::Broadcast(frame.into_wire()),
        RoomEvent::Updated {
            version,
            presence_timeout,
            muted,
            frame,
        } => Event::Updated(Updated {
            version,
            presence_timeout,
            frame: frame.into_wire(),
            muted,
        }),
        RoomEvent::MuteChanged { user, mute } => Event::MuteChanged(MuteChanged {
            user,
            muted: mute.is_some(),
            until_us: mute.and_then(|m| m.0).map(|t| t.0),
        }),
        RoomEvent::Detach {
            user,
            reason,
            switched_to,
        } => Event::Detach(Detach {
            user,
            reason: pb::DetachReason::from(reason) as i32,
            switched_to: switched_to.map(|(room, after_seq)| SwitchedTo {
                room: room.to_string(),
                after_seq,
            }),
        }),
        RoomEvent::Deleted => Event::Deleted(Deleted {}),
    };
    let envelope = Envelope {
        node: node.to_string(),
        room: relayed.room.to_string(),
        event: Some(event),
    }
    .encode_to_vec();
    let mac = deployment.sign(&envelope).as_ref().to_vec();
    Signed {
        envelope: envelope.into(),
        mac,
    }
    .encode_to_vec()
    .into()
}

/// An event that is not this deployment's: its MAC does not verify.
#[derive(Debug, PartialEq)]
struct Refused;

/// An event another node of this deployment sent; `None` for this node's own, and
/// for one that does not parse; [`Refused`] when its MAC does not verify.
fn decode(
    node: &str,
    deployment: &Deployment,
    payload: &Bytes,
) -> std::result::Result<Option<Relayed>, Refused> {
    // Decoded from `Bytes`, the fields of bytes share the payload: no copy.
    let signed = Signed::decode(payload.clone()).map_err(|_| Refused)?;
    if !deployment.verify(&signed.envelope, &signed.mac) {
        return Err(Refused);
    }
    Ok(parse(node, signed.envelope))
}

/// The event in an authenticated envelope; `None` for this node's own.
fn parse(node: &str, envelope: Bytes) -> Option<Relayed> {
    let envelope = Envelope::decode(envelope).ok()?;
    if envelope.node == node {
        return None;
    }
    let room = RoomId::parse(envelope.room).ok()?;
    let event = match envelope.event? {
        Event::Message(m) => RoomEvent::Message {
            seq: m.seq,
            frame: Frame::from_wire(m.frame)?,
            targets: m.targets.map(|t| t.users),
        },
        Event::Broadcast(frame) => RoomEvent::Broadcast(Frame::from_wire(frame)?),
        Event::Updated(u) => RoomEvent::Updated {
            version: u.version,
            presence_timeout: u.presence_timeout,
            muted: u.muted,
            frame: Frame::from_wire(u.frame)?,
        },
        Event::MuteChanged(m) => RoomEvent::MuteChanged {
            user: m.user,
            mute: m.muted.then_some(MutedUntil(m.until_us.map(UnixMicros))),
        },
        Event::Detach(d) => RoomEvent::Detach {
            user: d.user,
            reason: decode::detach_reason(d.reason)?,
            switched_to: match d.switched_to {
                Some(s) => Some((RoomId::parse(s.room).ok()?, s.after_seq)),
                None => None,
            },
        },
        Event::Deleted(Deleted {}) => RoomEvent::Deleted,
    };
    Some(Relayed { room, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DetachReason;
    use crate::proto::pb::subscribe_response::Event as PbEvent;

    fn deployment(key: &[u8]) -> Deployment {
        Deployment::new("d1", key, None)
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
                muted: true,
                frame: frame.clone(),
            }),
            relayed(RoomEvent::MuteChanged {
                user: "m".into(),
                mute: Some(MutedUntil(Some(UnixMicros(1_700_000_000_000_000)))),
            }),
            relayed(RoomEvent::MuteChanged {
                user: "m".into(),
                mute: Some(MutedUntil(None)),
            }),
            relayed(RoomEvent::MuteChanged {
                user: "m".into(),
                mute: None,
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
            let payload = encode("node-a", &d, event);
            let decoded = decode("node-b", &d, &payload).unwrap().unwrap();
            assert_eq!(format!("{decoded:?}"), expected);
            assert!(matches!(decode("node-a", &d, &payload), Ok(None)));
        }
    }

    #[test]
    fn events_of_another_key_or_altered_are_refused() {
        let ours = deployment(b"our key");
        let theirs = Deployment::new("d1", b"their key", None);
        for event in events() {
            let payload = encode("node-a", &theirs, event.clone());
            assert_eq!(
                decode("node-b", &ours, &payload).err(),
                Some(Refused),
                "another deployment's {event:?}"
            );
            let signed = Signed::decode(encode("node-a", &ours, event.clone())).unwrap();
            // Any byte of the envelope changed, the MAC cut short or removed: refused.
            for at in 0..signed.envelope.len() {
                let mut envelope = signed.envelope.to_vec();
                envelope[at] ^= 0x20;
                let altered = Signed {
                    envelope: envelope.into(),
                    mac: signed.mac.clone(),
                };
                assert_eq!(
                    decode("node-b", &ours, &altered.encode_to_vec().into()).err(),
                    Some(Refused)
                );
            }
            for mac in [signed.mac[..16].to_vec(), Vec::new()] {
                let unsigned = Signed {
                    envelope: signed.envelope.clone(),
                    mac,
                };
                assert_eq!(
                    decode("node-b", &ours, &unsigned.encode_to_vec().into()).err(),
                    Some(Refused)
                );
            }
        }
        // Not a signed event at all.
        assert_eq!(
            decode("node-b", &ours, &Bytes::from_static(b"\xff\xff garbage")).err(),
            Some(Refused)
        );
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
