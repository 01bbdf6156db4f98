//! Learning from the user: ratings of answers, and threshold calibration
//! from ratings and overrides.
//!
//! Ratings arrive through `ai-cost-optimizer feedback REQUEST_ID --rating R`
//! or the optional `feedback` argument of `complete_prompt` (rate the
//! previous answer while asking the next question, so the MCP surface keeps
//! its five tools). Overrides (`force_model`, `tier`) are already in the
//! ledger's `calls.forced` column. `ai-cost-optimizer calibrate` turns both
//! into proposed thresholds ([`crate::router::calibrate`]) and, with
//! `--apply`, writes them to the config file's `[routing] thresholds`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ledger::HistoryCall;
use crate::optimizer::{Optimizer, ToolError};
use crate::providers::Usage;
use crate::router::Tier;
use crate::router::calibrate::{self, Proposal};

/// Longest note kept with a rating, in bytes.
pub const MAX_NOTE_BYTES: usize = 2000;

/// A rating as people and models write it: `good`, `bad`, `ok`, or 1-5.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RatingInput {
    /// 1 (useless) to 5 (perfect).
    Stars(i64),
    /// `good` (= 5), `ok` (= 3), `bad` (= 1), or a digit 1-5.
    Word(String),
}

impl RatingInput {
    /// The rating on the stored 1-5 scale, or a message naming the problem.
    pub fn stars(&self) -> Result<u8, String> {
        let n = match self {
            RatingInput::Stars(n) => *n,
            RatingInput::Word(w) => match w.trim().to_ascii_lowercase().as_str() {
                "good" | "great" | "up" => 5,
                "ok" | "okay" | "neutral" => 3,
                "bad" | "poor" | "down" => 1,
                other => other.parse::<i64>().map_err(|_| {
                    format!("rating: {w:?} is not a rating; use good, ok, bad or 1-5")
                })?,
            },
        };
        u8::try_from(n)
            .ok()
            .filter(|n| (1..=5).contains(n))
            .ok_or_else(|| format!("rating: {n} is out of range; use 1 (bad) to 5 (good)"))
    }
}

/// Feedback on one earlier answer (`complete_prompt`'s `feedback` argument).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackArgs {
    /// `request_id` of the earlier `complete_prompt` result being rated.
    pub request_id: String,
    /// `good`, `ok`, `bad`, or 1 (bad) to 5 (good). Bad ratings teach the
    /// router to send similar prompts to a stronger tier.
    pub rating: RatingInput,
    /// Optional free-text note (at most 2000 bytes).
    #[serde(default)]
    pub note: Option<String>,
}

/// What was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct FeedbackReceipt {
    /// The rated request.
    pub request_id: String,
    /// Stored rating, 1-5.
    pub rating: u8,
    /// Model that gave the rated answer.
    pub model: String,
    /// Tier it was chosen from.
    pub tier: Option<String>,
    /// Complexity score of the rated prompt.
    pub score: Option<f64>,
}

/// Validates and stores `args`; `source` is `cli` or `mcp`. With `owner`,
/// only that user's calls may be rated: another user's request id is
/// refused exactly like an unknown one, so a key learns nothing of other
/// users' calls.
pub fn record(
    core: &Optimizer,
    args: &FeedbackArgs,
    source: &str,
    now_ms: i64,
    owner: Option<&str>,
) -> Result<FeedbackReceipt, ToolError> {
    let id = args.request_id.trim();
    if id.is_empty() || id.len() > 200 {
        return Err(ToolError::Invalid(
            "request_id: give the request_id of an earlier complete_prompt result".into(),
        ));
    }
    let rating = args.rating.stars().map_err(ToolError::Invalid)?;
    let note = args
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(ToolError::Invalid(format!(
            "note: at most {MAX_NOTE_BYTES} bytes"
        )));
    }
    let ledger = core.ledger()?;
    let lerr = |e: crate::ledger::LedgerError| ToolError::Ledger(e.to_string());
    let call = ledger
        .feedback_call(id)
        .map_err(lerr)?
        .filter(|call| owner.is_none_or(|o| o == call.user_id))
        .ok_or_else(|| {
            ToolError::Invalid(format!(
                "request_id: no call {id:?} among the last {} recorded (it may be older, or pruned by retention)",
                crate::ledger::FEEDBACK_WINDOW
            ))
        })?;
    if !call.answered {
        return Err(ToolError::Invalid(format!(
            "request_id: call {id:?} has no answer to rate (every attempt failed)"
        )));
    }
    ledger
        .record_feedback(id, rating, source, note, now_ms)
        .map_err(lerr)?;
    Ok(FeedbackReceipt {
        request_id: id.to_owned(),
        rating,
        model: call.model,
        tier: call.tier,
        score: call.score,
    })
}

