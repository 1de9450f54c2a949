//! Sending and reading messages: SendMessage, ListMessages, and catch-up pages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::rates::Rates;
use super::readers::Readers;
use super::sequencer::{self, Appended, Sequencer};
use super::{check_in_token, not_found};
use crate::domain::{Caller, Clock, Draft, HistoryRange, Message, MessageKind, RoomId, UnixMicros};
use crate::error::{Error, Result};
use crate::live::Hubs;
use crate::store::Store;

/// The messages handle: what sending and reading history need.
#[derive(Clone)]
pub struct Messages {
    pub(super) store: Store,
    pub(super) rates: Arc<Rates>,
    /// The one writer of stored messages (CHAT).
    pub(super) sequencer: Sequencer,
    /// Where unstored kinds are published at once.
    pub(super) hubs: Arc<Hubs>,
    pub(super) readers: Readers,
    /// When a message is accepted.
    pub(super) clock: Clock,
}

/// A message handed over for sending, with its answer to come.
pub enum Sent {
    /// Unstored kinds are published at once.
    Published(Box<Message>),
    /// CHAT is answered by the writer once committed.
    Stored {
        room_id: RoomId,
        answer: sequencer::Answer,
        /// Gives the send's token back if the writer refuses it for its room.
        refund: Refund,
    },
}

/// A send [`Messages::hand_over`] took: done (handed over or refused), or waiting
/// to be.
pub enum Handing {
    Done(Result<Sent>),
    Waiting(Pin<Box<dyn Future<Output = Result<Sent>> + Send>>),
}

/// Where a refused CHAT send's rate token goes back to.
pub struct Refund {
    rates: Arc<Rates>,
    user: Arc<str>,
}

impl Sent {
    /// The accepted message (with its seq, for CHAT).
    pub async fn answer(self) -> Result<Message> {
        match self {
            Sent::Published(message) => Ok(*message),
            Sent::Stored {
                room_id,
                answer,
                refund,
            } => {
                let stored = stored(&room_id, answer.await?);
                if stored.is_err() {
                    refund.rates.refund_send(&refund.user, MessageKind::Chat);
                }
                stored
            }
        }
    }
}

/// The message the writer stored (or had stored) for a send to `room_id`, or why it
/// refused it.
fn stored(room_id: &RoomId, appended: Appended) -> Result<Message> {
    Err(match appended {
        Appended::New(m) | Appended::Existing(m) => return Ok(m),
        Appended::RoomGone => not_found(room_id),
        Appended::NotAMember => Error::NotAMember {
            room_id: room_id.to_string(),
        },
        Appended::Refused(error) => error,
    })
}

/// Whether a send was refused for its room (missing, or the sender may not send
/// there) — before anything was stored or published, so its rate token goes back.
fn refused_for_its_room(error: &Error) -> bool {
    matches!(
        error,
        Error::RoomNotFound { .. } | Error::NotAMember { .. } | Error::Muted { .. }
    )
}

/// A page of a stream's catch-up.
#[derive(Debug)]
pub struct CatchUp {
    pub messages: Vec<Message>,
    /// More stored messages may follow the page.
    pub more: bool,
}

impl Messages {
    /// Sends a message and waits for its answer: for CHAT, after the commit; for
    /// BARRAGE and COMMAND, after publishing.
    pub async fn send(
        &self,
        caller: &Caller,
        draft: Draft,
        sender_name: Option<&str>,
    ) -> Result<Message> {
        self.submit(caller, draft, sender_name)
            .await?
            .answer()
            .await
    }

    /// Hands a message over for sending and returns its pending answer, once the
    /// sender's rate allows it (`RATE_LIMITED` otherwise, before anything is
    /// stored or published). Messages one
    /// caller submits one after another are sequenced in that order. `sender_name` is
    /// the caller's display name when it already proved membership and knows of no
    /// mute that may hold (an attached stream); otherwise membership and mutes are
    /// checked here. CHAT is checked by the writer either way, in the transaction
    /// that stores the message.
    pub async fn submit(
        &self,
        caller: &Caller,
        draft: Draft,
        sender_name: Option<&str>,
    ) -> Result<Sent> {
        match self.hand_over(caller, draft, sender_name) {
            Handing::Done(sent) => sent,
            Handing::Waiting(sending) => sending.await,
        }
    }

