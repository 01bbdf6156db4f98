//! Short Markdown a person reads: the text part of each tool result, and the
//! CLI's human output. The structured result carries every number; this
//! carries the ones that matter at a glance.

use std::fmt::Write;

use crate::budget::BudgetStatus;
use crate::ledger::Group;
use crate::optimizer::{
    BudgetUpdate, Completion, CostTable, DoctorReport, Recommendation, UsageReport,
};
use crate::router::{Candidate, Reason};

/// Formats a USD amount with enough digits for sub-cent call costs.
pub fn usd(v: f64) -> String {
    // Below what the most decimals shown can say: float noise (a projected
    // total minus a recorded one), not a signed cost ("-$0.000000000000000").
    if v.abs() < 5e-16 {
        return "$0".into();
    }
    // Shown as the ledger keeps it, in whole nano-dollars: a call's cost
    // computed as 7.850000000000001e-5 printed $0.000079 beside the same
    // cost read back from the ledger, 7.85e-5, printed $0.000078. (Below
    // what six decimals show, the two significant digits stay exact.)
    let v = if v.abs() >= 0.000_000_5 {
        (v * 1e9).round() / 1e9
    } else {
        v
    };
    if v < 0.0 {
        return format!("-{}", usd(-v));
    }
    let a = v.abs();
    // Decimals for two significant digits, read from the amount rounded to
    // two (so 9.9999e-7 and 1.0e-6, the same cost computed two ways, print
    // alike).
    let two_digits = || {
        let r = format!("{a:.1e}").parse::<f64>().unwrap_or(a);
        (1 - r.log10().floor() as i64).max(0) as usize
    };
    if a == 0.0 {
        "$0".into()
    } else if a < 0.000_000_5 {
        // Below what six decimals show: keep two significant digits
        // rather than print a real cost as "$0.000000".
        let decimals = two_digits().min(15);
        format!("${v:.decimals$}")
    } else if a < 0.01 {
        // Six decimals, or more for two significant digits: $0.0000062,
        // not $0.000006 (a third off) for a cost of $0.00000616.
        let decimals = two_digits().clamp(6, 8);
        format!("${v:.decimals$}")
    } else if a < 1.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

/// A fraction as a percentage with the decimals it needs: 0.8 → "80%",
/// 0.125 → "12.5%", 0.001 → "0.1%" (a threshold of 0.1% printed as "0%"
/// reads as no threshold).
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    for decimals in 0..=3 {
        let scale = 10f64.powi(decimals);
        if ((p * scale).round() - p * scale).abs() < 1e-6 {
            return format!("{p:.prec$}%", prec = decimals as usize);
        }
    }
    format!("{p:.3}%")
}

/// A price per million tokens: cents when that says it all, else the
/// digits it has, up to four significant ones ($0.125 is not "$0.12",
/// $1.875 not "$1.88", $0.0075 not "$0.01").
pub fn per_mtok(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "$0.00".into();
    }
    let cents = format!("{v:.2}");
    if (cents.parse::<f64>().unwrap_or(0.0) - v).abs() < 1e-9 {
        return format!("${cents}");
    }
    let decimals = (3 - v.abs().log10().floor() as i32).clamp(2, 10) as usize;
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0');
    // Keep cents visible: "$0.125", "$1.875", "$2.50" stays two places.
    let keep = s.find('.').map_or(s.len(), |dot| (dot + 3).max(s.len()));
    format!("${}", &format!("{v:.decimals$}")[..keep])
}

/// "Saved **$x** (y%)", or, when the calls cost more than the baseline
/// (a forced premium model dearer than it), "Cost **$x** (y%) more" — a
/// loss is shown, not rounded up to a zero saving.
fn savings_phrase(saved: f64, percent: f64) -> String {
    if saved < 0.0 {
        format!("Cost **{}** ({:.0}%) more", usd(-saved), -percent)
    } else {
        format!("Saved **{}** ({percent:.0}%)", usd(saved))
    }
}

