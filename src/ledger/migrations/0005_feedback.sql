-- Explicit feedback on answers: a rating of one complete_prompt call,
-- given later through `ai-cost-optimizer feedback` or complete_prompt's
-- `feedback` argument. `calibrate` reads it with the calls' scores and
-- tiers to propose routing thresholds. Several ratings of one request may
-- exist; the newest counts.
CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY,
    request_id  TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    rating      INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    source      TEXT    NOT NULL,          -- cli | mcp
    note        TEXT
);
CREATE INDEX feedback_by_request ON feedback (request_id, ts_ms);
