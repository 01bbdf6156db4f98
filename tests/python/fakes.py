"""What the Python client tests share: the binary under test, a fake
provider on 127.0.0.1 and the environment that points the server at it."""

import os
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("AICO_BIN", str(ROOT / "target" / "debug" / "ai-cost-optimizer"))


def start_fake(handler):
    """Serves `handler` on a free loopback port in a daemon thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def server_env(data_dir, httpd, deepseek_key):
    """A clean environment: only DeepSeek enabled, at the fake, with its own
    data dir and no config file or Ollama probe from the machine."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": data_dir,
        "COST_OPTIMIZER_DATA_DIR": data_dir,
        "COST_OPTIMIZER_CONFIG": "",
        "COST_OPTIMIZER_OLLAMA_PROBE": "0",
        "DEEPSEEK_API_KEY": deepseek_key,
        "DEEPSEEK_BASE_URL": f"http://127.0.0.1:{httpd.server_address[1]}",
    }
