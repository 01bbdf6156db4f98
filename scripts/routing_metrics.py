"""Routing metrics of the RouteLLM protocol (arXiv 2406.18665), pure Python stdlib.

Why a module of its own: the evaluation harness (`eval_routing.py`), the weight
fitting script (`fit_scorer.py`) and the unit tests (`test_routing_metrics.py`)
must all agree on exactly one definition of every figure.

Conventions
-----------
A router gives every prompt a score; higher means "send to the strong model".
Sweeping a threshold from +inf ("always weak") to -inf ("always strong") routes
the top-scored prompts to the strong model first. At a strong-call share ``c``
the quality is the mean over prompts of (strong score if routed strong else weak
score), and

    PGR(c) = (quality(c) - weak_mean) / (strong_mean - weak_mean).

Ties: prompts with equal scores form one group that is routed *partially*; the
curve is linear across the group, which is exactly the expected curve under
uniformly random tie-breaking. The metrics are therefore deterministic and a
constant scorer scores exactly like the random router's expectation (0.5).

- ``apgr``: area under PGR(c) over c in [0, 1] (trapezoids on the exact
  piecewise-linear curve). Random = 0.5 in expectation; the oracle exceeds 1.
- ``cpt(x)``: the smallest share c with PGR(c) >= x (interpolated inside a
  group). ``cpt(0.5)`` and ``cpt(0.8)`` are reported.
- ``share_for_strong_quality(q)``: the smallest share at which quality reaches
  ``q * strong_mean`` (q = 0.95 in the reports).

Every function accepts optional per-prompt ``weights`` (non-negative numbers,
e.g. bootstrap multiplicities), so a bootstrap resample needs no re-sorting.
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a64(text: str) -> int:
    """FNV-1a 64 of the UTF-8 bytes of ``text`` (the train/test split hash)."""
    h = FNV_OFFSET
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def is_train(row_id: str) -> bool:
    """True for the train half: FNV-1a 64 of the id is even."""
    return fnv1a64(row_id) % 2 == 0


class Curve:
    """The exact PGR-vs-share curve of one router on one bench.

    Built once from (score, strong, weak) triples; ``with_weights`` re-evaluates
    the same tie groups under other per-prompt weights (bootstrap).
    """

    def __init__(self, scores: Sequence[float], strong: Sequence[float], weak: Sequence[float]):
        if not (len(scores) == len(strong) == len(weak)):
            raise ValueError("scores, strong and weak must have the same length")
        if len(scores) == 0:
            raise ValueError("no prompts")
        for s in scores:
            if isinstance(s, float) and math.isnan(s):
                raise ValueError("NaN score")
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        # groups: list of index lists of tied scores, highest score first.
        self.groups: List[List[int]] = []
        last = None
        for i in order:
            if last is None or scores[i] != last:
                self.groups.append([])
                last = scores[i]
            self.groups[-1].append(i)
        self.strong = list(strong)
        self.weak = list(weak)
        self.n = len(scores)

    def points(self, weights: Optional[Sequence[float]] = None) -> Tuple[List[float], List[float], float, float]:
        """Return (shares, pgrs, strong_mean, weak_mean) at the group boundaries.

        shares starts at 0 and ends at 1; pgrs at 0 and 1 (when the gap is not 0).
        Raises ZeroDivisionError when strong_mean == weak_mean (no gap to recover).
        """
        w = weights if weights is not None else [1.0] * self.n
        total = 0.0
        s_sum = 0.0
        w_sum = 0.0
        for i in range(self.n):
            wi = w[i]
            total += wi
            s_sum += wi * self.strong[i]
            w_sum += wi * self.weak[i]
        if total <= 0:
            raise ZeroDivisionError("total weight is 0")
        strong_mean = s_sum / total
        weak_mean = w_sum / total
        gap = strong_mean - weak_mean
        if gap == 0:
            raise ZeroDivisionError("strong and weak means are equal")
        shares = [0.0]
        pgrs = [0.0]
        cum_w = 0.0
        cum_gain = 0.0
        for g in self.groups:
            gw = 0.0
            gg = 0.0
            for i in g:
                wi = w[i]
                gw += wi
                gg += wi * (self.strong[i] - self.weak[i])
            if gw == 0:
                continue
            cum_w += gw
            cum_gain += gg
            shares.append(cum_w / total)
            pgrs.append((cum_gain / total) / gap)
        shares[-1] = 1.0  # guard against float drift
        return shares, pgrs, strong_mean, weak_mean


def _area(shares: Sequence[float], pgrs: Sequence[float]) -> float:
    a = 0.0
    for k in range(1, len(shares)):
        a += (shares[k] - shares[k - 1]) * (pgrs[k] + pgrs[k - 1]) / 2.0
    return a


def _first_crossing(shares: Sequence[float], pgrs: Sequence[float], target: float) -> float:
    if pgrs[0] >= target:
        return shares[0]
    for k in range(1, len(shares)):
        if pgrs[k] >= target:
            p0, p1 = pgrs[k - 1], pgrs[k]
            c0, c1 = shares[k - 1], shares[k]
            if p1 == p0:
                return c1
            return c0 + (c1 - c0) * (target - p0) / (p1 - p0)
    return 1.0 if target <= pgrs[-1] + 1e-12 else float("nan")


def metrics_from_points(shares, pgrs, strong_mean, weak_mean, quality_fraction=0.95) -> Dict[str, float]:
    """All reported figures from one curve."""
    gap = strong_mean - weak_mean
    target_q = quality_fraction * strong_mean
    target_pgr = (target_q - weak_mean) / gap
    return {
        "apgr": _area(shares, pgrs),
        "cpt50": _first_crossing(shares, pgrs, 0.5),
        "cpt80": _first_crossing(shares, pgrs, 0.8),
        "share95": 0.0 if target_pgr <= 0 else _first_crossing(shares, pgrs, target_pgr),
    }


def evaluate(scores, strong, weak, weights=None, quality_fraction=0.95) -> Dict[str, float]:
    """APGR, CPT(50%), CPT(80%) and the share for ``quality_fraction`` of strong quality."""
    c = Curve(scores, strong, weak)
    return metrics_from_points(*c.points(weights), quality_fraction=quality_fraction)


def apgr(scores, strong, weak, weights=None) -> float:
    """Average performance gap recovered (area under PGR vs strong-call share)."""
    return evaluate(scores, strong, weak, weights)["apgr"]


def cpt(scores, strong, weak, x: float, weights=None) -> float:
    """Call-performance threshold: smallest strong share recovering ``x`` of the gap."""
    c = Curve(scores, strong, weak)
    shares, pgrs, _, _ = c.points(weights)
    return _first_crossing(shares, pgrs, x)


def operating_point(routed_strong: Sequence[bool], strong, weak) -> Dict[str, float]:
    """One fixed routing (no sweep): each prompt goes to the strong model or not.

    Returns the strong-call share, the mean quality, the performance gap recovered
    ((quality - weak mean) / (strong mean - weak mean)) and the quality as a fraction
    of the strong model's mean.
    """
    n = len(routed_strong)
    if n == 0 or n != len(strong) or n != len(weak):
        raise ValueError("routed_strong, strong and weak must be non-empty and of one length")
    s_mean, w_mean = sum(strong) / n, sum(weak) / n
    quality = sum(s if r else w for r, s, w in zip(routed_strong, strong, weak)) / n
    return {
        "share": sum(1 for r in routed_strong if r) / n,
        "quality": quality,
        "pgr": (quality - w_mean) / (s_mean - w_mean),
        "of_strong": quality / s_mean,
    }


def oracle_scores(strong, weak) -> List[float]:
    """The oracle router: the true per-prompt gain of the strong model."""
    return [s - w for s, w in zip(strong, weak)]


def random_scores(n: int, seed: int) -> List[float]:
    """A seeded random router."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def bootstrap(curves: Dict[str, Curve], n: int, resamples: int = 1000, seed: int = 20240601,
              quality_fraction: float = 0.95) -> Dict[str, Dict[str, List[float]]]:
    """Paired bootstrap: the same resampled prompt multiset for every router.

    Returns {router: {metric: [value per resample]}}. Resamples whose gap is 0
    are skipped (for every router alike, so the pairing holds).
    """
    rng = random.Random(seed)
    out: Dict[str, Dict[str, List[float]]] = {name: {} for name in curves}
    for _ in range(resamples):
        counts = [0.0] * n
        for _k in range(n):
            counts[rng.randrange(n)] += 1.0
        try:
            results = {name: metrics_from_points(*c.points(counts), quality_fraction=quality_fraction)
                       for name, c in curves.items()}
        except ZeroDivisionError:
            continue
        for name, m in results.items():
            for key, v in m.items():
                out[name].setdefault(key, []).append(v)
    return out


def percentile_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval (NaNs dropped)."""
    v = sorted(x for x in values if not math.isnan(x))
    if not v:
        return float("nan"), float("nan")
    lo_q = (1 - level) / 2
    hi_q = 1 - lo_q

    def q(p):
        pos = p * (len(v) - 1)
        lo = math.floor(pos)
        hi = math.ceil(pos)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return q(lo_q), q(hi_q)
