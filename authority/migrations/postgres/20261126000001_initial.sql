-- The schema of plab-authority 0.1.0, the first release, which wrote no version:
-- IF NOT EXISTS lets a database it made take this step unchanged.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, authority TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, email TEXT NOT NULL, org_id BIGINT NOT NULL REFERENCES orgs(id),
    roles TEXT NOT NULL, public_key TEXT NOT NULL, cert TEXT, approved BIGINT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ssh_keys (
    principal_id BIGINT NOT NULL REFERENCES principals(id), key TEXT NOT NULL, PRIMARY KEY (principal_id, key));
CREATE TABLE IF NOT EXISTS sites (
    id BIGSERIAL PRIMARY KEY, org_id BIGINT NOT NULL REFERENCES orgs(id), name TEXT NOT NULL UNIQUE,
    tech_id BIGINT REFERENCES principals(id), subnets TEXT NOT NULL, latitude DOUBLE PRECISION, longitude DOUBLE PRECISION,
    created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id BIGSERIAL PRIMARY KEY, site_id BIGINT NOT NULL REFERENCES sites(id), hostname TEXT NOT NULL, ip TEXT NOT NULL, mac TEXT NOT NULL,
    state TEXT NOT NULL, node_key TEXT NOT NULL, cert TEXT, trigger_port BIGINT, last_contact BIGINT,
    deleted BIGINT NOT NULL, created BIGINT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_hostname ON nodes (hostname) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS slices (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, org_id BIGINT NOT NULL REFERENCES orgs(id), delegated BIGINT NOT NULL,
    started BIGINT NOT NULL, deleted BIGINT NOT NULL, rspec TEXT NOT NULL, created BIGINT NOT NULL, expires BIGINT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS slices_live_name ON slices (name) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS slice_principals (
    slice_id BIGINT NOT NULL REFERENCES slices(id), principal_id BIGINT NOT NULL REFERENCES principals(id),
    PRIMARY KEY (slice_id, principal_id));
CREATE TABLE IF NOT EXISTS slice_nodes (
    slice_id BIGINT NOT NULL REFERENCES slices(id), node_id BIGINT NOT NULL REFERENCES nodes(id),
    PRIMARY KEY (slice_id, node_id));
CREATE INDEX IF NOT EXISTS slice_nodes_node ON slice_nodes (node_id);
CREATE TABLE IF NOT EXISTS sessions (key_hash TEXT PRIMARY KEY, identity TEXT NOT NULL, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS boot_nonces (node_id BIGINT NOT NULL, nonce TEXT NOT NULL, seen BIGINT NOT NULL, PRIMARY KEY (node_id, nonce));
CREATE TABLE IF NOT EXISTS packages (name TEXT PRIMARY KEY, version TEXT NOT NULL);
