-- Mutes: a room muted as a whole. Mirrors migrations/postgres/0007_mutes.sql.
ALTER TABLE rooms ADD COLUMN muted BOOLEAN NOT NULL DEFAULT 0;
