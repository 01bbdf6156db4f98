-- Analytics on big ledgers (usage reports, the dashboard) without scanning
-- every call.
--
-- 1. calls_daily: the calls folded per UTC day × user × provider × model ×
--    tier × complexity band, kept exact by triggers in the same transaction
--    as each write. A report over whole days reads this table (thousands of
--    rows for a month) instead of the calls (millions); only the partial
--    days at the edges of a period are read from `calls`.
-- 2. calls_by_cost: the most expensive calls of a period without sorting it.
-- 3. calls_by_user_time_cost: budget spend (user, period, sum of cost) read
--    from the index alone, without visiting each call's row.

CREATE TABLE calls_daily (
    day            INTEGER NOT NULL,                -- ts_ms / 86400000 (UTC days since 1970)
    user_id        TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    tier           TEXT    NOT NULL,                -- coalesce(tier, 'forced')
    band           TEXT    NOT NULL,                -- complexity band of score, or 'unscored'
    ok             INTEGER NOT NULL,                -- successful calls
    failed         INTEGER NOT NULL,                -- failed attempts
    cost_nanos     INTEGER NOT NULL,
    baseline_nanos INTEGER NOT NULL,                -- baseline of successful calls
    in_tokens      INTEGER NOT NULL,                -- input + cache read + cache write, all rows
    out_tokens     INTEGER NOT NULL,
    unpriced       INTEGER NOT NULL,                -- successful calls with cost_source 'unpriced'
    ok_input       INTEGER NOT NULL,                -- token kinds of successful calls, for
    ok_cache_read  INTEGER NOT NULL,                -- pricing them on another model
    ok_cache_write INTEGER NOT NULL,
    ok_output      INTEGER NOT NULL,
    ok_reasoning   INTEGER NOT NULL,
    PRIMARY KEY (day, user_id, provider, model, tier, band)
) WITHOUT ROWID;

CREATE TRIGGER calls_daily_insert AFTER INSERT ON calls BEGIN
    INSERT INTO calls_daily VALUES (
        NEW.ts_ms / 86400000, NEW.user_id, NEW.provider, NEW.model, coalesce(NEW.tier, 'forced'),
        CASE WHEN NEW.score IS NULL THEN 'unscored'
             WHEN NEW.score < 0.25 THEN '0.00-0.25' WHEN NEW.score < 0.5 THEN '0.25-0.50'
             WHEN NEW.score < 0.75 THEN '0.50-0.75' ELSE '0.75-1.00' END,
        NEW.outcome = 'ok', NEW.outcome = 'error', NEW.cost_nanos,
        CASE WHEN NEW.outcome = 'ok' THEN coalesce(NEW.baseline_cost_nanos, 0) ELSE 0 END,
        NEW.input_tokens + NEW.cache_read_tokens + NEW.cache_write_tokens, NEW.output_tokens,
        NEW.outcome = 'ok' AND NEW.cost_source = 'unpriced',
        CASE WHEN NEW.outcome = 'ok' THEN NEW.input_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' THEN NEW.cache_read_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' THEN NEW.cache_write_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' THEN NEW.output_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' THEN NEW.reasoning_tokens ELSE 0 END)
    ON CONFLICT DO UPDATE SET
        ok = ok + excluded.ok, failed = failed + excluded.failed,
        cost_nanos = cost_nanos + excluded.cost_nanos,
        baseline_nanos = baseline_nanos + excluded.baseline_nanos,
        in_tokens = in_tokens + excluded.in_tokens, out_tokens = out_tokens + excluded.out_tokens,
        unpriced = unpriced + excluded.unpriced, ok_input = ok_input + excluded.ok_input,
        ok_cache_read = ok_cache_read + excluded.ok_cache_read,
        ok_cache_write = ok_cache_write + excluded.ok_cache_write,
        ok_output = ok_output + excluded.ok_output,
        ok_reasoning = ok_reasoning + excluded.ok_reasoning;
END;

