-- Blobs in the shared ledger (the cluster issue): record sections too big for a row and heatmaps,
-- readable from every node. Content-addressed: the same bytes are stored once.
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size   BIGINT NOT NULL,
    data   BYTEA NOT NULL
);
