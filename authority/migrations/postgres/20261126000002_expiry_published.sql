-- Whether a slice's expiry has moved the generation yet (1), so that exactly one sweep,
-- on any server, tells the nodes. A renewal sets it back to 0.
ALTER TABLE slices ADD COLUMN expiry_published BIGINT NOT NULL DEFAULT 0;
