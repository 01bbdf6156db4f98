"""Packaging checks: the Agent Skill, the MCPB manifest, and (after
scripts/package.sh has run) the built .mcpb and skill ZIP.

The bundle test unpacks the .mcpb like Claude Desktop does and starts the
binary exactly as the manifest says: `${__dirname}` replaced by the unpack
directory and each `${user_config.KEY}` replaced by that key's default, or
left as it is when it has none (as the MCPB reference code and Claude Desktop
do with a blank optional field). The official Python MCP SDK then initializes it and lists
its tools.
"""

import asyncio
import json
import os
import platform
import re
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[2]
SKILL_DIR = ROOT / "skill" / "ai-cost-optimizer"
MANIFEST = ROOT / "packaging" / "manifest.json"
DIST = ROOT / "dist"
# scripts/package.sh names the bundle by OS and CPU
# (ai-cost-optimizer-linux-x86_64.mcpb); it keeps only the latest one.
_BUNDLES = sorted(DIST.glob("ai-cost-optimizer-*-*.mcpb"))
MCPB = _BUNDLES[0] if len(_BUNDLES) == 1 else DIST / "ai-cost-optimizer-missing.mcpb"
SKILL_ZIP = DIST / "ai-cost-optimizer-skill.zip"

TOOLS = {"complete_prompt", "check_model_costs", "get_recommendation", "query_usage", "set_budget"}
SECRET_ENVS = [
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "CEREBRAS_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY",
    "HF_TOKEN",
    "CARTESIA_API_KEY",
]
NAME_RE = re.compile(r"^[a-z0-9-]+$")


def frontmatter(text):
    """The `key: value` pairs between the leading `---` lines."""
    assert text.startswith("---\n"), "SKILL.md must start with a --- frontmatter line"
    end = text.index("\n---\n", 4)
    fields = {}
    for line in text[4:end].splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        assert sep and not line[0].isspace(), f"unsupported frontmatter line {line!r}"
        fields[key.strip()] = value.strip()
    return fields, text[end + 5 :]


def check_skill_text(text, folder):
    fields, body = frontmatter(text)
    name = fields.get("name", "")
    assert NAME_RE.match(name), name
    assert len(name) <= 64 and not name.startswith("-") and not name.endswith("-") and "--" not in name
    assert name == folder
    desc = fields.get("description", "")
    assert 0 < len(desc) <= 1024, len(desc)
    assert "<" not in desc and ">" not in desc
    assert desc.lower().startswith("use when"), "the description must say when to use the skill"
    assert set(fields) <= {"name", "description", "license", "allowed-tools", "metadata", "compatibility"}
    for tool in TOOLS:
        assert f"`{tool}`" in body, f"SKILL.md does not teach {tool}"
    return fields, body


def test_skill_frontmatter_and_body():
    text = (SKILL_DIR / "SKILL.md").read_text(encoding="utf-8")
    _, body = check_skill_text(text, SKILL_DIR.name)
    for word in ["cost_source", "provider", "catalog", "local", "unpriced", "savings_usd",
                 "free", "cheap", "medium", "premium", "block", "downgrade", "warn",
                 "alert_thresholds", "remaining_usd", "forecast_usd"]:
        assert word in body, word
    # Every reference the skill points to exists.
    for ref in re.findall(r"`(references/[^`]+)`", body):
        assert (SKILL_DIR / ref).is_file(), ref


def test_top_level_skill_is_the_skill_folder_copy():
    top = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    assert top == (SKILL_DIR / "SKILL.md").read_text(encoding="utf-8"), (
        "copy skill/ai-cost-optimizer/SKILL.md to SKILL.md"
    )


def reference_arguments():
    """Each tool's argument table in references/tools.md: {tool: {arg: required}}."""
    ref = (SKILL_DIR / "references" / "tools.md").read_text(encoding="utf-8")
    tables = {}
    tool = None
    for line in ref.splitlines():
        head = re.match(r"^## (\w+)", line)
        if head:
            tool = head.group(1) if head.group(1) in TOOLS else None
            continue
        row = re.match(r"^\| `(\w+)` \| ([^|]*)\|", line)
        if tool and row:
            tables.setdefault(tool, {})[row.group(1)] = "required" in row.group(2)
    return tables


