//! The usage dashboard: one self-contained HTML file (inline CSS, charts as
//! inline SVG drawn here, a few lines of inline JS for the baseline picker)
//! that opens offline in any browser and can be mailed or archived as is.
//!
//! The numbers come from one [`Snapshot`] of the ledger, so the page agrees
//! with `usage --json` for the same period. Every string that came from the
//! ledger (model ids, user ids, providers) is HTML-escaped with [`esc`].

pub mod svg;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::budget::{BudgetStatus, rfc3339};
use crate::ledger::{Breakdown, CallRow, Snapshot, SnapshotRequest, TokenMix};
use crate::optimizer::{Optimizer, ToolError, validate_user};
use crate::pricing::ModelPrice;
use crate::render::usd;
use crate::router::{Tier, default_models};

const DAY_MS: i64 = 86_400_000;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What to show.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Whole UTC days to show, today included (1..=3650).
    pub days: i64,
    /// Only this user's calls (the budget shown is theirs); `None`: everyone,
    /// with the default budget.
    pub user_id: Option<String>,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            days: 30,
            user_id: None,
        }
    }
}

/// One model the savings card can compare against: the cost of the period's
/// successful calls had they all gone to it.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOption {
    /// Label in the picker.
    pub label: String,
    /// What the period would have cost, USD.
    pub cost_usd: f64,
}

/// Everything the page shows, gathered before any HTML is written.
#[derive(Debug, Clone)]
pub struct DashboardData {
    /// When the page was made, unix ms.
    pub generated_ms: i64,
    /// First day shown, unix ms (UTC midnight).
    pub since_ms: i64,
    /// Days shown.
    pub days: i64,
    /// User filter.
    pub user_id: Option<String>,
    /// The ledger's numbers.
    pub snapshot: Snapshot,
    /// The budget, or why it could not be read.
    pub budget: Result<BudgetStatus, String>,
    /// Savings baselines; the first is the one recorded in the ledger.
    pub baselines: Vec<BaselineOption>,
}

/// Cost of a token mix at `price`, linear per token kind. (Long-context
/// surcharges apply per call and cannot be recovered from sums; ignored.)
fn mix_cost(mix: &TokenMix, price: &ModelPrice) -> f64 {
    let reasoning = mix.reasoning_tokens.min(mix.output_tokens);
    mix.input_tokens as f64 * price.input
        + mix.cache_read_tokens as f64 * price.cache_read.unwrap_or(price.input)
        + mix.cache_write_tokens as f64 * price.cache_write.unwrap_or(price.input)
        + (mix.output_tokens - reasoning) as f64 * price.output
        + reasoning as f64 * price.reasoning.unwrap_or(price.output)
}

/// Reads the ledger and budget for the page.
pub fn collect(
    core: &Optimizer,
    opts: &DashboardOptions,
    now_ms: i64,
) -> Result<DashboardData, ToolError> {
    if !(1..=3650).contains(&opts.days) {
        return Err(ToolError::Invalid(format!(
            "days must be between 1 and 3650, got {}",
            opts.days
        )));
    }
    // A blank user means every user, as for `usage` and query_usage.
    let user = match opts.user_id.as_deref().map(str::trim) {
        Some(u) if !u.is_empty() => Some(validate_user(Some(u))?),
        _ => None,
    };
    let since_ms = (now_ms.div_euclid(DAY_MS) - (opts.days - 1)) * DAY_MS;
    let snapshot = core
        .ledger()?
        .snapshot(&SnapshotRequest {
            user_id: user.clone(),
            since_ms,
            until_ms: now_ms + 1,
            breakdowns: vec![Breakdown::Model, Breakdown::Tier, Breakdown::Band],
            day_provider: true,
            top_calls: 5,
            recent: 12,
        })
        .map_err(|e| ToolError::Ledger(e.to_string()))?;
    let budget = core
        .report_budget(user.as_deref())
        .map_err(|e| e.to_string());
    // The recorded figure is each call's baseline when it was made, which
    // may be another model than the one configured now: it is labelled as
    // what it is, and the configured model gets its own re-priced option.
    let configured = core.settings().baseline_model.clone();
    let mut baselines = vec![BaselineOption {
        label: "as recorded (each call's baseline when it was made)".into(),
        cost_usd: snapshot.totals.baseline_cost_usd,
    }];
    let mut seen: Vec<String> = Vec::new();
    // OpenRouter's copies of the premium models cost what the originals
    // do: listing them would only push the Opus and GPT options off the
    // six-option menu.
    let candidates = std::iter::once(configured.as_str())
        .chain(
            default_models(Tier::Premium)
                .iter()
                .copied()
                .filter(|m| !m.starts_with("openrouter/")),
        )
        .chain(["anthropic/claude-opus-5-5", "openrouter/openai/gpt-5"]);
    for id in candidates {
        if baselines.len() >= 6 || seen.iter().any(|s| s == id) {
            continue;
        }
        if let Some(p) = core.catalog().get(id) {
            seen.push(id.to_string());
            baselines.push(BaselineOption {
                label: id.to_string(),
                cost_usd: mix_cost(&snapshot.tokens, &p),
            });
        }
    }
    Ok(DashboardData {
        generated_ms: now_ms,
        since_ms,
        days: opts.days,
        user_id: user,
        snapshot,
        budget,
        baselines,
    })
}

