-- Members no longer reference rooms with a foreign key. Every member insert took a
-- KEY SHARE lock on its room's row while other transactions of the same room updated
-- that row (member_count, last_seq), so PostgreSQL built a MultiXact for each set of
-- overlapping lockers: joins into one busy room measured 330-490/s, falling from run
-- to run, and ~690/s steady without the constraint (BENCHMARKS.md).
-- Integrity holds without it: members are inserted only by transactions that hold
-- their room's row locked (or have just created it), and DeleteRoom deletes a room's
-- members in the transaction that deletes the room.
ALTER TABLE members DROP CONSTRAINT IF EXISTS members_room_id_fkey;
