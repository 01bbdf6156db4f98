-- The rollup's token kinds of successful calls (ok_input … ok_reasoning)
-- count priced calls only. They price the same usage on another model (the
-- dashboard's other baselines); an unpriced call (recorded at $0, no known
-- cost) sharing a rollup row with priced ones had its tokens priced there
-- too, overstating the savings. The triggers are replaced and the rollup
-- rebuilt from the calls (once; the same statement as 0003's backfill).

DROP TRIGGER calls_daily_insert;
DROP TRIGGER calls_daily_delete;

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
        CASE WHEN NEW.outcome = 'ok' AND NEW.cost_source <> 'unpriced' THEN NEW.input_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' AND NEW.cost_source <> 'unpriced' THEN NEW.cache_read_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' AND NEW.cost_source <> 'unpriced' THEN NEW.cache_write_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' AND NEW.cost_source <> 'unpriced' THEN NEW.output_tokens ELSE 0 END,
        CASE WHEN NEW.outcome = 'ok' AND NEW.cost_source <> 'unpriced' THEN NEW.reasoning_tokens ELSE 0 END)
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

CREATE TRIGGER calls_daily_delete AFTER DELETE ON calls BEGIN
    UPDATE calls_daily SET
        ok = ok - (OLD.outcome = 'ok'), failed = failed - (OLD.outcome = 'error'),
        cost_nanos = cost_nanos - OLD.cost_nanos,
        baseline_nanos = baseline_nanos
            - CASE WHEN OLD.outcome = 'ok' THEN coalesce(OLD.baseline_cost_nanos, 0) ELSE 0 END,
        in_tokens = in_tokens - (OLD.input_tokens + OLD.cache_read_tokens + OLD.cache_write_tokens),
        out_tokens = out_tokens - OLD.output_tokens,
        unpriced = unpriced - (OLD.outcome = 'ok' AND OLD.cost_source = 'unpriced'),
        ok_input = ok_input - CASE WHEN OLD.outcome = 'ok' AND OLD.cost_source <> 'unpriced' THEN OLD.input_tokens ELSE 0 END,
        ok_cache_read = ok_cache_read - CASE WHEN OLD.outcome = 'ok' AND OLD.cost_source <> 'unpriced' THEN OLD.cache_read_tokens ELSE 0 END,
        ok_cache_write = ok_cache_write - CASE WHEN OLD.outcome = 'ok' AND OLD.cost_source <> 'unpriced' THEN OLD.cache_write_tokens ELSE 0 END,
        ok_output = ok_output - CASE WHEN OLD.outcome = 'ok' AND OLD.cost_source <> 'unpriced' THEN OLD.output_tokens ELSE 0 END,
        ok_reasoning = ok_reasoning - CASE WHEN OLD.outcome = 'ok' AND OLD.cost_source <> 'unpriced' THEN OLD.reasoning_tokens ELSE 0 END
    WHERE day = OLD.ts_ms / 86400000 AND user_id = OLD.user_id AND provider = OLD.provider
        AND model = OLD.model AND tier = coalesce(OLD.tier, 'forced')
        AND band = CASE WHEN OLD.score IS NULL THEN 'unscored'
             WHEN OLD.score < 0.25 THEN '0.00-0.25' WHEN OLD.score < 0.5 THEN '0.25-0.50'
             WHEN OLD.score < 0.75 THEN '0.50-0.75' ELSE '0.75-1.00' END;
    DELETE FROM calls_daily
    WHERE day = OLD.ts_ms / 86400000 AND user_id = OLD.user_id AND provider = OLD.provider
        AND model = OLD.model AND ok = 0 AND failed = 0;
END;

-- Rebuilt from the calls already recorded.
DELETE FROM calls_daily;
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
    coalesce(sum(input_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
    coalesce(sum(cache_read_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
    coalesce(sum(cache_write_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
    coalesce(sum(output_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
    coalesce(sum(reasoning_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0)
FROM calls GROUP BY 1, 2, 3, 4, 5, 6;