/// Writes the page for `core`'s ledger to `out` (default:
/// `<data dir>/dashboard.html`) and returns the path written.
pub fn write(
    core: &Optimizer,
    opts: &DashboardOptions,
    out: Option<&Path>,
    now_ms: i64,
) -> anyhow::Result<PathBuf> {
    let data = collect(core, opts, now_ms)?;
    let html = render(&data);
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => {
            crate::ledger::create_private_dir(&core.settings().data_dir)?;
            core.settings().data_dir.join("dashboard.html")
        }
    };
    std::fs::write(&path, html)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Opens `path` in the default browser with the platform's opener.
pub fn open_in_browser(path: &Path) -> std::io::Result<()> {
    let mut cmd = if cfg!(target_os = "macos") {
        std::process::Command::new("open")
    } else if cfg!(windows) {
        let mut c = std::process::Command::new("cmd");
        c.args(["/C", "start", ""]);
        c
    } else {
        std::process::Command::new("xdg-open")
    };
    cmd.arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| ())
}

fn day_label(ms: i64) -> String {
    rfc3339(ms).chars().take(10).collect()
}

fn short_time(ms: i64) -> String {
    // 2026-11-27T10:15:00Z → 11-27 10:15
    let t = rfc3339(ms);
    if t.len() >= 16 {
        format!("{} {}", &t[5..10], &t[11..16])
    } else {
        t
    }
}

/// [`usd`] with thousands separators (`$12,345.67`): dashboards show
/// big ledgers too.
pub fn money(v: f64) -> String {
    if v < 0.0 {
        return format!("-{}", money(-v));
    }
    let s = usd(v);
    let Some(rest) = s.strip_prefix('$') else {
        return s;
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let (sign, digits) = match int.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", int),
    };
    let grouped = group(digits);
    if frac.is_empty() {
        format!("${sign}{grouped}")
    } else {
        format!("${sign}{grouped}.{frac}")
    }
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    group(&n.to_string())
}

