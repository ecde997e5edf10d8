-- The flow archive (section 4.6): finished flows uploaded by each node's auditing
-- service, at least once; (node_id, epoch, flow_id) makes a repeated upload a no-op (the
-- epoch is the node's flow database's own random id, so a reinstalled node's ids start
-- afresh without colliding). The addresses a query looks for are columns, indexed.
CREATE TABLE flows (
    node_id BIGINT NOT NULL REFERENCES nodes(id),
    epoch TEXT NOT NULL,
    flow_id BIGINT NOT NULL,
    proto INTEGER NOT NULL,
    src TEXT NOT NULL,
    sport INTEGER NOT NULL,
    dst TEXT NOT NULL,
    dport INTEGER NOT NULL,
    public_addr TEXT,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    record TEXT NOT NULL,
    received BIGINT NOT NULL,
    PRIMARY KEY (node_id, epoch, flow_id));
CREATE INDEX flows_src ON flows (src, first_ms);
CREATE INDEX flows_dst ON flows (dst, first_ms);
CREATE INDEX flows_public ON flows (public_addr, first_ms);
CREATE INDEX flows_last ON flows (last_ms);
CREATE INDEX slices_name ON slices (name, id);