/// The proposal and where `--apply` writes it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Calibration {
    /// The proposal.
    #[serde(flatten)]
    pub proposal: Proposal,
    /// Days of history read.
    pub days: u32,
    /// Config file the thresholds are (or would be) written to.
    pub config_file: Option<String>,
    /// Whether the thresholds were written.
    pub applied: bool,
    /// The one user whose calls were read, if any (the thresholds still
    /// apply to every user).
    pub user: Option<String>,
}

/// Ratings and overrides below which a proposal is flagged as thin.
const FEW_SIGNALS: usize = 10;

/// Reads `days` of history (optionally one user's) and proposes thresholds.
pub fn calibrate(
    core: &Optimizer,
    days: u32,
    user: Option<&str>,
    now_ms: i64,
) -> Result<Proposal, ToolError> {
    let since = now_ms.saturating_sub(i64::from(days) * 86_400_000);
    let history = core
        .ledger()?
        .routing_history(user, since)
        .map_err(|e| ToolError::Ledger(e.to_string()))?;
    let price = |tier: Tier, c: &HistoryCall| tier_price(core, tier, c);
    Ok(calibrate::propose(
        &history,
        core.settings().tier_thresholds,
        core.settings().prefer,
        &price,
    ))
}

/// The recorded usage of `c` on the model routing would pick for `tier`:
/// the cheapest enabled model of that tier, or of the nearest tier with
/// one, as routing moves (`None` when no provider is enabled). A model of
/// a disabled provider is never priced: a free tier with no local model
/// running does not make calls free, it sends them to the cheap tier.
fn tier_price(core: &Optimizer, tier: Tier, c: &HistoryCall) -> Option<f64> {
    let usage = Usage {
        input_tokens: c.input_tokens,
        cache_read_tokens: c.cache_read_tokens,
        cache_write_tokens: c.cache_write_tokens,
        output_tokens: c.output_tokens,
        reasoning_tokens: 0,
    };
    // A call forced to a provider re-routes among that provider's models.
    let only = (c.forced.as_deref() == Some("provider"))
        .then(|| core.catalog().get(&c.model).map(|p| p.provider))
        .flatten();
    core.router()
        .serving_models_of(tier, core.catalog(), core.registry(), only)
        .iter()
        .map(|p| p.cost_of(&usage))
        .min_by(f64::total_cmp)
}

/// Where `--apply` writes: the config file in use, else the default path.
pub fn config_target(core: &Optimizer) -> Option<PathBuf> {
    core.settings().config_file.clone().or_else(|| {
        directories::ProjectDirs::from("dev", "ai-cost-optimizer", "ai-cost-optimizer")
            .map(|d| d.config_dir().join("config.toml"))
    })
}

