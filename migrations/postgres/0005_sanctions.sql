-- Moderation: users kept out of a room (bans; kind 1), each until a time or until
-- lifted (`until_us` NULL). Like members, rows do not reference their room with a
-- foreign key (see 0002): they are written only under their room's row lock, and
-- DeleteRoom deletes a room's rows in the transaction that deletes the room.
-- Expired rows are ignored by every read and deleted when their room gets its next
-- sanction.
CREATE TABLE sanctions (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    kind     SMALLINT NOT NULL,
    by_user  TEXT NOT NULL,
    at_us    BIGINT NOT NULL,
    until_us BIGINT,
    PRIMARY KEY (room_id, kind, user_id)
);
