//! Threshold calibration from what users said and did about past routing.
//!
//! # Why it works this way
//!
//! The scorer ranks prompts; the three thresholds decide where each rank
//! lands. Whether a boundary sits too low or too high is something only the
//! user can tell us, in two ways the ledger records:
//!
//! * **overrides**: a call where the caller forced a tier (or a model of a
//!   tier) other than the one its score pointed to says "a prompt with this
//!   score belongs in that tier";
//! * **ratings**: an answer rated bad (1-2 of 5) says "this prompt needed a
//!   stronger tier than the one that answered"; an answer rated good (4-5)
//!   says "this tier was enough" and so defends the boundary against being
//!   raised over its score.
//!
//! Each signal is a constraint on every boundary it crosses. For each
//! boundary we pick, on a 0.01 grid, the value that violates the fewest
//! constraints, preferring the current value on ties and moving only when at
//! least [`MIN_EVIDENCE`] fewer constraints are violated, so one stray click
//! cannot move routing, and one more per [`CALLS_PER_SIGNAL`] recorded calls
//! the move would re-route, so a few signals cannot move many calls. The result is re-priced over the recorded calls: a
//! call whose tier would change is costed at the recorded token usage on the
//! tier's first priced model; all others keep their recorded cost.

use serde::Serialize;

use super::{Preference, Tier, UNSURE_MARGIN};
use crate::ledger::HistoryCall;

/// A boundary moves only if the move satisfies at least this many more
/// signals than the current value does.
pub const MIN_EVIDENCE: usize = 2;
/// ... and at least one more for every this many recorded calls the move
/// would send to another tier.
pub const CALLS_PER_SIGNAL: usize = 20;
/// Ratings at or below this are "bad".
pub const BAD_AT_MOST: u8 = 2;
/// Ratings at or above this are "good".
pub const GOOD_AT_LEAST: u8 = 4;
/// The narrowest score band a proposal leaves a tier: a boundary pushed up
/// by the one below stays this far above it (scores within the unsure
/// margin of a boundary take the cheaper tier, so a band narrower than
/// that would never be routed to).
const MIN_TIER_WIDTH: f64 = 2.0 * UNSURE_MARGIN;

/// What one signal asks of the tier of a prompt with `score`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// The tier should be at least this one.
    AtLeast(usize),
    /// The tier should be at most this one.
    AtMost(usize),
}

/// The tier a score gets under `t`, including the "unsure" rule of
/// [`super::Router::routed_tier`] for the preference that routes it: the
/// cheaper tier by default, the stronger with `quality` (budget downgrades
/// are per-call circumstances and are left out).
pub fn effective_tier(t: [f64; 3], score: f64, prefer: Preference) -> usize {
    match (super::scored_tier_index(t, score), prefer) {
        ((idx, _), Preference::Quality) if super::near_tier_above(t, idx, score) => idx + 1,
        ((idx, _), Preference::Quality) => idx,
        ((idx, true), Preference::Cost) => idx - 1,
        ((idx, false), Preference::Cost) => idx,
    }
}

/// The boundaries on either side of boundary `k` under `t` (0.0 and 1.0
/// past the ends): the tiers next to boundary `k` are switched on when
/// their bands, `(lo, b)` and `(b, hi)`, are not empty.
fn neighbours(t: [f64; 3], k: usize) -> (f64, f64) {
    (
        if k == 0 { 0.0 } else { t[k - 1] },
        if k == 2 { 1.0 } else { t[k + 1] },
    )
}

/// The boundaries beside boundary `k` of `t` once it is moved to `b`: a
/// neighbour closer than [`MIN_TIER_WIDTH`] gives way by that much, as
/// [`propose`] makes it do in the end. A candidate is judged by the
/// neighbours it will have: with a neighbour pushed next to it, a tier that
/// was switched off is switched on, and the unsure margin applies where it
/// did not before (judged by today's neighbours, a boundary moved past one
/// looked as if it satisfied signals the pushed result contradicts).
fn neighbours_after(t: [f64; 3], k: usize, b: f64) -> (f64, f64) {
    let (lo, hi) = neighbours(t, k);
    if b == t[k] {
        return (lo, hi);
    }
    (
        if k > 0 && b - lo < MIN_TIER_WIDTH - 1e-9 {
            b - MIN_TIER_WIDTH
        } else {
            lo
        },
        if k < 2 && hi - b < MIN_TIER_WIDTH - 1e-9 {
            b + MIN_TIER_WIDTH
        } else {
            hi
        },
    )
}