fn reasons_line(reasons: &[Reason]) -> String {
    if reasons.is_empty() {
        return "no strong signals".into();
    }
    reasons
        .iter()
        .map(|r| r.detail.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

fn budget_line(b: &BudgetStatus) -> String {
    let (this, _) = b.period_words();
    let who = if b.user_id == crate::ledger::GLOBAL_SCOPE {
        "global".to_string()
    } else {
        b.user_id.clone()
    };
    let mut s = format!(
        "Budget ({who}): {} of {} spent {this} ({:.1}%), {} left",
        usd(b.spent_usd),
        usd(b.limit_usd),
        b.percent_used,
        usd(b.remaining_usd)
    );
    if b.reserved_usd > 0.0 {
        let _ = write!(s, ", {} held by calls in flight", usd(b.reserved_usd));
    }
    if let Some(t) = b.next_threshold {
        let _ = write!(s, "; next alert at {}", percent(t));
    }
    let _ = write!(s, " (mode: {}).", b.mode.as_str());
    s
}

/// A table cell: a `|` in a user id or model id would split the cell, and
/// a line break would end the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The answer as Markdown that cannot swallow what follows it: an answer
/// cut off (at max_tokens, say) inside a fenced code block leaves the
/// fence open, and the cost line after it would show as code. Such a
/// fence is closed with the same marker.
fn closed_answer(answer: &str) -> String {
    let mut open: Option<String> = None;
    for line in answer.lines() {
        let t = line.trim_start();
        let marker: String = t.chars().take_while(|c| *c == '`' || *c == '~').collect();
        let fence = marker.len() >= 3
            && marker
                .chars()
                .all(|c| c == marker.chars().next().unwrap_or('`'));
        if !fence {
            continue;
        }
        match &open {
            None => open = Some(marker),
            // A closing fence: the same character, at least as long, and
            // nothing after it.
            Some(m) if marker.starts_with(m.as_str()) && t[marker.len()..].trim().is_empty() => {
                open = None
            }
            Some(_) => {}
        }
    }
    let mut out = answer.trim_end().to_string();
    if let Some(m) = open {
        out.push('\n');
        out.push_str(&m);
    }
    out
}

/// `complete_prompt`.
pub fn completion(c: &Completion) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}\n\n---", closed_answer(&c.answer));
    let _ = writeln!(
        s,
        "**{}** ({}) · cost **{}**{} · {} in / {} out tokens{} · {} ms",
        c.model,
        match c.tier {
            Some(t) => format!("{t} tier"),
            None => "forced; in no routing tier".to_string(),
        },
        usd(c.cost_usd),
        match c.cost_source {
            crate::pricing::CostSource::Provider => " (reported by provider)",
            crate::pricing::CostSource::Unpriced => " (unpriced!)",
            crate::pricing::CostSource::Local => " (local)",
            crate::pricing::CostSource::Catalog => "",
            crate::pricing::CostSource::Estimate => " (estimated: no usage reported)",
        },
        c.tokens.input + c.tokens.cached + c.tokens.cache_write,
        c.tokens.output,
        if c.tokens.cached > 0 {
            format!(" ({} cached)", c.tokens.cached)
        } else {
            String::new()
        },
        c.latency_ms
    );
    if let Some(b) = &c.baseline {
        let _ = writeln!(
            s,
            "{} against {} at {}.",
            savings_phrase(c.savings_usd, c.savings_percent),
            b.model,
            usd(b.cost_usd)
        );
    }
    let _ = writeln!(
        s,
        "Complexity {:.2}: {}.",
        c.complexity.score,
        reasons_line(&c.complexity.reasons)
    );
    if let Some(line) = tried_line(&c.attempts) {
        let _ = writeln!(s, "{line}");
    }
    if let Some(b) = &c.budget {
        let _ = writeln!(s, "{}", budget_line(b));
    }
    if let Some(g) = &c.global_budget {
        let _ = writeln!(s, "{}", budget_line(g));
    }
    for a in &c.alerts {
        let _ = writeln!(s, "⚠️ Budget alert: {}", a.message);
    }
    if let Some(a) = &c.audio
        && let Some(p) = &a.path
    {
        let _ = writeln!(
            s,
            "🔊 Audio: {p} ({} characters read in {}{}, {} with {})",
            a.characters,
            a.language,
            match a.language_source {
                "detected" => " (the answer's language)",
                "default" => " (the answer's language was unclear)",
                _ => "",
            },
            usd(a.cost_usd),
            a.model
        );
    }
    if let Some(note) = stop_note(c.finish_reason.as_deref(), c.answer.trim().is_empty()) {
        let _ = writeln!(s, "⚠️ {note}");
    }
    if let Some(w) = &c.warning {
        let _ = writeln!(s, "⚠️ {w}");
    }
    s
}

