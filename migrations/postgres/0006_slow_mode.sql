-- Slow mode: a plain member sends one CHAT per `slow_mode_ms` (NULL: off). A member's
-- last CHAT time is written only in rooms with slow mode, and is claimed with a
-- conditional UPDATE in the transaction that stores the message, so the interval
-- holds across nodes.
ALTER TABLE rooms ADD COLUMN slow_mode_ms BIGINT;
ALTER TABLE members ADD COLUMN last_chat_us BIGINT;
