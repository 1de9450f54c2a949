-- Slow mode: a plain member sends one CHAT per `slow_mode_ms` (NULL: off), and a
-- member's last CHAT time while it is on. Mirrors migrations/postgres/0006_slow_mode.sql.
ALTER TABLE rooms ADD COLUMN slow_mode_ms INTEGER;
ALTER TABLE members ADD COLUMN last_chat_us INTEGER;