/// A line for an answer that is not the whole answer: cut off at the
/// output limit, stopped by a safety filter, or empty. The structured
/// result's `finish_reason` says it too, but a person reads the text, and
/// an answer cut mid-sentence reads as if complete.
fn stop_note(finish_reason: Option<&str>, empty: bool) -> Option<String> {
    let f = finish_reason.unwrap_or("").to_ascii_lowercase();
    let filtered = [
        "filter",
        "safety",
        "refusal",
        "recitation",
        "blocklist",
        "prohibited",
        "spii",
    ]
    .iter()
    .any(|k| f.contains(k));
    if f.contains("length") || f.contains("max") {
        Some(format!(
            "The answer stopped at the output limit (finish reason `{}`): it may be cut off; a larger `max_tokens` leaves room for the rest.",
            finish_reason.unwrap_or_default()
        ))
    } else if filtered {
        Some(format!(
            "The provider stopped the answer (finish reason `{}`): it may be incomplete.",
            finish_reason.unwrap_or_default()
        ))
    } else if empty {
        Some("The model returned an empty answer; it was billed as reported.".into())
    } else {
        None
    }
}

fn candidate_row(c: &Candidate) -> String {
    format!(
        "| {} | {} | {} | {} | {} |{}",
        c.model,
        c.tier,
        usd(c.estimated_cost_usd),
        usd(c.worst_case_cost_usd),
        format_args!(
            "{} / {}",
            per_mtok(c.input_per_mtok),
            per_mtok(c.output_per_mtok)
        ),
        if c.available {
            ""
        } else {
            " (provider not enabled)"
        }
    )
}

/// `get_recommendation`.
pub fn recommendation(r: &Recommendation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**Use {}** ({} tier) · est. {} (≤ {} worst case)",
        r.recommended.model,
        r.tier,
        usd(r.recommended.estimated_cost_usd),
        usd(r.recommended.worst_case_cost_usd)
    );
    let _ = writeln!(
        s,
        "Complexity **{:.2}** → {} tier: {}.",
        r.complexity.score,
        r.scored_tier,
        reasons_line(&r.complexity.reasons)
    );
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            s,
            "Always-premium ({}) would cost ~{}; {}.",
            b.model,
            usd(b.estimated_cost_usd),
            if r.estimated_savings_usd < 0.0 {
                format!("this costs ~{} more", usd(-r.estimated_savings_usd))
            } else {
                format!("saving ~{}", usd(r.estimated_savings_usd))
            }
        );
    }
    let _ = writeln!(
        s,
        "\n| model | tier | est. cost | worst case | $/MTok in / out |\n|---|---|---|---|---|"
    );
    let _ = writeln!(s, "{}", candidate_row(&r.recommended));
    for c in r.fallbacks.iter().chain(r.alternatives.iter()) {
        let _ = writeln!(s, "{}", candidate_row(c));
    }
    let _ = writeln!(
        s,
        "\nEstimates assume {} output tokens.",
        r.assumed_output_tokens
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if let Some(b) = &r.budget {
        let _ = writeln!(s, "{}", budget_line(b));
    }
    s
}