fn group(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

/// Renders the whole page.
pub fn render(d: &DashboardData) -> String {
    let snap = &d.snapshot;
    let t = &snap.totals;
    let empty = t.calls == 0 && t.failed_attempts == 0;
    let mut h = String::with_capacity(64 * 1024);
    let scope = match &d.user_id {
        Some(u) => format!("user {}", esc(u)),
        None => "all users".into(),
    };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>AI Cost Optimizer — usage dashboard</title><style>{CSS}</style></head><body data-generated-ms="{}" data-since-ms="{}"><main>
<header><div><h1><span class="logo">◆</span> AI Cost Optimizer</h1><p class="sub">Usage for {scope} · last {} days ({} → {}) · generated {} UTC</p></div></header>"#,
        d.generated_ms,
        d.since_ms,
        d.days,
        day_label(d.since_ms),
        day_label(d.generated_ms),
        esc(&rfc3339(d.generated_ms).replace('T', " ").replace('Z', ""))
    );

    // KPI cards.
    // Signed: calls dearer than the baseline count against it.
    // No recorded baseline (the baseline model has no price): no claim.
    let (saved_class, saved, saved_text, saved_note) = match t.savings_usd() {
        Some(s) => (
            if s < 0.0 { "bad-text" } else { "good" },
            s,
            money(s),
            format!(
                "{:.0}% of {} baseline",
                pct(s, t.baseline_cost_usd),
                money(t.baseline_cost_usd)
            ),
        ),
        None => ("", 0.0, "–".to_string(), "no baseline recorded".to_string()),
    };
    let avg = if t.calls > 0 {
        (t.cost_usd - t.speech_cost_usd) / t.calls as f64
    } else {
        0.0
    };
    let _ = write!(
        h,
        r#"<section class="kpis">
<div class="card kpi"><div class="kpi-label">Spend</div><div class="kpi-value" id="total-cost" data-usd="{}">{}</div><div class="kpi-note">{} input · {} output tokens</div></div>
<div class="card kpi"><div class="kpi-label">Calls</div><div class="kpi-value" id="total-calls" data-calls="{}">{}</div><div class="kpi-note"><span id="failed-attempts">{}</span> failed attempts{}</div></div>
<div class="card kpi"><div class="kpi-label">Saved vs always-premium</div><div class="kpi-value {}" id="total-saved" data-usd="{}">{}</div><div class="kpi-note">{}</div></div>
<div class="card kpi"><div class="kpi-label">Average per call</div><div class="kpi-value" id="avg-cost" data-usd="{}">{}</div><div class="kpi-note">across {} models</div></div>
</section>"#,
        t.cost_usd,
        money(t.cost_usd),
        compact(t.input_tokens),
        compact(t.output_tokens),
        t.calls,
        count(t.calls),
        count(t.failed_attempts),
        if t.unpriced_calls > 0 {
            format!(" · ⚠ {} unpriced", t.unpriced_calls)
        } else {
            String::new()
        },
        saved_class,
        saved,
        saved_text,
        saved_note,
        avg,
        money(avg),
        snap.group(Breakdown::Model).len()
    );

    if empty {
        let _ = write!(
            h,
            r#"<section class="card empty" id="empty-state"><div class="empty-icon">📭</div><h2>No calls in the last {} days yet</h2><p>The charts fill in as calls are recorded. Ask your MCP client to use <code>complete_prompt</code>, or try<br><code>ai-cost-optimizer complete "Summarise the plot of Hamlet in two lines"</code></p></section>"#,
            d.days
        );
    } else {
        cost_chart(&mut h, d);
        h.push_str(r#"<section class="grid2">"#);
        models_card(&mut h, snap);
        tiers_card(&mut h, snap);
        h.push_str("</section>");
    }
    h.push_str(r#"<section class="grid2">"#);
    savings_card(&mut h, d);
    budget_card(&mut h, &d.budget);
    h.push_str("</section>");
    if !empty {
        bands_card(&mut h, snap);
        calls_table(
            &mut h,
            "Recent calls",
            "recent-calls",
            &snap.recent,
            "Latest attempts, newest first",
        );
        calls_table(
            &mut h,
            "Most expensive calls",
            "top-calls",
            &snap.top_calls,
            "Where the money went",
        );
    }
    let _ = write!(
        h,
        r#"<footer>Generated by <code>ai-cost-optimizer dashboard</code> from the local ledger. All amounts in USD; days are UTC.</footer></main><script>{JS}</script></body></html>"#
    );
    h
}

fn compact(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.1}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f >= 1e4 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// Providers by total spend, largest first: the stacking order of the cost
/// chart and the colour of each provider everywhere on the page.
fn provider_order(snap: &Snapshot) -> Vec<(String, f64)> {
    let mut providers: Vec<(String, f64)> = Vec::new();
    for dp in &snap.day_provider {
        match providers.iter_mut().find(|(p, _)| *p == dp.provider) {
            Some(p) => p.1 += dp.cost_usd,
            None => providers.push((dp.provider.clone(), dp.cost_usd)),
        }
    }
    providers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    providers
}

/// Days per bar of the cost chart for a range of `days`: one bar a day up
/// to four months, then a week, then 30 days, so every bar keeps a few
/// pixels of its own (3,650 daily bars would paint over each other).
fn days_per_bar(days: i64) -> i64 {
    match days {
        ..=120 => 1,
        121..=730 => 7,
        _ => 30,
    }
}

fn cost_chart(h: &mut String, d: &DashboardData) {
    let snap = &d.snapshot;
    let first_day = d.since_ms.div_euclid(DAY_MS);
    let per_bar = days_per_bar(d.days);
    let bars = (d.days + per_bar - 1) / per_bar;
    // The year is shown when the range reaches into another one.
    let with_year = day_label(d.since_ms).get(..4) != day_label(d.generated_ms).get(..4);
    let labels: Vec<String> = (0..bars)
        .map(|i| {
            let l = day_label((first_day + i * per_bar) * DAY_MS);
            if with_year {
                l
            } else {
                l.get(5..).unwrap_or(&l).to_string()
            }
        })
        .collect();
    // The biggest provider sits at the bottom of each stack.
    let providers = provider_order(snap);
    let series = |name: &str| providers.iter().position(|(p, _)| p == name).unwrap_or(0);
    let mut segs: Vec<svg::Segment<'_>> = snap
        .day_provider
        .iter()
        .filter_map(|dp| {
            let day = dp.day.get(..10).and_then(|s| {
                time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()
            })?;
            let day_ms = day.midnight().assume_utc().unix_timestamp() * 1000;
            let slot = usize::try_from((day_ms.div_euclid(DAY_MS) - first_day) / per_bar).ok()?;
            Some((slot, dp))
        })
        // One segment per bar and provider: days of a bar are summed.
        .fold(
            Vec::<(usize, &str, f64, u64)>::new(),
            |mut acc, (slot, dp)| {
                match acc
                    .iter_mut()
                    .find(|(s, p, _, _)| *s == slot && *p == dp.provider)
                {
                    Some(a) => {
                        a.2 += dp.cost_usd;
                        a.3 += dp.calls;
                    }
                    None => acc.push((slot, &dp.provider, dp.cost_usd, dp.calls)),
                }
                acc
            },
        )
        .into_iter()
        .map(|(slot, provider, cost, calls)| svg::Segment {
            slot,
            series: series(provider),
            series_name: provider,
            value: cost,
            title: format!(
                "{}{} · {provider}: {} ({calls} calls)",
                if per_bar > 1 { "from " } else { "" },
                day_label((first_day + slot as i64 * per_bar) * DAY_MS),
                money(cost),
            ),
        })
        .collect();
    segs.sort_by_key(|s| (s.slot, s.series));
    let per = match per_bar {
        1 => "per UTC day".to_string(),
        n => format!("per {n} UTC days"),
    };
    let _ = write!(
        h,
        r#"<section class="card" id="cost-over-time"><div class="card-head"><h2>Cost over time</h2><span class="hint">{per}, stacked by provider</span></div>{}<div class="legend">"#,
        svg::stacked_bars(&labels, &segs)
    );
    for (i, (p, v)) in providers.iter().enumerate() {
        let _ = write!(
            h,
            r#"<span class="key"><i style="background:{}"></i>{} <b>{}</b></span>"#,
            svg::colour(i),
            esc(p),
            money(*v)
        );
    }
    h.push_str("</div></section>");
}

fn models_card(h: &mut String, snap: &Snapshot) {
    let models = snap.group(Breakdown::Model);
    let total = snap.totals.cost_usd;
    // A model's bar takes its provider's colour from the cost chart.
    let providers = provider_order(snap);
    let colour_of = |model: &str| {
        let provider = model.split_once('/').map_or(model, |(p, _)| p);
        providers
            .iter()
            .position(|(p, _)| p == provider)
            .map_or("#94a3b8", svg::colour)
    };
    let mut rows: Vec<svg::HBar<'_>> = models
        .iter()
        .take(8)
        .map(|g| svg::HBar {
            label: &g.key,
            value: g.totals.cost_usd,
            value_text: format!(
                "{} · {} calls · {:.0}%",
                money(g.totals.cost_usd),
                count(g.totals.calls),
                pct(g.totals.cost_usd, total)
            ),
            colour: colour_of(&g.key),
        })
        .collect();
    let rest: Vec<_> = models.iter().skip(8).collect();
    let rest_cost: f64 = rest.iter().map(|g| g.totals.cost_usd).sum();
    let rest_calls: u64 = rest.iter().map(|g| g.totals.calls).sum();
    let rest_label = match rest.len() {
        1 => "1 other model".to_string(),
        n => format!("{n} other models"),
    };
    if !rest.is_empty() {
        rows.push(svg::HBar {
            label: &rest_label,
            value: rest_cost,
            value_text: format!("{} · {} calls", money(rest_cost), count(rest_calls)),
            colour: "#94a3b8",
        });
    }
    let _ = write!(
        h,
        r#"<div class="card" id="model-usage"><div class="card-head"><h2>Spend by model</h2><span class="hint">{} models</span></div>{}</div>"#,
        models.len(),
        svg::hbars(&rows, "models")
    );
}

fn tier_colour(tier: &str) -> &'static str {
    match tier {
        "free" => "#10b981",
        "cheap" => "#06b6d4",
        "medium" => "#6366f1",
        "premium" => "#f59e0b",
        _ => "#94a3b8",
    }
}

fn tiers_card(h: &mut String, snap: &Snapshot) {
    let order = ["free", "cheap", "medium", "premium"];
    let mut tiers: Vec<_> = snap.group(Breakdown::Tier).iter().collect();
    tiers.sort_by_key(|g| {
        order
            .iter()
            .position(|o| *o == g.key)
            .unwrap_or(order.len())
    });
    let total_calls: u64 = tiers.iter().map(|g| g.totals.calls).sum();
    let slices: Vec<(String, f64, &str)> = tiers
        .iter()
        .map(|g| (g.key.clone(), g.totals.calls as f64, tier_colour(&g.key)))
        .collect();
    let _ = write!(
        h,
        r#"<div class="card" id="routing"><div class="card-head"><h2>Routing by tier</h2><span class="hint">share of successful calls</span></div><div class="donut-wrap">{}<table class="mini"><thead><tr><th>tier</th><th>calls</th><th>share</th><th>spend</th></tr></thead><tbody>"#,
        svg::donut(&slices, &compact(total_calls), "calls")
    );
    for g in &tiers {
        let _ = write!(
            h,
            r#"<tr><td><i class="dot" style="background:{}"></i>{}</td><td>{}</td><td>{:.0}%</td><td>{}</td></tr>"#,
            tier_colour(&g.key),
            esc(&g.key),
            count(g.totals.calls),
            pct(g.totals.calls as f64, total_calls as f64),
            money(g.totals.cost_usd)
        );
    }
    h.push_str("</tbody></table></div></div>");
}

fn savings_card(h: &mut String, d: &DashboardData) {
    // Speech is left out: the baseline covers answers only.
    let paid = d.snapshot.totals.cost_usd - d.snapshot.totals.speech_cost_usd;
    // The first baseline with a cost: the one recorded with the calls, or
    // when there is none (its model was unpriced then) the re-priced ones.
    let Some(first) = d.baselines.iter().find(|b| b.cost_usd > 0.0) else {
        return; // nothing to compare with
    };
    let base = first.cost_usd;
    let saved = base - paid;
    let w = |v: f64| {
        let max = paid.max(base);
        if max > 0.0 {
            (v / max * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        }
    };
    let _ = write!(
        h,
        r#"<div class="card" id="savings" data-paid="{paid}"><div class="card-head"><h2>Savings</h2><label class="hint">against <select id="baseline-select">"#
    );
    for b in &d.baselines {
        let _ = write!(
            h,
            r#"<option value="{}" data-cost="{}"{}>{}</option>"#,
            esc(&b.label),
            b.cost_usd,
            if std::ptr::eq(b, first) {
                " selected"
            } else {
                ""
            },
            esc(&b.label)
        );
    }
    let _ = write!(
        h,
        r#"</select></label></div>
<div class="big-savings"><span id="savings-amount" class="{}">{}</span> <span id="savings-word">{}</span> <span id="savings-pct" class="pill {}">{:.0}%</span></div>
<div class="compare"><div class="cmp-row"><span>You paid</span><div class="cmp-track"><div class="cmp-fill paid" id="paid-bar" style="width:{:.2}%"></div></div><b>{}</b></div>
<div class="cmp-row"><span>Baseline</span><div class="cmp-track"><div class="cmp-fill base" id="baseline-bar" style="width:{:.2}%"></div></div><b id="baseline-cost">{}</b></div></div>
<p class="hint">You paid: the period's cost of answers, failed attempts included (speech left out). Baseline: the successful calls, had every one gone to the baseline model (other baselines are priced from the period's token totals). The saving is conservative.</p></div>"#,
        if saved < 0.0 { "bad-text" } else { "good" },
        money(saved.abs()),
        if saved < 0.0 {
            "more than the baseline"
        } else {
            "saved"
        },
        if saved < 0.0 { "bad" } else { "good" },
        pct(saved.abs(), base),
        w(paid),
        money(paid),
        w(base),
        money(base)
    );
}

fn budget_card(h: &mut String, b: &Result<BudgetStatus, String>) {
    h.push_str(r#"<div class="card" id="budget"><div class="card-head"><h2>Budget</h2>"#);
    match b {
        Err(e) => {
            let _ = write!(
                h,
                r#"</div><p class="warn-text">The budget could not be read: {}</p></div>"#,
                esc(e)
            );
        }
        Ok(b) => {
            let frac = if b.limit_usd > 0.0 {
                b.spent_usd / b.limit_usd
            } else {
                0.0
            };
            let reserved = if b.limit_usd > 0.0 {
                b.reserved_usd / b.limit_usd
            } else {
                0.0
            };
            let forecast = if b.limit_usd > 0.0 {
                b.forecast_usd / b.limit_usd
            } else {
                0.0
            };
            let _ = write!(
                h,
                r#"<span class="hint">user {} · {} · mode {}</span></div>
<div class="budget-nums"><span class="big" id="budget-spent">{}</span> of <b>{}</b> {} <span class="pill {}">{:.1}%</span></div>
{}<div class="marks">"#,
                esc(&b.user_id),
                if b.is_default {
                    format!("{} (default budget)", esc(&b.period))
                } else {
                    esc(&b.period)
                },
                esc(b.mode.as_str()),
                money(b.spent_usd),
                money(b.limit_usd),
                b.period_words().0,
                if frac >= 1.0 {
                    "bad"
                } else if b.crossed_thresholds.is_empty() {
                    "good"
                } else {
                    "warn"
                },
                b.percent_used,
                svg::progress(frac, reserved, &b.alert_thresholds, forecast)
            );
            for t in &b.alert_thresholds {
                let _ = write!(
                    h,
                    r#"<span class="mark" style="left:{:.2}%">{:.0}%</span>"#,
                    (t * 100.0).clamp(0.0, 100.0),
                    t * 100.0
                );
            }
            let _ = write!(
                h,
                r#"</div><ul class="facts"><li><span>Remaining</span><b>{}</b></li><li><span>Held by calls in flight</span><b>{}</b></li><li><span>Forecast at {}</span><b class="{}">{}</b></li><li><span>Next alert</span><b>{}</b></li></ul></div>"#,
                money(b.remaining_usd),
                money(b.reserved_usd),
                b.period_words().1,
                if forecast > 1.0 { "bad-text" } else { "" },
                money(b.forecast_usd),
                b.next_threshold
                    .map(|t| format!("{:.0}%", t * 100.0))
                    .unwrap_or_else(|| "none left".into())
            );
        }
    }
}

fn bands_card(h: &mut String, snap: &Snapshot) {
    if snap.bands.is_empty() {
        return;
    }
    let rows: Vec<svg::HBar<'_>> = snap
        .bands
        .iter()
        .enumerate()
        .map(|(i, b)| svg::HBar {
            label: &b.band,
            value: b.avg_cost_usd,
            value_text: format!(
                "{} per call · {} calls",
                money(b.avg_cost_usd),
                count(b.calls)
            ),
            colour: ["#10b981", "#06b6d4", "#6366f1", "#f59e0b", "#94a3b8"][i.min(4)],
        })
        .collect();
    let _ = write!(
        h,
        r#"<section class="card" id="bands"><div class="card-head"><h2>Average cost per call by complexity</h2><span class="hint">complexity score band of the prompt</span></div>{}</section>"#,
        svg::hbars(&rows, "bands")
    );
}

fn calls_table(h: &mut String, title: &str, id: &str, rows: &[CallRow], hint: &str) {
    let _ = write!(
        h,
        r#"<section class="card" id="{id}"><div class="card-head"><h2>{}</h2><span class="hint">{}</span></div><div class="table-wrap"><table class="calls"><thead><tr><th>time (UTC)</th><th>user</th><th>model</th><th>tier</th><th class="num">score</th><th class="num">tokens in/out</th><th class="num">cost</th><th class="num">saved</th><th class="num">latency</th><th>status</th></tr></thead><tbody>"#,
        esc(title),
        esc(hint)
    );
    for c in rows {
        let saved = c
            .baseline_cost_usd
            .map(|b| money(b - c.cost_usd))
            .unwrap_or_else(|| "–".into());
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td class="model">{}</td><td>{}</td><td class="num">{}</td><td class="num">{} / {}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{} ms</td><td><span class="pill {}">{}</span></td></tr>"#,
            esc(&short_time(c.ts_ms)),
            esc(&c.user_id),
            esc(&c.model),
            esc(c.tier.as_deref().unwrap_or("forced")),
            c.score
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "–".into()),
            compact(c.input_tokens),
            compact(c.output_tokens),
            money(c.cost_usd),
            saved,
            c.latency_ms,
            if c.outcome == "ok" { "good" } else { "bad" },
            esc(&c.outcome)
        );
    }
    h.push_str("</tbody></table></div></section>");
}

