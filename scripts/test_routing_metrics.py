"""Unit tests of routing_metrics against hand-computed cases.

Run: python3 -m unittest discover -s scripts -p 'test_*.py'
"""

import math
import os
import statistics
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_metrics as rm  # noqa: E402


class SplitHash(unittest.TestCase):
    def test_fnv1a64_vectors(self):
        # Published FNV-1a 64 test vectors.
        self.assertEqual(rm.fnv1a64(""), 0xCBF29CE484222325)
        self.assertEqual(rm.fnv1a64("a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(rm.fnv1a64("foobar"), 0x85944171F73967E8)

    def test_is_train_is_even_hash(self):
        for s in ("gsm8k-0", "mmlu-abstract_algebra-3", "mt-bench-81"):
            self.assertEqual(rm.is_train(s), rm.fnv1a64(s) % 2 == 0)


class OperatingPoint(unittest.TestCase):
    # Four prompts: gains 1, 0, 1, -1 (strong 1,1,1,0; weak 0,1,0,1).
    # strong mean 0.75, weak mean 0.5, gap 0.25.
    strong = [1.0, 1.0, 1.0, 0.0]
    weak = [0.0, 1.0, 0.0, 1.0]

    def test_hand_computed(self):
        # Strong for the first two: quality (1 + 1 + 0 + 1) / 4 = 0.75.
        p = rm.operating_point([True, True, False, False], self.strong, self.weak)
        self.assertAlmostEqual(p["share"], 0.5)
        self.assertAlmostEqual(p["quality"], 0.75)
        self.assertAlmostEqual(p["pgr"], 1.0)
        self.assertAlmostEqual(p["of_strong"], 1.0)
        # Strong only for the last (where it loses): (0 + 1 + 0 + 0) / 4.
        p = rm.operating_point([False, False, False, True], self.strong, self.weak)
        self.assertAlmostEqual(p["share"], 0.25)
        self.assertAlmostEqual(p["quality"], 0.25)
        self.assertAlmostEqual(p["pgr"], -1.0)
        self.assertAlmostEqual(p["of_strong"], 1 / 3)

    def test_all_or_nothing_match_the_models(self):
        for routed, pgr in (([False] * 4, 0.0), ([True] * 4, 1.0)):
            self.assertAlmostEqual(rm.operating_point(routed, self.strong, self.weak)["pgr"], pgr)

    def test_mismatched_lengths_are_refused(self):
        with self.assertRaises(ValueError):
            rm.operating_point([True], self.strong, self.weak)


class TwoPrompts(unittest.TestCase):
    # A: strong 1, weak 0 (gain 1); B: strong 1, weak 1 (gain 0).
    # strong mean 1, weak mean 0.5, gap 0.5.
    strong = [1.0, 1.0]
    weak = [0.0, 1.0]

    def test_perfect_order(self):
        # Curve (0,0) -> (0.5,1) -> (1,1): area 0.25 + 0.5 = 0.75.
        m = rm.evaluate([2.0, 1.0], self.strong, self.weak)
        self.assertAlmostEqual(m["apgr"], 0.75)
        self.assertAlmostEqual(m["cpt50"], 0.25)
        self.assertAlmostEqual(m["cpt80"], 0.40)
        # 95% of strong quality = 0.95 -> PGR 0.9 -> share 0.45.
        self.assertAlmostEqual(m["share95"], 0.45)

    def test_reversed_order(self):
        # Curve (0,0) -> (0.5,0) -> (1,1): area 0.25; 50% reached at 0.75.
        m = rm.evaluate([1.0, 2.0], self.strong, self.weak)
        self.assertAlmostEqual(m["apgr"], 0.25)
        self.assertAlmostEqual(m["cpt50"], 0.75)
        self.assertAlmostEqual(m["share95"], 0.95)

    def test_ties_are_routed_partially(self):
        # One tied group: the straight line (0,0) -> (1,1), exactly the random expectation.
        m = rm.evaluate([0.3, 0.3], self.strong, self.weak)
        self.assertAlmostEqual(m["apgr"], 0.5)
        self.assertAlmostEqual(m["cpt50"], 0.5)
        self.assertAlmostEqual(m["cpt80"], 0.8)

    def test_weights_equal_duplication(self):
        w = rm.evaluate([2.0, 1.0], self.strong, self.weak, weights=[2.0, 1.0])
        d = rm.evaluate([2.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0])
        for k in w:
            self.assertAlmostEqual(w[k], d[k])
        # Zero weight drops a prompt.
        z = rm.evaluate([2.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], weights=[1.0, 1.0, 0.0])
        base = rm.evaluate([2.0, 1.0], self.strong, self.weak)
        for k in z:
            self.assertAlmostEqual(z[k], base[k])


class OracleAboveOne(unittest.TestCase):
    # A (1,0), B (0,1), C (1,0), D (1,1): strong mean .75, weak .5, gap .25.
    strong = [1.0, 0.0, 1.0, 1.0]
    weak = [0.0, 1.0, 0.0, 1.0]

    def test_oracle(self):
        # Oracle scores 1, -1, 1, 0: groups {A,C}, {D}, {B}.
        # Curve (0,0) -> (.5,2) -> (.75,2) -> (1,1): area .5 + .5 + .375 = 1.375.
        s = rm.oracle_scores(self.strong, self.weak)
        self.assertEqual(s, [1.0, -1.0, 1.0, 0.0])
        m = rm.evaluate(s, self.strong, self.weak)
        self.assertAlmostEqual(m["apgr"], 1.375)
        self.assertAlmostEqual(m["cpt50"], 0.125)
        self.assertAlmostEqual(m["cpt80"], 0.2)
        # 95% of .75 = .7125 -> PGR .85 -> share .2125.
        self.assertAlmostEqual(m["share95"], 0.2125)

    def test_cpt_direct(self):
        s = rm.oracle_scores(self.strong, self.weak)
        self.assertAlmostEqual(rm.cpt(s, self.strong, self.weak, 1.0), 0.25)

    def test_no_gap_raises(self):
        with self.assertRaises(ZeroDivisionError):
            rm.evaluate([1.0, 2.0], [1.0, 0.0], [0.0, 1.0])

    def test_bad_input(self):
        with self.assertRaises(ValueError):
            rm.evaluate([], [], [])
        with self.assertRaises(ValueError):
            rm.evaluate([1.0], [1.0, 0.0], [0.0, 0.0])
        with self.assertRaises(ValueError):
            rm.evaluate([float("nan"), 1.0], [1.0, 1.0], [0.0, 1.0])


class JudgeScale(unittest.TestCase):
    def test_mt_bench_style_scores(self):
        # 1-10 judge scores: strong (10, 8), weak (6, 8): gap 2, strong mean 9, weak 7.
        m = rm.evaluate([1.0, 0.0], [10.0, 8.0], [6.0, 8.0])
        self.assertAlmostEqual(m["apgr"], 0.75)
        # 95% of 9 = 8.55 -> PGR (8.55 - 7) / 2 = .775 -> share .3875.
        self.assertAlmostEqual(m["share95"], 0.3875)

    def test_share95_zero_when_weak_is_good_enough(self):
        m = rm.evaluate([1.0, 0.0], [10.0, 10.0], [9.8, 9.9])
        self.assertEqual(m["share95"], 0.0)


class RandomAndBootstrap(unittest.TestCase):
    def test_random_router_near_half(self):
        strong = [1.0] * 50 + [0.0] * 30 + [1.0] * 20
        weak = [0.0] * 50 + [0.0] * 30 + [1.0] * 20
        vals = [rm.apgr(rm.random_scores(100, seed), strong, weak) for seed in range(200)]
        self.assertAlmostEqual(statistics.fmean(vals), 0.5, delta=0.02)
        self.assertEqual(rm.random_scores(5, 7), rm.random_scores(5, 7))

    def test_bootstrap_is_seeded_and_brackets_point(self):
        strong = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
        weak = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
        scores = [0.9, 0.2, 0.1, 0.8, 0.3, 0.4, 0.7, 0.5]
        curves = {"s": rm.Curve(scores, strong, weak)}
        a = rm.bootstrap(curves, len(scores), resamples=300, seed=1)
        b = rm.bootstrap(curves, len(scores), resamples=300, seed=1)
        self.assertEqual(repr(a), repr(b))  # repr: NaN-safe equality
        lo, hi = rm.percentile_interval(a["s"]["apgr"])
        point = rm.apgr(scores, strong, weak)
        self.assertLessEqual(lo, point)
        self.assertGreaterEqual(hi, point)
        # Unit weights reproduce the point estimate.
        m = rm.metrics_from_points(*curves["s"].points([1.0] * len(scores)))
        self.assertAlmostEqual(m["apgr"], point)

    def test_percentile_interval(self):
        lo, hi = rm.percentile_interval(list(range(101)), level=0.9)
        self.assertAlmostEqual(lo, 5.0)
        self.assertAlmostEqual(hi, 95.0)
        lo, hi = rm.percentile_interval([])
        self.assertTrue(math.isnan(lo) and math.isnan(hi))


if __name__ == "__main__":
    unittest.main()