def test_the_tools_reference_matches_the_server():
    """references/tools.md lists, for each tool, exactly the arguments the
    server's own input schema has (a name under the wrong tool, or one the
    server refuses, fails; so does a new argument left undocumented), and
    says which are required. The schemas come from the real binary, over
    the official Python MCP SDK."""
    bin_path = os.environ.get("AICO_BIN", str(ROOT / "target" / "debug" / "ai-cost-optimizer"))
    if not os.path.exists(bin_path):
        if os.environ.get("AICO_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{bin_path} is missing")
        pytest.skip(f"{bin_path} is not built")
    documented = reference_arguments()
    assert set(documented) == TOOLS, set(documented)

    async def schemas():
        with tempfile.TemporaryDirectory() as data:
            env = {"PATH": os.environ.get("PATH", ""), "HOME": data,
                   "COST_OPTIMIZER_DATA_DIR": data, "COST_OPTIMIZER_CONFIG": "",
                   "COST_OPTIMIZER_OLLAMA_PROBE": "0"}
            params = StdioServerParameters(command=bin_path, args=[], env=env)
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return {t.name: t.input_schema for t in (await session.list_tools()).tools}

    served = asyncio.run(schemas())
    for tool, args in documented.items():
        schema = served[tool]
        props = set(schema.get("properties", {}))
        assert set(args) == props, (
            f"{tool}: references/tools.md lists {sorted(set(args) - props)} that the server "
            f"lacks and lacks {sorted(props - set(args))}"
        )
        required = {a for a, req in args.items() if req}
        assert required == set(schema.get("required", [])), (tool, required, schema.get("required"))


def resolve_config(cfg, platform_name):
    """The command, args and env Claude Desktop runs on `platform_name`, as
    mcpb's loader builds them: each of the platform override's fields, when
    present, replaces the base one whole."""
    o = cfg.get("platform_overrides", {}).get(platform_name, {})
    return {k: o.get(k) or cfg.get(k, [] if k == "args" else {}) for k in ("command", "args", "env")}


