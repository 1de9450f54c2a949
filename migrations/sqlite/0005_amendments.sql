-- Recall and edit. Mirrors migrations/postgres/0008_amendments.sql.
ALTER TABLE messages ADD COLUMN target_seq INTEGER;
ALTER TABLE messages ADD COLUMN recalled BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at_us INTEGER;
CREATE INDEX messages_amending ON messages (room_id, target_seq) WHERE target_seq IS NOT NULL;
