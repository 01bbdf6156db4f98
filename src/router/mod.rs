//! Routing: score the prompt, map the score to a tier, and pick the cheapest
//! enabled model of that tier that fits the context window and the budget.
//!
//! Every step that changes the outcome adds a sentence to
//! [`RoutePlan::notes`], so a user can always see *why* a model was chosen.

pub mod calibrate;
pub mod scorer;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pricing::{Catalog, ModelPrice};
use crate::providers::{ProviderId, Registry};
use crate::{render, tokens};

pub use scorer::{Reason, Score};

/// Model quality/price bands, cheapest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Local or free models.
    Free,
    /// Small, fast, inexpensive models.
    Cheap,
    /// Capable mid-priced models.
    Medium,
    /// The strongest models.
    Premium,
}

impl Tier {
    /// All tiers, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Cheap, Tier::Medium, Tier::Premium];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Cheap => "cheap",
            Tier::Medium => "medium",
            Tier::Premium => "premium",
        }
    }

    /// Parses a tier name.
    pub fn parse(s: &str) -> Option<Tier> {
        match s.trim().to_ascii_lowercase().as_str() {
            "free" => Some(Tier::Free),
            "cheap" => Some(Tier::Cheap),
            "medium" => Some(Tier::Medium),
            "premium" => Some(Tier::Premium),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Score boundaries free|cheap, cheap|medium, medium|premium.
pub const DEFAULT_TIER_THRESHOLDS: [f64; 3] = [0.25, 0.5, 0.75];

/// A score this close to a boundary is "unsure": by default the cheaper
/// of the two tiers wins (the stronger one when quality is preferred).
pub const UNSURE_MARGIN: f64 = 0.03;

/// Which way an unsure score is rounded: the issue's "cost-aware default
/// when unsure, unless the user asks for quality".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    /// A score within [`UNSURE_MARGIN`] above a boundary takes the cheaper
    /// tier below it.
    #[default]
    Cost,
    /// A score within [`UNSURE_MARGIN`] below a boundary takes the
    /// stronger tier above it (and one just above keeps its tier).
    Quality,
}

impl Preference {
    /// The setting's name: `cost` or `quality`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preference::Cost => "cost",
            Preference::Quality => "quality",
        }
    }

    /// Parses `cost` or `quality` (any case, trimmed).
    pub fn parse(s: &str) -> Option<Preference> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cost" => Some(Preference::Cost),
            "quality" => Some(Preference::Quality),
            _ => None,
        }
    }
}

impl std::fmt::Display for Preference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The index of the tier a score points to under boundaries `t`, and
/// whether it is "unsure": within [`UNSURE_MARGIN`] above the boundary
/// below it, with the tier below switched on (boundaries set equal make a
/// tier empty, and an unsure score must not land in it).
pub(crate) fn scored_tier_index(t: [f64; 3], score: f64) -> (usize, bool) {
    let idx = t.iter().filter(|b| score >= **b).count().min(3);
    let below_open = |j: usize| t[j] > if j == 0 { 0.0 } else { t[j - 1] };
    let unsure = idx > 0 && score - t[idx - 1] < UNSURE_MARGIN && below_open(idx - 1);
    (idx, unsure)
}

/// Whether `score`, in tier `idx` under boundaries `t`, is within
/// [`UNSURE_MARGIN`] below the boundary above it, with the tier above
/// switched on: where a caller who prefers quality steps up. The mirror of
/// the unsure rule in [`scored_tier_index`]: the same strict margin, and a
/// tier is off when its band is empty (premium's when its boundary is 1.0,
/// as free's is when its boundary is 0.0).
pub(crate) fn near_tier_above(t: [f64; 3], idx: usize, score: f64) -> bool {
    let above_open = |j: usize| (if j == 2 { 1.0 } else { t[j + 1] }) > t[j];
    idx < 3 && t[idx] - score < UNSURE_MARGIN && above_open(idx)
}

/// The model an "always premium" user would call; savings are measured
/// against it. The first premium default, so a user's savings are measured
/// against what the premium tier would have cost.
pub const DEFAULT_BASELINE_MODEL: &str = "anthropic/claude-sonnet-5-5";

/// Output tokens assumed for the *expected* cost of a call (the worst case
/// uses `max_tokens`). A typical chat answer is a few hundred tokens.
pub const EXPECTED_OUTPUT_TOKENS: u64 = 400;

/// Default models per tier, in preference order when prices tie. Every id
/// is checked against the bundled catalog by a unit test.
pub fn default_models(tier: Tier) -> &'static [&'static str] {
    match tier {
        Tier::Free => &[
            "ollama/llama3.1",
            "gemini/gemma-4-31b-it",
            "openrouter/google/gemma-4-31b-it:free",
        ],
        Tier::Cheap => &[
            "gemini/gemini-2.5-flash-lite",
            "deepseek/deepseek-v3.2",
            "cerebras/gpt-oss-120b",
            // Priced like the cheap tier, though it is a medium model:
            // without it here, a cheaper tier could cost more than medium
            // (`a_cheaper_tier_never_costs_more`).
            "anthropic/claude-haiku-5-5",
            // OpenRouter's gemini-2.5-flash-lite was retired 2026-10-20.
            "openrouter/openai/gpt-oss-120b",
        ],
        // Claude's newer generation costs less than the one before it
        // (Haiku 5.5 a tenth of Haiku 4.5, Sonnet 5.5 two thirds of 4.6):
        // the older model stays listed as the fallback for an account or
        // region without the newer one. `no_newer_cheaper_sibling_is_left_out`
        // checks this against the bundled catalog.
        Tier::Medium => &[
            "gemini/gemini-3-flash-preview",
            "anthropic/claude-haiku-5-5",
            "anthropic/claude-haiku-4-5",
            "deepseek/deepseek-v4-pro",
            "openrouter/anthropic/claude-haiku-5.5",
            "openrouter/anthropic/claude-haiku-4.5",
        ],
        Tier::Premium => &[
            "anthropic/claude-sonnet-5-5",
            "anthropic/claude-sonnet-4-6",
            "gemini/gemini-3.1-pro-preview",
            "openrouter/anthropic/claude-sonnet-5.5",
            "openrouter/anthropic/claude-sonnet-4.6",
        ],
    }
}

/// Tier lists and thresholds in force.
#[derive(Debug, Clone)]
pub struct Router {
    thresholds: [f64; 3],
    tiers: BTreeMap<Tier, Vec<String>>,
}

/// What the caller asks of one routing decision.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest<'a> {
    /// The user prompt.
    pub prompt: &'a str,
    /// Optional system prompt.
    pub system: Option<&'a str>,
    /// Output limit.
    pub max_tokens: u32,
    /// Most this one call may cost (worst case), USD.
    pub budget_limit: Option<f64>,
    /// Only this provider.
    pub force_provider: Option<ProviderId>,
    /// Exactly this model (canonical id).
    pub force_model: Option<String>,
    /// Exactly this tier.
    pub tier: Option<Tier>,
    /// Remaining room in the user's budget, USD.
    pub budget_remaining: Option<f64>,
    /// The remaining room is the global budget's (for wording refusals).
    pub remaining_is_global: bool,
    /// Past a budget threshold in `downgrade` mode: prefer one tier cheaper.
    pub downgrade: bool,
    /// Which tier an unsure score takes: the cheaper (default) or the
    /// stronger of the two.
    pub prefer: Preference,
    /// Today's date (UTC, `YYYY-MM-DD`): tier models the catalog says are
    /// retired by then are skipped. `None`: not checked.
    pub today: Option<String>,
}

