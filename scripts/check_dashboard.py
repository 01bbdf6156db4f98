#!/usr/bin/env python3
"""Checks a rendered dashboard in headless Chromium against its ledger.

    scripts/check_dashboard.py --html PATH --db LEDGER --days N [--chromium BIN]

Loads the page (file://) with JavaScript on, and fails unless:
- Chromium logs no console message (errors, uncaught exceptions);
- the cost chart has one SVG segment per (day, provider) in the ledger, and
  the segments sum to the ledger's spend;
- the spend, calls and savings shown equal the ledger's sums;
- the model bars and tier slices match the ledger's models and tiers;
- the baseline picker (preselected with #baseline=1) recomputes savings.
"""

import argparse
import html.parser
import re
import sqlite3
import subprocess
import sys
import tempfile
import time


def chromium(binary, url):
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=2000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit(f"chromium failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout, p.stderr


class Dom(html.parser.HTMLParser):
    """Collects elements by tag with attributes and the text inside ids."""

    def __init__(self):
        super().__init__()
        self.elements = []
        self.text = {}
        self.stack = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag not in ("br", "img", "meta", "input", "line", "rect", "circle", "path"):
            self.stack.append(a.get("id"))
            if a.get("id"):
                self.text[a["id"]] = ""

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag not in ("br", "img", "meta", "input", "line", "rect", "circle", "path") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for i in self.stack:
            if i:
                self.text[i] += data

    def find(self, tag, cls=None):
        return [a for t, a in self.elements
                if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def usd(v):
    a = abs(v)
    if a == 0:
        return "$0"
    if a < 0.01:
        return f"${v:.6f}"
    if a < 1:
        return f"${v:.4f}"
    return f"${v:,.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--html", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--days", type=int, required=True)
    ap.add_argument("--chromium", default="chromium")
    a = ap.parse_args()
    failures = []

    def check(cond, msg):
        print(("ok   " if cond else "FAIL ") + msg)
        if not cond:
            failures.append(msg)

    # The page states the period it covers; check it is the one asked for.
    raw = open(a.html, encoding="utf-8").read()
    now_ms = int(re.search(r'data-generated-ms="(\d+)"', raw).group(1))
    since = int(re.search(r'data-since-ms="(\d+)"', raw).group(1))
    day = 86_400_000
    if since != (now_ms // day - (a.days - 1)) * day:
        sys.exit(f"the page covers the wrong period (since {since})")
    con = sqlite3.connect(a.db)
    rng = "ts_ms >= ? AND ts_ms <= ?"
    args = (since, now_ms)
    pairs = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT ts_ms/86400000, provider FROM calls WHERE {rng})", args).fetchone()[0]
    cost, calls, failed, base = con.execute(
        f"""SELECT coalesce(sum(cost_nanos),0), count(*) FILTER (WHERE outcome='ok'),
        count(*) FILTER (WHERE outcome='error'),
        coalesce(sum(baseline_cost_nanos) FILTER (WHERE outcome='ok'),0) FROM calls WHERE {rng}""", args).fetchone()
    models = con.execute(f"SELECT count(DISTINCT model) FROM calls WHERE {rng}", args).fetchone()[0]
    tiers = con.execute(f"SELECT count(DISTINCT coalesce(tier,'forced')) FROM calls WHERE {rng}", args).fetchone()[0]
    cost, base = cost / 1e9, base / 1e9

    t0 = time.time()
    dom_text, log = chromium(a.chromium, "file://" + a.html + "#baseline=1")
    print(f"chromium rendered the page in {time.time() - t0:.1f}s")
    console = [l for l in log.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    check(not console, f"no console messages ({console[:3]})")

    dom = Dom()
    dom.feed(dom_text)
    segs = dom.find("rect", "seg")
    check(len(segs) == pairs, f"cost chart has {len(segs)} segments = {pairs} (day, provider) pairs")
    seg_sum = sum(float(s["data-value"]) for s in segs)
    check(abs(seg_sum - cost) < 1e-6, f"segments sum to {seg_sum:.9f} = ledger spend {cost:.9f}")
    total = [x for t, x in dom.elements if x.get("id") == "total-cost"]
    check(total and abs(float(total[0]["data-usd"]) - cost) < 1e-9, "spend data attribute equals the ledger")
    check(dom.text.get("total-cost", "").strip() == usd(cost),
          f"spend shown {dom.text.get('total-cost', '').strip()!r} = {usd(cost)!r}")
    check(dom.text.get("total-calls", "").strip() == f"{calls:,}", f"calls shown = {calls:,}")
    m_bars = len(dom.find("rect", "hbar-fill"))
    band_bars = con.execute(
        f"SELECT count(DISTINCT CASE WHEN score IS NULL THEN 9 ELSE min(3, CAST(score*4 AS INT)) END) FROM calls WHERE {rng}",
        args).fetchone()[0]
    expected_model_bars = min(models, 8) + (1 if models > 8 else 0)
    check(m_bars == expected_model_bars + band_bars,
          f"{m_bars} horizontal bars = {expected_model_bars} model + {band_bars} band bars")
    slices = dom.find("circle", "slice")
    check(len(slices) == tiers, f"tier donut has {len(slices)} slices = {tiers} tiers")
    check(len(dom.find("line", "threshold")) == 3, "budget bar has the 3 default threshold markers")
    check(len(dom.find("tr")) >= 2, "recent calls table has rows")
    # The picker preselected option 1 via #baseline=1: savings use its cost.
    opts = dom.find("option")
    check(len(opts) >= 2, f"{len(opts)} baseline options")
    if len(opts) >= 2:
        alt = float(opts[1]["data-cost"])
        # The amount is shown unsigned; "saved" or "more than the baseline"
        # says which way.
        want = usd(abs(alt - cost))
        got = dom.text.get("savings-amount", "").strip()
        check(got == want, f"baseline picker recomputed savings: {got!r} = {want!r}")
        check(dom.text.get("baseline-cost", "").strip() == usd(alt), "baseline cost swapped")
    saved = base - cost  # signed: a dearer history shows its loss
    check(abs(float([x for t, x in dom.elements if x.get("id") == "total-saved"][0]["data-usd"]) - saved) < 1e-9,
          f"savings card equals ledger baseline − cost = {saved:.6f}")
    shown = dom.text.get("failed-attempts", "").strip()
    check(shown == f"{failed:,}", f"failed attempts shown {shown!r} = ledger {failed:,}")
    if failures:
        sys.exit(f"{len(failures)} dashboard checks failed")
    print("dashboard checks passed")


if __name__ == "__main__":
    main()
