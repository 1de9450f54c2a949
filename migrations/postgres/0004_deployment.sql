-- Cluster mode (--nats-url): this deployment's identity on a NATS server that other
-- deployments may share. One row, written by the first node that starts: `id` names
-- the deployment's NATS subjects, so deployments with databases of their own never
-- hear each other; `key` authenticates every event a node publishes, so a node
-- accepts events only from nodes that read this database. The key never leaves the
-- database and the nodes' memory.
CREATE TABLE deployment (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id        TEXT NOT NULL,
    key       BYTEA NOT NULL
);
