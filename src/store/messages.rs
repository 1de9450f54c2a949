//! Message rows within the message writer's transaction: idempotency keys, seqs,
//! inserts.

use super::*;

/// Rows per SQLite multi-row INSERT (11 parameters each: within its limit).
const INSERT_CHUNK: usize = 1000;

impl Tx {
    /// The stored messages with the idempotency keys of `messages`.
    pub async fn messages_by_keys(&mut self, messages: &[&Message]) -> Result<Vec<Message>> {
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
    pub async fn advance_seqs(
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
    pub async fn insert_messages(&mut self, messages: &[&Message]) -> Result<()> {
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
