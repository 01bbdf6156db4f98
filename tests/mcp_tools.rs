//! The real binary over stdio, driven by rmcp's client, against fake
//! providers on 127.0.0.1: every tool, by value.

mod common;

use common::*;
use serde_json::{Value, json};

const DEEPSEEK_KEY: &str = "sk-deepseek-FAKE-test-key-4242424242";

/// DeepSeek alone, at `fake`.
fn deepseek_env(fake: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("DEEPSEEK_API_KEY", DEEPSEEK_KEY.into()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ]
}
const ANTHROPIC_KEY: &str = "sk-ant-FAKE-test-key-1717171717171717";

#[tokio::test]
async fn lists_five_tools_with_described_schemas_and_hints() {
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &[]).await;
    let info = s.client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().unwrap().name, "ai-cost-optimizer");
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");
    let tools = s.client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "check_model_costs",
            "complete_prompt",
            "get_recommendation",
            "query_usage",
            "set_budget"
        ]
    );
    for t in &tools {
        let schema = Value::Object((*t.input_schema).clone());
        let props = schema["properties"].as_object().unwrap();
        assert!(!props.is_empty(), "{} has no arguments", t.name);
        for (field, p) in props {
            assert!(
                p.get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| d.len() > 10),
                "{}.{field} has no description",
                t.name
            );
            // An optional field whose values are listed lists null too: its
            // schema default is null, and strict clients (the Inspector's
            // --strict) refused calls the server accepts.
            if let Some(values) = p.get("enum").and_then(|e| e.as_array())
                && p["type"]
                    .as_array()
                    .is_some_and(|ts| ts.contains(&json!("null")))
            {
                assert!(
                    values.contains(&Value::Null),
                    "{}.{field}: {values:?}",
                    t.name
                );
            }
        }
        assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
        let ro = t.annotations.as_ref().and_then(|a| a.read_only_hint);
        let expect_ro = matches!(
            t.name.as_ref(),
            "check_model_costs" | "get_recommendation" | "query_usage"
        );
        assert_eq!(ro, Some(expect_ro), "{} read-only hint", t.name);
    }
    let complete = tools.iter().find(|t| t.name == "complete_prompt").unwrap();
    let required = complete.input_schema["required"].as_array().unwrap();
    assert_eq!(required, &vec![json!("prompt")]);
    s.stop().await;
}

#[tokio::test]
async fn check_model_costs_reports_catalog_prices_and_estimates() {
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &[]).await;
    let t = s
        .ok(
            "check_model_costs",
            json!({"provider": "anthropic", "model": "claude-haiku-4-5", "prompt": "Say hi"}),
        )
        .await;
    let rows = t["models"].as_array().unwrap();
    let haiku = rows
        .iter()
        .find(|r| r["model"] == "anthropic/claude-haiku-4-5")
        .expect("haiku listed");
    assert_eq!(haiku["input_per_mtok"], json!(1.0));
    assert_eq!(haiku["output_per_mtok"], json!(5.0));
    assert_eq!(haiku["context_window"], json!(200000));
    assert_eq!(haiku["enabled"], json!(false));
    // The estimate is (input estimate) × $1/MTok + 400 output × $5/MTok.
    let est = haiku["estimated_cost_usd"].as_f64().unwrap();
    assert!(
        est > 400.0 * 5e-6 && est < 400.0 * 5e-6 + 100.0 * 1e-6,
        "{est}"
    );
    assert!(rows.iter().all(|r| r["provider"] == "anthropic"));

    // A blank prompt is no prompt: prices, no estimates.
    let blank = s
        .ok(
            "check_model_costs",
            json!({"provider": "anthropic", "prompt": "  "}),
        )
        .await;
    assert!(
        blank["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["estimated_cost_usd"].is_null()),
        "{blank}"
    );
    // Every model of the catalog estimated for one prompt: the prompt is
    // counted once, and the estimates are each provider's own.
    let every = s
        .ok(
            "check_model_costs",
            json!({"model": "/", "prompt": "Say hi"}),
        )
        .await;
    assert!(every["models"].as_array().unwrap().len() >= 10);

    // A prompt longer than a model's context window: no estimate for it
    // (it cannot take the prompt at any price), listed after those that
    // can, and said so in the text; it was ranked cheapest.
    let long = "word ".repeat(200_000);
    let r = s
        .call(
            "check_model_costs",
            json!({"model": "deepseek-v3.2", "prompt": long}),
        )
        .await;
    let t = r.structured_content.clone().unwrap();
    let rows = t["models"].as_array().unwrap();
    let ds = rows
        .iter()
        .find(|r| r["model"] == "deepseek/deepseek-v3.2")
        .unwrap();
    assert_eq!(ds["prompt_fits"], json!(false), "{ds}");
    assert!(ds["estimated_cost_usd"].is_null(), "{ds}");
    assert!(text(&r).contains("too long for it"), "{}", text(&r));
    let fits: Vec<bool> = rows
        .iter()
        .map(|r| r["prompt_fits"] != json!(false))
        .collect();
    assert!(fits.windows(2).all(|w| w[0] >= w[1]), "{fits:?}");

    // Without filters and no provider enabled: the routing tiers' models.
    let all = s.ok("check_model_costs", json!({})).await;
    assert!(all["scope"].as_str().unwrap().contains("none is enabled"));
    assert!(all["models"].as_array().unwrap().len() >= 10);
    s.stop().await;
}

