-- The flow archive (section 4.6): finished flows uploaded by each node's auditing
-- service, at least once; (node_id, flow_id) makes a repeated upload a no-op.
CREATE TABLE flows (
    node_id BIGINT NOT NULL REFERENCES nodes(id),
    flow_id BIGINT NOT NULL,
    proto INTEGER NOT NULL,
    src TEXT NOT NULL,
    sport INTEGER NOT NULL,
    dst TEXT NOT NULL,
    dport INTEGER NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    record TEXT NOT NULL,
    received BIGINT NOT NULL,
    PRIMARY KEY (node_id, flow_id));
CREATE INDEX flows_first ON flows (first_ms);
CREATE INDEX flows_last ON flows (last_ms);
