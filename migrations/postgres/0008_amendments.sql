-- Recall and edit: a RECALL or EDIT entry (kinds 4 and 5) names the seq it amends
-- (`target_seq`); the amended message is kept in place, its text and payload
-- emptied when recalled (`recalled`), replaced when edited (`edited_at_us`). A
-- recall also empties the EDIT entries of its target, found by this index.
ALTER TABLE messages ADD COLUMN target_seq BIGINT;
ALTER TABLE messages ADD COLUMN recalled BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN edited_at_us BIGINT;
CREATE INDEX messages_amending ON messages (room_id, target_seq) WHERE target_seq IS NOT NULL;