#[tokio::test]
async fn recommendation_uses_enabled_providers_and_calls_nothing() {
    let fake = FakeProvider::start(openai_ok("deepseek-v3.2", "never", json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let r = s
        .ok(
            "get_recommendation",
            json!({"prompt": "What is the capital of France?"}),
        )
        .await;
    assert_eq!(r["recommended"]["provider"], "deepseek");
    let score = r["complexity"]["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
    assert_eq!(r["baseline"]["model"], "anthropic/claude-sonnet-5-5");
    assert!(r["estimated_savings_usd"].as_f64().unwrap() > 0.0);
    assert!(!r["notes"].as_array().unwrap().is_empty());
    assert_eq!(r["budget"]["limit_usd"], json!(100.0));
    assert!(
        fake.requests().is_empty(),
        "get_recommendation must not call providers"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(0));
    s.stop().await;

    // A baseline configured below the tier chosen: the recommendation
    // costs more, and says so, rather than a saving of $0.
    let cfg = dir.path().join("cheap-baseline.toml");
    std::fs::write(
        &cfg,
        "baseline_model = \"deepseek/deepseek-v3.2\"\n[routing]\nthresholds = [0.05, 0.1, 0.99]\n",
    )
    .unwrap();
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_CONFIG", cfg.display().to_string()));
    let s = spawn(dir.path(), &env).await;
    let prompt = "Explain how a hash map handles collisions.";
    let res = s
        .call("get_recommendation", json!({"prompt": prompt}))
        .await;
    let (r, text) = (res.structured_content.clone().unwrap(), text(&res));
    assert_ne!(r["recommended"]["model"], "deepseek/deepseek-v3.2", "{r}");
    let saving = r["estimated_savings_usd"].as_f64().unwrap();
    let (base, chosen) = (
        r["baseline"]["estimated_cost_usd"].as_f64().unwrap(),
        r["recommended"]["estimated_cost_usd"].as_f64().unwrap(),
    );
    assert!(
        saving < 0.0 && (saving - (base - chosen)).abs() < 1e-15,
        "{r}"
    );
    assert!(text.contains("more") && !text.contains("saving"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn complete_prompt_bills_reported_usage_and_records_it() {
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["Par", "is."],
        json!({
            "prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 200},
            "prompt_cache_hit_tokens": 200, "prompt_cache_miss_tokens": 800
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "What is the capital of France?", "tier": "cheap", "max_tokens": 64}),
        )
        .await;
    assert_eq!(c["answer"], "Paris.");
    assert_eq!(c["model"], "deepseek/deepseek-v3.2");
    assert_eq!(c["tier"], "cheap");
    assert_eq!(c["cost_source"], "catalog");
    assert_eq!(
        c["tokens"],
        json!({"input": 800, "cached": 200, "cache_write": 0, "output": 500, "reasoning": 0})
    );
    // deepseek-v3.2: $0.28/MTok in, $0.028/MTok cached, $0.40/MTok out.
    let expected = 800.0 * 0.28e-6 + 200.0 * 0.028e-6 + 500.0 * 0.40e-6;
    assert_usd(&c["cost_usd"], expected);
    // Baseline sonnet-5-5: $2 in, $0.10 cached, $10 out, same usage.
    let baseline = 800.0 * 2e-6 + 200.0 * 0.1e-6 + 500.0 * 10e-6;
    assert_usd(&c["baseline"]["cost_usd"], baseline);
    assert_usd(&c["savings_usd"], baseline - expected);
    assert_eq!(c["recorded"], json!(true));
    assert_eq!(c["attempts"].as_array().unwrap().len(), 1);
    assert_usd(&c["budget"]["spent_usd"], expected);

    // The request on the wire.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/chat/completions");
    assert_eq!(
        reqs[0].headers["authorization"].to_str().unwrap(),
        format!("Bearer {DEEPSEEK_KEY}")
    );
    assert_eq!(reqs[0].body["model"], "deepseek-v3.2");
    assert_eq!(reqs[0].body["max_tokens"], 64);
    // Usage is only streamed to clients that ask for it.
    assert_eq!(reqs[0].body["stream"], true);
    assert_eq!(reqs[0].body["stream_options"]["include_usage"], true);
    assert_eq!(
        reqs[0].body["messages"][0]["content"],
        "What is the capital of France?"
    );

    let u = s.ok("query_usage", json!({"days": 1})).await;
    assert_eq!(u["calls"], json!(1));
    assert_usd(&u["total_cost_usd"], expected);
    assert_usd(&u["savings_usd"], baseline - expected);
    assert_eq!(u["by_model"][0]["key"], "deepseek/deepseek-v3.2");
    assert_eq!(u["by_provider"][0]["key"], "deepseek");
    assert_eq!(u["by_day"].as_array().unwrap().len(), 1);

    // A model forced by the caller that is in no routing tier has no tier
    // (it was shown as the tier its score points to: a paid model "free").
    let r = s
        .call(
            "complete_prompt",
            json!({"prompt": "What is 2+2?", "force_model": "deepseek/deepseek-chat"}),
        )
        .await;
    let c = r.structured_content.clone().unwrap();
    assert_eq!(c["tier"], Value::Null, "{c}");
    assert!(
        text(&r).contains("(forced; in no routing tier)"),
        "{}",
        text(&r)
    );
    s.stop().await;
}

/// Savings are signed: a forced model dearer than the baseline shows what
/// it cost over it (in the call, `query_usage` and the text), not a $0
/// saving; an unpriced call has no baseline, its saving being unknown, so
/// it adds nothing to the savings either way.
#[tokio::test]
async fn savings_are_signed_and_unknown_for_unpriced_calls() {
    let an = FakeProvider::start(anthropic_sse(
        "claude-opus-4-7",
        &["ok"],
        json!({"input_tokens": 1000, "output_tokens": 1}),
        500,
    ))
    .await;
    let or = FakeProvider::start(openai_sse(
        "some-lab/unlisted-model",
        &["ok"],
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-FAKE-savings-0000000000".into()),
            ("ANTHROPIC_BASE_URL", an.base.clone()),
            ("OPENROUTER_API_KEY", "sk-or-FAKE-savings-0000000000".into()),
            ("OPENROUTER_BASE_URL", format!("{}/api/v1", or.base)),
        ],
    )
    .await;
    let r = s
        .call(
            "complete_prompt",
            json!({"prompt": "say ok", "force_model": "anthropic/claude-opus-4-7", "max_tokens": 600}),
        )
        .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let c = r.structured_content.clone().unwrap();
    let cost = c["cost_usd"].as_f64().unwrap();
    let base = c["baseline"]["cost_usd"].as_f64().unwrap();
    assert!(cost > base, "opus costs more than the sonnet baseline: {c}");
    assert_usd(&c["savings_usd"], base - cost);
    assert!(c["savings_percent"].as_f64().unwrap() < 0.0, "{c}");
    assert!(
        text(&r).contains("more against anthropic/claude-sonnet-5-5"),
        "{}",
        text(&r)
    );

    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "say ok", "force_model": "openrouter/some-lab/unlisted-model"}),
        )
        .await;
    assert_eq!(c["cost_source"], "unpriced", "{c}");
    assert_eq!(c["baseline"], Value::Null, "{c}");
    assert_usd(&c["savings_usd"], 0.0);

    let r = s.call("query_usage", json!({})).await;
    let u = r.structured_content.clone().unwrap();
    assert_eq!(u["calls"], 2);
    assert_usd(&u["totals"]["baseline_cost_usd"], base);
    assert_usd(&u["savings_usd"], base - cost);
    assert!(text(&r).contains("cost **"), "{}", text(&r));
    s.stop().await;
}

#[tokio::test]
async fn anthropic_wire_format_and_cache_pricing() {
    let fake = FakeProvider::start(anthropic_sse(
        "claude-haiku-4-5",
        &["Hel", "lo!"],
        json!({"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 4000}),
        50,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_anthropic(dir.path(), &fake).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "Say hello", "system": "Be brief.", "force_model": "anthropic/claude-haiku-4-5", "max_tokens": 100}),
        )
        .await;
    assert_eq!(c["answer"], "Hello!");
    // $1/MTok in, $0.10 cache read, $1.25 cache write, $5 out.
    let expected = 100.0 * 1e-6 + 4000.0 * 0.1e-6 + 1000.0 * 1.25e-6 + 50.0 * 5e-6;
    assert_usd(&c["cost_usd"], expected);
    assert_eq!(c["tokens"]["cached"], json!(4000));
    assert_eq!(c["tokens"]["cache_write"], json!(1000));
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.headers["x-api-key"].to_str().unwrap(), ANTHROPIC_KEY);
    assert_eq!(
        r.headers["anthropic-version"].to_str().unwrap(),
        "2023-06-01"
    );
    assert_eq!(r.body["system"], "Be brief.");
    assert_eq!(r.body["max_tokens"], 100);
    assert_eq!(r.body["model"], "claude-haiku-4-5");
    assert_eq!(r.body["stream"], json!(true));
    s.stop().await;
}

/// What Gemini receives (streaming endpoint with `alt=sse`, key header,
/// contents, system instruction, output limit) and how its usage is billed:
/// cached tokens at the cache price, thinking tokens (outside
/// `candidatesTokenCount`) as output.
#[tokio::test]
async fn gemini_wire_format_and_usage_pricing() {
    let fake = FakeProvider::start(gemini_sse(
        "gemini-3-flash-preview",
        &["Hel", "lo!"],
        json!({"promptTokenCount": 1200, "cachedContentTokenCount": 1000,
               "candidatesTokenCount": 5, "thoughtsTokenCount": 30, "totalTokenCount": 1235}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = "AIza-FAKE-gemini-wire-0000000000";
    let s = spawn(
        dir.path(),
        &[
            ("GEMINI_API_KEY", key.into()),
            ("GEMINI_BASE_URL", fake.base.clone()),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "Say hello", "system": "Be brief.",
                   "force_model": "gemini/gemini-3-flash-preview", "max_tokens": 100}),
        )
        .await;
    assert_eq!(c["answer"], "Hello!", "{c}");
    assert_eq!(c["tokens"]["cached"], json!(1000));
    assert_eq!(c["tokens"]["input"], json!(200));
    assert_eq!(c["tokens"]["output"], json!(35));
    assert_eq!(c["tokens"]["reasoning"], json!(30));
    // $0.50/MTok in, $0.05 cached, $3 out (thinking included).
    assert_usd(
        &c["cost_usd"],
        200.0 * 0.5e-6 + 1000.0 * 0.05e-6 + 35.0 * 3e-6,
    );
    let r = &fake.requests()[0];
    assert_eq!(
        r.path,
        "/v1beta/models/gemini-3-flash-preview:streamGenerateContent"
    );
    assert_eq!(r.query.as_deref(), Some("alt=sse"));
    assert_eq!(r.headers["x-goog-api-key"].to_str().unwrap(), key);
    assert!(r.headers.get("authorization").is_none());
    assert_eq!(
        r.body["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hello"}]}])
    );
    assert_eq!(
        r.body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(r.body["generationConfig"]["maxOutputTokens"], 100);
    s.stop().await;
}

#[tokio::test]
async fn openrouter_reported_cost_wins_and_cerebras_sends_completion_limit() {
    let or = FakeProvider::start(openai_sse(
        "google/gemini-2.5-flash-lite",
        &["ok"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.0004321}),
    ))
    .await;
    let cb = FakeProvider::start(openai_sse(
        "gpt-oss-120b",
        &["fa", "st"],
        json!({"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000,
               "completion_tokens_details": {"reasoning_tokens": 300}}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("OPENROUTER_API_KEY", "sk-or-FAKE-0000000000000".into()),
            ("OPENROUTER_BASE_URL", format!("{}/api/v1", or.base)),
            ("CEREBRAS_API_KEY", "csk-FAKE-1111111111111".into()),
            ("CEREBRAS_BASE_URL", format!("{}/v1", cb.base)),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "openrouter/google/gemini-2.5-flash-lite"}),
        )
        .await;
    assert_eq!(c["cost_source"], "provider");
    assert_usd(&c["cost_usd"], 0.0004321);
    assert_eq!(or.requests()[0].path, "/api/v1/chat/completions");

    let c = s
        .ok("complete_prompt", json!({"prompt": "hi", "force_provider": "cerebras", "tier": "cheap", "max_tokens": 77}))
        .await;
    assert_eq!(c["model"], "cerebras/gpt-oss-120b");
    // gpt-oss-120b: $0.35 in, $0.75 out; reasoning is billed as output.
    assert_usd(&c["cost_usd"], 1000.0 * 0.35e-6 + 1000.0 * 0.75e-6);
    assert_eq!(c["tokens"]["reasoning"], json!(300));
    let body = &cb.requests()[0].body;
    assert_eq!(body["max_completion_tokens"], 77);
    assert!(body.get("max_tokens").is_none());
    assert_eq!(cb.requests()[0].path, "/v1/chat/completions");
    s.stop().await;
}

