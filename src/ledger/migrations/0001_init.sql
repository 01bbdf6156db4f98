-- The ledger: one row per provider attempt, successful or not.
-- Money is stored in integer nano-dollars (1e-9 USD) so sums are exact.
CREATE TABLE calls (
    id                  INTEGER PRIMARY KEY,
    ts_ms               INTEGER NOT NULL,          -- unix time, milliseconds, UTC
    user_id             TEXT    NOT NULL,
    request_id          TEXT    NOT NULL,          -- groups the attempts of one call
    attempt             INTEGER NOT NULL,          -- 1 for the first provider tried
    provider            TEXT    NOT NULL,
    model               TEXT    NOT NULL,          -- canonical provider/model id
    tier                TEXT,
    score               REAL,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens    INTEGER NOT NULL DEFAULT 0,
    cost_nanos          INTEGER NOT NULL DEFAULT 0 CHECK (cost_nanos >= 0),
    cost_source         TEXT    NOT NULL,          -- provider | catalog | local | unpriced
    baseline_cost_nanos INTEGER,                   -- the always-premium model, same usage
    latency_ms          INTEGER NOT NULL,
    outcome             TEXT    NOT NULL CHECK (outcome IN ('ok', 'error')),
    error_kind          TEXT,
    error_message       TEXT,
    forced              TEXT,                      -- model | provider | tier | NULL
    prompt_sha256       TEXT    NOT NULL,
    prompt_text         TEXT                       -- only when the user opted in
);
CREATE INDEX calls_by_time ON calls (ts_ms);
CREATE INDEX calls_by_user_time ON calls (user_id, ts_ms);

-- One budget per user id; users without a row get the configured default.
CREATE TABLE budgets (
    user_id     TEXT    PRIMARY KEY,
    limit_nanos INTEGER NOT NULL CHECK (limit_nanos > 0),
    period      TEXT    NOT NULL DEFAULT 'monthly',
    thresholds  TEXT    NOT NULL,                  -- JSON array of fractions
    mode        TEXT    NOT NULL,                  -- warn | downgrade | block
    updated_ms  INTEGER NOT NULL
);

-- Worst-case cost held for calls in flight, so concurrent calls cannot
-- together overspend. Rows expire, so a crashed process cannot hold money.
CREATE TABLE reservations (
    id            INTEGER PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    amount_nanos  INTEGER NOT NULL CHECK (amount_nanos >= 0),
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE INDEX reservations_by_user ON reservations (user_id, expires_ms);