/// One model considered, with its estimated cost for this prompt.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Candidate {
    /// Canonical id, `provider/model`.
    pub model: String,
    /// Provider serving it.
    pub provider: ProviderId,
    /// Tier it belongs to.
    pub tier: Tier,
    /// Estimated input tokens (provider-adjusted).
    pub estimated_input_tokens: u64,
    /// Expected cost, assuming a typical answer length.
    pub estimated_cost_usd: f64,
    /// Cost if the answer uses all of `max_tokens`.
    pub worst_case_cost_usd: f64,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// Whether its provider is enabled here.
    pub available: bool,
}

/// The outcome of routing: the models to try, in order, and why.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RoutePlan {
    /// Complexity score, 0.0 (trivial) to 1.0 (needs the strongest model).
    pub score: f64,
    /// The features that moved the score most.
    pub reasons: Vec<Reason>,
    /// The tier the score alone points to.
    pub scored_tier: Tier,
    /// The tier chosen after overrides, availability and budget.
    pub tier: Tier,
    /// Models to try, best first; later ones are fallbacks.
    pub candidates: Vec<Candidate>,
    /// The best option of each other tier, for comparison.
    pub alternatives: Vec<Candidate>,
    /// The always-premium baseline for this prompt.
    pub baseline: Option<Candidate>,
    /// Output tokens assumed by `estimated_cost_usd`.
    pub assumed_output_tokens: u64,
    /// Sentences explaining each decision.
    pub notes: Vec<String>,
}

/// Why no model could be chosen; the message names the argument at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteError(pub String);

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteError {}

impl Router {
    /// A router with `thresholds` and the tier lists from config (missing
    /// tiers use the defaults).
    pub fn new(thresholds: [f64; 3], overrides: &BTreeMap<Tier, Vec<String>>) -> Router {
        let tiers = Tier::ALL
            .iter()
            .map(|t| {
                let list = overrides
                    .get(t)
                    .cloned()
                    .unwrap_or_else(|| default_models(*t).iter().map(|s| s.to_string()).collect());
                (*t, list)
            })
            .collect();
        Router { thresholds, tiers }
    }

    /// The tier routing uses for `score` when the caller forces nothing and
    /// no budget mode intervenes: the scored tier, one cheaper when the
    /// score is unsure (the cost-aware default), or one stronger when it is
    /// just below the boundary above and quality is preferred.
    pub fn routed_tier(&self, score: f64, prefer: Preference) -> Tier {
        match (self.tier_for(score), prefer) {
            ((t, _), Preference::Quality) if near_tier_above(self.thresholds, t.index(), score) => {
                Tier::ALL[t.index() + 1]
            }
            ((t, _), Preference::Quality) => t,
            ((t, true), Preference::Cost) if t > Tier::Free => Tier::ALL[t.index() - 1],
            ((t, _), Preference::Cost) => t,
        }
    }

    /// The model routing would try first for a typical short prompt in
    /// `tier`: the cheapest enabled one of the nearest tier that has one
    /// (the same, then stronger, then cheaper, as [`Router::plan`] looks);
    /// the tier's first listed model when no provider is enabled at all.
    pub fn typical_model(
        &self,
        tier: Tier,
        catalog: &Catalog,
        registry: &Registry,
    ) -> Option<String> {
        /// Input tokens of the "typical short prompt" the choice is priced on.
        const TYPICAL_INPUT_TOKENS: u64 = 100;
        self.serving_models(tier, catalog, registry)
            .into_iter()
            .map(|p| {
                let cost = p.estimate(TYPICAL_INPUT_TOKENS, EXPECTED_OUTPUT_TOKENS);
                (cost, p.id)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, id)| id)
            .or_else(|| self.models(tier).first().cloned())
    }

    /// The tier a call routed to `tier` lands in: that tier, or the nearest
    /// one with a priced, enabled model (as [`Router::serving_models`]
    /// looks); `tier` itself when no provider of any tier is enabled.
    pub fn serving_tier(&self, tier: Tier, catalog: &Catalog, registry: &Registry) -> Tier {
        search_order(tier)
            .into_iter()
            .find(|t| {
                self.models(*t)
                    .iter()
                    .filter_map(|m| catalog.get(m))
                    .any(|p| registry.is_enabled(p.provider))
            })
            .unwrap_or(tier)
    }

    /// The priced, enabled models a call routed to `tier` can land on: that
    /// tier's, or the nearest tier's that has any (the same, then
    /// stronger, then cheaper, as [`Router::plan`] looks); empty when no
    /// provider of any tier is enabled.
    pub fn serving_models(
        &self,
        tier: Tier,
        catalog: &Catalog,
        registry: &Registry,
    ) -> Vec<ModelPrice> {
        self.serving_models_of(tier, catalog, registry, None)
    }

    /// [`Router::serving_models`], of one provider's models only when
    /// `only` names one (a call made with `force_provider`).
    pub fn serving_models_of(
        &self,
        tier: Tier,
        catalog: &Catalog,
        registry: &Registry,
        only: Option<ProviderId>,
    ) -> Vec<ModelPrice> {
        search_order(tier)
            .into_iter()
            .map(|t| {
                self.models(t)
                    .iter()
                    .filter_map(|m| catalog.get(m))
                    .filter(|p| registry.is_enabled(p.provider))
                    .filter(|p| only.is_none_or(|o| o == p.provider))
                    .collect::<Vec<_>>()
            })
            .find(|l| !l.is_empty())
            .unwrap_or_default()
    }

    /// The tier a score points to, and whether it is within
    /// [`UNSURE_MARGIN`] above the boundary below it.
    pub fn tier_for(&self, score: f64) -> (Tier, bool) {
        let (idx, unsure) = scored_tier_index(self.thresholds, score);
        (Tier::ALL[idx], unsure)
    }

    /// Models configured for `tier`.
    /// The score boundaries free|cheap, cheap|medium, medium|premium in
    /// force (`doctor` shows them, e.g. after `calibrate --apply`).
    pub fn thresholds(&self) -> [f64; 3] {
        self.thresholds
    }