#[tokio::test]
async fn ollama_is_free_and_huggingface_unpriced_is_flagged() {
    let ol = FakeProvider::start(ollama_ndjson("llama3.1", &["4"], 26, 2)).await;
    // Answered in one piece though we asked for a stream: the fallback for
    // compatible servers that ignore `stream` (the other fakes stream).
    let hf = FakeProvider::start(openai_ok(
        "meta-llama/Llama-3.1-8B-Instruct",
        "hello",
        json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("OLLAMA_HOST", ol.base.clone()),
            ("HF_TOKEN", "hf_FAKEFAKEFAKEFAKEFAKE".into()),
            ("HF_BASE_URL", format!("{}/v1", hf.base)),
        ],
    )
    .await;
    let c = s
        .ok("complete_prompt", json!({"prompt": "2+2?", "tier": "free"}))
        .await;
    assert_eq!(c["model"], "ollama/llama3.1");
    assert_eq!(c["cost_source"], "local");
    assert_eq!(c["cost_usd"], json!(0.0));
    assert_eq!(c["tokens"]["input"], json!(26));
    assert_eq!(ol.requests()[0].path, "/api/chat");
    assert_eq!(ol.requests()[0].body["stream"], json!(true));

    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "huggingface/meta-llama/Llama-3.1-8B-Instruct"}),
        )
        .await;
    assert_eq!(c["cost_source"], "unpriced");
    assert!(c["warning"].as_str().unwrap().contains("no known price"));
    assert_eq!(
        hf.requests()[0].body["model"],
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["totals"]["unpriced_calls"], json!(1));
    assert_eq!(u["calls"], json!(2));
    // A blank user_id is "not given" (every user), not the default user.
    let u = s.ok("query_usage", json!({"user_id": " "})).await;
    assert_eq!(u["user_id"], Value::Null, "{u}");
    assert_eq!(u["calls"], json!(2));
    s.stop().await;
}

/// OpenRouter's 503 ("no available model provider") is about the model it
/// routes, not OpenRouter: after its retries the next OpenRouter model is
/// tried, and OpenRouter's breaker does not count it.
#[tokio::test]
async fn an_openrouter_model_without_upstream_falls_back_to_its_next_model() {
    let or = FakeProvider::start(openai_sse(
        "next-model",
        &["from the next model"],
        json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            (
                "OPENROUTER_API_KEY",
                "sk-or-FAKE-upstream-000000000000".into(),
            ),
            ("OPENROUTER_BASE_URL", format!("{}/api/v1", or.base)),
            ("COST_OPTIMIZER_BREAKER_THRESHOLD", "2".into()),
        ],
    )
    .await;
    let down = || {
        Reply::json(
            503,
            json!({"error": {"code": 503,
                "message": "No available model provider that meets your routing requirements"}}),
        )
    };
    for round in 0..3 {
        // The first model's try and its two retries.
        for _ in 0..3 {
            or.push(down());
        }
        let c = s
            .ok(
                "complete_prompt",
                json!({"prompt": "What is the capital of France?"}),
            )
            .await;
        assert_eq!(c["answer"], "from the next model", "round {round}: {c}");
        let attempts = c["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 4, "round {round}: {attempts:?}");
        assert_eq!(attempts[2]["model"], attempts[0]["model"], "retried");
        assert_ne!(attempts[3]["model"], attempts[0]["model"]);
        assert!(
            attempts[3]["model"]
                .as_str()
                .unwrap()
                .starts_with("openrouter/"),
            "{attempts:?}"
        );
    }
    // Nine 503s and no breaker opened: every round reached OpenRouter.
    assert_eq!(or.requests().len(), 12);
    s.stop().await;
}

/// Ollama keeps only the end of a prompt longer than its context, without
/// an error: a long prompt asks for a context that holds it and the answer;
/// a short one leaves the server's default alone.
#[tokio::test]
async fn ollama_is_asked_for_a_context_that_holds_the_prompt() {
    let ol = FakeProvider::start(ollama_ndjson("llama3.1", &["ok"], 26, 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &[("OLLAMA_HOST", ol.base.clone())]).await;
    s.ok(
        "complete_prompt",
        json!({"prompt": "2+2?", "force_model": "ollama/llama3.1"}),
    )
    .await;
    let short = &ol.requests()[0].body;
    assert!(short["options"].get("num_ctx").is_none(), "{short}");
    // About 4,500 tokens: past every server's default context.
    let long = "Summarise the following notes carefully. ".repeat(750);
    s.ok(
        "complete_prompt",
        json!({"prompt": long, "force_model": "ollama/llama3.1", "max_tokens": 500}),
    )
    .await;
    let body = &ol.requests()[1].body;
    let ctx = body["options"]["num_ctx"].as_u64().unwrap();
    assert!((6_000..=8_192).contains(&ctx), "{body}");
    assert_eq!(body["options"]["num_predict"], json!(500));
    s.stop().await;
}

/// A model that is not pulled (Ollama's 404 "not found") is that model's
/// problem, not the request's: the call goes on to the next candidate
/// instead of failing, and the provider is not marked as failing.
#[tokio::test]
async fn a_model_not_pulled_falls_through_to_the_next_candidate() {
    let ol = FakeProvider::start(ollama_ndjson("llama3.1", &["4"], 26, 2)).await;
    ol.push(Reply {
        status: 404,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"error":"model \"llama3.1\" not found, try pulling it first"}"#.into(),
        delay: None,
        reset: false,
        raw: None,
        drip: None,
    });
    let ds = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["4"],
        json!({"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("OLLAMA_HOST", ol.base.clone()),
            ("DEEPSEEK_API_KEY", "sk-FAKE-deepseek-000000000000".into()),
            ("DEEPSEEK_BASE_URL", ds.base.clone()),
        ],
    )
    .await;
    // Scored free (not forced: a forced tier is never left for another).
    let c = s.ok("complete_prompt", json!({"prompt": "2+2?"})).await;
    assert_eq!(c["tier"], "cheap", "answered by the cheap tier's best: {c}");
    let attempts = c["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{c}");
    assert_eq!(attempts[0]["model"], "ollama/llama3.1", "{c}");
    assert_eq!(attempts[0]["outcome"], "model_unavailable", "{c}");
    assert_eq!(attempts[1]["outcome"], "ok", "{c}");
    assert_ne!(attempts[0]["model"], attempts[1]["model"], "{c}");
    assert_eq!(ol.requests().len() + ds.requests().len(), 2);
    s.stop().await;
}

/// A server with only Anthropic enabled, at `fake`.
async fn spawn_anthropic(dir: &std::path::Path, fake: &FakeProvider) -> Server {
    spawn(
        dir,
        &[
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
            ("ANTHROPIC_BASE_URL", fake.base.clone()),
        ],
    )
    .await
}

/// A server with DeepSeek answering `first` (tried first: the medium tier
/// is deepseek-v4-pro, then claude-haiku-4-5) and Anthropic answering
/// "from anthropic" behind it.
async fn deepseek_then_anthropic(
    first: Reply,
) -> (FakeProvider, FakeProvider, tempfile::TempDir, Server) {
    let bad = FakeProvider::start(first).await;
    let good = FakeProvider::start(anthropic_ok(
        "claude-haiku-4-5",
        "from anthropic",
        json!({"input_tokens": 10, "output_tokens": 10}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", DEEPSEEK_KEY.into()),
            ("DEEPSEEK_BASE_URL", bad.base.clone()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
            ("ANTHROPIC_BASE_URL", good.base.clone()),
            medium_tier_config(
                dir.path(),
                &["deepseek/deepseek-v4-pro", "anthropic/claude-haiku-4-5"],
            ),
        ],
    )
    .await;
    (bad, good, dir, s)
}

#[tokio::test]
async fn failed_provider_falls_back_and_every_attempt_is_recorded() {
    let (bad, _good, _dir, s) =
        deepseek_then_anthropic(openai_error(500, "internal error", "server_error")).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hello", "tier": "medium"}),
        )
        .await;
    // deepseek-v4-pro is the cheaper medium model, so it is tried first,
    // retried twice (500 is transient), then the call falls back.
    let attempts = c["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    for a in &attempts[..3] {
        assert_eq!(a["model"], "deepseek/deepseek-v4-pro");
        assert_eq!(a["outcome"], "server");
    }
    assert_eq!(attempts[3]["outcome"], "ok");
    assert_eq!(bad.requests().len(), 3);
    assert_eq!(c["answer"], "from anthropic");
    assert_usd(&c["cost_usd"], 10.0 * 1e-6 + 10.0 * 5e-6);
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(1));
    assert_eq!(u["totals"]["failed_attempts"], json!(3));
    s.stop().await;
}

/// OpenRouter's "Provider returned error" 400 is one upstream refusing
/// this model's request (here, a parameter that model no longer takes):
/// another model answers, and the upstream's own words are in the attempt.
/// (It was a bad request, which ends the call.)
#[tokio::test]
async fn an_openrouter_upstream_refusal_falls_back() {
    let openrouter = FakeProvider::start(Reply::json(
        400,
        json!({"error": {"code": 400, "message": "Provider returned error", "metadata": {
            "provider_name": "Anthropic",
            "raw": "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"`temperature` is deprecated for this model.\"}}"
        }}}),
    ))
    .await;
    let deepseek = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["from deepseek"],
        json!({"prompt_tokens": 10, "completion_tokens": 10}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            (
                "OPENROUTER_API_KEY",
                "sk-or-FAKE-upstream-0000000000".into(),
            ),
            ("OPENROUTER_BASE_URL", openrouter.base.clone()),
            (
                "DEEPSEEK_API_KEY",
                "sk-FAKE-deepseek-upstream-000000".into(),
            ),
            ("DEEPSEEK_BASE_URL", deepseek.base.clone()),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "What is the capital of France?", "temperature": 0.2}),
        )
        .await;
    assert_eq!(c["answer"], "from deepseek", "{c}");
    let attempts = assert_fell_back(&c, "openrouter/", "model_unavailable");
    assert!(
        attempts[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("upstream Anthropic: `temperature` is deprecated")),
        "{attempts:?}"
    );
}

