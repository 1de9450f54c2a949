//! Storing a batch of messages: the message writer's one transaction.

use super::*;

impl Store {
    /// Stores a batch of accepted CHAT messages in one transaction: senders are checked
    /// to be members (their display names come from the same rows), each room's next
    /// seqs are taken from `rooms.last_seq` (rooms locked in sorted order, so
    /// concurrent batches cannot deadlock), and all rows go in together.
    ///
    /// A message whose `(room, sender, client_msg_id)` is already stored — or appears
    /// earlier in the batch — is not stored again: its answer is the first one.
    /// One answer per message, in order. When the transaction fails nothing is
    /// stored, and the batch comes back with the error so that it can be tried again
    /// (in parts: one entry the database refuses must not fail the others).
    pub async fn append_messages(
        &self,
        batch: Vec<Submission>,
    ) -> std::result::Result<Vec<Appended>, (Error, Vec<Submission>)> {
        let (mut messages, admin): (Vec<Message>, Vec<bool>) =
            batch.into_iter().map(|p| (p.message, p.admin)).unzip();
        match self.append(&mut messages, &admin).await {
            Ok(answers) => Ok(answers),
            Err(error) => {
                let batch = messages
                    .into_iter()
                    .zip(admin)
                    .map(|(message, admin)| Submission { message, admin })
                    .collect();
                Err((error, batch))
            }
        }
    }

