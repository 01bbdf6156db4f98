//! Scores every prompt of the routing data once, for instruction counts
//! (callgrind gives the same count on every run, unlike wall clock on a shared
//! machine) and for checking that a scorer change keeps every output bit.
//!
//! ```sh
//! cargo build --release --example score_prompts
//! valgrind --tool=callgrind target/release/examples/score_prompts decide
//! valgrind --tool=callgrind target/release/examples/score_prompts load   # the floor to subtract
//! target/release/examples/score_prompts dump > before.txt   # bits of decide/score + reasons
//! ```
//!
//! Modes: `load` (read and parse only), `decide`, `unexplained` (+ top-3 names),
//! `score` (+ top-3 reasons with phrases), `dump` (one line per prompt: the
//! bits of `decide`, `score_unexplained` and `score` values and logits, and every
//! reason of `score`). Reads `../shared/routing-data/routellm_pairs.jsonl` or
//! the file named by `ROUTING_DATA`.

use std::hint::black_box;
use std::io::Write;

use ai_cost_optimizer::router::scorer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "decide".into());
    let path = std::env::var("ROUTING_DATA")
        .unwrap_or_else(|_| "../shared/routing-data/routellm_pairs.jsonl".into());
    let prompts: Vec<String> = std::fs::read_to_string(&path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_string))
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match mode.as_str() {
        "load" => {}
        "decide" => {
            for p in &prompts {
                black_box(scorer::decide(black_box(p)));
            }
        }
        "unexplained" => {
            for p in &prompts {
                black_box(scorer::score_unexplained(black_box(p)).top_features(3));
            }
        }
        "score" => {
            for p in &prompts {
                black_box(scorer::score(black_box(p)).reasons(3));
            }
        }
        "dump" => {
            for p in &prompts {
                let full = scorer::score(p);
                let lean = scorer::score_unexplained(p);
                let reasons = serde_json::to_string(&full.reasons(usize::MAX))?;
                writeln!(
                    out,
                    "{:016x} {:016x} {:016x} {:016x} {:016x} {reasons}",
                    scorer::decide(p).to_bits(),
                    lean.value.to_bits(),
                    full.value.to_bits(),
                    lean.logit().to_bits(),
                    full.logit().to_bits(),
                )?;
            }
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    eprintln!("{} prompts, mode {mode}", prompts.len());
    Ok(())
}