    /// [`Messages::submit`] without waiting where it need not: its checks run now, and
    /// so does the hand-over to the writer while the writer's queue has room (it
    /// holds thousands), or the publish of an unstored kind whose sender proved
    /// membership. What must wait (a full queue, the membership read) is returned
    /// as a future of its own, so that a stream holds no future for a send that was
    /// taken at once.
    pub fn hand_over(&self, caller: &Caller, draft: Draft, sender_name: Option<&str>) -> Handing {
        if let Err(error) = check_in_token(caller, &draft.room_id)
            .and_then(|()| self.rates.check_send(caller.user_id.as_str(), draft.kind))
        {
            return Handing::Done(Err(error));
        }
        let user = caller.user_id.as_str();
        if draft.kind.is_stored() {
            // The writer checks membership and takes the display name in its own
            // transaction: one lookup per batch instead of reads per message.
            let room_id = draft.room_id.clone();
            let name = sender_name.unwrap_or_default();
            let message = Message::accept(draft, user, name, self.clock.now());
            let refund = Refund {
                rates: self.rates.clone(),
                user: user.into(),
            };
            let stored = move |answer| Sent::Stored {
                room_id,
                answer,
                refund,
            };
            return match self.sequencer.try_submit(message, caller.admin) {
                Ok(Ok(answer)) => Handing::Done(Ok(stored(answer))),
                // The writer's queue is full: wait for room, as every sender then does.
                Ok(Err(message)) => {
                    let (sequencer, admin) = (self.sequencer.clone(), caller.admin);
                    Handing::Waiting(Box::pin(async move {
                        sequencer.submit(message, admin).await.map(stored)
                    }))
                }
                Err(error) => Handing::Done(Err(error)),
            };
        }
        match sender_name {
            Some(name) => Handing::Done(Ok(self.publish(draft, user, name, self.clock.now()))),
            None => {
                let (messages, caller) = (self.clone(), caller.clone());
                Handing::Waiting(Box::pin(async move {
                    messages.publish_as_member(&caller, draft).await
                }))
            }
        }
    }

    /// Publishes an unstored kind from a sender whose membership (and name) is read
    /// here first.
    async fn publish_as_member(&self, caller: &Caller, draft: Draft) -> Result<Sent> {
        let (user, kind, now) = (caller.user_id.as_str(), draft.kind, self.clock.now());
        let read = self.readers.readable(caller, &draft.room_id).await;
        match read.and_then(|reading| {
            reading.check_voice(now)?;
            Ok(reading.sender_name)
        }) {
            Ok(name) => Ok(self.publish(draft, user, &name, now)),
            Err(error) => {
                if refused_for_its_room(&error) {
                    self.rates.refund_send(user, kind);
                }
                Err(error)
            }
        }
    }

    /// Publishes an unstored kind at once.
    fn publish(&self, draft: Draft, user: &str, name: &str, now: UnixMicros) -> Sent {
        let message = Message::accept(draft, user, name, now);
        self.hubs
            .publish_messages(&message.room_id, std::iter::once(&message));
        Sent::Published(Box::new(message))
    }