/// The values boundary `k` can end at when it moves: the tiers below and
/// above it keep at least [`MIN_TIER_WIDTH`] each within [0.01, 0.99], so a
/// value outside this range would be pushed back into it.
fn reachable(k: usize) -> std::ops::RangeInclusive<u32> {
    let width = (MIN_TIER_WIDTH * 100.0).round() as u32;
    (1 + width * k as u32)..=(99 - width * (2 - k as u32))
}

/// Whether a score counts as routed above boundary `b` (in a tier above
/// it) under `prefer`, on calibration's grid, with `(lo, hi)` the
/// boundaries beside it: past `b`, except that `cost` steps a score less
/// than the unsure margin above `b` down, and `quality` steps one less
/// than the margin below `b` up, each only between two switched-on tiers
/// (as routing does: [`super::scored_tier_index`],
/// [`super::near_tier_above`]).
fn routed_above(score: f64, b: f64, (lo, hi): (f64, f64), prefer: Preference) -> bool {
    let both_open = b > lo && hi > b;
    match prefer {
        Preference::Cost => score >= b && (score >= b + UNSURE_MARGIN - 1e-12 || !both_open),
        Preference::Quality => score >= b || (score > b - UNSURE_MARGIN + 1e-12 && both_open),
    }
}

/// The preference that routed `c`: the one the ledger recorded with it, or
/// `server`'s for calls recorded before the ledger kept it. A call made
/// with `prefer: quality` will be again, so it is read, and re-priced, by
/// that rule whatever the server's default.
fn preference_of(c: &HistoryCall, server: Preference) -> Preference {
    c.prefer
        .as_deref()
        .and_then(Preference::parse)
        .unwrap_or(server)
}

/// How much evidence of each kind the history holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Evidence {
    /// Answered calls with a score in the window.
    pub calls: usize,
    /// Calls rated bad (1-2).
    pub rated_bad: usize,
    /// Calls rated good (4-5).
    pub rated_good: usize,
    /// Calls where the caller forced a stronger tier than the score's.
    pub overrides_up: usize,
    /// Calls where the caller forced a cheaper tier than the score's.
    pub overrides_down: usize,
}

/// One boundary's proposal.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BoundaryChange {
    /// `free|cheap`, `cheap|medium` or `medium|premium`.
    pub boundary: String,
    /// Value in force.
    pub current: f64,
    /// Proposed value (equal to `current` when the evidence is too thin).
    pub proposed: f64,
    /// Signals the current value contradicts.
    pub violations_current: usize,
    /// Signals the proposed value contradicts.
    pub violations_proposed: usize,
    /// Signals that bear on this boundary.
    pub signals: usize,
}

/// Re-pricing of the recorded calls under the proposed thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CostEffect {
    /// What the recorded calls cost, USD.
    pub recorded_usd: f64,
    /// What they would have cost under the proposal, USD.
    pub projected_usd: f64,
    /// `projected - recorded`, USD (negative saves money).
    pub delta_usd: f64,
    /// Unforced calls that would go to a stronger tier.
    pub calls_up: usize,
    /// Unforced calls that would go to a cheaper tier.
    pub calls_down: usize,
    /// Calls whose new tier has no priced model (kept at recorded cost).
    pub unpriced: usize,
}

/// The outcome of calibration.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Proposal {
    /// Thresholds in force.
    pub current: [f64; 3],
    /// Proposed thresholds (ascending).
    pub proposed: [f64; 3],
    /// Whether `proposed` differs from `current`.
    pub changed: bool,
    /// Per-boundary detail.
    pub boundaries: Vec<BoundaryChange>,
    /// What the history holds.
    pub evidence: Evidence,
    /// Effect on cost over the same calls.
    pub cost: CostEffect,
}

fn tier_index(name: Option<&str>) -> Option<usize> {
    name.and_then(Tier::parse).map(|t| t as usize)
}

/// A user's word on one prompt: its score, what it wants of the tier, and
/// the preference that routes such calls.
type Signal = (f64, Want, Preference);