/// `check_model_costs`.
pub fn cost_table(t: &CostTable) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Prices for {} (USD per million tokens):\n", t.scope);
    let est = t.assumed_output_tokens.is_some();
    let _ = writeln!(
        s,
        "| model | tier | input | output | cached input | context |{}\n|---|---|---|---|---|---|{}",
        if est { " est. cost |" } else { "" },
        if est { "---|" } else { "" }
    );
    for m in &t.models {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} |{}",
            m.model,
            if m.enabled { "" } else { " (not enabled)" },
            m.tier.map(|t| t.as_str()).unwrap_or("–"),
            per_mtok(m.input_per_mtok),
            per_mtok(m.output_per_mtok),
            m.cache_read_per_mtok
                .map(per_mtok)
                .unwrap_or_else(|| "–".into()),
            m.context_window
                .map(|c| format!("{}k", c / 1000))
                .unwrap_or_else(|| "–".into()),
            match (m.estimated_cost_usd, m.prompt_fits) {
                (Some(c), _) => format!(" {} |", usd(c)),
                (None, Some(false)) => " too long for it |".to_string(),
                (None, _) if est => " – |".to_string(),
                (None, _) => String::new(),
            }
        );
    }
    if t.omitted > 0 {
        let _ = writeln!(s, "\n…and {} more; filter by provider or model.", t.omitted);
    }
    if let Some(n) = t.assumed_output_tokens {
        let _ = writeln!(s, "\nEstimates assume {n} output tokens.");
    }
    s
}

/// Rows a breakdown table shows; the rest are summed up in one line.
const MAX_GROUP_ROWS: usize = 20;

/// A breakdown as a table. Time breakdowns (`day`, `week`, `month`) come
/// oldest first and keep their latest rows (today matters most); the
/// others come largest first and keep their first rows.
fn group_table(title: &str, groups: &[Group]) -> String {
    let mut s = String::new();
    if groups.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\n**By {title}**\n\n| {title} | calls | cost | saved |\n|---|---|---|---|"
    );
    let by_time = matches!(title, "day" | "week" | "month");
    let hidden = groups.len().saturating_sub(MAX_GROUP_ROWS);
    let shown = if by_time {
        if hidden > 0 {
            let _ = writeln!(s, "| … {hidden} earlier | | | |");
        }
        &groups[hidden..]
    } else {
        &groups[..groups.len() - hidden]
    };
    for g in shown {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            cell(&g.key),
            g.totals.calls,
            usd(g.totals.cost_usd),
            // No baseline (speech, failed attempts only): nothing to compare.
            g.totals.savings_usd().map_or_else(|| "–".into(), usd)
        );
    }
    if hidden > 0 && !by_time {
        let _ = writeln!(s, "| … {hidden} more | | | |");
    }
    s
}