/// The baseline picker: swaps the savings numbers for the chosen model.
/// `#baseline=N` in the URL preselects option N (links, and the browser test).
/// Formatting mirrors [`money`].
const JS: &str = r#"(function(){
var sel=document.getElementById('baseline-select');if(!sel)return;
var card=document.getElementById('savings');var paid=parseFloat(card.dataset.paid)||0;
function money(v){var a=Math.abs(v);if(a===0)return '$0';if(a<0.01)return '$'+v.toFixed(6);if(a<1)return '$'+v.toFixed(4);return '$'+v.toFixed(2);}
function update(){var base=parseFloat(sel.options[sel.selectedIndex].dataset.cost)||0;
var saved=base-paid;var max=Math.max(paid,base);var over=saved<0;
var amount=document.getElementById('savings-amount');amount.textContent=money(Math.abs(saved));amount.className=over?'bad-text':'good';
document.getElementById('savings-word').textContent=over?'more than the baseline':'saved';
var pill=document.getElementById('savings-pct');pill.textContent=(base>0?Math.round(Math.abs(saved)/base*100):0)+'%';pill.className='pill '+(over?'bad':'good');
document.getElementById('baseline-cost').textContent=money(base);
document.getElementById('paid-bar').style.width=(max>0?paid/max*100:0)+'%';
document.getElementById('baseline-bar').style.width=(max>0?base/max*100:0)+'%';}
sel.addEventListener('change',update);
var m=/baseline=(\d+)/.exec(location.hash);if(m&&sel.options[+m[1]]){sel.selectedIndex=+m[1];update();}})();"#;