    /// The models listed for `tier`, best first.
    pub fn models(&self, tier: Tier) -> &[String] {
        self.tiers.get(&tier).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The tier whose list contains `model`, if any (the cheapest of them
    /// when several do).
    pub fn tier_of(&self, model: &str) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .find(|t| self.models(*t).iter().any(|m| m == model))
    }

    /// Of the tiers whose lists contain `model`, the one nearest `around`
    /// (the cheaper on a tie). A forced model in two tiers (Claude Haiku 5.5
    /// is in cheap and medium) is recorded under the one routing would have
    /// used, so calibration does not read a medium prompt forced to the
    /// medium tier's own model as an override down to cheap.
    pub fn tier_of_near(&self, model: &str, around: Tier) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|t| self.models(*t).iter().any(|m| m == model))
            .min_by_key(|t| (t.index().abs_diff(around.index()), t.index()))
    }

    /// Decides which models to call for `req`, in order.
    pub fn plan(
        &self,
        req: &RouteRequest<'_>,
        catalog: &Catalog,
        registry: &Registry,
        baseline_model: &str,
    ) -> Result<RoutePlan, RouteError> {
        let score = scorer::score(req.prompt);
        let (scored_tier, unsure) = self.tier_for(score.value);
        let mut notes = Vec::new();
        let input_cache = tokens::PromptCount::of(req.system, req.prompt);
        let candidate = |price: &ModelPrice, tier: Tier| {
            let input = input_cache.for_model(price.provider, &price.id);
            Candidate {
                model: price.id.clone(),
                provider: price.provider,
                tier,
                estimated_input_tokens: input,
                estimated_cost_usd: price
                    .estimate(input, EXPECTED_OUTPUT_TOKENS.min(req.max_tokens as u64)),
                // The request is capped at the model's output limit, so a
                // max_tokens above it must not inflate the worst case (a
                // wrongful step-down, or a hold larger than the call).
                worst_case_cost_usd: price
                    .worst_case(input, price.output_cap(req.max_tokens) as u64),
                input_per_mtok: price.input_per_mtok(),
                output_per_mtok: price.output_per_mtok(),
                available: registry.is_enabled(price.provider),
            }
        };

        // The baseline is shown whether or not its provider is enabled.
        let baseline = catalog
            .get(baseline_model)
            .map(|p| candidate(&p, Tier::Premium));

        // A forced model short-circuits everything but the budget checks.
        if let Some(model) = &req.force_model {
            let price = catalog
                .get_or_unpriced(model)
                .ok_or_else(|| RouteError(format!("force_model: unknown model {model:?}")))?;
            if let Some(p) = req.force_provider
                && p != price.provider
            {
                return Err(RouteError(format!(
                    "force_model {model:?} is served by {}, not force_provider {p}",
                    price.provider
                )));
            }
            if !registry.is_enabled(price.provider) {
                return Err(RouteError(not_enabled(price.provider, "force_model")));
            }
            // The model decides the tier. A different tier asked for too
            // is a contradiction: refused, rather than answered by the model
            // and recorded under a tier it is not in (calibration would
            // read that as the caller overriding the router).
            let model_tier = self.tier_of_near(model, self.routed_tier(score.value, req.prefer));
            // A model listed in several tiers may be forced with any of them.
            if let Some(t) = req.tier
                && !self.models(t).iter().any(|m| m == model)
            {
                return Err(RouteError(format!(
                    "force_model {model:?} {} and tier {t} contradict each other; give one or the other",
                    match model_tier {
                        Some(mt) => format!("is a {mt} model"),
                        None => "is in no routing tier".to_string(),
                    }
                )));
            }
            let tier = req.tier.or(model_tier).unwrap_or(scored_tier);
            let c = candidate(&price, tier);
            check_context(&price, c.estimated_input_tokens, "force_model")?;
            check_budget(&c, req)?;
            notes.push(format!(
                "{model} was forced by the caller; routing skipped."
            ));
            if price.origin == crate::pricing::PriceOrigin::Unknown {
                notes.push(format!(
                    "{model} has no known price: its cost is recorded as unpriced and the budget \
                     cannot hold a worst case for it (add [pricing.overrides] to price it)."
                ));
            }
            return Ok(RoutePlan {
                score: score.value,
                reasons: score.reasons(3),
                scored_tier,
                tier,
                candidates: vec![c],
                alternatives: Vec::new(),
                baseline,
                assumed_output_tokens: EXPECTED_OUTPUT_TOKENS.min(req.max_tokens as u64),
                notes,
            });
        }

        if let Some(p) = req.force_provider
            && !registry.is_enabled(p)
        {
            return Err(RouteError(not_enabled(p, "force_provider")));
        }

        // Every usable model, grouped by tier and sorted by expected cost.
        let mut by_tier: BTreeMap<Tier, Vec<Candidate>> = BTreeMap::new();
        let mut skipped_unpriced = Vec::new();
        let mut skipped_context = Vec::new();
        let mut skipped_retired = Vec::new();
        for tier in Tier::ALL {
            let mut list = Vec::new();
            for id in self.models(tier) {
                let Some(price) = catalog.get(id) else {
                    skipped_unpriced.push(id.clone());
                    continue;
                };
                if !registry.is_enabled(price.provider)
                    || req.force_provider.is_some_and(|p| p != price.provider)
                {
                    continue;
                }
                // Past its provider's announced retirement the model
                // fails (or is about to), and its fallback is dearer.
                if let (Some(retired), Some(today)) = (&price.deprecation_date, &req.today)
                    && retired.as_str() <= today.as_str()
                {
                    skipped_retired.push(format!("{id} (retired {retired})"));
                    continue;
                }
                let c = candidate(&price, tier);
                if price
                    .max_input_tokens
                    .is_some_and(|max| c.estimated_input_tokens > max)
                {
                    skipped_context.push(c.model.clone());
                    continue;
                }
                list.push(c);
            }
            list.sort_by(|a, b| a.estimated_cost_usd.total_cmp(&b.estimated_cost_usd));
            by_tier.insert(tier, list);
        }
        if !skipped_unpriced.is_empty() {
            notes.push(format!(
                "Skipped models with no known price: {} (add [pricing.overrides] to use them).",
                skipped_unpriced.join(", ")
            ));
        }
        if !skipped_retired.is_empty() {
            notes.push(format!(
                "Skipped models past their deprecation date: {} (set [routing.tiers] to replace them).",
                skipped_retired.join(", ")
            ));
        }
        if !skipped_context.is_empty() {
            notes.push(format!(
                "Skipped models whose context window is smaller than the prompt: {}.",
                skipped_context.join(", ")
            ));
        }

        // Stepping down a tier (an unsure score, the downgrade mode) is
        // meant to save money; with tier lists where the lower tier's
        // cheapest usable model costs more than the upper one's (custom
        // tiers, or a catalog refresh) it would not, so it is not done.
        // A tier's cost is that of its cheapest model where a call routed
        // to it lands (the nearest tier with a usable model).
        let landing_cost = |t: Tier| {
            search_order(t)
                .into_iter()
                .find_map(|x| by_tier.get(&x).and_then(|l| l.first()))
                .map(|c| c.estimated_cost_usd)
        };
        // One tier cheaper than `from`, unless that costs more here; the
        // note says which, after `why`.
        let step_down = |from: Tier, why: &str, notes: &mut Vec<String>| {
            let lower = Tier::ALL[from.index() - 1];
            match (landing_cost(lower), landing_cost(from)) {
                (Some(lo), Some(hi)) if lo > hi => {
                    notes.push(format!(
                        "{why}, but the {lower} tier's cheapest model costs more here (~{} against ~{}), so the {from} tier is kept.",
                        render::usd(lo),
                        render::usd(hi)
                    ));
                    from
                }
                _ => {
                    notes.push(format!("{why}, so the cheaper {lower} tier is used."));
                    lower
                }
            }
        };
        let mut target = scored_tier;
        notes.push(format!(
            "Complexity {:.2} points to the {scored_tier} tier (boundaries {:.2}/{:.2}/{:.2}).",
            score.value, self.thresholds[0], self.thresholds[1], self.thresholds[2]
        ));
        if let Some(t) = req.tier {
            target = t;
            notes.push(format!("The caller asked for the {t} tier."));
        } else if req.prefer == Preference::Quality {
            if near_tier_above(self.thresholds, scored_tier.index(), score.value) {
                target = Tier::ALL[target.index() + 1];
                notes.push(format!(
                    "The score is within {UNSURE_MARGIN} of the boundary above and quality is preferred, so the stronger {target} tier is used."
                ));
            } else if unsure {
                notes.push(format!(
                    "The score is within {UNSURE_MARGIN} of the boundary below and quality is preferred, so the {target} tier is kept."
                ));
            }
        } else if unsure {
            let why = format!("The score is within {UNSURE_MARGIN} of the boundary");
            target = step_down(target, &why, &mut notes);
        }
        if req.downgrade && req.tier.is_none() && target > Tier::Free {
            target = step_down(
                target,
                "Budget threshold passed in downgrade mode",
                &mut notes,
            );
        }

        // Nearest tier with a usable model: same, then stronger, then cheaper.
        let order = search_order(target);
        let Some(mut chosen) = order
            .iter()
            .copied()
            .find(|t| by_tier.get(t).is_some_and(|l| !l.is_empty()))
        else {
            let scope = match req.force_provider {
                Some(p) => format!("for force_provider {p}"),
                None => "among the enabled providers".to_string(),
            };
            // Models there are, but the prompt fits none of them: say that,
            // not "enable a provider".
            if !skipped_context.is_empty() {
                return Err(RouteError(format!(
                    "the prompt (about {} tokens) is longer than the context window of every \
                     model available {scope} ({}); shorten it",
                    input_cache.o200k(),
                    skipped_context.join(", ")
                )));
            }
            // Providers are enabled, but no tier lists a model of theirs
            // (HuggingFace's models are in no default tier): "enable a
            // provider" would send the user after the wrong fix.
            let enabled: Vec<&str> = registry
                .enabled()
                .filter(|e| req.force_provider.is_none_or(|p| p == e.spec.id))
                .filter(|e| e.spec.id != ProviderId::Cartesia)
                .map(|e| e.spec.id.as_str())
                .collect();
            if !enabled.is_empty() {
                return Err(RouteError(format!(
                    "no routing tier lists a priced model of {} (enabled); add some under \
                     [routing.tiers] in the config file, or give force_model",
                    enabled.join(", ")
                )));
            }
            return Err(RouteError(format!(
                "no priced model is available {scope}; enable a provider \
                 (ai-cost-optimizer doctor shows how) or configure [routing.tiers]"
            )));
        };
        // A tier the caller asked for is honoured exactly: never swapped
        // for a neighbour they did not ask for (which may cost ten times
        // more, or answer worse).
        if let Some(t) = req.tier
            && chosen != t
        {
            let too_small: Vec<&str> = self
                .models(t)
                .iter()
                .filter(|m| skipped_context.contains(m))
                .map(String::as_str)
                .collect();
            let forced_out = req.force_provider.filter(|p| {
                !self
                    .models(t)
                    .iter()
                    .filter_map(|m| catalog.get(m))
                    .any(|price| price.provider == *p)
            });
            return Err(RouteError(if let Some(p) = forced_out {
                format!(
                    "tier {t} and force_provider {p} contradict each other: no model of \
                     {p} is in the {t} tier (its models: {}); give one or the other",
                    self.models(t).join(", ")
                )
            } else if too_small.is_empty() {
                format!(
                    "tier {t}: no model of the {t} tier is available (its models: {}); \
                     enable one of their providers or leave tier unset",
                    self.models(t).join(", ")
                )
            } else {
                format!(
                    "tier {t}: the prompt is longer than the context window of every \
                     available {t} model ({}); shorten it or leave tier unset",
                    too_small.join(", ")
                )
            }));
        }
        if chosen != target {
            notes.push(format!(
                "No enabled model in the {target} tier; using the {chosen} tier instead."
            ));
        }

        // Respect the per-call limit and the remaining budget: step down to
        // cheaper tiers until the worst case fits.
        let cap = cap_of(req);
        if let Some((cap, what)) = cap {
            let fits = |c: &Candidate| c.worst_case_cost_usd <= cap;
            if !by_tier[&chosen].iter().any(fits) {
                let cheaper = Tier::ALL[..chosen.index()]
                    .iter()
                    .rev()
                    .copied()
                    .find(|t| by_tier[t].iter().any(fits));
                match cheaper {
                    Some(_) if req.tier.is_some() => {
                        return Err(RouteError(format!(
                            "tier {chosen}: no {chosen} model fits {what} of {} in the \
                             worst case (max_tokens {}); {}",
                            render::usd(cap),
                            req.max_tokens,
                            budget_advice(what)
                        )));
                    }
                    Some(t) => {
                        notes.push(format!(
                            "No {chosen} model fits {what} of {} in the worst case; \
                             stepped down to the {t} tier.",
                            render::usd(cap)
                        ));
                        chosen = t;
                    }
                    None => {
                        let cheapest = by_tier
                            .values()
                            .flatten()
                            .map(|c| c.worst_case_cost_usd)
                            .fold(f64::INFINITY, f64::min);
                        return Err(RouteError(format!(
                            "{what} of {} is below the cheapest available worst case \
                             ({} with max_tokens {}); {}",
                            render::usd(cap),
                            render::usd(cheapest),
                            req.max_tokens,
                            budget_advice(what)
                        )));
                    }
                }
            }
            for list in by_tier.values_mut() {
                list.retain(fits);
            }
        }

        // Try list: the chosen tier's models, then the neighbours' best
        // (not when the caller asked for this tier).
        let mut candidates: Vec<Candidate> = by_tier[&chosen].clone();
        let neighbours = if req.tier.is_some() {
            0
        } else {
            Tier::ALL.len()
        };
        for t in search_order(chosen).into_iter().skip(1).take(neighbours) {
            // A model listed in two tiers (Claude Haiku 5.5 is priced as a
            // cheap one) is tried once: the same model again is no fallback.
            if let Some(best) = by_tier.get(&t).and_then(|l| {
                l.iter()
                    .find(|c| !candidates.iter().any(|x| x.model == c.model))
            }) {
                candidates.push(best.clone());
            }
        }
        candidates.truncate(4);
        // Then the nearest, cheapest model of every provider not on it yet:
        // a provider-wide failure (rate limit, outage, bad key) skips that
        // provider's other models, so a list of one provider's models (the
        // cheapest of every tier can all be Gemini) had no fallback at all.
        for t in search_order(chosen).into_iter().take(1 + neighbours) {
            for c in by_tier.get(&t).into_iter().flatten() {
                if !candidates.iter().any(|x| x.provider == c.provider) {
                    candidates.push(c.clone());
                }
            }
        }
        let alternatives = Tier::ALL
            .iter()
            .filter(|t| **t != chosen)
            .filter_map(|t| by_tier.get(t).and_then(|l| l.first()).cloned())
            .filter(|a| !candidates.iter().any(|c| c.model == a.model))
            .collect();
        if let Some(first) = candidates.first() {
            notes.push(format!(
                "{} is the cheapest enabled {chosen} model for this prompt (~{}).",
                first.model,
                render::usd(first.estimated_cost_usd)
            ));
        }
        Ok(RoutePlan {
            score: score.value,
            reasons: score.reasons(3),
            scored_tier,
            tier: chosen,
            candidates,
            alternatives,
            baseline,
            assumed_output_tokens: EXPECTED_OUTPUT_TOKENS.min(req.max_tokens as u64),
            notes,
        })
    }
}

