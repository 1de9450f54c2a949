-- The room feed. Mirrors migrations/postgres/0009_room_feed.sql (SQLite's one
-- writer orders the transactions; the head row numbers their events the same way).
CREATE TABLE room_feed (
    position INTEGER PRIMARY KEY,
    at_us INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    by_user TEXT NOT NULL DEFAULT '',
    role INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE room_feed_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO room_feed_head (id, position) VALUES (1, 0);