/// Sets `[routing] thresholds` in the TOML file at `path` (created if
/// missing), keeping every other key and comment as written, the comment
/// on the `thresholds` line included. The file is replaced atomically
/// (see [`crate::atomic_file`]); a symlink is followed, not replaced.
pub fn write_thresholds(path: &Path, t: [f64; 3]) -> Result<()> {
    let path = &crate::atomic_file::resolve(path)
        .with_context(|| format!("cannot follow the symlink {}", path.display()))?;
    let text = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix it first", path.display()))?;
    let routing = doc
        .entry("routing")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(routing) = routing.as_table_like_mut() else {
        anyhow::bail!("{}: `routing` is not a table", path.display());
    };
    // Moved boundaries sit on the 0.01 grid of the calibration, up to
    // float noise, which is rounded off; a boundary it kept is written
    // exactly as it was (0.255 stays 0.255).
    let tidy = |x: f64| {
        let r = (x * 100.0).round() / 100.0;
        if (x - r).abs() < 1e-9 { r } else { x }
    };
    let mut arr: toml_edit::Array = t.iter().map(|x| tidy(*x)).collect();
    arr.fmt();
    let mut value = toml_edit::Value::Array(arr);
    // Replaced in place: `insert` would also reset the key's decor, where
    // the comment lines above `thresholds = …` live.
    match routing.get_mut("thresholds").and_then(|i| i.as_value_mut()) {
        Some(old) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        None => {
            routing.insert("thresholds", toml_edit::Item::Value(value));
        }
    }
    crate::atomic_file::replace(path, &doc.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Text form of a recorded rating.
pub fn render_receipt(r: &FeedbackReceipt) -> String {
    let score = r
        .score
        .map(|s| format!(", score {s:.2}"))
        .unwrap_or_default();
    let tier = r.tier.as_deref().unwrap_or("no tier");
    format!(
        "Recorded rating {}/5 for {} ({}, {tier}{score}).\nRun `ai-cost-optimizer calibrate` to see what the ratings suggest.\n",
        r.rating, r.request_id, r.model
    )
}

/// Text form of a calibration.
pub fn render_calibration(c: &Calibration) -> String {
    use std::fmt::Write;
    let p = &c.proposal;
    let e = &p.evidence;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Calibration over the last {} days: {} answered calls, {} rated bad, {} rated good, \
         {} overridden to a stronger tier, {} to a cheaper one.",
        c.days, e.calls, e.rated_bad, e.rated_good, e.overrides_up, e.overrides_down
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Boundary | Current | Proposed | Signals | Contradicted now | Contradicted after |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for b in &p.boundaries {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} | {} | {} |",
            // `free|cheap` as `free / cheap`: a bare pipe would split the
            // cell, and an escaped one reads badly in a terminal.
            b.boundary.replace('|', " / "),
            b.current,
            b.proposed,
            b.signals,
            b.violations_current,
            b.violations_proposed
        );
    }
    let _ = writeln!(s);
    if !p.changed {
        let _ = writeln!(
            s,
            "No change proposed: a boundary moves only when the move agrees with at least {} more \
             ratings or overrides than the current value does, and one more for every {} recorded \
             calls it would send to another tier.",
            calibrate::MIN_EVIDENCE,
            calibrate::CALLS_PER_SIGNAL
        );
        return s;
    }
    let signals = e.rated_bad + e.rated_good + e.overrides_up + e.overrides_down;
    if signals < FEW_SIGNALS {
        let _ = writeln!(
            s,
            "Caution: this rests on {signals} ratings and overrides only; take it as a hint, and \
             let more ratings firm it up before applying it."
        );
    }
    if let Some(u) = &c.user {
        let _ = writeln!(
            s,
            "Learned from {u:?}'s calls only, but the thresholds route every user's calls."
        );
    }
    let k = &p.cost;
    let _ = writeln!(
        s,
        "Effect on the same calls: {} recorded -> {} projected ({}{}); \
         {} calls to a stronger tier, {} to a cheaper one{}.",
        crate::render::usd(k.recorded_usd),
        crate::render::usd(k.projected_usd),
        if k.delta_usd >= 0.0 { "+" } else { "-" },
        crate::render::usd(k.delta_usd.abs()),
        k.calls_up,
        k.calls_down,
        if k.unpriced > 0 {
            format!(
                ", {} kept at recorded cost: no model of their new tier is enabled here \
                 (calibrate prices them on the providers whose keys this shell has; \
                 give it the server's keys)",
                k.unpriced
            )
        } else {
            String::new()
        }
    );
    let target = c.config_file.as_deref().unwrap_or("the config file");
    if c.applied {
        let _ = writeln!(
            s,
            "Written to {target} ([routing] thresholds). Servers already running (Claude Desktop's, `serve --http`) read it when they start: restart them to route by it."
        );
    } else {
        let _ = writeln!(s, "Run with --apply to write them to {target}.");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_parse() {
        let w = |s: &str| RatingInput::Word(s.into()).stars();
        assert_eq!(w("good"), Ok(5));
        assert_eq!(w(" BAD "), Ok(1));
        assert_eq!(w("3"), Ok(3));
        assert!(w("meh").unwrap_err().contains("good, ok, bad"));
        assert!(w("0").unwrap_err().contains("out of range"));
        assert_eq!(RatingInput::Stars(4).stars(), Ok(4));
        assert!(RatingInput::Stars(6).stars().is_err());
    }

    #[test]
    fn thresholds_written_and_other_keys_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "# my budget\nmonthly_budget_usd = 20.0\n\n[routing.tiers]\nfree = [\"ollama/llama3.1\"]\n",
        )
        .unwrap();
        write_thresholds(&p, [0.2, 0.5, 0.8]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# my budget"), "{text}");
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(v["monthly_budget_usd"].as_float(), Some(20.0));
        assert_eq!(
            v["routing"]["thresholds"].as_array().unwrap().len(),
            3,
            "{text}"
        );
        assert!(v["routing"]["tiers"]["free"].is_array());
        // A second write replaces the value rather than adding a key.
        write_thresholds(&p, [0.1, 0.5, 0.8]).unwrap();
        let v: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["routing"]["thresholds"][0].as_float(), Some(0.1));
    }

    /// The comments above and on the thresholds line survive, a boundary that did not
    /// move keeps its exact value (0.255 is not rounded to 0.26), float
    /// noise on a moved one is rounded off, and a symlinked config is
    /// edited where it points.
    #[cfg(unix)]
    #[test]
    fn thresholds_keep_their_comment_exact_values_and_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("dotfiles/config.toml");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(
            &target,
            "[routing]\n# set after the Q1 review\nthresholds = [0.255, 0.5, 0.75] # tuned\n",
        )
        .unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_thresholds(&link, [0.255, 0.1 + 0.2 + 0.15, 0.75]).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.contains("# tuned"), "{text}");
        assert!(
            text.contains("# set after the Q1 review\nthresholds"),
            "{text}"
        );
        let v: toml::Table = toml::from_str(&text).unwrap();
        let t: Vec<f64> = v["routing"]["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_float().unwrap())
            .collect();
        assert_eq!(t, [0.255, 0.45, 0.75], "{text}");
    }
}
