-- What each node's slice creation service last reported for the slices on it (the
-- sliver's state and how to log in), shown per slice by GetSliceStatus.
CREATE TABLE slivers (
    slice_id BIGINT NOT NULL REFERENCES slices(id),
    node_id BIGINT NOT NULL REFERENCES nodes(id),
    state TEXT NOT NULL,
    address TEXT,
    ssh TEXT,
    message TEXT,
    updated BIGINT NOT NULL,
    PRIMARY KEY (slice_id, node_id));
CREATE INDEX slivers_node ON slivers (node_id);
