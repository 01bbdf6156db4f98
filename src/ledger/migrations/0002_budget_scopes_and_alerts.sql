-- Budgets gain a period time zone and an alert webhook; '*' as user_id is
-- the global budget over every user.
ALTER TABLE budgets ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE budgets ADD COLUMN webhook_url TEXT;
ALTER TABLE budgets ADD COLUMN webhook_format TEXT NOT NULL DEFAULT 'json';

-- One row per threshold crossed per budget period. The UNIQUE constraint is
-- what makes "exactly one alert per crossing" hold under concurrent calls.
CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY,
    scope           TEXT    NOT NULL,          -- user id, or '*' for global
    period_start_ms INTEGER NOT NULL,
    threshold       REAL    NOT NULL,
    spent_nanos     INTEGER NOT NULL,
    limit_nanos     INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    UNIQUE (scope, period_start_ms, threshold)
);

-- Every attempt to deliver an alert, successful or not.
CREATE TABLE alert_deliveries (
    id        INTEGER PRIMARY KEY,
    alert_id  INTEGER NOT NULL REFERENCES alerts (id),
    channel   TEXT    NOT NULL,               -- webhook | mcp
    target    TEXT,                           -- redacted URL
    attempt   INTEGER NOT NULL,
    ok        INTEGER NOT NULL,
    status    INTEGER,
    error     TEXT,
    ts_ms     INTEGER NOT NULL
);
CREATE INDEX alert_deliveries_by_alert ON alert_deliveries (alert_id);