/// A base URL that answers with a redirect (a company gateway sending
/// clients to its login page) does not get the key sent on: the redirect is
/// not followed nor retried, and the error says what to fix.
#[tokio::test]
async fn a_redirecting_base_url_does_not_get_the_key_sent_on() {
    let elsewhere = FakeProvider::start(anthropic_ok(
        "claude-haiku-4-5",
        "should never be asked",
        json!({"input_tokens": 1, "output_tokens": 1}),
    ))
    .await;
    let gateway = FakeProvider::start(
        Reply::json(302, json!({})).header("location", &format!("{}/v1/messages", elsewhere.base)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_anthropic(dir.path(), &gateway).await;
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "Say hi", "force_provider": "anthropic"}),
        )
        .await;
    assert!(
        e.contains("redirect to 127.0.0.1") && e.contains("not followed"),
        "{e}"
    );
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    assert_eq!(gateway.requests().len(), 1, "a redirect is not retried");
    s.stop().await;
}

/// OpenRouter ends a failing stream with an error chunk that carries the
/// usage and the cost of what was generated before the failure: that
/// attempt is billed at that cost (it was recorded at a catalog estimate,
/// or at $0 for a model the catalog does not price).
#[tokio::test]
async fn an_openrouter_stream_error_is_billed_at_its_reported_cost() {
    let or = FakeProvider::start(openai_sse(
        "openai/gpt-oss-120b",
        &["fine"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.0001}),
    ))
    .await;
    let mut failing = openai_sse_body("openai/gpt-oss-120b", &["Hel"], None, false);
    failing.push_str(
        "data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":502,\"message\":\"Upstream provider error\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":7,\"total_tokens\":47,\"cost\":0.0123}}\n\n",
    );
    or.push(streamed("text/event-stream", failing));
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            (
                "OPENROUTER_API_KEY",
                "sk-or-FAKE-midstream-000000000".into(),
            ),
            ("OPENROUTER_BASE_URL", or.base.clone()),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "openrouter/openai/gpt-oss-120b"}),
        )
        .await;
    assert_eq!(c["answer"], "fine", "{c}");
    assert_usd(&c["failed_attempts_cost_usd"], 0.0123);
    let u = s.ok("query_usage", json!({})).await;
    assert_usd(&u["totals"]["cost_usd"], 0.0124);
    s.stop().await;
}

/// Gemini's models are the cheapest of every tier, so a try list of the
/// four cheapest was all Gemini: a Gemini outage failed the call though
/// Anthropic was configured. Now its best model closes the list.
#[tokio::test]
async fn a_provider_outage_falls_back_to_another_provider() {
    let gemini = FakeProvider::start(Reply::json(
        503,
        json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
    ))
    .await;
    let anthropic = FakeProvider::start(anthropic_ok(
        "claude-haiku-4-5",
        "from anthropic",
        json!({"input_tokens": 10, "output_tokens": 10}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("GEMINI_API_KEY", "AIza-FAKE-gemini-key-5555555555".into()),
            ("GEMINI_BASE_URL", gemini.base.clone()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
            ("ANTHROPIC_BASE_URL", anthropic.base.clone()),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "What is the capital of France?"}),
        )
        .await;
    assert_eq!(c["answer"], "from anthropic", "{c}");
    assert_eq!(c["provider"], "anthropic");
    // Gemini's cheap model failed, Claude Haiku (medium) answered: said.
    assert!(
        c["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("Answered by a medium model")),
        "{}",
        c["notes"]
    );
    // One Gemini model, retried (503 is transient); its others are skipped.
    let attempts = assert_fell_back(&c, "gemini/", "overloaded");
    assert_eq!(gemini.requests().len(), attempts.len() - 1, "{attempts:?}");
    assert!(
        attempts[..attempts.len() - 1]
            .iter()
            .all(|a| a["model"] == attempts[0]["model"]),
        "{attempts:?}"
    );
    assert_eq!(anthropic.requests().len(), 1);
    s.stop().await;
}

/// DeepSeek cutting its stream off mid-answer (charged an estimate), with
/// Anthropic behind it; returns the call's arguments and the worst case of
/// its first (DeepSeek) route.
async fn deepseek_cut_off() -> (
    FakeProvider,
    FakeProvider,
    tempfile::TempDir,
    Server,
    serde_json::Value,
    f64,
) {
    let cut = streamed(
        "text/event-stream",
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v4-pro",
                   "choices": [{"index": 0, "delta": {"content": "A partial answer that stops here, ".repeat(8)}}]})
        ),
    )
    .reset_after_body();
    let (bad, good, dir, s) = deepseek_then_anthropic(cut).await;
    // The route get_recommendation shows is the one complete_prompt takes.
    let args = json!({"prompt": "hello there", "max_tokens": 200});
    let rec = s.ok("get_recommendation", args.clone()).await;
    let first = rec["recommended"]["model"].as_str().unwrap();
    assert!(first.starts_with("deepseek/"), "{rec}");
    let worst = rec["recommended"]["worst_case_cost_usd"].as_f64().unwrap();
    (bad, good, dir, s, args, worst)
}

