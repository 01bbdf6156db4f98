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

With `--rss`, also the resident memory of an idle server: each process
answers `initialize` and `tools/list`, then sits idle for `--idle-seconds`
(default 2) before its VmRSS is read from /proc (Linux only), beside the
same figure for the Node reference server and for `cat` (a process that
only waits on stdin: the floor).
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


TOOLS_LIST = (json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n"
              + json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}) + "\n")


def wait_reply(p, cmd, want_id):
    while True:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd[0]} exited before answering request {want_id}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("id") == want_id:
            assert "result" in msg, msg
            return msg


def time_initialize(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(INIT.encode())
    p.stdin.flush()
    wait_reply(p, cmd, 1)
    dt = time.perf_counter() - t0
    p.stdin.close()
    p.wait(timeout=10)
    return dt


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_rss(cmd, env, idle_seconds, mcp=True):
    """VmRSS (KiB) of `cmd` after initialize + tools/list and an idle pause."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env)
    try:
        if mcp:
            p.stdin.write(INIT.encode())
            p.stdin.flush()
            wait_reply(p, cmd, 1)
            p.stdin.write(TOOLS_LIST.encode())
            p.stdin.flush()
            wait_reply(p, cmd, 2)
        time.sleep(idle_seconds)
        return vm_rss_kib(p.pid)
    finally:
        p.stdin.close()
        p.wait(timeout=10)


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
    ap.add_argument("--rss", action="store_true", help="also measure idle resident memory")
    ap.add_argument("--idle-seconds", type=float, default=2.0)
    a = ap.parse_args()
    rss_rows = []

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

        if a.rss:
            runs = max(3, min(a.runs, 5))

            def rss_row(name, xs):
                xs = sorted(xs)
                return f"| {name} | {len(xs)} | {statistics.median(xs):,} | {xs[0]:,} | {xs[-1]:,} |"

            rss_rows.append(rss_row("ai-cost-optimizer (existing ledger)", [
                idle_rss([a.bin], env_for("warm"), a.idle_seconds) for _ in range(runs)]))
            rss_rows.append(rss_row("baseline: `cat` (waits on stdin)", [
                idle_rss(["cat"], env_for("warm"), a.idle_seconds, mcp=False) for _ in range(runs)]))
            if everything.exists():
                rss_rows.append(rss_row("baseline: mcp-server-everything stdio (Node reference)", [
                    idle_rss([str(everything), "stdio"], env_for("warm"), a.idle_seconds)
                    for _ in range(runs)]))

    size = Path(a.bin).stat().st_size
    print(f"binary: {a.bin}: {size} bytes ({size / 1024 / 1024:.2f} MiB)\n")
    print("| spawn → initialize answered | runs | median ms | mean ms | min ms | max ms |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if rss_rows:
        print(f"\n| idle VmRSS {a.idle_seconds:g} s after initialize + tools/list "
              "| runs | median KiB | min KiB | max KiB |")
        print("|---|---|---|---|---|")
        print("\n".join(rss_rows))


if __name__ == "__main__":
    main()
