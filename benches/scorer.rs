//! In-process scoring throughput: the fitted scorer (the bare routing decision,
//! the `score` command's value + feature names, and the MCP tools' explained
//! reasons) against the prompt-length baseline, over the real prompts of the
//! routing data.
//!
//! Run: `cargo bench --bench scorer` (reads `../shared/routing-data/
//! routellm_pairs.jsonl`, or the file named by `ROUTING_DATA`).

use std::hint::black_box;

use ai_cost_optimizer::router::scorer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn prompts() -> Vec<String> {
    let path = std::env::var("ROUTING_DATA")
        .unwrap_or_else(|_| "../shared/routing-data/routellm_pairs.jsonl".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            // `cargo test --all-targets` runs this once in test mode; without
            // the data a few built-in prompts keep it meaningful.
            eprintln!("{path}: {e}; using built-in prompts (set ROUTING_DATA)");
            return [
                "hi",
                "What is the capital of France?",
                "Prove that the square root of 2 is irrational, step by step.",
                "Write a Python function that merges two sorted lists, with tests.",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
        }
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_string))
        .collect()
}

fn bench(c: &mut Criterion) {
    let prompts = prompts();
    let mut g = c.benchmark_group("score all routing prompts");
    g.throughput(Throughput::Elements(prompts.len() as u64));
    g.sample_size(10);
    g.bench_function("baseline: length only", |b| {
        b.iter(|| {
            for p in &prompts {
                black_box(scorer::length_only(black_box(p)));
            }
        })
    });
    g.bench_function("fitted scorer: decision (decide)", |b| {
        b.iter(|| {
            for p in &prompts {
                black_box(scorer::decide(black_box(p)));
            }
        })
    });
    g.bench_function("fitted scorer + top-3 feature names (score command)", |b| {
        b.iter(|| {
            for p in &prompts {
                black_box(scorer::score_unexplained(black_box(p)).top_features(3));
            }
        })
    });
    g.bench_function(
        "fitted scorer + top-3 reasons with phrases (MCP tools)",
        |b| {
            b.iter(|| {
                for p in &prompts {
                    black_box(scorer::score(black_box(p)).reasons(3));
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