/// A reasoning model cut off while it thinks has produced billed output
/// though no answer text: the attempt is charged for the thinking
/// received (it was charged the prompt alone).
#[tokio::test]
async fn a_cut_off_attempt_is_charged_for_the_thinking_received() {
    let thought = "First, consider each case in turn and check it. ".repeat(20);
    let cut = streamed(
        "text/event-stream",
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v4-pro",
                   "choices": [{"index": 0, "delta": {"content": null, "reasoning_content": thought}}]})
        ),
    )
    .reset_after_body();
    let (_bad, _good, _dir, s) = deepseek_then_anthropic(cut).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hello", "tier": "medium"}),
        )
        .await;
    assert_eq!(c["answer"], "from anthropic", "{c}");
    let u = s.ok("query_usage", json!({})).await;
    let out = u["totals"]["output_tokens"].as_u64().unwrap();
    // Anthropic's 10 output tokens, plus at least the thinking of the
    // first (cut) attempt at 4 bytes a token.
    assert!(out >= 10 + thought.len() as u64 / 4, "{u}");
    s.stop().await;
}

/// A reasoning model's answer that arrives without usage (a gateway that
/// drops `stream_options`) is charged an estimate that counts the thinking
/// streamed before it, not only the answer text: the thinking is usually
/// most of what is billed.
#[tokio::test]
async fn an_answer_without_usage_is_charged_for_its_thinking_too() {
    let thought = "First, consider each case in turn and check it. ".repeat(20);
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v3.2",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let body = format!(
        "{}{}{}data: [DONE]\n\n",
        chunk(
            json!({"content": null, "reasoning_content": thought}),
            Value::Null
        ),
        chunk(json!({"content": "Yes."}), Value::Null),
        chunk(json!({}), json!("stop")),
    );
    let fake = FakeProvider::start(streamed("text/event-stream", body)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "Is it?", "force_model": "deepseek/deepseek-v3.2"}),
        )
        .await;
    assert_eq!(c["answer"], "Yes.", "{c}");
    assert_eq!(c["cost_source"], "estimate", "{c}");
    let thinking = (thought.len() as u64).div_ceil(4);
    assert_eq!(c["tokens"]["reasoning"], json!(thinking), "{c}");
    assert_eq!(c["tokens"]["output"], json!(thinking + 1), "{c}");
    s.stop().await;
}

/// A cut-off attempt is charged; if what is left of the budget then cannot
/// cover the next attempt, the call ends on the budget ("Refused by
/// budget", so the caller raises the limit instead of retrying), not as a
/// provider failure.
#[tokio::test]
async fn a_fallback_the_budget_cannot_cover_is_a_budget_refusal() {
    let (bad, _good, _dir, s, args, worst) = deepseek_cut_off().await;
    s.ok("set_budget", json!({"monthly_limit": worst * 1.05}))
        .await;
    let e = s.err("complete_prompt", args).await;
    assert!(
        e.starts_with("Refused by budget") && e.contains("Budget limit reached"),
        "{e}"
    );
    assert!(e.contains("charged") || e.contains("billed"), "{e}");
    assert_eq!(bad.requests().len(), 1);
    let u = s.ok("query_usage", json!({})).await;
    assert!(u["total_cost_usd"].as_f64().unwrap() > 0.0, "{u}");
    s.stop().await;
}

/// `budget_limit` caps the whole call: once a cut-off attempt was charged,
/// a retry whose worst case no longer fits in what is left is not made.
#[tokio::test]
async fn budget_limit_caps_the_whole_call_with_its_retries() {
    let (bad, _good, _dir, s, args, worst) = deepseek_cut_off().await;
    let mut capped = args.clone();
    capped["budget_limit"] = json!(worst * 1.05);
    let e = s.err("complete_prompt", capped).await;
    assert!(
        e.starts_with("Refused by budget") && e.contains("budget_limit of"),
        "{e}"
    );
    assert_eq!(bad.requests().len(), 1, "no retry past the call's limit");
    let u = s.ok("query_usage", json!({})).await;
    let spent = u["total_cost_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent <= worst * 1.05, "{u}");
    s.stop().await;
}

/// An answer cut off at the output limit, or one that is empty, is
/// returned (it is all there is, and was billed), but its text says so:
/// otherwise a sentence cut in half reads as the whole answer.
#[tokio::test]
async fn a_cut_off_or_empty_answer_says_so_in_its_text() {
    let reply = |content: &str, finish: &str| {
        openai_finished(
            "deepseek-v3.2",
            content,
            finish,
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
        )
    };
    for (content, finish, want) in [
        (
            "The capital of",
            "length",
            Some("stopped at the output limit"),
        ),
        ("", "stop", Some("empty answer")),
        ("Paris.", "stop", None),
    ] {
        let fake = FakeProvider::start(reply(content, finish)).await;
        let dir = tempfile::tempdir().unwrap();
        let s = spawn(dir.path(), &deepseek_env(&fake)).await;
        let r = s
            .call(
                "complete_prompt",
                json!({"prompt": "What is the capital of France?", "max_tokens": 5}),
            )
            .await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        let t = text(&r);
        let c = r.structured_content.unwrap();
        assert_eq!(c["finish_reason"], finish, "{c}");
        match want {
            Some(w) => assert!(t.contains(w), "{finish}: {t}"),
            None => assert!(!t.contains("⚠️"), "{t}"),
        }
        s.stop().await;
    }
}

/// Usage far past what the call allowed is billed as reported (the
/// provider's word is the bill) but called out, not recorded silently.
#[tokio::test]
async fn implausible_usage_is_billed_and_called_out() {
    let fake = FakeProvider::start(openai_ok(
        "deepseek-v3.2",
        "4",
        json!({"prompt_tokens": 12, "completion_tokens": 900_000, "total_tokens": 900_012}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "What is 2+2?", "max_tokens": 50}),
        )
        .await;
    assert_eq!(c["tokens"]["output"], 900_000, "{c}");
    let w = c["warning"].as_str().unwrap_or_default();
    assert!(
        w.contains("900000 output tokens for an answer limited to 50"),
        "{c}"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_usd(&u["total_cost_usd"], c["cost_usd"].as_f64().unwrap());
    s.stop().await;
}

/// A reasoning model that spends its whole output limit thinking answers
/// with no text and `finish_reason: length`. That reply is billed (at the
/// cost it reported, as OpenRouter's `usage.cost` does; otherwise at its
/// usage) but useless: the next model answers instead.
#[tokio::test]
async fn an_empty_answer_cut_at_the_limit_falls_back() {
    let (empty, _good, _dir, s) = deepseek_then_anthropic(Reply::json(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": "deepseek-v4-pro",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1024, "total_tokens": 1034,
                      "completion_tokens_details": {"reasoning_tokens": 1024}, "cost": 0.0092}
        }),
    ))
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hello", "tier": "medium"}),
        )
        .await;
    let attempts = c["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "empty_answer", "{attempts:?}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("raise max_tokens"),
        "{attempts:?}"
    );
    assert_eq!(c["answer"], "from anthropic");
    assert_eq!(empty.requests().len(), 1, "not retried");
    // The empty reply was billed: its usage is recorded and said so.
    assert!(
        c["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("(recorded at $0.009200, the cost it reported)"),
        "{c}"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["totals"]["failed_attempts"], json!(1));
    assert_usd(
        &u["total_cost_usd"],
        0.0092 + c["cost_usd"].as_f64().unwrap(),
    );
    assert!(
        u["totals"]["output_tokens"].as_u64().unwrap() >= 1024,
        "{u}"
    );
    s.stop().await;
}

