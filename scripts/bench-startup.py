#!/usr/bin/env python3
"""Cold start of the MCP server: spawn → `initialize` answered, as Claude
Desktop starts it, over N runs, beside baselines measured in the same run.

    scripts/bench-startup.py [--runs 20] [--bin target/release/ai-cost-optimizer]

Each run starts a fresh process with a fresh data dir, writes one
`initialize` request to its stdin and stops the clock when the response line
arrives; then stdin is closed and the process must exit. Baselines:
`/bin/true` (spawn + exit, the floor of any process start) and, when
installed under target/npm, the reference `mcp-server-everything stdio`
(Node). Prints a Markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "0"}},
}) + "\n"


def time_initialize(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(INIT.encode())
    p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd[0]} exited before answering initialize")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("id") == 1:
            break
    dt = time.perf_counter() - t0
    assert "result" in msg, msg
    p.stdin.close()
    p.wait(timeout=10)
    return dt


def time_true():
    t0 = time.perf_counter()
    subprocess.run(["/bin/true"], check=True)
    return time.perf_counter() - t0


def summarise(name, xs):
    ms = sorted(x * 1000 for x in xs)
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {statistics.mean(ms):.1f} "
            f"| {ms[0]:.1f} | {ms[-1]:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "ai-cost-optimizer"))
    a = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def env_for(i):
            d = Path(tmp) / f"data{i}"
            return {"PATH": os.environ.get("PATH", ""), "HOME": str(d),
                    "COST_OPTIMIZER_DATA_DIR": str(d), "COST_OPTIMIZER_CONFIG": "",
                    "COST_OPTIMIZER_OLLAMA_PROBE": "0"}

        # Warm-up run (page cache), not counted.
        time_initialize([a.bin], env_for("warm"))
        rows.append(summarise("ai-cost-optimizer (fresh data dir each run)",
                              [time_initialize([a.bin], env_for(i)) for i in range(a.runs)]))
        rows.append(summarise("ai-cost-optimizer (existing ledger)",
                              [time_initialize([a.bin], env_for("warm")) for _ in range(a.runs)]))
        rows.append(summarise("/bin/true (spawn + exit)", [time_true() for _ in range(a.runs)]))
        everything = ROOT / "target" / "npm" / "node_modules" / ".bin" / "mcp-server-everything"
        if everything.exists():
            cmd = [str(everything), "stdio"]
            time_initialize(cmd, env_for("warm"))
            rows.append(summarise("mcp-server-everything stdio (Node reference)",
                                  [time_initialize(cmd, env_for("warm")) for _ in range(a.runs)]))

    size = Path(a.bin).stat().st_size
    print(f"binary: {a.bin}: {size} bytes ({size / 1024 / 1024:.2f} MiB)\n")
    print("| spawn → initialize answered | runs | median ms | mean ms | min ms | max ms |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
