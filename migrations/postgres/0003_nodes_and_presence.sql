-- Cluster mode (--nats-url): the nodes serving this database, and which users each
-- node has streams attached for, per room. A member is online while some node whose
-- lease has not run out holds a row for it; `members.last_seen_us` is set only when
-- the last such row goes (or its node's lease runs out), so presence timeouts count
-- from when the member was offline on every node. Single-node servers leave both
-- tables empty.
CREATE TABLE nodes (
    node_id        TEXT COLLATE "C" PRIMARY KEY,
    started_at_us  BIGINT NOT NULL,
    lease_until_us BIGINT NOT NULL                    -- the database's clock
);

CREATE TABLE node_presence (
    room_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    node_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (room_id, user_id, node_id)
);
CREATE INDEX node_presence_by_node ON node_presence (node_id);