/// Tiers to look in, nearest first: the target, stronger ones, then cheaper.
fn search_order(target: Tier) -> Vec<Tier> {
    let i = target.index();
    let mut order = vec![target];
    order.extend(Tier::ALL[i + 1..].iter().copied());
    order.extend(Tier::ALL[..i].iter().rev().copied());
    order
}

/// The tighter of the per-call limit and the remaining budget.
fn cap_of(req: &RouteRequest<'_>) -> Option<(f64, &'static str)> {
    let remaining = if req.remaining_is_global {
        "the remaining global budget"
    } else {
        "the remaining budget"
    };
    match (req.budget_limit, req.budget_remaining) {
        (Some(l), Some(r)) if r < l => Some((r.max(0.0), remaining)),
        (Some(l), _) => Some((l, "budget_limit")),
        (None, Some(r)) => Some((r.max(0.0), remaining)),
        (None, None) => None,
    }
}

fn check_budget(c: &Candidate, req: &RouteRequest<'_>) -> Result<(), RouteError> {
    if let Some((cap, what)) = cap_of(req)
        && c.worst_case_cost_usd > cap
    {
        return Err(RouteError(format!(
            "{} could cost up to {} with max_tokens {}, above {what} of {}; {}",
            c.model,
            render::usd(c.worst_case_cost_usd),
            req.max_tokens,
            render::usd(cap),
            budget_advice(what)
        )));
    }
    Ok(())
}

