//! Property tests over the places hostile input reaches first: the
//! scorer, provider streams and provider usage objects. (Tool arguments
//! are generated against the real binary, from its own input schemas:
//! `tests/hostile_protocol.rs`, `generated_tool_calls_all_get_a_reply`.)
//! Whatever arrives, nothing panics and every number stays sane.

use ai_cost_optimizer::pricing::{Catalog, sane_cost};
use ai_cost_optimizer::providers::openai_compat::parse_usage;
use ai_cost_optimizer::providers::stream::{NdjsonParser, SseParser};
use ai_cost_optimizer::router::scorer;
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON, nested a few levels, with extreme numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("prompt_tokens".to_string()),
                    Just("completion_tokens".to_string()),
                    Just("cost".to_string()),
                    Just("prompt_tokens_details".to_string()),
                    Just("cached_tokens".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn scorer_is_total_and_bounded(s in any::<String>()) {
        let score = scorer::score(&s);
        prop_assert!((0.0..=1.0).contains(&score.value), "{}", score.value);
        let reasons = score.reasons(3);
        prop_assert!(reasons.len() <= 3);
        prop_assert!(reasons.iter().all(|r| r.contribution.is_finite()));
        let l = scorer::length_only(&s);
        prop_assert!((0.0..=1.0).contains(&l));
    }

    #[test]
    fn provider_usage_stays_sane(v in json_value()) {
        let (usage, cost) = parse_usage(&v);
        let total = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens;
        prop_assert!(total <= 3 * ai_cost_optimizer::providers::MAX_REPORTED_TOKENS);
        prop_assert!(usage.reasoning_tokens <= usage.output_tokens);
        prop_assert!(cost.is_none_or(|c| c.is_finite() && c >= 0.0));
        let catalog = Catalog::bundled();
        let (usd, _) = catalog.price_call("anthropic/claude-opus-4-5", &usage, cost);
        prop_assert!(usd.is_finite() && (0.0..=1_000_000.0).contains(&usd));
        prop_assert_eq!(sane_cost(usd), usd);
    }

    #[test]
    fn stream_parsers_survive_any_bytes(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut sse = SseParser::default();
        let mut nd = NdjsonParser::default();
        let mut total = 0usize;
        for c in &chunks {
            total += c.len();
            for ev in sse.push(c) {
                prop_assert!(ev.data.len() <= total);
            }
            for line in nd.push(c) {
                prop_assert!(line.len() <= total * 3);
            }
        }
        let _ = sse.finish();
        let _ = nd.finish();
    }
}
