"""The OpenAI-compatible proxy driven by the official `openai` Python package.

A fake DeepSeek endpoint (OpenAI chat-completions wire format, plain JSON or
SSE as asked) runs in a thread on 127.0.0.1; the real binary (AICO_BIN,
default target/debug) serves `serve --http 127.0.0.1:0` and the client talks
to it as it would to api.openai.com. Costs must land in the ledger, read back
over /v1/usage.
"""

import json
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import openai
import pytest

from fakes import BIN, server_env, start_fake

KEY = "sk-openai-proxy-FAKE-key-7777777777"
USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
# Requests the fake failed (prompts containing "fail-me"), to count retries.
FAILED = []
# The key of a user with a budget no call fits (set by the fixture).
BROKE = []


class FakeDeepSeek(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "fail-me" in json.dumps(body.get("messages")):
            FAILED.append(body["model"])
            data = json.dumps({"error": {"message": "internal error", "type": "server_error"}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if body.get("stream"):
            events = []
            for piece in ["The answer ", "is ", "42."]:
                events.append({"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                               "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            events.append({"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                           "choices": [], "usage": USAGE})
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            data = data.encode()
            ctype = "text/event-stream"
        else:
            data = json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."},
                             "finish_reason": "stop"}],
                "usage": USAGE,
            }).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = start_fake(FakeDeepSeek)
    with tempfile.TemporaryDirectory() as data:
        env = server_env(data, httpd, KEY)
        client_key = subprocess.run(
            [BIN, "keys", "create", "--user", "py"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        # A user whose budget ($0.000001 a month) no call fits: refused with 402.
        BROKE.append(subprocess.run(
            [BIN, "keys", "create", "--user", "broke"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip())
        subprocess.run([BIN, "budget", "--user", "broke", "--set", "0.000001"], env=env, check=True,
                       capture_output=True)
        env["COST_OPTIMIZER_HTTP_REQUIRE_AUTH"] = "true"
        # One attempt per call, so a failed call's upstream requests are
        # easy to count (the core's own retries are tested in Rust).
        env["COST_OPTIMIZER_MAX_RETRIES"] = "0"
        proc = subprocess.Popen(
            [BIN, "serve", "--http", "127.0.0.1:0"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            base = None
            for line in proc.stderr:
                if "listening on " in line:
                    base = line.split("listening on ", 1)[1].strip()
                    break
            assert base, "server did not start"
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            yield base, client_key, data
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            httpd.shutdown()


def usage(base, key):
    req = urllib.request.Request(f"{base}/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def test_models_list_auto_first(server):
    base, key, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert any(i.startswith("deepseek/") for i in ids)
    # One model by id, through the SDK (its ids hold a slash).
    m = client.models.retrieve("deepseek/deepseek-v3.2")
    assert m.id == "deepseek/deepseek-v3.2" and m.owned_by == "deepseek"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("anthropic/claude-haiku-4-5")


def test_completion_records_cost(server):
    base, key, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    before = usage(base, key)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 6*7?"}],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "The answer is 42."
    assert completion.usage.prompt_tokens == 1200
    assert completion.usage.completion_tokens == 300
    assert raw.headers["x-routed-provider"] == "deepseek"
    cost = float(raw.headers["x-cost-usd"])
    assert cost > 0
    after = usage(base, key)
    assert after["user_id"] == "py"
    assert after["calls"] == before["calls"] + 1
    assert after["total_cost_usd"] == pytest.approx(before["total_cost_usd"] + cost, abs=1e-9)


def test_streaming_with_usage_records_cost(server):
    base, key, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    before = usage(base, key)
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 6*7?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, last = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        last = chunk
    assert text == "The answer is 42."
    assert last.usage.prompt_tokens == 1200
    assert last.usage.completion_tokens == 300
    cost = last.model_extra["x_optimizer"]["cost_usd"]
    after = usage(base, key)
    assert after["calls"] == before["calls"] + 1
    assert after["total_cost_usd"] == pytest.approx(before["total_cost_usd"] + cost, abs=1e-9)


def test_wrong_key_and_budget_refusal_raise_typed_errors(server):
    base, key, _ = server
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="aco_000000000000_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody/no-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    # Over budget: 402 (not 429, which the SDK would retry), code budget_exceeded.
    broke = openai.OpenAI(base_url=f"{base}/v1", api_key=BROKE[0], max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        broke.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "budget_exceeded", refused.value.body
    assert "budget" in refused.value.message.lower()
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            broke.chat.completions.create(model="auto", stream=stream,
                                          messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 402


def test_a_failed_call_is_not_retried_by_the_sdk(server):
    """The core already retried and fell back: its 502 says `x-should-retry:
    false`, so the SDK (which retries any 5xx twice by default) does not
    send every attempt, billed ones included, again."""
    base, key, _ = server
    messages = [{"role": "user", "content": "fail-me, please"}]
    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps({"model": "auto", "messages": messages}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req)
    assert refused.value.code == 502
    assert refused.value.headers["x-should-retry"] == "false"
    per_call = len(FAILED)
    assert per_call >= 1
    FAILED.clear()
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)  # the SDK's default: 2 retries
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="auto", messages=messages)
    assert len(FAILED) == per_call, "the SDK sent the failed call again"


def test_mcp_over_http_with_the_python_sdk(server, caplog):
    """The official SDK's streamable-HTTP client, with a key: tools work,
    and closing ends the session cleanly (the SDK takes only 200 or 204 as
    ended; rmcp's 202 made it warn at every exit)."""
    import asyncio
    import logging

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    base, key, _ = server

    async def body():
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with http:
            async with streamable_http_client(f"{base}/mcp", http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    assert init.server_info.name == "ai-cost-optimizer"
                    r = await session.call_tool("get_recommendation", {"prompt": "What is 2+2?"})
                    assert not r.is_error, r.content
                    assert r.structured_content["recommended"]["provider"] == "deepseek"

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())
    failed = [rec.getMessage() for rec in caplog.records if "termination failed" in rec.getMessage()]
    assert not failed, failed