/// The signals in `history` under thresholds `t`; `server` is the
/// preference of calls recorded without one.
fn signals(
    history: &[HistoryCall],
    t: [f64; 3],
    server: Preference,
    ev: &mut Evidence,
) -> Vec<Signal> {
    let mut out = Vec::new();
    for c in history {
        ev.calls += 1;
        let Some(actual) = tier_index(c.tier.as_deref()) else {
            continue;
        };
        let prefer = preference_of(c, server);
        let scored = effective_tier(t, c.score, prefer);
        let forced_tier = matches!(c.forced.as_deref(), Some("tier" | "model"));
        let up = forced_tier && actual > scored;
        let down = forced_tier && actual < scored;
        if up {
            ev.overrides_up += 1;
        } else if down {
            ev.overrides_down += 1;
        }
        // One call is one piece of evidence on each boundary: a rating
        // says how the forced tier did, so it replaces the override where
        // both speak of the same boundary (rated good after forcing a
        // cheaper tier said "at most this tier" twice, and one click moved
        // routing).
        match c.rating {
            Some(r) if r <= BAD_AT_MOST => {
                ev.rated_bad += 1;
                if actual < 3 {
                    out.push((c.score, Want::AtLeast(actual + 1), prefer));
                }
            }
            Some(r) if r >= GOOD_AT_LEAST => {
                ev.rated_good += 1;
                out.push((c.score, Want::AtMost(actual), prefer));
                // Forced up and good: also "at least this tier", on the
                // boundaries below it, which the rating says nothing of.
                if up {
                    out.push((c.score, Want::AtLeast(actual), prefer));
                }
            }
            _ if up => out.push((c.score, Want::AtLeast(actual), prefer)),
            _ if down => out.push((c.score, Want::AtMost(actual), prefer)),
            _ => {}
        }
    }
    out
}

/// Constraints on boundary `k` (between tier k and k+1) as (score, wants
/// the prompt above the boundary, the preference routing it).
fn constraints(sig: &[Signal], k: usize) -> Vec<(f64, bool, Preference)> {
    sig.iter()
        .filter_map(|&(s, w, p)| match w {
            Want::AtLeast(m) if k < m => Some((s, true, p)),
            Want::AtMost(m) if k >= m => Some((s, false, p)),
            _ => None,
        })
        .collect()
}

fn violations(cons: &[(f64, bool, Preference)], b: f64, beside: (f64, f64)) -> usize {
    cons.iter()
        .filter(|&&(s, above, prefer)| routed_above(s, b, beside, prefer) != above)
        .count()
}

const BOUNDARY_NAMES: [&str; 3] = ["free|cheap", "cheap|medium", "medium|premium"];

/// Proposes thresholds from `history`, and re-prices the history under them.
/// `price(tier, call)` is the cost of the call's recorded usage on the
/// tier's model, `None` when the tier has no priced model. `prefer` is the
/// server's preference, by which calls recorded before the ledger kept each
/// call's own are read.
pub fn propose(
    history: &[HistoryCall],
    current: [f64; 3],
    prefer: Preference,
    price: &dyn Fn(Tier, &HistoryCall) -> Option<f64>,
) -> Proposal {
    let mut evidence = Evidence::default();
    let sig = signals(history, current, prefer, &mut evidence);
    let mut proposed = current;
    let mut boundaries = Vec::with_capacity(3);
    for (k, slot) in proposed.iter_mut().enumerate() {
        let cons = constraints(&sig, k);
        let beside = |b: f64| neighbours_after(current, k, b);
        let now = violations(&cons, current[k], beside(current[k]));
        let mut best = (now, current[k]);
        for step in reachable(k) {
            let b = f64::from(step) / 100.0;
            let v = violations(&cons, b, beside(b));
            let closer = (b - current[k]).abs() < (best.1 - current[k]).abs();
            if v < best.0 || (v == best.0 && closer) {
                best = (v, b);
            }
        }
        // The support a move needs grows with the calls it would re-route:
        // two overrides must not send a thousand unrated calls to another
        // tier (unrated calls are no evidence either way, so they cannot
        // defend the boundary themselves).
        let above =
            |c: &HistoryCall, b: f64| routed_above(c.score, b, beside(b), preference_of(c, prefer));
        let moved = history
            .iter()
            .filter(|c| above(c, current[k]) != above(c, best.1))
            .count();
        let needed = MIN_EVIDENCE.max(moved.div_ceil(CALLS_PER_SIGNAL));
        if best.0 + needed <= now {
            *slot = best.1;
        }
        boundaries.push(BoundaryChange {
            boundary: BOUNDARY_NAMES[k].to_owned(),
            current: current[k],
            proposed: *slot,
            violations_current: now,
            violations_proposed: violations(&cons, *slot, beside(*slot)),
            signals: cons.len(),
        });
    }
    // Keep the boundaries ascending with every tier reachable (see
    // `settle`). Where two boundaries both moved on evidence into each
    // other, either can give way: the one whose yielding contradicts fewer
    // signals does (the upper one on a tie).
    let total = |t: [f64; 3]| -> usize {
        (0..3)
            .map(|k| violations(&constraints(&sig, k), t[k], neighbours(t, k)))
            .sum()
    };
    let upper_yields = settle(current, proposed, false);
    let lower_yields = settle(current, proposed, true);
    proposed = if total(lower_yields) < total(upper_yields) {
        lower_yields
    } else {
        upper_yields
    };
    // Counted again at the final value: a boundary pushed by a neighbour
    // may contradict signals the evidence alone would have satisfied.
    for (k, (b, p)) in boundaries.iter_mut().zip(proposed).enumerate() {
        b.proposed = p;
        b.violations_proposed = violations(&constraints(&sig, k), p, neighbours(proposed, k));
    }
    // The rule holds for the proposal as a whole, pushes included: it must
    // agree with at least MIN_EVIDENCE more signals than the thresholds in
    // force, or nothing moves (neighbours pushed together can give back
    // what each boundary's own move gained).
    let before: usize = boundaries.iter().map(|b| b.violations_current).sum();
    let after: usize = boundaries.iter().map(|b| b.violations_proposed).sum();
    if proposed != current && after + MIN_EVIDENCE > before {
        proposed = current;
        for b in &mut boundaries {
            b.proposed = b.current;
            b.violations_proposed = b.violations_current;
        }
    }
    let changed = proposed != current;
    let cost = cost_effect(history, current, proposed, prefer, price);
    Proposal {
        current,
        proposed,
        changed,
        boundaries,
        evidence,
        cost,
    }
}

