-- API tokens of the HTTPS API (issue 11): one row per issued token. Only the SHA-256 of the
-- secret is kept (core.auth); the token text is shown once, when it is issued.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id    TEXT PRIMARY KEY,          -- public: the pab_<token_id>_ part of the token
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,             -- space separated, sorted
    secret_hash TEXT NOT NULL,             -- sha256 hex of the secret
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  REAL,                      -- NULL: until revoked
    revoked_at  REAL,
    revoked_by  TEXT NOT NULL DEFAULT ''
);
