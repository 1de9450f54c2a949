//! Room rows within a transaction: lock, read, insert, update, delete.

use super::*;

impl Tx {
    /// Reads rooms and holds them against concurrent change until the transaction
    /// ends, locking in id order (the order every transaction locks rooms in).
    pub async fn lock_rooms(&mut self, room_ids: &[&RoomId]) -> Result<Vec<Room>> {
        let mut ids: Vec<&str> = room_ids.iter().map(|r| r.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = by_dialect!(self, lock_rooms(&ids))?;
        rows.into_iter().map(Room::try_from).collect()
    }

    /// Reads a room and holds it against concurrent change until the transaction ends.
    pub async fn lock_room(&mut self, room_id: &RoomId) -> Result<Option<Room>> {
        let row = by_dialect!(self, lock_room(room_id))?;
        row.map(Room::try_from).transpose()
    }

    /// Inserts a room with no members; false when the id is taken.
    pub async fn insert_room(
        &mut self,
        room: &NewRoom,
        owner_id: &str,
        now: UnixMicros,
    ) -> Result<bool> {
        let settings = rows::SettingsColumns::from(&room.settings);
        let attributes = rows::attributes_json(&room.attributes);
        let inserted: Option<(String,)> = on_tx!(self, c => {
            sqlx::query_as(
                "INSERT INTO rooms (room_id, name, attributes, owner_id, max_members, member_events, \
                     destroy_after_ms, presence_timeout_ms, slow_mode_ms, muted, member_count, \
                     last_seq, version, created_at_us, updated_at_us, empty_since_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11, 0, 0, 1, $9, $9, $9) \
                 ON CONFLICT (room_id) DO NOTHING RETURNING room_id",
            )
            .bind(room.id.as_str())
            .bind(&room.name)
            .bind(&attributes)
            .bind(owner_id)
            .bind(settings.max_members)
            .bind(settings.member_events)
            .bind(settings.destroy_after_ms)
            .bind(settings.presence_timeout_ms)
            .bind(now.0)
            .bind(settings.slow_mode_ms)
            .bind(settings.muted)
            .fetch_optional(c)
            .await
        })?;
        Ok(inserted.is_some())
    }

    /// Writes a room's name, attributes and settings, advances its version and
    /// returns it.
    pub async fn update_room(&mut self, room: &Room, now: UnixMicros) -> Result<Room> {
        let settings = rows::SettingsColumns::from(&room.settings);
        let attributes = rows::attributes_json(&room.attributes);
        let row: RoomRow = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE rooms SET name = $2, attributes = $3, max_members = $4, member_events = $5, \
                     destroy_after_ms = $6, presence_timeout_ms = $7, slow_mode_ms = $9, \
                     muted = $10, version = version + 1, updated_at_us = $8 \
                 WHERE room_id = $1 RETURNING ",
                room_columns!()
            ))
            .bind(room.id.as_str())
            .bind(&room.name)
            .bind(&attributes)
            .bind(settings.max_members)
            .bind(settings.member_events)
            .bind(settings.destroy_after_ms)
            .bind(settings.presence_timeout_ms)
            .bind(now.0)
            .bind(settings.slow_mode_ms)
            .bind(settings.muted)
            .fetch_one(c)
            .await
        })?;
        Room::try_from(row)
    }

    /// Makes `owner` the room's owner, advances its version and returns it (the
    /// members' roles are the caller's to change in the same transaction).
    pub async fn set_owner(
        &mut self,
        room_id: &RoomId,
        owner: &str,
        now: UnixMicros,
    ) -> Result<Room> {
        let row: RoomRow = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE rooms SET owner_id = $2, version = version + 1, updated_at_us = $3 \
                 WHERE room_id = $1 RETURNING ",
                room_columns!()
            ))
            .bind(room_id.as_str())
            .bind(owner)
            .bind(now.0)
            .fetch_one(c)
            .await
        })?;
        Room::try_from(row)
    }

    /// Marks every member of a room recorded as online (`last_seen` unset) offline
    /// since `now`. For a room that just gained a presence timeout on one node, where
    /// `last_seen` is kept only while a room has one: members who went away while it
    /// had none are still recorded online. Those attached now record themselves
    /// online again when their streams see the update.
    pub async fn offline_since(&mut self, room_id: &RoomId, now: UnixMicros) -> Result<()> {
        on_tx!(self, c => {
            sqlx::query("UPDATE members SET last_seen_us = $2 WHERE room_id = $1 AND last_seen_us IS NULL")
                .bind(room_id.as_str())
                .bind(now.0)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Deletes a room with its members, sanctions and history, releasing each member's room slot.
    pub async fn delete_room(&mut self, room_id: &RoomId) -> Result<()> {
        const STEPS: [&str; 5] = [
            "UPDATE user_rooms SET room_count = room_count - 1 \
             WHERE user_id IN (SELECT user_id FROM members WHERE room_id = $1)",
            "DELETE FROM messages WHERE room_id = $1",
            "DELETE FROM members WHERE room_id = $1",
            "DELETE FROM sanctions WHERE room_id = $1",
            "DELETE FROM rooms WHERE room_id = $1",
        ];
        for step in STEPS {
            on_tx!(self, c => sqlx::query(step).bind(room_id.as_str()).execute(c).await.map(drop))?;
        }
        Ok(())
    }
}
