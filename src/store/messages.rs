//! Message statements within the message writer's transaction, each for a whole
//! batch: idempotency keys, seqs, inserts. The statements themselves are each
//! dialect's own ([`super::postgres`], [`super::sqlite`]).

use super::*;

impl Tx {
    /// The stored messages with the idempotency keys of `messages`.
    pub async fn messages_by_keys(&mut self, messages: &[&Message]) -> Result<Vec<Message>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let rows = by_dialect!(self, messages_by_keys(messages))?;
        rows.into_iter().map(Message::try_from).collect()
    }

    /// The senders among `(room, user)` keys who are members, with what slow mode
    /// needs, and their rooms' ids.
    pub async fn speakers_among(
        &mut self,
        keys: &[(&str, &str)],
    ) -> Result<Vec<(String, Speaker)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = by_dialect!(self, speakers_among(keys))?;
        rows.into_iter()
            .map(|r| Ok((r.room_id.clone(), Speaker::try_from(r)?)))
            .collect()
    }

    /// Records each `(room, user, at)` as the user's last CHAT there (slow mode's
    /// turns; their rooms locked by the caller).
    pub async fn set_last_chats(&mut self, turns: &[(&str, &str, UnixMicros)]) -> Result<()> {
        if turns.is_empty() {
            return Ok(());
        }
        by_dialect!(self, set_last_chats(turns))
    }

    /// Reserves `n` seqs in each room (given in id order); returns each existing
    /// room's new `last_seq`. Rooms are locked in id order, which orders concurrent
    /// batches and room changes without deadlocks.
    pub async fn advance_seqs(
        &mut self,
        counts: &[(&RoomId, i64)],
    ) -> Result<HashMap<String, i64>> {
        if counts.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = by_dialect!(self, advance_seqs(counts))?;
        Ok(rows.into_iter().collect())
    }

    /// The stored messages at `(room, seq)` keys (few: what a batch's amendments
    /// name), a statement each.
    pub async fn messages_at(&mut self, keys: &[(&str, u64)]) -> Result<Vec<Message>> {
        let mut found = Vec::with_capacity(keys.len());
        for &(room, seq) in keys {
            let row: Option<MessageRow> = on_tx!(self, c => {
                sqlx::query_as(concat!(
                    "SELECT ", message_columns!(), " FROM messages WHERE room_id = $1 AND seq = $2"
                ))
                .bind(room)
                .bind(to_i64(seq))
                .fetch_optional(c)
                .await
            })?;
            found.extend(row.map(Message::try_from).transpose()?);
        }
        Ok(found)
    }

    /// Applies RECALL and EDIT entries to the messages they name: a recall empties
    /// the target's text and payload, and those of the EDIT entries naming it, and
    /// marks it recalled; an edit gives it the entry's text and payload and its time
    /// as `edited_at`. A statement each (amendments are few).
    pub async fn apply_amendments(&mut self, amendments: &[&Message]) -> Result<()> {
        for m in amendments {
            let (room, target) = (m.room_id.as_str(), to_i64(m.target_seq));
            if m.kind == MessageKind::Recall {
                // The target and the entries naming it (its edits, and this recall).
                on_tx!(self, c => {
                    sqlx::query(
                        "UPDATE messages SET body = '', payload = $3, recalled = (seq = $2) \
                         WHERE room_id = $1 AND (seq = $2 OR target_seq = $2)",
                    )
                    .bind(room)
                    .bind(target)
                    .bind(Vec::<u8>::new())
                    .execute(c)
                    .await
                    .map(drop)
                })?;
            } else {
                on_tx!(self, c => {
                    sqlx::query(
                        "UPDATE messages SET body = $3, payload = $4, edited_at_us = $5 \
                         WHERE room_id = $1 AND seq = $2",
                    )
                    .bind(room)
                    .bind(target)
                    .bind(&m.text)
                    .bind(&m.payload)
                    .bind(m.sent_at.0)
                    .execute(c)
                    .await
                    .map(drop)
                })?;
            }
        }
        Ok(())
    }

    /// Inserts messages: on PostgreSQL one binary `COPY`; on SQLite multi-row VALUES
    /// in chunks.
    pub async fn insert_messages(&mut self, messages: &[&Message]) -> Result<()> {
        by_dialect!(self, insert_messages(messages))
    }
}
