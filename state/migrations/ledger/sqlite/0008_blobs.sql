-- Kept so both dialects share one migration history: one machine keeps its blobs as files
-- under var/blobs (state.blobs.BlobStore); PostgreSQL keeps them in this table.
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    data   BLOB NOT NULL
);
