#!/usr/bin/env python3
"""Regenerate src/pricing/litellm_subset.json from ../shared/pricing/.

The bundled catalog is LiteLLM's pricing data (MIT, Copyright (c) 2023 Berri AI;
the licence is kept beside it as src/pricing/LICENSE-litellm.txt), cut down to
the chat models of the providers this program supports and to the fields it
reads, so the binary stays small and starts fast. OpenRouter entries come from
the 1.106.0 subset because newer LiteLLM releases ship none.

Usage: python3 scripts/update-pricing.py [PRICING_DIR]   (default ../shared/pricing)
"""
import datetime
import json
import os
import re
import sys

PROVIDERS = {"anthropic", "gemini", "cerebras", "deepseek", "openrouter", "huggingface", "ollama"}
FIELDS = [
    "litellm_provider", "mode", "input_cost_per_token", "output_cost_per_token",
    "cache_read_input_token_cost", "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    "max_input_tokens", "max_output_tokens",
    "deprecation_date",
]

# Prices by input length (`input_cost_per_token_above_200k_tokens`, 100k,
# 128k, 32k, 272k…); not the `_priority`/`_batches`/`_flex` variants.
LONG_FIELD = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost)_above_\d+k_tokens$"
)


def priced_by_other_units_only(entry):
    """Free per token but priced per image, second, character... (Gemini's Lyria
    models): kept, they would pass for free models; left out, they are unpriced.
    Mirrors `priced_by_other_units_only` in src/pricing/mod.rs."""
    free = not entry.get("input_cost_per_token") and not entry.get("output_cost_per_token")
    return free and any(
        "cost_per" in k and k not in ("input_cost_per_token", "output_cost_per_token")
        and isinstance(v, (int, float)) and v > 0
        for k, v in entry.items()
    )


def keep(entry):
    return (
        isinstance(entry, dict)
        and entry.get("litellm_provider") in PROVIDERS
        and entry.get("mode", "chat") == "chat"
        and not priced_by_other_units_only(entry)
    )


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "shared", "pricing")
    main_file = json.load(open(os.path.join(src, "model_prices_and_context_window.json")))
    openrouter = json.load(open(os.path.join(src, "openrouter_subset_litellm_1.106.0.json")))
    out = {}
    for source in (main_file, openrouter):
        for key, entry in source.items():
            if keep(entry) and key not in out:
                out[key] = {f: v for f, v in entry.items() if f in FIELDS or LONG_FIELD.match(f)}
    dest = os.path.join(root, "src", "pricing", "litellm_subset.json")
    text = json.dumps(dict(sorted(out.items())), indent=0, sort_keys=True) + "\n"
    old = open(dest).read() if os.path.exists(dest) else None
    if text != old:
        with open(dest, "w") as f:
            f.write(text)
        # The day the bundle changed: a catalog refreshed before it is older
        # than the bundle and is set aside (src/pricing/mod.rs, BUNDLED_AS_OF).
        as_of = os.path.join(root, "src", "pricing", "bundled_as_of.txt")
        open(as_of, "w").write(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d") + "\n")
    lic = open(os.path.join(src, "LICENSE-litellm.txt")).read()
    open(os.path.join(root, "src", "pricing", "LICENSE-litellm.txt"), "w").write(lic)
    print(f"wrote {len(out)} entries to {dest}")


if __name__ == "__main__":
    main()