/// `proposed` made ascending with every tier reachable: where a boundary
/// moved on evidence comes closer than [`MIN_TIER_WIDTH`] to a neighbour,
/// the neighbour gives way (a raised lower boundary pushes the next one up;
/// a lowered upper one pushes the one below down), within [0.01, 0.99].
/// Where both moved, the upper one gives way, or the lower with
/// `lower_yields`. Boundaries nothing moved are left exactly as configured
/// (a deliberately empty tier included).
fn settle(current: [f64; 3], mut proposed: [f64; 3], lower_yields: bool) -> [f64; 3] {
    let moved = [0, 1, 2].map(|k| proposed[k] != current[k]);
    let mut touched = moved;
    let gap = |lo: f64, hi: f64| hi - lo < MIN_TIER_WIDTH - 1e-9;
    for k in 1..3 {
        if (touched[k] || touched[k - 1]) && gap(proposed[k - 1], proposed[k]) {
            if moved[k] && (!moved[k - 1] || lower_yields) {
                proposed[k - 1] = proposed[k] - MIN_TIER_WIDTH;
                touched[k - 1] = true;
            } else {
                proposed[k] = proposed[k - 1] + MIN_TIER_WIDTH;
                touched[k] = true;
            }
        }
    }
    if touched[2] {
        proposed[2] = proposed[2].min(0.99);
    }
    for k in (0..2).rev() {
        if (touched[k] || touched[k + 1]) && gap(proposed[k], proposed[k + 1]) {
            proposed[k] = proposed[k + 1] - MIN_TIER_WIDTH;
            touched[k] = true;
        }
    }
    if touched[0] {
        proposed[0] = proposed[0].max(0.01);
    }
    for k in 1..3 {
        if (touched[k] || touched[k - 1]) && gap(proposed[k - 1], proposed[k]) {
            proposed[k] = proposed[k - 1] + MIN_TIER_WIDTH;
            touched[k] = true;
        }
    }
    for (p, t) in proposed.iter_mut().zip(touched) {
        if t {
            *p = (*p * 100.0).round() / 100.0;
        }
    }
    proposed
}

