-- Mutes: a room muted as a whole (only its owner, moderators and admins send). A
-- member's own mute is a sanction of kind 2 (see 0005): it needs no column.
ALTER TABLE rooms ADD COLUMN muted BOOLEAN NOT NULL DEFAULT false;