/// DeepSeek ends an answer it could not finish with `finish_reason:
/// insufficient_system_resource` and a 200: a cut answer, billed at its
/// usage, retried as a server failure, then another provider answers.
#[tokio::test]
async fn an_answer_deepseek_could_not_finish_is_retried_not_returned() {
    let (cut, _good, _dir, s) = deepseek_then_anthropic(Reply::json(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": "deepseek-v4-pro",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "The first step is"},
                         "finish_reason": "insufficient_system_resource"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }),
    ))
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hello", "tier": "medium"}),
        )
        .await;
    assert_eq!(c["answer"], "from anthropic", "{c}");
    let attempts = c["attempts"].as_array().unwrap();
    assert_eq!(cut.requests().len(), 3, "retried twice: {attempts:?}");
    assert!(
        attempts[..3].iter().all(|a| a["outcome"] == "server"),
        "{attempts:?}"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["totals"]["failed_attempts"], json!(3));
    // Each cut answer was billed at the usage it reported.
    assert_eq!(u["totals"]["output_tokens"], json!(3 * 5 + 10), "{u}");
    s.stop().await;
}

/// Anthropic's classifiers stop an answer with `stop_reason: refusal`;
/// with no text it is an empty answer (billed; the next model would be
/// tried), not a successful empty reply.
#[tokio::test]
async fn an_empty_refusal_is_an_empty_answer() {
    let anthropic = FakeProvider::start(Reply::json(
        200,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [], "stop_reason": "refusal", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 0}
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_anthropic(dir.path(), &anthropic).await;
    // Forced, so nothing else is tried: the error says what happened.
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "hello", "force_model": "anthropic/claude-haiku-4-5"}),
        )
        .await;
    assert!(e.contains("(empty_answer)"), "{e}");
    assert!(
        e.contains("finish reason refusal: the model declined"),
        "{e}"
    );
    assert!(!e.contains("raise max_tokens"), "{e}");
    assert_eq!(anthropic.requests().len(), 1, "not retried");
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["totals"]["failed_attempts"], json!(1));
    assert_eq!(u["totals"]["input_tokens"], json!(12), "billed: {u}");
    s.stop().await;
}

#[tokio::test]
async fn rejected_key_is_a_clear_error_without_the_key() {
    let fake = FakeProvider::start(openai_error(
        401,
        &format!("Authentication Fails, Your api key: {DEEPSEEK_KEY} is invalid"),
        "authentication_error",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let e = s.err("complete_prompt", json!({"prompt": "hello"})).await;
    assert!(
        e.contains("DEEPSEEK_API_KEY was rejected by DeepSeek (HTTP 401)"),
        "{e}"
    );
    assert!(e.contains("Nothing was charged"), "{e}");
    assert!(!e.contains(DEEPSEEK_KEY), "key leaked: {e}");
    // Still serving.
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(0));
    assert_eq!(u["totals"]["failed_attempts"], json!(1));
    let stderr_path = s.stderr_path.clone();
    s.stop().await;
    assert_no_secret(dir.path(), &stderr_path, DEEPSEEK_KEY);
}

/// Greps every file the server wrote (ledger, WAL, logs, stderr) for `key`.
fn assert_no_secret(data_dir: &std::path::Path, stderr: &std::path::Path, key: &str) {
    let mut files = vec![stderr.to_path_buf()];
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 3, "expected ledger and logs: {files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(key), "{} contains the API key", f.display());
    }
}

/// `query_usage` from a date (`since`, as a day or an RFC 3339 instant)
/// counts the calls from then on, and says the period it read.
#[tokio::test]
async fn usage_since_a_date_counts_the_calls_from_then() {
    let fake = FakeProvider::start(openai_sse(
        "x",
        &["y"],
        json!({"prompt_tokens": 1, "completion_tokens": 1}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let day_ms: i64 = 86_400_000;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    for (id, age_days) in [("twenty", 20), ("two", 2)] {
        insert_past_call(
            &dir.path().join("ledger.sqlite3"),
            now_ms - age_days * day_ms,
            id,
        );
    }
    let day = |age: i64| {
        jiff::Timestamp::from_millisecond(now_ms - age * day_ms)
            .unwrap()
            .strftime("%Y-%m-%d")
            .to_string()
    };
    let u = s.ok("query_usage", json!({"since": day(5)})).await;
    assert_eq!(u["calls"], 1, "{u}");
    assert!(u["since"].as_str().unwrap().starts_with(&day(5)), "{u}");
    let instant = jiff::Timestamp::from_millisecond(now_ms - 25 * day_ms)
        .unwrap()
        .to_string();
    let u = s.ok("query_usage", json!({"since": instant})).await;
    assert_eq!(u["calls"], 2, "{u}");
    assert_usd(&u["total_cost_usd"], 10e-6);
    let u = s.ok("query_usage", json!({"days": 10})).await;
    assert_eq!(u["calls"], 1, "{u}");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let fake = FakeProvider::start(openai_sse(
        "x",
        &["y"],
        json!({"prompt_tokens": 1, "completion_tokens": 1}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let cases: Vec<(&'static str, Value, &str)> = vec![
        (
            "complete_prompt",
            json!({"prompt": "   "}),
            "prompt is empty",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "max_tokens": -5}),
            "max_tokens",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "budget_limit": -1.0}),
            "budget_limit",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "gpt-17-ultra"}),
            "force_model",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "force_provider": "acme"}),
            "force_provider",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "force_provider": "anthropic"}),
            "ANTHROPIC_API_KEY",
        ),
        // A value of the wrong type is refused by its field's name (serde
        // alone says "expected f64", naming nothing).
        (
            "complete_prompt",
            json!({"prompt": "hi", "budget_limit": "1"}),
            "budget_limit: invalid type",
        ),
        (
            "set_budget",
            json!({"monthly_limit": 5, "alert_thresholds": [0.5, "x"]}),
            "alert_thresholds[1]",
        ),
        // Speech only: told to use `speak`, not to set a key it may have.
        (
            "complete_prompt",
            json!({"prompt": "hi", "force_provider": "cartesia"}),
            "use speak: true",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "tier": "ultra"}),
            "tier",
        ),
        (
            "complete_prompt",
            json!({"prompt": "x".repeat(5 * 1024 * 1024)}),
            "limit is",
        ),
        (
            "get_recommendation",
            json!({"prompt": ""}),
            "prompt is empty",
        ),
        ("check_model_costs", json!({"provider": "nope"}), "provider"),
        (
            "check_model_costs",
            json!({"model": "zzzz-no-such"}),
            "no priced model",
        ),
        ("query_usage", json!({"days": -3}), "days"),
        ("query_usage", json!({"since": "last tuesday"}), "since"),
        (
            "query_usage",
            json!({"since": "2026-01-01", "days": 3}),
            "either days or since",
        ),
        (
            "query_usage",
            json!({"since": "2999-01-01"}),
            "since is in the future",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "voice": "a voice/../x"}),
            "voice",
        ),
        (
            "complete_prompt",
            json!({"prompt": "hi", "voice": "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"}),
            "speak",
        ),
        ("query_usage", json!({"group_by": "colour"}), "group_by"),
        (
            "set_budget",
            json!({"monthly_limit": -10.0}),
            "monthly_limit",
        ),
        ("set_budget", json!({"monthly_limit": 0.0}), "monthly_limit"),
        (
            "set_budget",
            json!({"monthly_limit": 1e15}),
            "monthly_limit",
        ),
        (
            "set_budget",
            json!({"monthly_limit": 10.0, "alert_thresholds": [0.5, 1.5]}),
            "alert_thresholds",
        ),
        (
            "set_budget",
            json!({"monthly_limit": 10.0, "alert_thresholds": [0.8, 0.5]}),
            "ascending",
        ),
        (
            "set_budget",
            json!({"monthly_limit": 10.0, "mode": "panic"}),
            "mode",
        ),
    ];
    for (tool, args, needle) in cases {
        let e = s.err(tool, args.clone()).await;
        assert!(e.contains(needle), "{tool} {args:.80}: {e}");
    }
    // Wrong types are refused at the protocol level, and the server lives on.
    let raw = s
        .client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("set_budget").with_arguments(
                json!({"monthly_limit": "lots"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(raw.is_err() || raw.unwrap().is_error == Some(true));
    assert!(fake.requests().is_empty());
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(0));
    assert_eq!(u["totals"]["failed_attempts"], json!(0));
    assert_eq!(u["budget"]["is_default"], json!(true));
    s.stop().await;
}

#[tokio::test]
async fn budget_refuses_a_call_that_could_cross_the_limit() {
    let fake = FakeProvider::start(anthropic_ok(
        "claude-sonnet-4-6",
        "expensive",
        json!({"input_tokens": 100, "output_tokens": 100}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_anthropic(dir.path(), &fake).await;
    let b = s
        .ok(
            "set_budget",
            json!({"monthly_limit": 0.01, "alert_thresholds": [0.5, 1.0]}),
        )
        .await;
    assert_eq!(b["status"]["limit_usd"], json!(0.01));
    assert_eq!(b["status"]["mode"], "block");
    // Worst case: 4096 output tokens × $15/MTok ≈ $0.061 > $0.01.
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "anthropic/claude-sonnet-4-6", "max_tokens": 4096}),
        )
        .await;
    assert!(e.contains("could cost up to"), "{e}");
    assert!(e.contains("set_budget"), "{e}");
    assert!(fake.requests().is_empty());
    // A small call fits: 100 tokens × $15/MTok = $0.0015.
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "anthropic/claude-sonnet-4-6", "max_tokens": 100}),
        )
        .await;
    assert_usd(&c["cost_usd"], 100.0 * 3e-6 + 100.0 * 15e-6);
    assert_usd(&c["budget"]["spent_usd"], 0.0018);
    assert_eq!(c["budget"]["reserved_usd"], json!(0.0));
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(1));
    assert!((u["budget"]["percent_used"].as_f64().unwrap() - 18.0).abs() < 1e-9);
    assert_eq!(u["budget"]["next_threshold"], json!(0.5));
    s.stop().await;
}