fn budget_advice(what: &str) -> &'static str {
    if what == "budget_limit" {
        "raise budget_limit or lower max_tokens"
    } else {
        // Whatever the interface: MCP's tool or the CLI (HTTP's budget
        // endpoint is the CLI's, for an admin key).
        "raise the budget's limit (set_budget, or `ai-cost-optimizer budget --set`), lower max_tokens, or wait for the next period"
    }
}

fn check_context(price: &ModelPrice, input: u64, field: &str) -> Result<(), RouteError> {
    if let Some(max) = price.max_input_tokens
        && input > max
    {
        return Err(RouteError(format!(
            "prompt: about {input} tokens, more than the {max}-token context window of {} ({field})",
            price.id
        )));
    }
    Ok(())
}

fn not_enabled(p: ProviderId, field: &str) -> String {
    let spec = crate::providers::spec(p);
    let how = if spec.key_envs.is_empty() {
        format!("set {} or start it locally", spec.base_url_env)
    } else {
        format!("set {}", spec.key_envs.join(" or "))
    };
    format!("{field}: provider {p} is not enabled; {how}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ChatRequest, ChatResponse, Provider, ProviderError, SPECS, StreamSink};
    use std::sync::Arc;

    struct Never(ProviderId);
    #[async_trait::async_trait]
    impl Provider for Never {
        fn id(&self) -> ProviderId {
            self.0
        }
        async fn complete(
            &self,
            _: &ChatRequest,
            _: &dyn StreamSink,
        ) -> Result<ChatResponse, ProviderError> {
            unreachable!("routing never calls providers")
        }
    }

    fn registry(ids: &[ProviderId]) -> Registry {
        let mut r = Registry::default();
        for id in ids {
            let spec = SPECS.iter().copied().find(|s| s.id == *id).unwrap();
            r.insert(spec, Arc::new(Never(*id)));
        }
        r
    }

    fn router() -> Router {
        Router::new(DEFAULT_TIER_THRESHOLDS, &BTreeMap::new())
    }

    /// The default router's plan over the bundled catalog.
    fn plan_of(rq: &RouteRequest<'_>, reg: &Registry) -> Result<RoutePlan, RouteError> {
        router().plan(rq, &Catalog::bundled(), reg, DEFAULT_BASELINE_MODEL)
    }

    fn req(prompt: &str) -> RouteRequest<'_> {
        RouteRequest {
            prompt,
            max_tokens: 1024,
            ..RouteRequest::default()
        }
    }

    #[test]
    fn every_default_model_is_priced() {
        let c = Catalog::bundled();
        for t in Tier::ALL {
            for m in default_models(t) {
                let price = c.get(m);
                assert!(price.is_some(), "{m} is not in the bundled catalog");
                // A default past its retirement would be skipped on every
                // call (and fail where it is not): replace it.
                let retired = price.and_then(|p| p.deprecation_date);
                assert!(
                    retired.as_deref().is_none_or(|d| d > "2027-01-01"),
                    "{m} is retired on {retired:?}"
                );
            }
        }
        assert!(c.get(DEFAULT_BASELINE_MODEL).is_some());
        assert_eq!(default_models(Tier::Premium)[0], DEFAULT_BASELINE_MODEL);
    }

    /// A model's family and version from its id, for Claude
    /// (`claude-haiku-4-5`, `anthropic/claude-haiku-4.5`) and Gemini
    /// (`gemini-3.1-pro-preview`) names: `("anthropic/haiku", [4, 5])`.
    fn family_and_version(provider: &str, id: &str) -> Option<(String, Vec<u32>)> {
        let name = id.rsplit('/').next()?;
        let name = name.strip_suffix("-preview").unwrap_or(name);
        let (family, version) = if let Some(rest) = name.strip_prefix("claude-") {
            let (family, version) = rest.split_once('-')?;
            (family.to_string(), version.replace('.', "-"))
        } else if let Some(rest) = name.strip_prefix("gemini-") {
            let (version, family) = rest.split_once('-')?;
            (family.to_string(), version.replace('.', "-"))
        } else {
            return None;
        };
        // A dated snapshot (`claude-haiku-4-5-20251001`) is its model, not a
        // newer one.
        let version: Option<Vec<u32>> = version
            .split('-')
            .filter(|p| p.len() < 8)
            .map(|p| p.parse().ok())
            .collect();
        Some((format!("{provider}/{family}"), version?))
    }

    /// A tier never costs more than the one above it, whichever providers
    /// are enabled: "unsure, take the cheaper tier", the budget's
    /// downgrade mode and a tight `budget_limit` all step down a tier to
    /// save money, so a stronger tier cheaper than a weaker one would make
    /// them pay more for a weaker model. Checked on the cheapest enabled
    /// model of each tier, for short and long prompts.
    #[test]
    fn a_cheaper_tier_never_costs_more() {
        let c = Catalog::bundled();
        let providers = [
            ProviderId::Anthropic,
            ProviderId::Gemini,
            ProviderId::Cerebras,
            ProviderId::Deepseek,
            ProviderId::Openrouter,
        ];
        for mask in 1u32..(1 << providers.len()) {
            let on: Vec<ProviderId> = providers
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect();
            for input in [100u64, 2_000, 20_000] {
                let cheapest = |t: Tier| {
                    default_models(t)
                        .iter()
                        .filter_map(|m| c.get(m))
                        .filter(|p| on.contains(&p.provider))
                        .map(|p| {
                            let tokens = (input as f64
                                * crate::tokens::model_factor(p.provider, &p.id))
                                as u64;
                            (p.estimate(tokens, EXPECTED_OUTPUT_TOKENS), p.id)
                        })
                        .min_by(|a, b| a.0.total_cmp(&b.0))
                };
                let costs: Vec<(Tier, f64, String)> = Tier::ALL
                    .iter()
                    .filter_map(|t| cheapest(*t).map(|(cost, id)| (*t, cost, id)))
                    .collect();
                for w in costs.windows(2) {
                    assert!(
                        w[0].1 <= w[1].1 * 1.000_001,
                        "with {on:?} and {input} input tokens the {:?} tier's {} (${:.6}) costs more than the {:?} tier's {} (${:.6})",
                        w[0].0,
                        w[0].2,
                        w[0].1,
                        w[1].0,
                        w[1].2,
                        w[1].1
                    );
                }
            }
        }
    }

    /// When a newer model of the same family and provider costs no more
    /// (input and output) than a default, it belongs in the same tier: the
    /// router cannot pick a model it does not list, and a user would pay
    /// the older price for an older model. Caught Claude Haiku 5.5 ($0.10
    /// / $0.50 per M) and Sonnet 5.5 ($2 / $10) missing beside Haiku 4.5
    /// ($1 / $5) and Sonnet 4.6 ($3 / $15).
    #[test]
    fn no_newer_cheaper_sibling_is_left_out() {
        let c = Catalog::bundled();
        let mut checked = 0;
        for t in Tier::ALL {
            let listed = default_models(t);
            for m in listed {
                let Some(price) = c.get(m) else { continue };
                let provider = m.split('/').next().unwrap_or_default();
                let Some((family, version)) = family_and_version(provider, m) else {
                    continue;
                };
                checked += 1;
                for other_price in c.models() {
                    let other = &other_price.id;
                    if !other.starts_with(&format!("{provider}/")) || other.ends_with(":batch") {
                        continue;
                    }
                    let Some((f, v)) = family_and_version(provider, other) else {
                        continue;
                    };
                    let live = other_price
                        .deprecation_date
                        .as_deref()
                        .is_none_or(|d| d > "2027-01-01");
                    if f == family
                        && v > version
                        && live
                        && other_price.input <= price.input
                        && other_price.output <= price.output
                    {
                        // Listed, or superseded in the list by a model of
                        // the family at least as new and no dearer.
                        let covered = listed.iter().any(|l| {
                            l.starts_with(&format!("{provider}/"))
                                && c.get(l).is_some_and(|lp| {
                                    family_and_version(provider, l)
                                        .is_some_and(|(lf, lv)| lf == f && lv >= v)
                                        && lp.input <= other_price.input
                                        && lp.output <= other_price.output
                                })
                        });
                        assert!(
                            covered,
                            "{other} is newer than {m} and costs no more: list it in the {t:?} tier"
                        );
                    }
                }
            }
        }
        assert!(checked >= 8, "only {checked} defaults had a family");
    }

    /// A tier model past its catalog deprecation date is skipped, with a
    /// note; before that date it routes as usual.
    #[test]
    fn retired_models_are_skipped() {
        let retired = "openrouter/google/gemini-2.5-flash-lite";
        let tiers = BTreeMap::from([(
            Tier::Cheap,
            vec![
                retired.to_string(),
                "openrouter/openai/gpt-oss-120b".to_string(),
            ],
        )]);
        let r = Router::new(DEFAULT_TIER_THRESHOLDS, &tiers);
        let reg = registry(&[ProviderId::Openrouter]);
        let mut rq = req("hello");
        rq.tier = Some(Tier::Cheap);
        let models = |today: &str| {
            let mut rq = rq.clone();
            rq.today = Some(today.to_string());
            let p = r
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            let ids: Vec<String> = p.candidates.iter().map(|c| c.model.clone()).collect();
            (ids, p.notes.join(" "))
        };
        let (ids, notes) = models("2026-12-06");
        assert!(!ids.contains(&retired.to_string()), "{ids:?}");
        assert!(notes.contains("past their deprecation date"), "{notes}");
        let (ids, _) = models("2026-10-01");
        assert!(ids.contains(&retired.to_string()), "{ids:?}");
    }

    /// An unsure score takes the cheaper tier by default and the stronger
    /// one when quality is preferred; a sure score is the same either way.
    #[test]
    fn preference_decides_unsure_scores() {
        let r = router();
        // Just above 0.5 (cheap|medium): cost steps down, quality keeps.
        assert_eq!(r.routed_tier(0.51, Preference::Cost), Tier::Cheap);
        assert_eq!(r.routed_tier(0.51, Preference::Quality), Tier::Medium);
        // Just below 0.5: cost keeps, quality steps up.
        assert_eq!(r.routed_tier(0.48, Preference::Cost), Tier::Cheap);
        assert_eq!(r.routed_tier(0.48, Preference::Quality), Tier::Medium);
        // Just below 0.75: quality reaches premium.
        assert_eq!(r.routed_tier(0.73, Preference::Quality), Tier::Premium);
        // Far from any boundary: no difference.
        for p in [Preference::Cost, Preference::Quality] {
            assert_eq!(r.routed_tier(0.4, p), Tier::Cheap);
            assert_eq!(r.routed_tier(0.1, p), Tier::Free);
            assert_eq!(r.routed_tier(0.9, p), Tier::Premium);
        }
        // A switched-off tier (two equal boundaries) is never stepped into
        // nor over, as the cost-aware rule never steps down across one.
        let closed = Router::new([0.25, 0.5, 0.5], &BTreeMap::new());
        assert_eq!(closed.routed_tier(0.48, Preference::Quality), Tier::Cheap);
        assert_eq!(closed.routed_tier(0.51, Preference::Cost), Tier::Premium);
        let closed = Router::new([0.25, 0.25, 0.75], &BTreeMap::new());
        assert_eq!(closed.routed_tier(0.24, Preference::Quality), Tier::Free);
        // Premium is off when its boundary is 1.0: the cost rule steps a
        // score of 1.0 down, and quality does not step up into it.
        let no_premium = Router::new([0.25, 0.5, 1.0], &BTreeMap::new());
        assert_eq!(no_premium.routed_tier(1.0, Preference::Cost), Tier::Medium);
        assert_eq!(
            no_premium.routed_tier(0.98, Preference::Quality),
            Tier::Medium
        );
        // The same strict margin as the cost rule, at every boundary: a
        // score 0.03 or more away is sure either way.
        for b in DEFAULT_TIER_THRESHOLDS {
            let below = r.tier_for(b - 0.01).0;
            assert_eq!(
                r.routed_tier(b - 0.02, Preference::Quality) as usize,
                below as usize + 1
            );
            assert_eq!(r.routed_tier(b - 0.035, Preference::Quality), below, "{b}");
            assert_eq!(
                r.routed_tier(b + 0.035, Preference::Cost) as usize,
                below as usize + 1
            );
        }
        assert_eq!(Preference::parse(" Quality "), Some(Preference::Quality));
        assert_eq!(Preference::parse("fast"), None);
    }

    /// The plan follows the preference, says so in its notes, and a tier
    /// the caller asked for is not moved by it.
    #[test]
    fn the_plan_says_which_way_an_unsure_score_went() {
        let reg = registry(&[
            ProviderId::Gemini,
            ProviderId::Deepseek,
            ProviderId::Anthropic,
        ]);
        // Whatever these prompts score, each plan follows `routed_tier`.
        let prompts = [
            "Explain how a hash map handles collisions, and compare open addressing with chaining for a cache-heavy workload.",
            "Write a haiku about autumn.",
            "Prove that the square root of 2 is irrational, step by step.",
            "Summarise the causes of the First World War in three paragraphs, citing the alliance system.",
            "What is 2 + 2?",
        ];
        let r = router();
        for p in prompts {
            let v = scorer::score(p).value;
            let mut rq = req(p);
            rq.prefer = Preference::Quality;
            let q = r
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            rq.prefer = Preference::Cost;
            let c = r
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            assert_eq!(q.tier, r.routed_tier(v, Preference::Quality), "{p}: {v}");
            assert_eq!(c.tier, r.routed_tier(v, Preference::Cost), "{p}: {v}");
            assert!(q.tier >= c.tier, "{p}");
            if q.tier > c.tier {
                assert!(
                    q.notes.iter().any(|n| n.contains("quality is preferred")),
                    "{:?}",
                    q.notes
                );
            }
            rq.prefer = Preference::Quality;
            rq.tier = Some(Tier::Free);
            let forced = r
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            assert_eq!(forced.tier, Tier::Free);
        }
        // With boundaries placed just above one prompt's score, quality
        // must step up for it.
        let v = scorer::score(prompts[0]).value;
        let t = [v + 0.01, (v + 0.2).min(0.99), 0.995];
        let near = Router::new(t, &BTreeMap::new());
        let mut rq = req(prompts[0]);
        rq.prefer = Preference::Quality;
        let q = near
            .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
            .unwrap();
        assert_eq!(q.scored_tier, Tier::Free);
        assert_eq!(q.tier, Tier::Cheap, "{:?}", q.notes);
        assert!(
            q.notes.iter().any(|n| n.contains("stronger cheap tier")),
            "{:?}",
            q.notes
        );
        rq.prefer = Preference::Cost;
        let c = near
            .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
            .unwrap();
        assert_eq!(c.tier, Tier::Free);
    }

    #[test]
    fn tier_boundaries_and_unsure_margin() {
        let r = router();
        assert_eq!(r.tier_for(0.0), (Tier::Free, false));
        assert_eq!(r.tier_for(0.26), (Tier::Cheap, true));
        assert_eq!(r.tier_for(0.4), (Tier::Cheap, false));
        assert_eq!(r.tier_for(0.6), (Tier::Medium, false));
        assert_eq!(r.tier_for(0.99), (Tier::Premium, false));
    }

    #[test]
    fn forced_tier_picks_cheapest_enabled_model() {
        let reg = registry(&[ProviderId::Anthropic, ProviderId::Deepseek]);
        let mut rq = req("hello");
        rq.tier = Some(Tier::Medium);
        let plan = plan_of(&rq, &reg).unwrap();
        assert_eq!(plan.tier, Tier::Medium);
        // claude-haiku-5-5 ($0.10/$0.50 per M) is the cheapest; then
        // deepseek-v4-pro ($1.32/$3.96) beats claude-haiku-4-5 ($1/$5) for
        // 400 output tokens.
        let models: Vec<&str> = plan.candidates.iter().map(|c| c.model.as_str()).collect();
        assert_eq!(
            models[..3],
            [
                "anthropic/claude-haiku-5-5",
                "deepseek/deepseek-v4-pro",
                "anthropic/claude-haiku-4-5"
            ]
        );
        assert!(plan.candidates.iter().all(|c| c.available));
    }

    /// A provider-wide failure skips the provider's other models, so the
    /// try list must reach every enabled provider, even when the cheapest
    /// model of every tier is one provider's (here Gemini's: tiers as the
    /// defaults were before Claude's cheaper 5.5 generation).
    #[test]
    fn the_try_list_reaches_every_enabled_provider() {
        let reg = registry(&[ProviderId::Gemini, ProviderId::Anthropic]);
        let tiers = BTreeMap::from([
            (Tier::Free, vec!["gemini/gemma-4-31b-it".to_string()]),
            (
                Tier::Cheap,
                vec!["gemini/gemini-2.5-flash-lite".to_string()],
            ),
            (
                Tier::Medium,
                vec![
                    "gemini/gemini-3-flash-preview".to_string(),
                    "anthropic/claude-haiku-4-5".to_string(),
                ],
            ),
            (
                Tier::Premium,
                vec![
                    "anthropic/claude-sonnet-4-6".to_string(),
                    "gemini/gemini-3.1-pro-preview".to_string(),
                ],
            ),
        ]);
        let r = Router::new(DEFAULT_TIER_THRESHOLDS, &tiers);
        let plan_of = |rq: &RouteRequest<'_>| {
            r.plan(rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap()
        };
        let plan = plan_of(&req("What is the capital of France?"));
        assert!(
            plan.candidates[..4]
                .iter()
                .all(|c| c.provider == ProviderId::Gemini),
            "{:?}",
            plan.candidates
        );
        let last = plan.candidates.last().unwrap();
        assert_eq!(
            last.provider,
            ProviderId::Anthropic,
            "{:?}",
            plan.candidates
        );
        assert_eq!(plan.candidates.len(), 5);
        // With the default tiers, Claude's models are the cheapest of
        // some tiers: Anthropic is reached without being appended.
        let reg_default = registry(&[ProviderId::Gemini, ProviderId::Anthropic]);
        let default_plan =
            super::tests::plan_of(&req("What is the capital of France?"), &reg_default).unwrap();
        for p in [ProviderId::Gemini, ProviderId::Anthropic] {
            assert!(default_plan.candidates.iter().any(|c| c.provider == p));
        }
        // A caller's tier bounds the list to that tier, other providers too.
        let mut rq = req("What is the capital of France?");
        rq.tier = Some(Tier::Premium);
        let plan = plan_of(&rq);
        assert!(plan.candidates.iter().all(|c| c.tier == Tier::Premium));
        assert!(
            plan.candidates
                .iter()
                .any(|c| c.provider == ProviderId::Anthropic)
        );
        assert!(
            plan.candidates
                .iter()
                .any(|c| c.provider == ProviderId::Gemini)
        );
    }

    /// An unsure score, or the downgrade mode, steps down a tier only when
    /// that saves money: with custom tiers whose cheap model costs more
    /// than the medium one, the medium tier is kept, and the note says why.
    #[test]
    fn stepping_down_a_tier_must_be_cheaper() {
        let prompt = "Explain how a hash map handles collisions.";
        let v = scorer::score(prompt).value;
        // The score just above the cheap|medium boundary: unsure.
        let t = [0.01, v - 0.01, 0.99];
        let inverted = BTreeMap::from([
            (Tier::Cheap, vec!["anthropic/claude-sonnet-4-6".to_string()]),
            (Tier::Medium, vec!["deepseek/deepseek-v3.2".to_string()]),
        ]);
        let reg = registry(&[ProviderId::Anthropic, ProviderId::Deepseek]);
        let plan = |tiers: &BTreeMap<Tier, Vec<String>>, downgrade: bool, score_t: [f64; 3]| {
            let mut rq = req(prompt);
            rq.downgrade = downgrade;
            Router::new(score_t, tiers)
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap()
        };
        let p = plan(&inverted, false, t);
        assert_eq!(p.scored_tier, Tier::Medium);
        assert_eq!(p.tier, Tier::Medium, "{:?}", p.notes);
        assert!(
            p.notes.iter().any(|n| n.contains("costs more here")),
            "{:?}",
            p.notes
        );
        // Downgrade mode, score well inside medium: kept too.
        let sure = [0.01, v - 0.1, 0.99];
        let p = plan(&inverted, true, sure);
        assert_eq!(p.tier, Tier::Medium, "{:?}", p.notes);
        assert!(
            p.notes.iter().any(|n| n.contains("downgrade mode, but")),
            "{:?}",
            p.notes
        );
        // Tiers in price order step down as before.
        let ordered = BTreeMap::from([
            (Tier::Cheap, vec!["deepseek/deepseek-v3.2".to_string()]),
            (
                Tier::Medium,
                vec!["anthropic/claude-sonnet-4-6".to_string()],
            ),
        ]);
        assert_eq!(plan(&ordered, false, t).tier, Tier::Cheap);
        assert_eq!(plan(&ordered, true, sure).tier, Tier::Cheap);
    }

    /// A forced model listed in two tiers is recorded under the one
    /// nearest the tier routing would have used.
    #[test]
    fn a_forced_model_in_two_tiers_takes_the_nearer_tier() {
        let reg = registry(&[ProviderId::Anthropic]);
        let haiku = "anthropic/claude-haiku-5-5";
        let r = router();
        assert_eq!(r.tier_of(haiku), Some(Tier::Cheap));
        assert_eq!(r.tier_of_near(haiku, Tier::Free), Some(Tier::Cheap));
        assert_eq!(r.tier_of_near(haiku, Tier::Medium), Some(Tier::Medium));
        assert_eq!(r.tier_of_near(haiku, Tier::Premium), Some(Tier::Medium));
        assert_eq!(
            r.tier_of_near("anthropic/claude-sonnet-5-5", Tier::Free),
            Some(Tier::Premium)
        );
        for (prompt, want) in [
            ("hi", Tier::Cheap),
            (
                "Prove that there are infinitely many primes p such that p + 2 is also prime, \
                 or explain precisely why this is open, then derive the Hardy-Littlewood constant \
                 step by step with full rigour, covering every case of the sieve argument.",
                Tier::Medium,
            ),
        ] {
            let mut rq = req(prompt);
            rq.force_model = Some(haiku.into());
            let plan = r
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            let routed = r.routed_tier(plan.score, Preference::Cost);
            assert_eq!(
                plan.tier,
                r.tier_of_near(haiku, routed).unwrap(),
                "{prompt}"
            );
            assert_eq!(plan.tier, want, "{}", plan.score);
        }
    }

    /// A model in two tiers is on the try list once.
    #[test]
    fn a_model_in_two_tiers_is_tried_once() {
        let reg = registry(&[ProviderId::Anthropic, ProviderId::Deepseek]);
        for prompt in [
            "hi",
            "Write a Python function that parses ISO 8601 durations.",
        ] {
            let plan = plan_of(&req(prompt), &reg).unwrap();
            let mut models: Vec<&str> = plan.candidates.iter().map(|c| c.model.as_str()).collect();
            let n = models.len();
            models.sort();
            models.dedup();
            assert_eq!(models.len(), n, "{:?}", plan.candidates);
            assert!(models.contains(&"anthropic/claude-haiku-5-5"), "{models:?}");
        }
    }

    #[test]
    fn missing_tier_moves_up_then_down() {
        // Anthropic's cheapest default (Claude Haiku 5.5) is a cheap model.
        let reg = registry(&[ProviderId::Anthropic]);
        let plan = plan_of(&req("hi"), &reg).unwrap();
        assert_eq!(plan.scored_tier, Tier::Free);
        assert_eq!(plan.tier, Tier::Cheap);
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("No enabled model in the free tier"))
        );
    }

    /// A tier the caller asked for is honoured exactly: refused when none
    /// of its models is available or fits the budget, and never followed
    /// by another tier's models on failure.
    #[test]
    fn a_forced_tier_is_never_swapped_for_another() {
        let reg = registry(&[ProviderId::Anthropic, ProviderId::Deepseek]);
        let mut rq = req("hi");
        rq.tier = Some(Tier::Free);
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(
            err.0.starts_with("tier free: no model of the free tier"),
            "{err}"
        );
        rq.tier = Some(Tier::Cheap);
        let plan = plan_of(&rq, &reg).unwrap();
        assert!(!plan.candidates.is_empty());
        assert!(
            plan.candidates.iter().all(|c| c.tier == Tier::Cheap),
            "{plan:?}"
        );
        rq.tier = Some(Tier::Premium);
        rq.budget_limit = Some(0.006);
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(
            err.0
                .starts_with("tier premium: no premium model fits budget_limit"),
            "{err}"
        );
        // DeepSeek's cheap model holds 163,840 tokens: a longer prompt is
        // refused for that reason, not answered by the medium tier.
        let reg = registry(&[ProviderId::Deepseek]);
        let long = "word ".repeat(200_000);
        let mut rq = req(&long);
        rq.tier = Some(Tier::Cheap);
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(
            err.0.contains("longer than the context window of every available cheap model (deepseek/deepseek-v3.2)"),
            "{err}"
        );
    }

    /// A prompt too long for every enabled model says so, not "enable a
    /// provider".
    #[test]
    fn a_prompt_longer_than_every_window_says_so() {
        let reg = registry(&[ProviderId::Cerebras]);
        let long = "word ".repeat(300_000);
        let err = plan_of(&req(&long), &reg).unwrap_err();
        assert!(
            err.0
                .contains("longer than the context window of every model"),
            "{err}"
        );
        assert!(!err.0.contains("enable a provider"), "{err}");
    }

    #[test]
    fn budget_limit_steps_down_or_refuses() {
        let reg = registry(&[ProviderId::Anthropic, ProviderId::Deepseek]);
        // Low boundaries, so this prompt scores premium.
        let r = Router::new([0.02, 0.05, 0.1], &BTreeMap::new());
        let mut rq = req("Prove that there are infinitely many primes, step by step.");
        rq.budget_limit = Some(0.006);
        let plan = r
            .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
            .unwrap();
        assert_eq!(plan.scored_tier, Tier::Premium, "{plan:?}");
        assert!(plan.tier < Tier::Premium, "{plan:?}");
        assert!(
            plan.candidates
                .iter()
                .all(|c| c.worst_case_cost_usd <= 0.006)
        );
        rq.budget_limit = Some(1e-9);
        let err = r
            .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
            .unwrap_err();
        assert!(err.0.contains("budget_limit"), "{err}");
        // Amounts as the rest of the text prints them: a limit below what
        // six decimals show is not "$0.000000".
        assert!(err.0.contains("budget_limit of $0.0000000010 "), "{err}");
    }

    /// A forced model decides the tier; a different tier asked for with it
    /// is a contradiction, refused.
    #[test]
    fn a_forced_model_and_another_tier_contradict() {
        let reg = registry(&[ProviderId::Deepseek]);
        let mut rq = req("hi");
        rq.force_model = Some("deepseek/deepseek-v4-pro".into());
        let plan = plan_of(&rq, &reg).unwrap();
        assert_eq!(plan.tier, Tier::Medium);
        rq.tier = Some(Tier::Medium);
        assert!(plan_of(&rq, &reg).is_ok());
        rq.tier = Some(Tier::Free);
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(
            err.0.contains("is a medium model and tier free contradict"),
            "{err}"
        );
        // Listed in two tiers (here also cheap): forced with either.
        let mut tiers = BTreeMap::new();
        tiers.insert(
            Tier::Cheap,
            vec![
                "deepseek/deepseek-v4-pro".to_string(),
                "deepseek/deepseek-v3.2".into(),
            ],
        );
        let two = Router::new(DEFAULT_TIER_THRESHOLDS, &tiers);
        for t in [Tier::Cheap, Tier::Medium] {
            rq.tier = Some(t);
            let plan = two
                .plan(&rq, &Catalog::bundled(), &reg, DEFAULT_BASELINE_MODEL)
                .unwrap();
            assert_eq!(plan.tier, t);
        }
    }

    /// Refusals name the real conflict: a forced provider with no model in
    /// the tier asked for, or enabled providers that no tier lists.
    #[test]
    fn refusals_say_which_setting_to_change() {
        let reg = registry(&[ProviderId::Deepseek, ProviderId::Anthropic]);
        let mut rq = req("hi");
        rq.force_provider = Some(ProviderId::Deepseek);
        rq.tier = Some(Tier::Premium);
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(
            err.0
                .contains("tier premium and force_provider deepseek contradict"),
            "{err}"
        );
        let reg = registry(&[ProviderId::Huggingface]);
        let err = plan_of(&req("hi"), &reg).unwrap_err();
        assert!(
            err.0
                .contains("no routing tier lists a priced model of huggingface (enabled)"),
            "{err}"
        );
        let err = plan_of(&req("hi"), &registry(&[])).unwrap_err();
        assert!(err.0.contains("enable a provider"), "{err}");
    }

    /// The worst case a budget holds is priced at the output the request
    /// can get: max_tokens capped by the model's own output limit.
    #[test]
    fn the_worst_case_is_capped_at_the_model_output_limit() {
        let reg = registry(&[ProviderId::Anthropic]);
        let catalog = Catalog::bundled();
        let model = "anthropic/claude-haiku-4-5";
        let price = catalog.get(model).unwrap();
        let limit = price.max_output_tokens.unwrap();
        let mut rq = req("hi");
        rq.force_model = Some(model.into());
        rq.max_tokens = (limit as u32) * 4;
        let plan = router()
            .plan(&rq, &catalog, &reg, DEFAULT_BASELINE_MODEL)
            .unwrap();
        let c = &plan.candidates[0];
        let expected = price.worst_case(c.estimated_input_tokens, limit);
        assert!(expected < price.worst_case(c.estimated_input_tokens, limit + 1));
        assert!(
            (c.worst_case_cost_usd - expected).abs() < 1e-12,
            "{} vs {expected}",
            c.worst_case_cost_usd
        );
    }

    #[test]
    fn forced_model_needs_enabled_provider() {
        let reg = registry(&[ProviderId::Deepseek]);
        let mut rq = req("hi");
        rq.force_model = Some("anthropic/claude-haiku-4-5".into());
        let err = plan_of(&rq, &reg).unwrap_err();
        assert!(err.0.contains("ANTHROPIC_API_KEY"), "{err}");
    }

    #[test]
    fn nothing_enabled_is_a_clear_error() {
        let err = plan_of(&req("hi"), &registry(&[])).unwrap_err();
        assert!(err.0.contains("doctor"), "{err}");
    }
}
