-- Client API keys of the HTTP server (`serve --http`), created with
-- `ai-cost-optimizer keys create`. Only a SHA-256 of each key is stored: the
-- key is 256 random bits, so a plain hash cannot be reversed and a stolen
-- ledger does not let anyone call the server. `id` is the public part printed
-- in the key itself, so a lookup is by id and the hash comparison is done in
-- constant time by the server.

CREATE TABLE api_keys (
    id          TEXT    PRIMARY KEY,          -- public id, also inside the key
    key_sha256  TEXT    NOT NULL,             -- hex SHA-256 of the whole key
    user_id     TEXT    NOT NULL,             -- whose budget the key's calls use
    name        TEXT,                         -- a label for people
    admin       INTEGER NOT NULL DEFAULT 0,   -- may act for other users, set budgets
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER                       -- set by `keys revoke`; never deleted
);