/// `query_usage`.
pub fn usage(u: &UsageReport) -> String {
    let mut s = String::new();
    if let Some(w) = &u.warning {
        let _ = writeln!(s, "⚠️ {w}\n");
    }
    let who = u
        .user_id
        .as_deref()
        .map(|u| format!(" for {u}"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "**{}** spent on **{}** calls{who} since {}.",
        usd(u.total_cost_usd),
        u.calls,
        &u.since[..u.since.len().min(10)]
    );
    if u.totals.baseline_cost_usd > 0.0 {
        let _ = writeln!(
            s,
            "Always-premium would have cost {} for the successful calls: {} (failed attempts counted, speech left out).",
            usd(u.totals.baseline_cost_usd),
            savings_phrase(u.savings_usd, u.savings_percent).to_lowercase()
        );
    }
    if u.totals.failed_attempts > 0 {
        let _ = writeln!(
            s,
            "{} failed provider attempt{} ($0, except answers cut off mid-stream: those are counted at their estimated cost, since the provider may bill them).",
            u.totals.failed_attempts,
            if u.totals.failed_attempts == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if u.totals.unpriced_calls > 0 {
        let _ = writeln!(
            s,
            "⚠️ {} calls used unpriced models and are counted at $0.",
            u.totals.unpriced_calls
        );
    }
    s.push_str(&group_table("model", &u.by_model));
    s.push_str(&group_table("provider", &u.by_provider));
    s.push_str(&group_table("day", &u.by_day));
    s.push_str(&group_table("tier", &u.by_tier));
    s.push_str(&group_table("user", &u.by_user));
    s.push_str(&group_table("week", &u.by_week));
    s.push_str(&group_table("month", &u.by_month));
    if !u.by_band.is_empty() {
        let _ = writeln!(
            s,
            "\n**By complexity band**\n\n| band | calls | cost | per call |\n|---|---|---|---|"
        );
        for b in &u.by_band {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                b.band,
                b.calls,
                usd(b.cost_usd),
                usd(b.avg_cost_usd)
            );
        }
    }
    if !u.top_calls.is_empty() {
        let _ = writeln!(
            s,
            "\n**Most expensive calls**\n\n| when (UTC) | model | user | cost |\n|---|---|---|---|"
        );
        for c in &u.top_calls {
            let when = crate::budget::rfc3339(c.ts_ms);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                when.get(..16).unwrap_or(&when).replace('T', " "),
                cell(&c.model),
                cell(&c.user_id),
                usd(c.cost_usd)
            );
        }
    }
    // The forecast and alert right under the budget they are about: below
    // the global budget's line, a user's forecast read as the global one.
    let _ = writeln!(s, "\n{}", budget_line(&u.budget));
    if u.budget.forecast_usd > 0.0 {
        let _ = writeln!(
            s,
            "Forecast for {} at this rate: {}.",
            u.budget.period_words().1,
            usd(u.budget.forecast_usd)
        );
    }
    if let Some(a) = u.budget.alert_line() {
        let _ = writeln!(s, "⚠️ {a}");
    }
    if let Some(g) = u
        .global_budget
        .as_ref()
        .filter(|g| g.user_id != u.budget.user_id)
    {
        let _ = writeln!(s, "{}", budget_line(g));
    }
    s
}

/// `set_budget`.
pub fn budget_update(b: &BudgetUpdate) -> String {
    let st = &b.status;
    let who = if st.user_id == crate::ledger::GLOBAL_SCOPE {
        "all users (global)".to_string()
    } else {
        st.user_id.clone()
    };
    let period = match st.period.as_str() {
        "daily" => "Daily",
        "weekly" => "Weekly",
        _ => "Monthly",
    };
    let mut s = format!(
        "{period} budget for **{who}** set to **{}**{} (mode {}, alerts at {}; {} calendar).\n",
        usd(st.limit_usd),
        b.previous_limit_usd
            .map(|p| format!(" (was {})", usd(p)))
            .unwrap_or_default(),
        st.mode.as_str(),
        st.alert_thresholds
            .iter()
            .map(|&t| percent(t))
            .collect::<Vec<_>>()
            .join(", "),
        st.timezone
    );
    let _ = writeln!(s, "{}", budget_line(st));
    if let Some(w) = &b.webhook {
        let _ = writeln!(s, "Alerts are also sent to {w}.");
    }
    for a in &b.alerts {
        let _ = writeln!(s, "⚠️ Budget alert: {}", a.message);
    }
    s
}

/// `doctor`.
pub fn doctor(d: &DoctorReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "ai-cost-optimizer {}", d.version);
    let _ = writeln!(s, "data dir:    {}", d.data_dir);
    let _ = writeln!(s, "ledger:      {} — {}", d.ledger_path, d.ledger);
    let _ = writeln!(s, "logs:        {}", d.log_dir);
    let _ = writeln!(
        s,
        "config file: {}",
        d.config_file.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        s,
        "pricing:     {} models priced; {}",
        d.catalog_models, d.pricing_source
    );
    let _ = writeln!(
        s,
        "baseline:    {}{}",
        d.baseline_model,
        if d.baseline_priced {
            ""
        } else {
            " — NOT IN THE CATALOG: savings cannot be computed; fix baseline_model in the config file"
        }
    );
    let t = d.routing_thresholds;
    let _ = writeln!(
        s,
        "routing:     boundaries {:.2} / {:.2} / {:.2}; near one, prefer {}{}",
        t[0],
        t[1],
        t[2],
        d.prefer,
        if d.tiers_off.is_empty() {
            String::new()
        } else {
            format!(
                "; switched off (no score reaches it, or no model listed): {}",
                d.tiers_off
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !d.unpriced_tier_models.is_empty() {
        let _ = writeln!(
            s,
            "routing:     NOT IN THE CATALOG, skipped: {} (fix [routing.tiers], or price them with [pricing.overrides])",
            d.unpriced_tier_models.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "budget:      ${:.2}/{} by default; prompts {}",
        d.default_monthly_budget_usd,
        match d.default_period {
            crate::budget::Period::Daily => "day",
            crate::budget::Period::Weekly => "week",
            crate::budget::Period::Monthly => "month",
        },
        if d.store_prompts {
            "stored"
        } else {
            "stored as hashes only"
        }
    );
    let _ = writeln!(s, "\nproviders:");
    for p in &d.providers {
        let _ = writeln!(
            s,
            "  {} {:<12} {}{}{}",
            if p.enabled { "✔" } else { "✘" },
            p.provider.as_str(),
            p.reason,
            if p.enabled {
                format!(" → {}", p.base_url)
            } else {
                String::new()
            },
            p.key
                .as_ref()
                .map(|k| format!(" [key {k}]"))
                .unwrap_or_default()
        );
    }
    s
}

/// The attempts of a call that needed more than one, with the pauses
/// between retries (where a slow call's time went).
fn tried_line(attempts: &[crate::optimizer::Attempt]) -> Option<String> {
    if attempts.len() < 2 {
        return None;
    }
    let tried: Vec<String> = attempts
        .iter()
        .map(|a| match a.retried_after_ms {
            // Sub-second waits in ms: "0.0 s" read as no wait at all.
            Some(ms) if ms < 1000 => format!("{} ({}, retried after {ms} ms)", a.model, a.outcome),
            Some(ms) => format!(
                "{} ({}, retried after {:.1} s)",
                a.model,
                a.outcome,
                ms as f64 / 1000.0
            ),
            None => format!("{} ({})", a.model, a.outcome),
        })
        .collect();
    Some(format!("Tried: {}.", tried.join(" → ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_say_how_long_they_waited() {
        use crate::optimizer::Attempt;
        use crate::providers::ProviderId;
        let attempt = |outcome: &str, retried_after_ms| Attempt {
            provider: ProviderId::Deepseek,
            model: "deepseek/deepseek-v3.2".into(),
            outcome: outcome.into(),
            error: None,
            latency_ms: 5,
            retried_after_ms,
        };
        assert_eq!(tried_line(&[attempt("ok", None)]), None);
        assert_eq!(
            tried_line(&[attempt("rate_limit", Some(1000)), attempt("ok", None)]).unwrap(),
            "Tried: deepseek/deepseek-v3.2 (rate_limit, retried after 1.0 s) → deepseek/deepseek-v3.2 (ok)."
        );
    }

    #[test]
    fn an_open_code_fence_is_closed_before_the_footer() {
        assert_eq!(
            closed_answer("text\n```rust\nfn main() {"),
            "text\n```rust\nfn main() {\n```"
        );
        assert_eq!(closed_answer("a\n```\nx\n```\n"), "a\n```\nx\n```");
        // A longer or tilde fence closes only with its own kind.
        assert_eq!(closed_answer("~~~~\n```\n"), "~~~~\n```\n~~~~");
        assert_eq!(
            closed_answer("````md\n```\nx\n```\n````"),
            "````md\n```\nx\n```\n````"
        );
        assert_eq!(closed_answer("no code"), "no code");
    }

    /// Money keeps a real cost visible however small, and thresholds keep
    /// their decimals.
    #[test]
    fn small_amounts_and_thresholds_are_not_rounded_away() {
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.00000036), "$0.00000036");
        assert_eq!(usd(0.0000002), "$0.00000020");
        assert_eq!(usd(0.000168), "$0.000168");
        assert_eq!(usd(0.00000616), "$0.0000062");
        // The same cost computed two ways prints alike.
        assert_eq!(usd(0.000_000_999_999_9), usd(0.000_001));
        assert_eq!(usd(0.000_001), "$0.0000010");
        assert_eq!(usd(0.25), "$0.2500");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(usd(-0.00000036), "-$0.00000036");
        assert_eq!(percent(0.8), "80%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.001), "0.1%");
        assert_eq!(percent(0.004), "0.4%");
        assert_eq!(per_mtok(3.0), "$3.00");
        assert_eq!(per_mtok(0.0075), "$0.0075");
        assert_eq!(per_mtok(0.125), "$0.125");
        assert_eq!(per_mtok(1.875), "$1.875");
        assert_eq!(per_mtok(0.287274), "$0.2873");
        assert_eq!(per_mtok(2.5), "$2.50");
        assert_eq!(per_mtok(15.0), "$15.00");
        assert_eq!(per_mtok(0.1), "$0.10");
        assert_eq!(per_mtok(0.0), "$0.00");
    }

    #[test]
    fn table_cells_cannot_split() {
        assert_eq!(cell("bob|x"), "bob\\|x");
        assert_eq!(cell("a\nb"), "a b");
    }

    /// A long time breakdown keeps its latest rows (today included); a
    /// ranked one keeps its largest; savings are signed.
    #[test]
    fn breakdowns_keep_the_rows_that_matter_and_show_losses() {
        use crate::ledger::{Group, Totals};
        let groups: Vec<Group> = (1..=25)
            .map(|d| Group {
                key: format!("2026-11-{d:02}"),
                totals: Totals {
                    calls: 1,
                    cost_usd: 1.0,
                    baseline_cost_usd: 0.5,
                    ..Totals::default()
                },
            })
            .collect();
        let days = group_table("day", &groups);
        assert!(
            days.contains("| … 5 earlier |") && days.contains("2026-11-25"),
            "{days}"
        );
        assert!(
            !days.contains("2026-11-05 ") && days.contains("2026-11-06"),
            "{days}"
        );
        assert!(days.contains("| -$0.5000 |"), "a loss, not $0: {days}");
        let models = group_table("model", &groups);
        assert!(
            models.contains("2026-11-01") && models.contains("| … 5 more |"),
            "{models}"
        );
        assert!(!models.contains("2026-11-21"), "{models}");
        assert_eq!(savings_phrase(-0.5, -100.0), "Cost **$0.5000** (100%) more");
        assert_eq!(savings_phrase(0.5, 50.0), "Saved **$0.5000** (50%)");
    }

    #[test]
    fn an_answer_that_is_not_whole_says_so() {
        for (f, empty, want) in [
            (Some("length"), false, Some("output limit")),
            (Some("MAX_TOKENS"), false, Some("output limit")),
            (Some("max_tokens"), true, Some("output limit")),
            (Some("content_filter"), false, Some("stopped the answer")),
            (Some("SAFETY"), false, Some("stopped the answer")),
            (Some("refusal"), false, Some("stopped the answer")),
            (Some("stop"), true, Some("empty answer")),
            (None, true, Some("empty answer")),
            (Some("stop"), false, None),
            (Some("end_turn"), false, None),
            (Some("STOP"), false, None),
            (None, false, None),
        ] {
            let got = stop_note(f, empty);
            match want {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{f:?}: {got:?}"
                ),
                None => assert_eq!(got, None, "{f:?}"),
            }
        }
    }

    #[test]
    fn usd_formats_small_and_large() {
        assert_eq!(usd(-0.25), "-$0.2500");
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.000123), "$0.000123");
        assert_eq!(usd(0.5), "$0.5000");
        assert_eq!(usd(1.5), "$1.50");
        assert_eq!(usd(1234.5), "$1234.50");
        // Float noise is no cost, signed or not; a real tiny cost still shows.
        assert_eq!(usd(-1.0e-19), "$0");
        assert_eq!(usd(0.3 - 0.1 - 0.2), "$0");
        assert_eq!(usd(2.0e-12), "$0.0000000000020");
        // One cost, computed or read back from the ledger: one text.
        assert_eq!(usd(7.850000000000001e-05), usd(7.85e-05));
    }
}