-- Deletions (retention) subtract the row, and drop a key left without calls.
CREATE TRIGGER calls_daily_delete AFTER DELETE ON calls BEGIN
    UPDATE calls_daily SET
        ok = ok - (OLD.outcome = 'ok'), failed = failed - (OLD.outcome = 'error'),
        cost_nanos = cost_nanos - OLD.cost_nanos,
        baseline_nanos = baseline_nanos
            - CASE WHEN OLD.outcome = 'ok' THEN coalesce(OLD.baseline_cost_nanos, 0) ELSE 0 END,
        in_tokens = in_tokens - (OLD.input_tokens + OLD.cache_read_tokens + OLD.cache_write_tokens),
        out_tokens = out_tokens - OLD.output_tokens,
        unpriced = unpriced - (OLD.outcome = 'ok' AND OLD.cost_source = 'unpriced'),
        ok_input = ok_input - CASE WHEN OLD.outcome = 'ok' THEN OLD.input_tokens ELSE 0 END,
        ok_cache_read = ok_cache_read - CASE WHEN OLD.outcome = 'ok' THEN OLD.cache_read_tokens ELSE 0 END,
        ok_cache_write = ok_cache_write - CASE WHEN OLD.outcome = 'ok' THEN OLD.cache_write_tokens ELSE 0 END,
        ok_output = ok_output - CASE WHEN OLD.outcome = 'ok' THEN OLD.output_tokens ELSE 0 END,
        ok_reasoning = ok_reasoning - CASE WHEN OLD.outcome = 'ok' THEN OLD.reasoning_tokens ELSE 0 END
    WHERE day = OLD.ts_ms / 86400000 AND user_id = OLD.user_id AND provider = OLD.provider
        AND model = OLD.model AND tier = coalesce(OLD.tier, 'forced')
        AND band = CASE WHEN OLD.score IS NULL THEN 'unscored'
             WHEN OLD.score < 0.25 THEN '0.00-0.25' WHEN OLD.score < 0.5 THEN '0.25-0.50'
             WHEN OLD.score < 0.75 THEN '0.50-0.75' ELSE '0.75-1.00' END;
    DELETE FROM calls_daily
    WHERE day = OLD.ts_ms / 86400000 AND user_id = OLD.user_id AND provider = OLD.provider
        AND model = OLD.model AND ok = 0 AND failed = 0;
END;

-- The ledger never rewrites what a call cost; refuse it rather than let the
-- rollup drift. (Columns added later may be updated freely.)
CREATE TRIGGER calls_daily_update AFTER UPDATE OF ts_ms, user_id, provider, model, tier, score,
    input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
    cost_nanos, cost_source, baseline_cost_nanos, outcome ON calls BEGIN
    SELECT RAISE(ABORT, 'ledger calls are append-only; delete and insert instead');
END;

-- Backfill from the calls already recorded.
INSERT INTO calls_daily
SELECT ts_ms / 86400000, user_id, provider, model, coalesce(tier, 'forced'),
    CASE WHEN score IS NULL THEN 'unscored'
         WHEN score < 0.25 THEN '0.00-0.25' WHEN score < 0.5 THEN '0.25-0.50'
         WHEN score < 0.75 THEN '0.50-0.75' ELSE '0.75-1.00' END,
    count(*) FILTER (WHERE outcome = 'ok'), count(*) FILTER (WHERE outcome = 'error'),
    coalesce(sum(cost_nanos), 0),
    coalesce(sum(baseline_cost_nanos) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens), 0),
    coalesce(sum(output_tokens), 0),
    count(*) FILTER (WHERE outcome = 'ok' AND cost_source = 'unpriced'),
    coalesce(sum(input_tokens) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(cache_read_tokens) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(cache_write_tokens) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(output_tokens) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(reasoning_tokens) FILTER (WHERE outcome = 'ok'), 0)
FROM calls GROUP BY 1, 2, 3, 4, 5, 6;

CREATE INDEX calls_by_cost ON calls (cost_nanos);
CREATE INDEX calls_by_user_time_cost ON calls (user_id, ts_ms, cost_nanos);