const CSS: &str = r#"
:root{--bg:#f4f6fb;--card:#fff;--text:#0f172a;--muted:#64748b;--line:#e2e8f0;--track:#e9eef5;--accent:#6366f1;--good:#059669;--warn:#d97706;--bad:#dc2626;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0b1020;--card:#131a2e;--text:#e2e8f0;--muted:#94a3b8;--line:#243049;--track:#1e2842;--good:#34d399;--warn:#fbbf24;--bad:#f87171}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1240px;margin:0 auto;padding:28px 24px 40px}
header{display:flex;justify-content:space-between;align-items:flex-end;margin-bottom:20px}
h1{font-size:22px;margin:0;letter-spacing:-.01em}.logo{color:var(--accent)}
.sub{margin:4px 0 0;color:var(--muted)}
h2{font-size:15px;margin:0;font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:18px 20px;box-shadow:0 1px 2px rgba(15,23,42,.04),0 4px 16px rgba(15,23,42,.04);margin-bottom:16px;min-width:0}
.card-head{display:flex;justify-content:space-between;align-items:baseline;gap:12px;margin-bottom:12px;flex-wrap:wrap}
.hint{color:var(--muted);font-size:12px}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:16px}
.kpi-label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.kpi-value{font-size:28px;font-weight:700;margin:2px 0;font-variant-numeric:tabular-nums;letter-spacing:-.02em}
.kpi-note{color:var(--muted);font-size:12px}
.good{color:var(--good)}.bad-text{color:var(--bad)}.warn-text{color:var(--warn)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid2>.card{margin-bottom:16px}
svg.chart{display:block;width:100%;height:auto}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{fill:var(--muted);font-size:11px}
svg rect.seg{transition:opacity .15s}svg rect.seg:hover{opacity:.8}
.legend{display:flex;flex-wrap:wrap;gap:8px 18px;margin-top:8px;font-size:12px;color:var(--muted)}
.legend b{color:var(--text);font-weight:600}
.key i,.dot{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.hbars{display:flex;flex-direction:column;gap:10px}
.hbar{display:grid;grid-template-columns:1fr auto;grid-template-areas:"label value" "bar bar";align-items:baseline;gap:3px 10px}
.hbar-label{grid-area:label;font-size:12.5px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.hbar-track{grid-area:bar;width:100%;height:10px;background:var(--track);border-radius:3px}
.hbar-value{grid-area:value;text-align:right;font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums;white-space:nowrap}
.hbars.bands .hbar{grid-template-columns:110px 1fr minmax(230px,auto);grid-template-areas:"label bar value";align-items:center}
.donut-wrap{display:grid;grid-template-columns:200px 1fr;gap:18px;align-items:center}
svg.donut{max-width:200px}
svg .donut-ring{stroke:var(--track)}
svg .donut-big{fill:var(--text);font-size:7px;font-weight:700}
svg .donut-small{fill:var(--muted);font-size:3.2px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{font-weight:600;color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;text-align:left;padding:6px 8px;border-bottom:1px solid var(--line)}
td{padding:7px 8px;border-bottom:1px solid var(--line);font-size:13px}
tr:last-child td{border-bottom:0}
.num{text-align:right}
td.model{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.table-wrap{overflow-x:auto}
.pill{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;background:rgba(100,116,139,.14)}
.pill.good{background:rgba(16,185,129,.15);color:var(--good)}
.pill.warn{background:rgba(245,158,11,.18);color:var(--warn)}
.pill.bad{background:rgba(239,68,68,.15);color:var(--bad)}
.big-savings{font-size:15px;margin:4px 0 14px}
#savings-amount{font-size:30px;font-weight:700;letter-spacing:-.02em;margin-right:4px}
select{font:inherit;font-size:12px;padding:3px 6px;border-radius:8px;border:1px solid var(--line);background:var(--card);color:var(--text)}
.compare{display:flex;flex-direction:column;gap:10px}
.cmp-row{display:grid;grid-template-columns:70px 1fr 90px;gap:10px;align-items:center;font-size:13px}
.cmp-row b{text-align:right;font-variant-numeric:tabular-nums}
.cmp-track{height:14px;background:var(--track);border-radius:4px;overflow:hidden}
.cmp-fill{height:100%;border-radius:4px;transition:width .3s}
.cmp-fill.paid{background:var(--accent)}.cmp-fill.base{background:#94a3b8}
.budget-nums{margin:4px 0 12px}.budget-nums .big{font-size:30px;font-weight:700;letter-spacing:-.02em}
svg.progress{height:26px;color:var(--text)}
svg.progress .track{fill:var(--track)}
svg.progress .fill.good{fill:var(--good)}svg.progress .fill.warn{fill:var(--warn)}svg.progress .fill.over{fill:var(--bad)}
svg.progress .threshold{stroke:var(--text);stroke-width:.4;stroke-dasharray:1 .6;vector-effect:non-scaling-stroke}
svg.progress .forecast{stroke:var(--accent);stroke-width:2;vector-effect:non-scaling-stroke}
.marks{position:relative;height:18px;font-size:11px;color:var(--muted)}
.mark{position:absolute;transform:translateX(-50%);white-space:nowrap}
.facts{list-style:none;padding:0;margin:8px 0 0;display:grid;grid-template-columns:1fr 1fr;gap:6px 18px}
.facts li{display:flex;justify-content:space-between;border-bottom:1px dashed var(--line);padding:3px 0;font-size:13px}
.facts span{color:var(--muted)}
.empty{text-align:center;padding:48px 20px}.empty-icon{font-size:40px}.empty h2{font-size:18px;margin:8px 0}
.empty p{color:var(--muted)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;background:var(--track);padding:1px 6px;border-radius:5px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
@media (max-width:900px){.kpis{grid-template-columns:1fr 1fr}.grid2{grid-template-columns:1fr}.donut-wrap{grid-template-columns:1fr}}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Group, Totals};

    #[test]
    fn money_and_counts_group_thousands() {
        assert_eq!(money(0.0), "$0");
        assert_eq!(money(0.0042), "$0.004200");
        assert_eq!(money(999.5), "$999.50");
        assert_eq!(money(5712.842), "$5,712.84");
        assert_eq!(money(1_234_567.0), "$1,234,567.00");
        assert_eq!(count(968_641), "968,641");
        assert_eq!(count(12), "12");
    }

    #[test]
    fn esc_covers_html_specials() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    fn data(snapshot: Snapshot) -> DashboardData {
        DashboardData {
            generated_ms: 1_793_577_600_000,
            since_ms: 1_793_577_600_000 - 6 * DAY_MS,
            days: 7,
            user_id: Some("<bob>".into()),
            snapshot,
            budget: Err("no ledger <here>".into()),
            baselines: vec![BaselineOption {
                label: "m<x>".into(),
                cost_usd: 2.0,
            }],
        }
    }

    /// No baseline recorded with the calls (its model was unpriced then):
    /// the card compares with the re-priced ones instead of vanishing.
    #[test]
    fn savings_fall_back_to_a_repriced_baseline() {
        let mut d = data(Snapshot {
            totals: Totals {
                calls: 2,
                cost_usd: 0.5,
                ..Totals::default()
            },
            ..Snapshot::default()
        });
        d.baselines = vec![
            BaselineOption {
                label: "as recorded".into(),
                cost_usd: 0.0,
            },
            BaselineOption {
                label: "premium".into(),
                cost_usd: 2.0,
            },
        ];
        let html = render(&d);
        assert!(html.contains(r#"id="savings""#), "no savings card");
        assert!(
            html.contains(r#"<option value="premium" data-cost="2" selected>"#),
            "the re-priced baseline is shown first"
        );
    }

    #[test]
    fn empty_ledger_renders_the_empty_state() {
        let html = render(&data(Snapshot::default()));
        assert!(html.contains(r#"id="empty-state""#));
        assert!(!html.contains("<bob>") && html.contains("&lt;bob&gt;"));
        assert!(!html.contains("m<x>") && !html.contains("<here>"));
    }

    #[test]
    fn hostile_model_ids_are_escaped() {
        let evil = "<script>alert(1)</script>";
        let snap = Snapshot {
            totals: Totals {
                calls: 1,
                cost_usd: 1.0,
                ..Totals::default()
            },
            groups: vec![(
                Breakdown::Model,
                vec![Group {
                    key: evil.into(),
                    totals: Totals {
                        calls: 1,
                        cost_usd: 1.0,
                        ..Totals::default()
                    },
                }],
            )],
            ..Snapshot::default()
        };
        let html = render(&data(snap));
        assert!(!html.contains(evil));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Exactly one script element: ours.
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn mix_cost_is_linear_in_token_kinds() {
        let p = ModelPrice {
            id: "a/b".into(),
            provider: crate::providers::ProviderId::Anthropic,
            input: 1.0,
            output: 10.0,
            cache_read: Some(0.1),
            cache_write: None,
            reasoning: Some(20.0),
            long: Vec::new(),
            max_input_tokens: None,
            max_output_tokens: None,
            deprecation_date: None,
            origin: crate::pricing::PriceOrigin::Bundled,
        };
        let mix = TokenMix {
            input_tokens: 3,
            cache_read_tokens: 10,
            cache_write_tokens: 2,
            output_tokens: 5,
            reasoning_tokens: 1,
        };
        // 3·1 + 10·0.1 + 2·1 + 4·10 + 1·20
        assert!((mix_cost(&mix, &p) - 66.0).abs() < 1e-9);
    }
}
