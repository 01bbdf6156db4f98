#!/usr/bin/env python3
"""Seed a ledger with a realistic mix of calls, for demos and benchmarks.

The ledger must exist already (run any `ai-cost-optimizer` command with
COST_OPTIMIZER_DATA_DIR pointing at it, e.g. `doctor`, so the schema is
migrated by the program itself). Rows go in through one prepared statement
inside one transaction, so a million rows take seconds.

    scripts/seed_ledger.py --db DIR/ledger.sqlite3 --rows 2500 --days 30
"""

import argparse
import hashlib
import math
import random
import sqlite3
import time

# id, provider, tier, $/MTok input, $/MTok output, weight within the tier
MODELS = [
    ("ollama/llama3.1", "ollama", "free", 0.0, 0.0, 3),
    ("gemini/gemini-2.5-flash-lite", "gemini", "cheap", 0.10, 0.40, 5),
    ("deepseek/deepseek-v3.2", "deepseek", "cheap", 0.28, 0.42, 4),
    ("cerebras/gpt-oss-120b", "cerebras", "cheap", 0.35, 0.75, 2),
    ("anthropic/claude-haiku-4-5", "anthropic", "medium", 1.0, 5.0, 4),
    ("deepseek/deepseek-v4-pro", "deepseek", "medium", 1.32, 3.96, 2),
    ("gemini/gemini-3-flash-preview", "gemini", "medium", 0.50, 3.0, 2),
    ("anthropic/claude-sonnet-4-6", "anthropic", "premium", 3.0, 15.0, 5),
    ("openrouter/anthropic/claude-sonnet-4.6", "openrouter", "premium", 3.0, 15.0, 1),
]
BASELINE = (3.0, 15.0)  # anthropic/claude-sonnet-4-6
TIERS = ["free", "cheap", "medium", "premium"]
USERS = [("default", 6), ("alice", 3), ("bob", 2), ("ci-bot", 1)]
ERRORS = [("rate_limited", "HTTP 429: rate limited"), ("timeout", "request timed out"),
          ("overloaded", "HTTP 529: overloaded")]

SQL = """INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
    input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
    cost_nanos, cost_source, baseline_cost_nanos, latency_ms, outcome, error_kind,
    error_message, forced, prompt_sha256, prompt_text)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"""


def pick(rng, items):
    total = sum(w for *_, w in items)
    x = rng.uniform(0, total)
    for it in items:
        x -= it[-1]
        if x <= 0:
            return it
    return items[-1]


def rows(n, days, now_ms, seed, n_users=0):
    rng = random.Random(seed)
    users = [(f"user-{u:05}", 1) for u in range(n_users)] if n_users else USERS
    start = now_ms - days * 86_400_000
    by_tier = {t: [m for m in MODELS if m[2] == t] for t in TIERS}
    for i in range(n):
        # More traffic on weekdays and growing over the period.
        while True:
            ts = rng.randint(start, now_ms - 1)
            frac = (ts - start) / max(1, now_ms - start)
            weekday = ((ts // 86_400_000) + 3) % 7  # 0 = Monday
            keep = (0.55 + 0.45 * frac) * (0.45 if weekday >= 5 else 1.0)
            if rng.random() < keep:
                break
        score = min(1.0, max(0.0, rng.betavariate(2.0, 3.2)))
        tier = TIERS[min(3, int(score / 0.25))]
        forced = None
        if rng.random() < 0.03:
            tier, forced = None, "model"
        model = pick(rng, by_tier[tier] if tier else MODELS)
        mid, provider, _, pin, pout, _ = model
        inp = int(rng.lognormvariate(math.log(1500 + 9000 * score), 0.7))
        cached = int(inp * rng.choice([0, 0, 0, 0.3, 0.6])) if provider in ("anthropic", "deepseek") else 0
        out = int(rng.lognormvariate(math.log(250 + 1800 * score), 0.6))
        reasoning = int(out * 0.3) if "pro" in mid or "gpt-oss" in mid else 0
        user = pick(rng, users)[0]
        req = hashlib.md5(f"{seed}-{i}".encode()).hexdigest()
        sha = hashlib.sha256(req.encode()).hexdigest()
        latency = int(rng.lognormvariate(math.log(400 + 3000 * score), 0.4))
        ok = rng.random() > 0.03
        uncached = inp - cached
        if ok:
            cost = (uncached * pin + cached * pin * 0.1 + out * pout) * 1000  # nanos
            base = (uncached * BASELINE[0] + cached * BASELINE[0] * 0.1 + out * BASELINE[1]) * 1000
            source = "local" if provider == "ollama" else "catalog"
            yield (ts, user, req, 1, provider, mid, tier, round(score, 4), uncached, cached, 0, out,
                   reasoning, int(cost), source, int(base), latency, "ok", None, None, forced, sha)
        else:
            kind, msg = rng.choice(ERRORS)
            yield (ts, user, req, 1, provider, mid, tier, round(score, 4), 0, 0, 0, 0, 0, 0,
                   "catalog", None, latency // 4, "error", kind, msg, forced, sha)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="ledger.sqlite3 (already migrated)")
    ap.add_argument("--rows", type=int, default=2500)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--now-ms", type=int, default=None, help="end of the period (default: now)")
    ap.add_argument("--users", type=int, default=0,
                    help="spread the calls over this many users (default: four, unevenly)")
    a = ap.parse_args()
    now_ms = a.now_ms or int(time.time() * 1000)
    con = sqlite3.connect(a.db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    t0 = time.time()
    with con:
        # In time order, as a real ledger is written.
        con.executemany(SQL, sorted(rows(a.rows, a.days, now_ms, a.seed, a.users), key=lambda r: r[0]))
    con.close()
    print(f"seeded {a.rows} rows over {a.days} days in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
