-- chatroom schema, PostgreSQL dialect. Mirrors migrations/sqlite/0001_init.sql.
-- Times are microseconds since the Unix epoch (BIGINT) so both stores read back the
-- same values; ids use the "C" collation so both stores order them bytewise.

CREATE TABLE rooms (
    room_id             TEXT COLLATE "C" PRIMARY KEY,
    name                TEXT NOT NULL,
    attributes          TEXT NOT NULL DEFAULT '{}',   -- JSON object, keys sorted
    owner_id            TEXT NOT NULL,
    max_members         BIGINT NOT NULL DEFAULT 0,    -- 0 = unlimited
    member_events       BIGINT NOT NULL DEFAULT 0,    -- 0 = all, 1 = none
    destroy_after_ms    BIGINT,                       -- NULL = keep forever
    presence_timeout_ms BIGINT,                       -- NULL = membership until LeaveRoom
    member_count        BIGINT NOT NULL DEFAULT 0,
    last_seq            BIGINT NOT NULL DEFAULT 0,    -- advanced in the send transaction
    version             BIGINT NOT NULL DEFAULT 1,    -- advanced by UpdateRoom
    created_at_us       BIGINT NOT NULL,
    updated_at_us       BIGINT NOT NULL,
    empty_since_us      BIGINT                        -- set while member_count = 0
);
CREATE INDEX rooms_by_name ON rooms (name, room_id);
CREATE INDEX rooms_to_destroy ON rooms (empty_since_us)
    WHERE empty_since_us IS NOT NULL AND destroy_after_ms IS NOT NULL;

CREATE TABLE members (
    room_id      TEXT COLLATE "C" NOT NULL REFERENCES rooms (room_id) ON DELETE CASCADE,
    user_id      TEXT COLLATE "C" NOT NULL,
    display_name TEXT NOT NULL,
    role         BIGINT NOT NULL,                     -- 1 = owner, 2 = member
    joined_at_us BIGINT NOT NULL,
    last_seen_us BIGINT,                              -- presence: last stream detached at
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

-- How many rooms each user is in: a row per user makes --max-rooms-per-user exact
-- under concurrency (a conditional upsert), where counting members rows would race.
CREATE TABLE user_rooms (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    room_count BIGINT NOT NULL
);

-- History. seq is assigned in the inserting transaction from rooms.last_seq.
-- No foreign key: the batched insert path stays cheap; DeleteRoom deletes explicitly.
CREATE TABLE messages (
    room_id       TEXT COLLATE "C" NOT NULL,
    seq           BIGINT NOT NULL,
    message_id    TEXT NOT NULL,                      -- UUIDv7
    sender_id     TEXT NOT NULL,
    sender_name   TEXT NOT NULL,
    kind          BIGINT NOT NULL,
    body          TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    content_type  TEXT NOT NULL,
    client_msg_id TEXT,                               -- idempotency key, when given
    sent_at_us    BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq)
);
-- Partial: only rows that carry a key pay for the uniqueness check.
CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