#[tokio::test]
async fn calls_survive_a_restart() {
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["kept"],
        json!({"prompt_tokens": 10, "completion_tokens": 10}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DEEPSEEK_API_KEY", DEEPSEEK_KEY.to_string()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ];
    let s = spawn(dir.path(), &env).await;
    s.ok(
        "complete_prompt",
        json!({"prompt": "remember me", "tier": "cheap"}),
    )
    .await;
    s.ok("set_budget", json!({"monthly_limit": 42.0, "mode": "warn"}))
        .await;
    s.stop().await;

    let s = spawn(dir.path(), &env).await;
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["calls"], json!(1));
    assert_usd(&u["total_cost_usd"], 10.0 * 0.28e-6 + 10.0 * 0.40e-6);
    assert_eq!(u["budget"]["limit_usd"], json!(42.0));
    assert_eq!(u["budget"]["mode"], "warn");
    s.stop().await;
    assert!(dir.path().join("ledger.sqlite3").exists());
}

#[tokio::test]
async fn corrupt_ledger_keeps_read_only_tools_working() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ledger.sqlite3"),
        "not a database at all, just text".repeat(200),
    )
    .unwrap();
    let s = spawn(dir.path(), &[("DEEPSEEK_API_KEY", DEEPSEEK_KEY.into())]).await;
    s.ok("check_model_costs", json!({"provider": "deepseek"}))
        .await;
    let r = s.ok("get_recommendation", json!({"prompt": "hello"})).await;
    assert!(r["budget"].is_null());
    let e = s.err("query_usage", json!({})).await;
    assert!(
        e.contains("Ledger unavailable") && e.contains("damaged or not a database"),
        "{e}"
    );
    let e = s.err("complete_prompt", json!({"prompt": "hello"})).await;
    assert!(e.contains("damaged or not a database"), "{e}");
    let e = s.err("set_budget", json!({"monthly_limit": 5.0})).await;
    assert!(e.contains("Ledger unavailable"), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn older_protocol_versions_are_still_accepted() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    for version in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.env_clear();
        for (k, v) in base_env(dir.path()) {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"}}});
        stdin
            .write_all(format!("{init}\n").as_bytes())
            .await
            .unwrap();
        let line = out.next_line().await.unwrap().unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["result"]["protocolVersion"], version, "{reply}");
        stdin
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n")
            .await
            .unwrap();
        let line = out.next_line().await.unwrap().unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            reply["result"]["tools"].as_array().unwrap().len(),
            5,
            "{reply}"
        );
        drop(stdin);
        let _ = child.wait().await;
    }
}

/// Rate limits are per model at Gemini (and Anthropic, OpenRouter,
/// Cerebras): one model's exhausted quota falls back to the provider's
/// next model, and does not shut the provider for the calls after it.
#[tokio::test]
async fn a_models_rate_limit_falls_back_to_the_same_providers_next_model() {
    let ok = gemini_sse(
        "gemini",
        &["from the next model"],
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}),
    );
    let gemini = FakeProvider::start(ok).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("GEMINI_API_KEY", "AIza-FAKE-gemini-key-5555555555".into()),
            ("GEMINI_BASE_URL", gemini.base.clone()),
        ],
    )
    .await;
    let quota = || {
        Reply::json(
            429,
            json!({"error": {"code": 429, "message": "You exceeded your current quota for this model.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"}]}}),
        )
    };
    for round in 0..4 {
        gemini.push(quota());
        let c = s
            .ok(
                "complete_prompt",
                json!({"prompt": "What is the capital of France?"}),
            )
            .await;
        assert_eq!(c["answer"], "from the next model", "round {round}: {c}");
        let attempts = c["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "round {round}: {attempts:?}");
        assert_eq!(attempts[0]["outcome"], "rate_limit");
        assert_ne!(attempts[0]["model"], attempts[1]["model"]);
        assert!(
            attempts[1]["model"]
                .as_str()
                .unwrap()
                .starts_with("gemini/")
        );
    }
    assert_eq!(gemini.requests().len(), 8);

    // Every model limited: the account's limit. The first model gets its
    // retries; the others one try each, not a retry cycle (and its waits)
    // apiece.
    let quota_no_wait = || {
        Reply::json(
            429,
            json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED"}}),
        )
    };
    for _ in 0..20 {
        gemini.push(quota_no_wait());
    }
    let before = gemini.requests().len();
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "What is the capital of France?"}),
        )
        .await;
    let mut models: Vec<&str> = e
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(')
        .filter(|w| w.starts_with("gemini/"))
        .collect();
    models.sort();
    models.dedup();
    assert!(models.len() >= 2, "{e}");
    assert_eq!(
        gemini.requests().len() - before,
        3 + (models.len() - 1),
        "{e}"
    );
    s.stop().await;
}