def load_manifest():
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def test_manifest_keys():
    m = load_manifest()
    # 0.2: what mcpb itself writes for new bundles (0.3 and 0.4 are marked
    # experimental there, and Claude Desktop releases have refused 0.3); the
    # manifest uses nothing newer.
    assert m["manifest_version"] == "0.2"
    assert m["$schema"].endswith("mcpb-manifest-v0.2.schema.json")
    for key in ["name", "version", "description", "author", "server", "icon", "tools",
                "compatibility", "user_config"]:
        assert key in m, key
    assert m["name"] == "ai-cost-optimizer"
    cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    assert f'version = "{m["version"]}"' in cargo
    assert m["icon"] == "icon.png"
    png = (ROOT / "assets" / "icon.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (512, 512)
    for shot in m["screenshots"]:
        assert (ROOT / "assets" / shot).is_file(), shot
    server = m["server"]
    assert server["type"] == "binary"
    assert server["entry_point"] == "server/ai-cost-optimizer"
    cfg = server["mcp_config"]
    assert cfg["command"] == "${__dirname}/server/ai-cost-optimizer"
    assert cfg["args"] == []
    # Only Windows differs (the .exe). An override's env or args would
    # replace the base ones whole (mcpb's loader), a second copy to keep in
    # step, so there are none.
    assert cfg["platform_overrides"] == {
        "win32": {"command": "${__dirname}/server/ai-cost-optimizer.exe"}}
    win = resolve_config(cfg, "win32")
    assert win["env"] == cfg["env"] and win["args"] == cfg["args"]
    assert set(m["compatibility"]["platforms"]) == {"win32", "darwin", "linux"}
    assert "claude_desktop" in m["compatibility"]
    assert {t["name"] for t in m["tools"]} == TOOLS
    assert all(t["description"] for t in m["tools"])
    assert "Privacy" in m["long_description"] and "ledger" in m["long_description"]
    # Prompts go to outside providers: the directory wants their policies,
    # and the text says which tools send budget alerts out.
    assert len(m["privacy_policies"]) >= 7
    assert all(u.startswith("https://") for u in m["privacy_policies"])
    assert "complete_prompt and set_budget send it an alert" in m["long_description"]


def test_manifest_maps_every_provider_env_var():
    m = load_manifest()
    uc = m["user_config"]
    cfg = m["server"]["mcp_config"]
    envs = [resolve_config(cfg, p)["env"] for p in ("win32", "darwin", "linux")]

    def option(env, var):
        v = env.get(var)
        assert v, f"{var} is not mapped"
        g = re.fullmatch(r"\$\{user_config\.(\w+)\}", v)
        assert g and g.group(1) in uc, f"{var} -> {v} is not a user_config key"
        return uc[g.group(1)]

    for env in envs:
        for var in SECRET_ENVS:
            o = option(env, var)
            assert o["type"] == "string" and o["sensitive"] is True and not o.get("required")
            # A blank optional field without a default reaches the server as
            # the literal template: give each an empty default.
            assert o.get("default") == "", f"{var} needs \"default\": \"\""

        o = option(env, "OLLAMA_HOST")
        assert o["type"] == "string" and not o.get("sensitive")
        o = option(env, "COST_OPTIMIZER_MONTHLY_BUDGET")
        # No default: a value always passed would override the config
        # file's monthly_budget_usd; left blank, the template is ignored.
        assert o["type"] == "number" and "default" not in o and o["min"] > 0
    for o in uc.values():
        assert o["title"] and o["description"]

    # The provider list in the Rust source: each provider's first key env var
    # (and Ollama's host) must be configurable from the extension.
    primary = set()
    for f in (ROOT / "src" / "providers").glob("*.rs"):
        t = f.read_text(encoding="utf-8")
        for keys in re.findall(r"key_envs: &\[([^\]]*)\]", t):
            names = re.findall(r'"(\w+)"', keys)
            if names:
                primary.add(names[0])
    assert primary, "no ProviderSpec found"
    assert primary <= set(SECRET_ENVS), primary - set(SECRET_ENVS)

    # The hand-written config example lists the same variables.
    example = json.loads((ROOT / "claude_desktop_config.example.json").read_text())
    example_env = example["mcpServers"]["ai-cost-optimizer"]["env"]
    for var in m["server"]["mcp_config"]["env"]:
        assert var in example_env, f"claude_desktop_config.example.json lacks {var}"
    # A value set there would silently override the user's config file.
    pinned = {k: v for k, v in example_env.items() if k.startswith("COST_OPTIMIZER_") and v}
    assert not pinned, f"the example pins settings over the config file: {pinned}"
    # The README shows the same file.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r'```json\n(\{\n  "mcpServers".*?)```', readme, re.S)
    assert shown, "README lacks the Claude Desktop config example"
    assert json.loads(shown.group(1)) == example, "README's config example differs from the file"


# --- after scripts/package.sh ------------------------------------------------

# CI builds the packages first and sets AICO_REQUIRE_TOOLS=1 (with
# AICO_SKIP_PACKAGE unset): a missing package is then a failure, not a skip.
_STRICT = os.environ.get("AICO_REQUIRE_TOOLS") == "1" and os.environ.get("AICO_SKIP_PACKAGE") != "1"
needs_dist = pytest.mark.skipif(
    not _STRICT and (not MCPB.exists() or not SKILL_ZIP.exists()),
    reason="run scripts/package.sh first",
)


@needs_dist
def test_skill_zip_holds_only_the_skill_folder():
    with zipfile.ZipFile(SKILL_ZIP) as z:
        names = z.namelist()
        assert "ai-cost-optimizer/SKILL.md" in names
        for n in names:
            assert n.startswith("ai-cost-optimizer/"), n
            assert not any(p.startswith(".") or p == "__pycache__" for p in n.split("/")), n
        check_skill_text(z.read("ai-cost-optimizer/SKILL.md").decode("utf-8"), "ai-cost-optimizer")
        on_disk = sorted(
            "ai-cost-optimizer/" + str(p.relative_to(SKILL_DIR)).replace(os.sep, "/")
            for p in SKILL_DIR.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
        )
        assert sorted(names) == on_disk


def unpack(mcpb, dest):
    """Extracts the bundle, restoring the Unix modes stored in the ZIP."""
    with zipfile.ZipFile(mcpb) as z:
        for info in z.infolist():
            path = Path(z.extract(info, dest))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(stat.S_IMODE(mode))
        return z.namelist()


def substitute(value, dirname, user_config):
    def repl(m):
        key = m.group(1)
        if key == "__dirname":
            return str(dirname)
        if key.startswith("user_config."):
            field = user_config[key.split(".", 1)[1]]
            if "default" not in field:
                return m.group(0)
            default = field["default"]
            if isinstance(default, bool):
                return "true" if default else "false"
            if isinstance(default, (int, float)):
                return str(default)
            return str(default)
        raise AssertionError(f"unexpected substitution {m.group(0)}")

    return re.sub(r"\$\{([^}]+)\}", repl, value)


@needs_dist
def test_bundle_unpacks_and_serves_as_the_manifest_says():
    with tempfile.TemporaryDirectory() as tmp:
        ext = Path(tmp) / "ext"
        names = unpack(MCPB, ext)
        m_src = load_manifest()
        # The manifest names no CPU, so the file name does.
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
        os_name = {"linux": "linux", "darwin": "darwin", "win32": "win32"}[sys.platform]
        assert MCPB.name == f"ai-cost-optimizer-{os_name}-{machine}.mcpb", MCPB
        for n in ["manifest.json", "icon.png", "server/ai-cost-optimizer", "LICENSE",
                  "LICENSE-litellm.txt", *m_src["screenshots"]]:
            assert n in names, f"{n} missing from the bundle: {names}"
        shots = {n for n in names if n.startswith("screenshots/") and not n.endswith("/")}
        assert shots == set(m_src["screenshots"]), f"unlisted screenshots in the bundle: {shots}"
        m = json.loads((ext / "manifest.json").read_text(encoding="utf-8"))
        binary = ext / m["server"]["entry_point"]
        assert os.access(binary, os.X_OK), "the server binary is not executable"
        # What Claude Desktop runs here: the base config under this
        # platform's override, as the bundle carries it.
        cfg = resolve_config(m["server"]["mcp_config"], sys.platform)
        cmd = substitute(cfg["command"], ext, m["user_config"])
        assert Path(cmd) == binary
        args = [substitute(a, ext, m["user_config"]) for a in cfg.get("args", [])]
        env = {k: substitute(v, ext, m["user_config"]) for k, v in cfg["env"].items()}
        # Blank keys arrive empty (their default); the budget, which has no
        # default, arrives as the unfilled template, which counts as unset.
        assert env["ANTHROPIC_API_KEY"] == ""
        assert env["COST_OPTIMIZER_MONTHLY_BUDGET"] == "${user_config.monthly_budget}"
        data = Path(tmp) / "data"
        env.update({
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(data),
            "COST_OPTIMIZER_DATA_DIR": str(data),
            "COST_OPTIMIZER_CONFIG": "",
            "COST_OPTIMIZER_OLLAMA_PROBE": "0",
        })

        async def run():
            params = StdioServerParameters(command=cmd, args=args, env=env)
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    assert init.server_info.name == "ai-cost-optimizer"
                    tools = (await session.list_tools()).tools
                    assert {t.name for t in tools} == {t["name"] for t in m["tools"]}
                    # Empty keys and unfilled templates count as unset: the
                    # budget default applies and no provider is enabled.
                    r = await session.call_tool("query_usage", {})
                    assert not r.is_error, r
                    assert r.structured_content["budget"]["limit_usd"] == 100
                    r = await session.call_tool("check_model_costs", {})
                    assert not r.is_error, r
                    models = r.structured_content["models"]
                    assert len(models) >= 10, r
                    assert not any(m["enabled"] for m in models), r

        asyncio.run(run())