    /// Recalls (`edit` `None`) or edits (with the new text and payload) the CHAT
    /// message at `seq`: a RECALL or EDIT entry naming it, stored by the writer with
    /// the room's next seq — which judges it ([`super::authority::check_amend`])
    /// against the message as stored, in the same transaction — and published like
    /// any message. The entry is the answer.
    pub async fn amend(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        seq: u64,
        edit: Option<(String, Vec<u8>)>,
    ) -> Result<Message> {
        check_in_token(caller, room_id)?;
        let (kind, text, payload) = match edit {
            Some((text, payload)) => (MessageKind::Edit, text, payload),
            None => (MessageKind::Recall, String::new(), Vec::new()),
        };
        let user = caller.user_id.as_str();
        self.rates.check_send(user, kind)?;
        let now = self.clock.now();
        let entry = Message::amendment(room_id.clone(), kind, seq, text, payload, user, now);
        let answer = self.sequencer.submit(entry, caller.admin).await?;
        Sent::Stored {
            room_id: room_id.clone(),
            answer,
            refund: Refund {
                rates: self.rates.clone(),
                user: user.into(),
            },
        }
        .answer()
        .await
    }

    /// Sends `draft` into each of `rooms` as the calling admin (BroadcastMessage),
    /// one rate token for the call: CHAT handed to the writer back to back (one
    /// batch, each room its next seq), other kinds published to each room that
    /// exists. Each room's message or refusal, in order.
    pub async fn broadcast(
        &self,
        caller: &Caller,
        rooms: Vec<RoomId>,
        draft: Draft,
    ) -> Result<Vec<(RoomId, Result<Message>)>> {
        if !caller.admin {
            return Err(Error::NotAnAdmin);
        }
        let user = caller.user_id.as_str();
        self.rates.check_send(user, draft.kind)?;
        let now = self.clock.now();
        let message_to = |room_id: &RoomId| {
            let draft = Draft {
                room_id: room_id.clone(),
                ..draft.clone()
            };
            Message::accept(draft, user, "", now)
        };
        let mut results: Vec<(RoomId, Option<Result<Message>>)> = rooms
            .into_iter()
            .map(|room_id| {
                let refused = check_in_token(caller, &room_id).err().map(Err);
                (room_id, refused)
            })
            .collect();
        let open: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].1.is_none())
            .collect();
        if draft.kind.is_stored() {
            let messages = open.iter().map(|&i| message_to(&results[i].0)).collect();
            let answers = self.sequencer.submit_all(messages).await?;
            for (i, answer) in open.into_iter().zip(answers) {
                let answered = answer.await.and_then(|a| stored(&results[i].0, a));
                results[i].1 = Some(answered);
            }
        } else {
            for i in open {
                let room_id = &results[i].0;
                let sent = match self.store.room(room_id).await {
                    Ok(Some(room)) => {
                        let mut message = message_to(room_id);
                        message.sender_name = user.to_string();
                        self.hubs
                            .publish_messages(&room.id, std::iter::once(&message));
                        Ok(message)
                    }
                    Ok(None) => Err(not_found(room_id)),
                    Err(error) => Err(error),
                };
                results[i].1 = Some(sent);
            }
        }
        Ok(results
            .into_iter()
            .map(|(room_id, sent)| (room_id, sent.expect("every room answered")))
            .collect())
    }

    /// Reads stored history (members and admins only); true when there is more.
    pub async fn messages(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        range: HistoryRange,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        self.readers.check_can_read(caller, room_id).await?;
        let mut messages = self.store.messages(room_id, range, limit + 1).await?;
        let more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok((messages, more))
    }

    /// The next page of stored messages after `after_seq` for a stream of `caller`
    /// catching up: at most `limit` messages and about `max_bytes` of them, and only
    /// while the caller may receive the room — read in one statement with the
    /// membership, so nothing committed after the caller left reaches it. Fails with
    /// NOT_A_MEMBER or ROOM_NOT_FOUND once the caller may not.
    pub async fn catch_up(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        after_seq: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<CatchUp> {
        let user = caller.user_id.as_str();
        let (messages, more) = self
            .store
            .messages_for_reader(room_id, user, caller.admin, after_seq, limit, max_bytes)
            .await?;
        if messages.is_empty() {
            // Caught up, or no longer allowed: which one, the read check tells.
            self.readers.check_can_read(caller, room_id).await?;
        }
        Ok(CatchUp { messages, more })
    }
}
