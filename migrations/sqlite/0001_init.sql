-- chatroom schema, SQLite dialect. Mirrors migrations/postgres/0001_init.sql.
-- Times are microseconds since the Unix epoch; TEXT compares bytewise (BINARY).

CREATE TABLE rooms (
    room_id             TEXT PRIMARY KEY NOT NULL,
    name                TEXT NOT NULL,
    attributes          TEXT NOT NULL DEFAULT '{}',
    owner_id            TEXT NOT NULL,
    max_members         INTEGER NOT NULL DEFAULT 0,
    member_events       INTEGER NOT NULL DEFAULT 0,
    destroy_after_ms    INTEGER,
    presence_timeout_ms INTEGER,
    member_count        INTEGER NOT NULL DEFAULT 0,
    last_seq            INTEGER NOT NULL DEFAULT 0,
    version             INTEGER NOT NULL DEFAULT 1,
    created_at_us       INTEGER NOT NULL,
    updated_at_us       INTEGER NOT NULL,
    empty_since_us      INTEGER
);
CREATE INDEX rooms_by_name ON rooms (name, room_id);
CREATE INDEX rooms_to_destroy ON rooms (empty_since_us)
    WHERE empty_since_us IS NOT NULL AND destroy_after_ms IS NOT NULL;

CREATE TABLE members (
    room_id      TEXT NOT NULL REFERENCES rooms (room_id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role         INTEGER NOT NULL,
    joined_at_us INTEGER NOT NULL,
    last_seen_us INTEGER,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE user_rooms (
    user_id    TEXT PRIMARY KEY NOT NULL,
    room_count INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE messages (
    room_id       TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    sender_id     TEXT NOT NULL,
    sender_name   TEXT NOT NULL,
    kind          INTEGER NOT NULL,
    body          TEXT NOT NULL,
    payload       BLOB NOT NULL,
    content_type  TEXT NOT NULL,
    client_msg_id TEXT,
    sent_at_us    INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
