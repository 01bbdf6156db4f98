"""The server driven by the official Python MCP SDK (a client nobody here wrote).

A fake DeepSeek endpoint speaking the OpenAI chat-completions wire format runs
in a thread on 127.0.0.1; the real binary (AICO_BIN, default target/debug)
is spawned over stdio by the SDK.
"""

import asyncio
import json
import tempfile
from http.server import BaseHTTPRequestHandler

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from fakes import BIN, server_env, start_fake

KEY = "sk-python-sdk-FAKE-key-5555555555"


class FakeDeepSeek(BaseHTTPRequestHandler):
    requests = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeDeepSeek.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        usage = {"prompt_tokens": 2000, "completion_tokens": 1000, "total_tokens": 3000}
        if body.get("stream"):
            # What DeepSeek sends a streaming request: chunks, the finish,
            # then the usage (asked for with stream_options), then [DONE].
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": body["model"]}
            events = [
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]},
                {**chunk, "choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": None}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": usage},
            ]
            data = ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
            ctype = "text/event-stream"
        else:
            data = json.dumps({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def run(coro):
    return asyncio.run(coro)


async def with_session(fn):
    httpd = start_fake(FakeDeepSeek)
    with tempfile.TemporaryDirectory() as data:
        env = server_env(data, httpd, KEY)
        params = StdioServerParameters(command=BIN, args=[], env=env)
        try:
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    return await fn(session, init)
        finally:
            httpd.shutdown()


def test_initialize_and_list_tools():
    async def body(session, init):
        assert init.server_info.name == "ai-cost-optimizer"
        assert init.protocol_version == "2025-11-25"
        tools = (await session.list_tools()).tools
        names = sorted(t.name for t in tools)
        assert names == [
            "check_model_costs",
            "complete_prompt",
            "get_recommendation",
            "query_usage",
            "set_budget",
        ]
        for t in tools:
            assert t.output_schema is not None, t.name
            assert t.input_schema["type"] == "object"

    run(with_session(body))


def test_complete_prompt_cost_and_usage():
    async def body(session, _):
        r = await session.call_tool(
            "complete_prompt", {"prompt": "What is 2+2?", "tier": "cheap", "max_tokens": 1500}
        )
        assert not r.is_error, r.content
        s = r.structured_content
        assert s["answer"] == "4"
        assert s["model"] == "deepseek/deepseek-v3.2"
        # $0.28/MTok in, $0.40/MTok out.
        assert abs(s["cost_usd"] - (2000 * 0.28e-6 + 1000 * 0.40e-6)) < 1e-12
        assert "deepseek/deepseek-v3.2" in r.content[0].text
        path, headers, sent = FakeDeepSeek.requests[-1]
        assert path == "/chat/completions"
        assert headers["authorization"] == f"Bearer {KEY}"
        assert sent["max_tokens"] == 1500

        u = await session.call_tool("query_usage", {"days": 7})
        assert not u.is_error
        assert u.structured_content["calls"] == 1
        assert abs(u.structured_content["total_cost_usd"] - s["cost_usd"]) < 1e-12

    run(with_session(body))


def test_budget_and_bad_input():
    async def body(session, _):
        r = await session.call_tool("set_budget", {"monthly_limit": 25, "mode": "downgrade"})
        assert not r.is_error
        assert r.structured_content["status"]["limit_usd"] == 25
        assert r.structured_content["status"]["mode"] == "downgrade"

        bad = await session.call_tool("set_budget", {"monthly_limit": -1})
        assert bad.is_error
        assert "monthly_limit" in bad.content[0].text

        bad = await session.call_tool("complete_prompt", {"prompt": ""})
        assert bad.is_error
        assert "prompt is empty" in bad.content[0].text

        rec = await session.call_tool("get_recommendation", {"prompt": "Summarise this sentence."})
        assert not rec.is_error
        assert 0.0 <= rec.structured_content["complexity"]["score"] <= 1.0
        assert rec.structured_content["budget"]["limit_usd"] == 25

    run(with_session(body))
