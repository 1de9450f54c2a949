//! Sending and reading messages: SendMessage, ListMessages, and catch-up pages.

use super::*;

impl Rooms {
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
    /// the caller's display name when it already proved membership (an attached
    /// stream); otherwise membership is checked: for CHAT by the writer, in the
    /// transaction that stores the message; for the other kinds here.
    pub async fn submit(
        &self,
        caller: &Caller,
        draft: Draft,
        sender_name: Option<&str>,
    ) -> Result<Sent> {
        check_in_token(caller, &draft.room_id)?;
        let (user, kind) = (caller.user_id.as_str(), draft.kind);
        self.rates.check_send(user, kind)?;
        let room_id = draft.room_id.clone();
        if kind.is_stored() {
            // The writer checks membership and takes the display name in its own
            // transaction: one lookup per batch instead of reads per message.
            let name = sender_name.unwrap_or_default();
            let message = Message::accept(draft, user, name);
            let answer = self.live.sequencer.submit(message, caller.admin).await?;
            return Ok(Sent::Stored {
                room_id,
                answer,
                refund: Refund {
                    rates: self.rates.clone(),
                    user: user.into(),
                },
            });
        }
        let name = match sender_name {
            Some(name) => name.to_string(),
            None => match self.readable(caller, &draft.room_id).await {
                Ok((_, name, _)) => name,
                Err(error) => {
                    if refused_for_its_room(&error) {
                        self.rates.refund_send(user, kind);
                    }
                    return Err(error);
                }
            },
        };
        let message = Message::accept(draft, caller.user_id.as_str(), &name);
        self.live
            .hubs
            .publish_messages(&message.room_id, std::iter::once(&message));
        Ok(Sent::Published(Box::new(message)))
    }

    /// Reads stored history (members and admins only); true when there is more.
    pub async fn messages(
        &self,
        caller: &Caller,
        room_id: &RoomId,
        range: HistoryRange,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        self.check_can_read(caller, room_id).await?;
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
            // Caught up, or no longer allowed: which one, the access check tells.
            self.access(caller, room_id).await?;
        }
        Ok(CatchUp { messages, more })
    }
}