fn cost_effect(
    history: &[HistoryCall],
    current: [f64; 3],
    proposed: [f64; 3],
    server: Preference,
    price: &dyn Fn(Tier, &HistoryCall) -> Option<f64>,
) -> CostEffect {
    let mut e = CostEffect::default();
    for c in history {
        e.recorded_usd += c.cost_usd;
        // A forced tier or model keeps its call where it is; a call forced
        // only to a provider still routes by its score (to that provider's
        // model of the new tier), so it moves with the boundaries.
        let forced = matches!(c.forced.as_deref(), Some("tier" | "model"));
        let prefer = preference_of(c, server);
        let (a, b) = (
            effective_tier(current, c.score, prefer),
            effective_tier(proposed, c.score, prefer),
        );
        if forced || a == b {
            e.projected_usd += c.cost_usd;
            continue;
        }
        match price(Tier::ALL[b], c) {
            Some(p) => {
                e.projected_usd += p;
                if b > a {
                    e.calls_up += 1;
                } else {
                    e.calls_down += 1;
                }
            }
            None => {
                e.unpriced += 1;
                e.projected_usd += c.cost_usd;
            }
        }
    }
    e.delta_usd = e.projected_usd - e.recorded_usd;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(score: f64, tier: &str, forced: Option<&str>, rating: Option<u8>) -> HistoryCall {
        HistoryCall {
            request_id: format!("r{score}"),
            score,
            tier: Some(tier.into()),
            model: "m/x".into(),
            forced: forced.map(Into::into),
            input_tokens: 1000,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 100,
            cost_usd: flat(Tier::parse(tier).unwrap(), &HistoryCall::default()).unwrap(),
            rating,
            prefer: None,
        }
    }

    const T: [f64; 3] = [0.25, 0.5, 0.75];

    fn flat(t: Tier, _: &HistoryCall) -> Option<f64> {
        Some([0.0, 0.002, 0.01, 0.1][t as usize])
    }

    #[test]
    fn effective_tier_prefers_cheaper_when_unsure() {
        assert_eq!(effective_tier(T, 0.1, Preference::Cost), 0);
        assert_eq!(effective_tier(T, 0.26, Preference::Cost), 0); // within the margin above 0.25
        assert_eq!(effective_tier(T, 0.30, Preference::Cost), 1);
        assert_eq!(effective_tier(T, 0.99, Preference::Cost), 3);
        // A tier switched off (equal boundaries) is never stepped into.
        assert_eq!(effective_tier([0.5, 0.5, 0.75], 0.51, Preference::Cost), 2);
        assert_eq!(effective_tier([0.0, 0.5, 0.75], 0.01, Preference::Cost), 1);
        assert_eq!(effective_tier([0.2, 0.5, 0.75], 0.51, Preference::Cost), 1);
    }

    /// On a server that prefers quality, a score just below a boundary
    /// was routed above it: calibration reads the history that way, so it
    /// moves a boundary no further than the evidence needs, and a call
    /// already above is not counted as moved.
    #[test]
    fn a_quality_server_is_calibrated_by_its_own_rule() {
        assert_eq!(effective_tier(T, 0.48, Preference::Quality), 2);
        assert_eq!(effective_tier(T, 0.51, Preference::Quality), 2);
        assert_eq!(effective_tier(T, 0.46, Preference::Quality), 1);
        // Bad answers from the cheap tier at 0.46: "at least medium".
        let h: Vec<HistoryCall> = (0..4).map(|_| call(0.46, "cheap", None, Some(1))).collect();
        let cost = propose(&h, T, Preference::Cost, &flat);
        let quality = propose(&h, T, Preference::Quality, &flat);
        // For cost, 0.46 is above a boundary only at 0.43 or lower; for
        // quality, below 0.49 suffices.
        assert!(cost.proposed[1] <= 0.43 + 1e-9, "{:?}", cost.proposed);
        assert!(
            quality.proposed[1] > 0.46 && quality.proposed[1] < 0.49,
            "{:?}",
            quality.proposed
        );
        assert_eq!(
            effective_tier(quality.proposed, 0.46, Preference::Quality),
            2
        );
        // A call at 0.48 was routed to medium on a quality server (0.02
        // below the boundary) and to cheap on a cost one: raising the
        // boundary to 0.52 moves it down only on the quality server.
        let h = vec![call(0.48, "medium", None, None)];
        let moved = |prefer| {
            let e = cost_effect(&h, T, [0.25, 0.52, 0.75], prefer, &flat);
            (e.calls_up, e.calls_down)
        };
        assert_eq!(moved(Preference::Quality), (0, 1));
        assert_eq!(moved(Preference::Cost), (0, 0));
    }

    /// Each call is read by the preference recorded with it; the server's
    /// only fills in for calls recorded before the ledger kept one. The
    /// same four bad ratings at 0.46 ask for a lower cheap|medium boundary
    /// on a cost server, but one that stops within quality's margin when
    /// the calls themselves asked for quality; and a mix is read call by
    /// call.
    #[test]
    fn each_call_is_read_by_its_own_recorded_preference() {
        let with = |prefer: Option<&str>| {
            let mut c = call(0.46, "cheap", None, Some(1));
            c.prefer = prefer.map(Into::into);
            c
        };
        let quality: Vec<HistoryCall> = (0..4).map(|_| with(Some("quality"))).collect();
        let unrecorded: Vec<HistoryCall> = (0..4).map(|_| with(None)).collect();
        let cost: Vec<HistoryCall> = (0..4).map(|_| with(Some("cost"))).collect();
        let on_cost_server = |h: &[HistoryCall]| propose(h, T, Preference::Cost, &flat).proposed;
        let on_quality_server =
            |h: &[HistoryCall]| propose(h, T, Preference::Quality, &flat).proposed;
        // Recorded quality calls: quality's reading, whatever the server's.
        for p in [on_cost_server(&quality), on_quality_server(&quality)] {
            assert!(p[1] > 0.46 && p[1] < 0.49, "{p:?}");
        }
        // Recorded cost calls: cost's reading, whatever the server's.
        for p in [on_cost_server(&cost), on_quality_server(&cost)] {
            assert!(p[1] <= 0.43 + 1e-9, "{p:?}");
        }
        // Unrecorded: the server's.
        assert!(on_cost_server(&unrecorded)[1] <= 0.43 + 1e-9);
        assert!(on_quality_server(&unrecorded)[1] > 0.46);
        // The cost effect re-routes each call by its own rule: raising the
        // boundary to 0.52 moves a quality call at 0.48 (routed to medium)
        // down, and leaves a cost call at 0.48 (routed to cheap) alone.
        let mut q = call(0.48, "medium", None, None);
        q.prefer = Some("quality".into());
        let mut c = call(0.48, "cheap", None, None);
        c.prefer = Some("cost".into());
        for server in [Preference::Cost, Preference::Quality] {
            let e = cost_effect(
                &[q.clone(), c.clone()],
                T,
                [0.25, 0.52, 0.75],
                server,
                &flat,
            );
            assert_eq!((e.calls_up, e.calls_down), (0, 1), "{server}");
        }
    }

    /// Two calls forced to a medium model among a few routed ones, at one
    /// low score (a user with no free model: the routed ones landed in
    /// cheap). A boundary must not move unless the proposal, neighbours
    /// pushed included, satisfies more signals: judged by today's
    /// neighbours, cheap|medium at 0.07 looked right, and pushed free|cheap
    /// then put the unsure margin under it, so it moved with nothing gained
    /// (2 contradictions before, 2 after). Where it does move, the forced
    /// prompts land where they asked to.
    #[test]
    fn a_proposal_satisfies_more_signals_pushes_included() {
        for step in 2..40 {
            let s = f64::from(step) / 100.0;
            let mut h: Vec<HistoryCall> = (0..6).map(|_| call(s, "cheap", None, None)).collect();
            h.extend((0..2).map(|_| call(s, "medium", Some("model"), None)));
            let p = propose(&h, T, Preference::Cost, &flat);
            let sig = signals(&h, T, Preference::Cost, &mut Evidence::default());
            let before: usize = p.boundaries.iter().map(|b| b.violations_current).sum();
            let after: usize = p.boundaries.iter().map(|b| b.violations_proposed).sum();
            for (k, b) in p.boundaries.iter().enumerate() {
                let recount = violations(
                    &constraints(&sig, k),
                    p.proposed[k],
                    neighbours(p.proposed, k),
                );
                assert_eq!(b.violations_proposed, recount, "{s} {:?}", p.proposed);
            }
            if p.changed {
                assert!(
                    after + MIN_EVIDENCE <= before,
                    "{s}: {before} -> {after} {:?}",
                    p.proposed
                );
            } else {
                assert_eq!(after, before);
            }
        }
        // At 0.11 there is room below medium for free and cheap: both
        // boundaries come down, the lower giving way, and the forced
        // prompts' score routes to medium.
        let mut h: Vec<HistoryCall> = (0..6).map(|_| call(0.11, "cheap", None, None)).collect();
        h.extend((0..2).map(|_| call(0.11, "medium", Some("model"), None)));
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed);
        assert_eq!(
            effective_tier(p.proposed, 0.11, Preference::Cost),
            2,
            "{:?}",
            p.proposed
        );
        // At 0.05 medium cannot start low enough (free and cheap keep 0.06
        // each above 0.01): nothing gained, nothing moves.
        let mut h: Vec<HistoryCall> = (0..6).map(|_| call(0.05, "cheap", None, None)).collect();
        h.extend((0..2).map(|_| call(0.05, "medium", Some("model"), None)));
        let p = propose(&h, T, Preference::Cost, &flat);
        assert_eq!(effective_tier(p.proposed, 0.05, Preference::Cost).max(1), 1);
    }

    /// Calibration's "routed above" follows routing at switched-off
    /// tiers: with premium off (its boundary at 1.0), a quality server does
    /// not send a score of 0.985 to premium, so bad medium answers there
    /// are evidence against the boundary, which comes down (to where
    /// quality sends 0.985 to premium).
    #[test]
    fn switched_off_tiers_are_read_as_routing_reads_them() {
        let t = [0.25, 0.5, 1.0];
        assert_eq!(effective_tier(t, 0.985, Preference::Quality), 2);
        for (s, b, beside, prefer, above) in [
            (0.985, 1.0, (0.5, 1.0), Preference::Quality, false),
            (0.985, 0.75, (0.5, 1.0), Preference::Quality, true),
            (0.73, 0.75, (0.5, 1.0), Preference::Quality, true),
            // An empty band above: no step up into it.
            (0.48, 0.5, (0.25, 0.5), Preference::Quality, false),
            // An empty band below: no step down into it.
            (0.51, 0.5, (0.5, 0.75), Preference::Cost, true),
            (0.51, 0.5, (0.25, 0.75), Preference::Cost, false),
        ] {
            assert_eq!(
                routed_above(s, b, beside, prefer),
                above,
                "{s} {b} {beside:?} {prefer}"
            );
        }
        let h: Vec<HistoryCall> = (0..4)
            .map(|_| call(0.985, "medium", None, Some(1)))
            .collect();
        let p = propose(&h, t, Preference::Quality, &flat);
        // 0.99: premium switched on, and 0.985 within the margin below it.
        assert!(p.proposed[2] < 1.0, "{:?}", p.proposed);
        assert_eq!(effective_tier(p.proposed, 0.985, Preference::Quality), 3);
    }

    #[test]
    fn no_evidence_no_change() {
        let h = vec![
            call(0.2, "free", None, None),
            call(0.6, "medium", None, None),
        ];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(!p.changed);
        assert_eq!(p.proposed, T);
        assert_eq!(p.cost.delta_usd, 0.0);
    }

    /// The table's "contradicted after" counts the value proposed in the
    /// end, after neighbours pushed it, not the value the evidence chose.
    #[test]
    fn contradictions_are_counted_at_the_final_proposal() {
        // Three calls forced to medium at low scores pull cheap|medium
        // down; free|cheap is pushed down with it.
        let h = vec![
            call(0.09, "medium", Some("tier"), None),
            call(0.10, "medium", Some("tier"), None),
            call(0.11, "medium", Some("tier"), None),
        ];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed, "{:?}", p.proposed);
        let sig = signals(&h, T, Preference::Cost, &mut Evidence::default());
        for (k, b) in p.boundaries.iter().enumerate() {
            assert_eq!(b.proposed, p.proposed[k]);
            assert_eq!(
                b.violations_proposed,
                violations(
                    &constraints(&sig, k),
                    p.proposed[k],
                    neighbours(p.proposed, k),
                ),
                "{} at {:?}",
                b.boundary,
                p.proposed
            );
        }
    }

    /// Two overrides among a thousand unrated calls do not re-route the
    /// calls between the old boundary and theirs; the same two overrides
    /// among a few calls do.
    #[test]
    fn a_few_signals_cannot_move_many_calls() {
        let overrides = [
            call(0.90, "free", Some("tier"), None),
            call(0.91, "free", Some("tier"), None),
        ];
        let mut h: Vec<HistoryCall> = (0..1000)
            .map(|i| call(f64::from(i) / 1000.0, "cheap", None, None))
            .collect();
        h.extend(overrides.clone());
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(!p.changed, "{:?}", p.proposed);
        let few = [overrides.to_vec(), vec![call(0.5, "cheap", None, None)]].concat();
        assert!(propose(&few, T, Preference::Cost, &flat).changed);
    }

    #[test]
    fn one_bad_rating_is_not_enough() {
        let h = vec![call(0.20, "free", None, Some(1))];
        assert!(!propose(&h, T, Preference::Cost, &flat).changed);
    }

    #[test]
    fn bad_ratings_on_free_lower_the_free_boundary_and_cost_more() {
        let h = vec![
            call(0.18, "free", None, Some(1)),
            call(0.20, "free", None, Some(2)),
            call(0.22, "free", None, Some(1)),
            call(0.05, "free", None, Some(5)),
            call(0.10, "free", None, None),
        ];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed);
        // All three bad answers must now reach the cheap tier (beyond the
        // unsure margin); the good one at 0.05 stays free.
        assert!(
            p.proposed[0] + UNSURE_MARGIN <= 0.18 + 1e-9,
            "{:?}",
            p.proposed
        );
        assert!(p.proposed[0] + UNSURE_MARGIN > 0.05);
        assert_eq!(p.proposed[1..], T[1..]);
        assert_eq!(p.evidence.rated_bad, 3);
        assert_eq!(p.evidence.rated_good, 1);
        assert_eq!(p.cost.calls_up, 3);
        assert!(p.cost.delta_usd > 0.0);
        // Each moved call is re-priced at the cheap tier: 3 x $0.002.
        assert!((p.cost.projected_usd - 0.006).abs() < 1e-12);
        assert!((p.cost.recorded_usd - 0.0).abs() < 1e-12);
    }

    /// A call forced only to a provider is still routed by its score, so
    /// a moved boundary moves it too, and the cost effect counts it (it
    /// was held at its recorded cost, like a forced tier).
    #[test]
    fn provider_forced_calls_move_with_the_boundaries() {
        let mut h = vec![
            call(0.18, "free", None, Some(1)),
            call(0.20, "free", None, Some(2)),
            call(0.22, "free", None, Some(1)),
        ];
        h.push(call(0.21, "free", Some("provider"), None));
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed);
        assert_eq!(p.cost.calls_up, 4, "{:?}", p.cost);
        assert!((p.cost.projected_usd - 0.008).abs() < 1e-12, "{:?}", p.cost);
    }

    #[test]
    fn downward_overrides_raise_the_premium_boundary_and_save() {
        let h = vec![
            call(0.80, "medium", Some("tier"), None),
            call(0.85, "medium", Some("tier"), None),
            call(0.82, "medium", Some("model"), None),
            call(0.81, "premium", None, None),
        ];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed);
        assert!(p.proposed[2] + UNSURE_MARGIN > 0.85, "{:?}", p.proposed);
        assert_eq!(p.evidence.overrides_down, 3);
        assert_eq!(p.cost.calls_down, 1);
        assert!(p.cost.delta_usd < 0.0);
    }

    /// One call is one piece of evidence: forcing a cheaper tier and
    /// rating the answer good (or a dearer one and rating it bad) once
    /// moved two boundaries onto each other and erased a tier.
    #[test]
    fn one_call_rated_and_forced_moves_nothing() {
        let h = vec![call(0.6, "free", Some("tier"), Some(5))];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(!p.changed, "{:?}", p.proposed);
        let h = vec![call(0.10, "medium", Some("tier"), Some(1))];
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(!p.changed, "{:?}", p.proposed);
    }

    /// Evidence that moves one boundary onto its neighbour leaves every
    /// tier a band of scores to route to.
    #[test]
    fn no_tier_is_squeezed_out() {
        let h: Vec<_> = [0.09, 0.10, 0.11]
            .iter()
            .map(|s| call(*s, "medium", Some("tier"), None))
            .collect();
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed);
        for k in 0..2 {
            assert!(
                p.proposed[k + 1] - p.proposed[k] >= MIN_TIER_WIDTH - 1e-9,
                "{:?}",
                p.proposed
            );
        }
        assert!(
            p.proposed[0] >= 0.01 && p.proposed[2] <= 0.99,
            "{:?}",
            p.proposed
        );
        // A score in each tier's band lands in that tier.
        for tier in 0..4 {
            let lo = if tier == 0 {
                0.0
            } else {
                p.proposed[tier - 1] + UNSURE_MARGIN
            };
            assert_eq!(
                effective_tier(p.proposed, lo + 0.001, Preference::Cost),
                tier,
                "{:?}",
                p.proposed
            );
        }
    }

    /// With nothing to go on, the configured thresholds stand exactly,
    /// odd ones included (equal boundaries switch a tier off on purpose;
    /// three decimals; 0 and 1).
    #[test]
    fn no_evidence_leaves_any_thresholds_alone() {
        for t in [
            [0.5, 0.5, 0.75],
            [0.25, 0.28, 0.75],
            [0.333, 0.5, 0.75],
            [0.0, 0.5, 1.0],
        ] {
            let p = propose(&[], t, Preference::Cost, &flat);
            assert!(!p.changed, "{t:?} -> {:?}", p.proposed);
            assert_eq!(p.proposed, t);
        }
    }

    #[test]
    fn boundaries_stay_ascending() {
        // Overrides down to cheap at medium scores just under 0.75 raise
        // the cheap|medium boundary to about 0.72: the medium|premium one
        // (0.75, left alone by the evidence) is pushed up to keep medium
        // a band.
        let h: Vec<_> = [0.70, 0.72, 0.74]
            .iter()
            .map(|s| call(*s, "cheap", Some("tier"), None))
            .collect();
        let p = propose(&h, T, Preference::Cost, &flat);
        assert!(p.changed, "{:?}", p.proposed);
        assert!(p.proposed[1] > 0.7, "{:?}", p.proposed);
        assert!(p.proposed[2] > T[2], "{:?}", p.proposed);
        assert_eq!(p.proposed[0], T[0]);
        for k in 0..2 {
            assert!(
                p.proposed[k + 1] - p.proposed[k] >= MIN_TIER_WIDTH - 1e-9,
                "{:?}",
                p.proposed
            );
        }
    }
}
