-- The room feed WatchRooms reads: room lifecycle events across all rooms, each at a
-- `position` (1, 2, 3, ... with no gaps) in the order their transactions committed.
-- Positions come from the one row of `room_feed_head`: a transaction that writes
-- events adds their number to it last thing before its commit, holding that row
-- until then, so the next such transaction counts on from a committed value and a
-- reader that sees position n has every position below it (retention deletes the
-- oldest first, so what is kept is always a run ending at the head).
CREATE TABLE room_feed (
    position BIGINT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    kind BIGINT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    by_user TEXT NOT NULL DEFAULT '',
    role BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE room_feed_head (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL
);
INSERT INTO room_feed_head (id, position) VALUES (1, 0);