    async fn append(&self, messages: &mut [Message], admin: &[bool]) -> Result<Vec<Appended>> {
        let mut answers: Vec<Option<Appended>> = vec![None; messages.len()];
        let mut tx = self.begin().await?;

        // 1. Who may send, and under which name: members, and admins.
        let pairs: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.room_id.as_str(), m.sender_id.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: HashMap<(String, String), String> = tx
            .members_among(&pairs)
            .await?
            .into_iter()
            .map(|(room, m)| ((room, m.user_id), m.display_name))
            .collect();
        let mut refused_rooms = std::collections::BTreeSet::new();
        for (i, m) in messages.iter_mut().enumerate() {
            match names.get(&(m.room_id.to_string(), m.sender_id.clone())) {
                Some(name) => m.sender_name = name.clone(),
                None if admin[i] => m.sender_name = m.sender_id.clone(),
                None => {
                    answers[i] = Some(Appended::NotAMember);
                    refused_rooms.insert(m.room_id.clone());
                }
            }
        }
        // A refused sender in a room that does not exist is told so.
        for room_id in refused_rooms {
            if tx.lock_room(&room_id).await?.is_none() {
                for (i, m) in messages.iter().enumerate() {
                    if m.room_id == room_id {
                        answers[i] = Some(Appended::RoomGone);
                    }
                }
            }
        }

        // 2. Idempotency: keys seen before (stored, or earlier in this batch).
        let keyed: Vec<usize> = (0..messages.len())
            .filter(|&i| answers[i].is_none() && !messages[i].client_msg_id.is_empty())
            .collect();
        let stored: HashMap<(String, String, String), Message> = tx
            .messages_by_keys(&keyed.iter().map(|&i| &messages[i]).collect::<Vec<_>>())
            .await?
            .into_iter()
            .map(|m| {
                (
                    (
                        m.room_id.to_string(),
                        m.sender_id.clone(),
                        m.client_msg_id.clone(),
                    ),
                    m,
                )
            })
            .collect();
        let mut first_with_key: HashMap<(String, String, String), usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for i in keyed {
            let m = &messages[i];
            let key = (
                m.room_id.to_string(),
                m.sender_id.clone(),
                m.client_msg_id.clone(),
            );
            if let Some(existing) = stored.get(&key) {
                answers[i] = Some(Appended::Existing(existing.clone()));
            } else if let Some(&first) = first_with_key.get(&key) {
                copies.push((i, first));
            } else {
                first_with_key.insert(key, i);
            }
        }

        // 3. Seqs, for each room in id order.
        let is_copy: std::collections::HashSet<usize> = copies.iter().map(|&(i, _)| i).collect();
        let mut by_room: BTreeMap<RoomId, Vec<usize>> = BTreeMap::new();
        for (i, m) in messages.iter().enumerate() {
            if answers[i].is_none() && !is_copy.contains(&i) {
                by_room.entry(m.room_id.clone()).or_default().push(i);
            }
        }
        let counts: Vec<(&RoomId, i64)> =
            by_room.iter().map(|(r, ix)| (r, ix.len() as i64)).collect();
        let last_seqs = tx.advance_seqs(&counts).await?;
        let mut new_rows = Vec::new();
        for (room_id, indexes) in &by_room {
            match last_seqs.get(room_id.as_str()) {
                None => {
                    for &i in indexes {
                        answers[i] = Some(Appended::RoomGone);
                    }
                }
                Some(&last) => {
                    let first = (last - indexes.len() as i64 + 1) as u64;
                    for (offset, &i) in indexes.iter().enumerate() {
                        messages[i].seq = first + offset as u64;
                        new_rows.push(i);
                    }
                }
            }
        }

        // 4. The rows, together.
        if !new_rows.is_empty() {
            tx.insert_messages(&new_rows.iter().map(|&i| &messages[i]).collect::<Vec<_>>())
                .await?;
        }
        tx.commit().await?;

        for &i in &new_rows {
            answers[i] = Some(Appended::New(messages[i].clone()));
        }
        for (i, first) in copies {
            answers[i] = Some(match &answers[first] {
                Some(Appended::New(m) | Appended::Existing(m)) => Appended::Existing(m.clone()),
                Some(other) => other.clone(),
                None => Appended::RoomGone,
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every message has an answer"))
            .collect())
    }
}

/// A message for [`Store::append_messages`].
pub struct Submission {
    pub message: Message,
    /// Admins may send to rooms they are not members of.
    pub admin: bool,
}

/// What happened to one message of a batch.
#[derive(Clone, Debug)]
pub enum Appended {
    /// Stored now, with its seq.
    New(Message),
    /// Its idempotency key was already stored: the stored message.
    Existing(Message),
    /// The room no longer exists.
    RoomGone,
    /// The sender is not a member of the room.
    NotAMember,
}

/// Rows per SQLite multi-row INSERT (11 parameters each: within its limit).
const INSERT_CHUNK: usize = 1000;

impl Tx {
    /// The stored messages with the idempotency keys of `messages`.
    pub(super) async fn messages_by_keys(&mut self, messages: &[&Message]) -> Result<Vec<Message>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<MessageRow> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                let rooms: Vec<&str> = messages.iter().map(|m| m.room_id.as_str()).collect();
                let senders: Vec<&str> = messages.iter().map(|m| m.sender_id.as_str()).collect();
                let keys: Vec<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
                sqlx::query_as(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages \
                     JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(r, s, c) \
                       ON room_id = k.r AND sender_id = k.s AND client_msg_id = k.c"
                ))
                .bind(rooms)
                .bind(senders)
                .bind(keys)
                .fetch_all(&mut **tx)
                .await?
            }
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::new();
                for m in messages {
                    let row: Option<MessageRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages \
                         WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
                    ))
                    .bind(m.room_id.as_str())
                    .bind(&m.sender_id)
                    .bind(&m.client_msg_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        rows.into_iter().map(Message::try_from).collect()
    }

    /// Reserves `n` seqs in each room (given in id order); returns each existing
    /// room's new `last_seq`. Rooms are locked in id order, which orders concurrent
    /// batches and room changes without deadlocks.
    pub(super) async fn advance_seqs(
        &mut self,
        counts: &[(&RoomId, i64)],
    ) -> Result<HashMap<String, i64>> {
        if counts.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = match &mut self.inner {
            TxInner::Postgres(tx) => {
                let rooms: Vec<&str> = counts.iter().map(|(r, _)| r.as_str()).collect();
                let ns: Vec<i64> = counts.iter().map(|&(_, n)| n).collect();
                // Several rooms are locked in id order first; one room is locked by
                // the update itself (a round trip less for the common small batch).
                if rooms.len() > 1 {
                    sqlx::query(
                        "SELECT 1 FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE",
                    )
                    .bind(&rooms)
                    .execute(&mut **tx)
                    .await?;
                }
                sqlx::query_as(
                    "UPDATE rooms SET last_seq = rooms.last_seq + k.n \
                     FROM UNNEST($1::text[], $2::bigint[]) AS k(r, n) \
                     WHERE rooms.room_id = k.r RETURNING rooms.room_id, rooms.last_seq",
                )
                .bind(rooms)
                .bind(ns)
                .fetch_all(&mut **tx)
                .await?
            }
            TxInner::Sqlite(tx) => {
                let mut rows = Vec::new();
                for (room_id, n) in counts {
                    let row: Option<(String, i64)> = sqlx::query_as(
                        "UPDATE rooms SET last_seq = last_seq + $2 WHERE room_id = $1 \
                         RETURNING room_id, last_seq",
                    )
                    .bind(room_id.as_str())
                    .bind(n)
                    .fetch_optional(&mut **tx)
                    .await?;
                    rows.extend(row);
                }
                rows
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// Inserts messages: on PostgreSQL one statement over arrays (the same text for
    /// every batch size, so it is prepared once); on SQLite multi-row VALUES in chunks.
    pub(super) async fn insert_messages(&mut self, messages: &[&Message]) -> Result<()> {
        match &mut self.inner {
            TxInner::Postgres(tx) => {
                let col =
                    |f: fn(&Message) -> &str| messages.iter().map(|m| f(m)).collect::<Vec<&str>>();
                sqlx::query(concat!(
                    "INSERT INTO messages (", message_columns!(), ") \
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                       $6::bigint[], $7::text[], $8::bytea[], $9::text[], $10::text[], $11::bigint[])"
                ))
                .bind(col(|m| m.room_id.as_str()))
                .bind(messages.iter().map(|m| to_i64(m.seq)).collect::<Vec<_>>())
                .bind(col(|m| &m.message_id))
                .bind(col(|m| &m.sender_id))
                .bind(col(|m| &m.sender_name))
                .bind(messages.iter().map(|m| rows::kind_column(m.kind)).collect::<Vec<_>>())
                .bind(col(|m| &m.text))
                .bind(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
                .bind(col(|m| &m.content_type))
                .bind(
                    messages
                        .iter()
                        .map(|m| (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()))
                        .collect::<Vec<_>>(),
                )
                .bind(messages.iter().map(|m| m.sent_at.0).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
            }
            TxInner::Sqlite(tx) => {
                for chunk in messages.chunks(INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::new(concat!(
                        "INSERT INTO messages (",
                        message_columns!(),
                        ") "
                    ));
                    insert.push_values(chunk, |mut row, m| {
                        row.push_bind(m.room_id.as_str())
                            .push_bind(to_i64(m.seq))
                            .push_bind(m.message_id.as_str())
                            .push_bind(m.sender_id.as_str())
                            .push_bind(m.sender_name.as_str())
                            .push_bind(rows::kind_column(m.kind))
                            .push_bind(m.text.as_str())
                            .push_bind(m.payload.as_slice())
                            .push_bind(m.content_type.as_str())
                            .push_bind(
                                (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str()),
                            )
                            .push_bind(m.sent_at.0);
                    });
                    insert.build().execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }
}
