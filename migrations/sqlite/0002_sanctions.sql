-- Moderation: users kept out of a room (bans; kind 1), each until a time or until
-- lifted (`until_us` NULL). Mirrors migrations/postgres/0005_sanctions.sql. Expired
-- rows are ignored by every read and deleted when their room gets its next sanction.
CREATE TABLE sanctions (
    room_id  TEXT NOT NULL REFERENCES rooms (room_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    kind     INTEGER NOT NULL,
    by_user  TEXT NOT NULL,
    at_us    INTEGER NOT NULL,
    until_us INTEGER,
    PRIMARY KEY (room_id, kind, user_id)
) WITHOUT ROWID;