/// Sampling options reach each provider in its own API's words:
/// OpenAI-compatible `temperature` / `top_p` / `seed`, Gemini's
/// `generationConfig`, Ollama's `options`, and Anthropic's one of
/// temperature (at most 1) and top_p, without a seed. Out of range, they
/// are refused before anything is sent.
#[tokio::test]
async fn sampling_options_reach_every_provider() {
    let deepseek = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["ok"],
        json!({"prompt_tokens": 5, "completion_tokens": 1}),
    ))
    .await;
    let gemini = FakeProvider::start(gemini_sse(
        "gemini-2.5-flash-lite",
        &["ok"],
        json!({"promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 6}),
    ))
    .await;
    let anthropic = FakeProvider::start(anthropic_sse(
        "claude-haiku-4-5",
        &["ok"],
        json!({"input_tokens": 5, "output_tokens": 1}),
        1,
    ))
    .await;
    let ollama = FakeProvider::start(ollama_ndjson("llama3.1", &["ok"], 5, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", DEEPSEEK_KEY.into()),
            ("DEEPSEEK_BASE_URL", deepseek.base.clone()),
            ("GEMINI_API_KEY", "AIza-FAKE-gemini-key-5555555555".into()),
            ("GEMINI_BASE_URL", gemini.base.clone()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
            ("ANTHROPIC_BASE_URL", anthropic.base.clone()),
            ("OLLAMA_HOST", ollama.base.clone()),
        ],
    )
    .await;
    let call = |model: &str, sampling: Value| {
        let mut args = json!({"prompt": "Say ok.", "force_model": model, "max_tokens": 16});
        args.as_object_mut()
            .unwrap()
            .extend(sampling.as_object().unwrap().clone());
        args
    };
    let all = json!({"temperature": 1.5, "top_p": 0.9, "seed": 42});

    s.ok(
        "complete_prompt",
        call("deepseek/deepseek-v3.2", all.clone()),
    )
    .await;
    let b = &deepseek.requests()[0].body;
    assert_eq!(
        (&b["temperature"], &b["top_p"], &b["seed"]),
        (&json!(1.5), &json!(0.9), &json!(42)),
        "{b}"
    );

    s.ok(
        "complete_prompt",
        call("gemini/gemini-2.5-flash-lite", all.clone()),
    )
    .await;
    let g = &gemini.requests()[0].body["generationConfig"];
    assert_eq!(
        (&g["temperature"], &g["topP"], &g["seed"]),
        (&json!(1.5), &json!(0.9), &json!(42)),
        "{g}"
    );

    s.ok("complete_prompt", call("ollama/llama3.1", all.clone()))
        .await;
    let o = &ollama.requests()[0].body["options"];
    assert_eq!(
        (&o["temperature"], &o["top_p"], &o["seed"]),
        (&json!(1.5), &json!(0.9), &json!(42)),
        "{o}"
    );

    s.ok(
        "complete_prompt",
        call("anthropic/claude-haiku-4-5", all.clone()),
    )
    .await;
    let a = &anthropic.requests()[0].body;
    assert_eq!(a["temperature"], json!(1.0), "capped at Anthropic's 1: {a}");
    assert!(a.get("top_p").is_none() && a.get("seed").is_none(), "{a}");
    s.ok(
        "complete_prompt",
        call("anthropic/claude-haiku-4-5", json!({"top_p": 0.5})),
    )
    .await;
    assert_eq!(anthropic.requests()[1].body["top_p"], json!(0.5));
    // Claude Opus 4.7 and later refuse both (400 "`temperature` is
    // deprecated for this model", and the call failed): not sent.
    s.ok(
        "complete_prompt",
        call("anthropic/claude-opus-4-7", all.clone()),
    )
    .await;
    let a = &anthropic.requests()[2].body;
    assert_eq!(a["model"], "claude-opus-4-7");
    assert!(
        a.get("temperature").is_none() && a.get("top_p").is_none(),
        "{a}"
    );

    // Nothing asked, nothing sent: the provider's defaults stand.
    s.ok("complete_prompt", call("deepseek/deepseek-v3.2", json!({})))
        .await;
    let b = &deepseek.requests()[1].body;
    assert!(
        b.get("temperature").is_none() && b.get("seed").is_none(),
        "{b}"
    );

    let sent = deepseek.requests().len();
    for (bad, needle) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
    ] {
        let e = s
            .err(
                "complete_prompt",
                call("deepseek/deepseek-v3.2", bad.clone()),
            )
            .await;
        assert!(e.contains(needle), "{bad}: {e}");
    }
    assert_eq!(deepseek.requests().len(), sent, "refused before sending");
    s.stop().await;
}

/// `prefer` decides which tier a score near a boundary takes: by default
/// the cheaper one, with `quality` the stronger; the server's default comes
/// from `[routing] prefer` or `COST_OPTIMIZER_PREFER`; anything else is a
/// clear error. Gemini serves both tiers here (gemma free, flash-lite
/// cheap), so the tier decides the model.
#[tokio::test]
async fn prefer_quality_takes_the_stronger_tier_near_a_boundary() {
    let gemini = FakeProvider::start(gemini_sse("gemma-4-31b-it", &["ok"], json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let env = |extra: Vec<(&'static str, String)>| {
        let mut e = vec![
            (
                "GEMINI_API_KEY",
                "FAKE-gemini-prefer-000000000000".to_string(),
            ),
            ("GEMINI_BASE_URL", gemini.base.clone()),
        ];
        e.extend(extra);
        e
    };
    let prompt = "Write a short poem about the sea.";
    // The prompt's score under the defaults, then a boundary just above it.
    let s = spawn(dir.path(), &env(vec![])).await;
    let r = s.ok("get_recommendation", json!({"prompt": prompt})).await;
    let score = r["complexity"]["score"].as_f64().unwrap();
    s.stop().await;
    let cfg = dir.path().join("near.toml");
    let boundaries = format!("[{}, 0.97, 0.98]", score + 0.01);
    std::fs::write(&cfg, format!("[routing]\nthresholds = {boundaries}\n")).unwrap();
    let near = ("COST_OPTIMIZER_CONFIG", cfg.display().to_string());

    let s = spawn(dir.path(), &env(vec![near.clone()])).await;
    let cost = s.ok("get_recommendation", json!({"prompt": prompt})).await;
    assert_eq!(cost["tier"], "free", "{cost}");
    assert_eq!(cost["recommended"]["model"], "gemini/gemma-4-31b-it");
    let quality = s
        .ok(
            "get_recommendation",
            json!({"prompt": prompt, "prefer": "quality"}),
        )
        .await;
    assert_eq!(quality["scored_tier"], "free", "{quality}");
    assert_eq!(quality["tier"], "cheap", "{quality}");
    assert_eq!(
        quality["recommended"]["model"],
        "gemini/gemini-2.5-flash-lite"
    );
    assert!(
        quality["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("quality is preferred")),
        "{quality}"
    );
    // complete_prompt routes the same way, and records the tier it used.
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": prompt, "prefer": "quality", "max_tokens": 50}),
        )
        .await;
    assert_eq!(c["tier"], "cheap", "{c}");
    assert_eq!(c["model"], "gemini/gemini-2.5-flash-lite", "{c}");
    // The ledger keeps the preference that routed each call (calibration
    // reads a score near a boundary by it): the call's own, or the
    // server's default.
    let d = s
        .ok(
            "complete_prompt",
            json!({"prompt": prompt, "max_tokens": 50}),
        )
        .await;
    assert_eq!(d["tier"], "free", "{d}");
    let db = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let recorded = |id: &Value| -> String {
        db.query_row(
            "SELECT prefer FROM calls WHERE request_id = ?1",
            [id.as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(recorded(&c["request_id"]), "quality");
    assert_eq!(recorded(&d["request_id"]), "cost");
    let e = s
        .err(
            "get_recommendation",
            json!({"prompt": prompt, "prefer": "fast"}),
        )
        .await;
    assert!(
        e.contains("prefer") && e.contains("neither cost nor quality"),
        "{e}"
    );
    s.stop().await;

    // The server's default, from the config file or the environment; a
    // call's own `prefer` still wins.
    std::fs::write(
        &cfg,
        format!("[routing]\nthresholds = {boundaries}\nprefer = \"quality\"\n"),
    )
    .unwrap();
    let s = spawn(dir.path(), &env(vec![near.clone()])).await;
    let r = s.ok("get_recommendation", json!({"prompt": prompt})).await;
    assert_eq!(r["tier"], "cheap", "{r}");
    let q = s
        .ok(
            "complete_prompt",
            json!({"prompt": prompt, "max_tokens": 50}),
        )
        .await;
    assert_eq!(recorded(&q["request_id"]), "quality");
    let r = s
        .ok(
            "get_recommendation",
            json!({"prompt": prompt, "prefer": "cost"}),
        )
        .await;
    assert_eq!(r["tier"], "free", "{r}");
    s.stop().await;
    std::fs::write(&cfg, format!("[routing]\nthresholds = {boundaries}\n")).unwrap();
    let s = spawn(
        dir.path(),
        &env(vec![near, ("COST_OPTIMIZER_PREFER", "quality".into())]),
    )
    .await;
    let r = s.ok("get_recommendation", json!({"prompt": prompt})).await;
    assert_eq!(r["tier"], "cheap", "{r}");
    s.stop().await;
}

/// A report on every user's calls shows the budget that covers them all
/// (the global one, when set), once; a user's report shows theirs, with
/// its forecast under it, and the global budget after.
#[tokio::test]
async fn an_everyone_report_shows_the_global_budget() {
    let fake = FakeProvider::start(openai_ok("deepseek-v3.2", "4", json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &deepseek_env(&fake)).await;
    let everyone = s.ok("query_usage", json!({})).await;
    assert_eq!(
        everyone["budget"]["user_id"], "default",
        "no global budget yet"
    );
    s.ok("set_budget", json!({"monthly_limit": 50, "global": true}))
        .await;
    let r = s.call("query_usage", json!({})).await;
    let (u, t) = (r.structured_content.clone().unwrap(), text(&r));
    assert_eq!(u["budget"]["user_id"], "*", "{u}");
    assert_eq!(u["budget"]["limit_usd"], json!(50.0));
    assert_eq!(t.matches("Budget (global)").count(), 1, "{t}");
    let r = s.call("query_usage", json!({"user_id": "default"})).await;
    let (u, t) = (r.structured_content.clone().unwrap(), text(&r));
    assert_eq!(u["budget"]["user_id"], "default", "{u}");
    let mine = t.find("Budget (default)").expect("the user's budget");
    let global = t.find("Budget (global)").expect("the global budget");
    assert!(mine < global, "{t}");
    s.stop().await;
}
