//! The prompt-complexity scorer: one number in 0.0..=1.0 per prompt, higher meaning
//! "a strong model is more likely to do meaningfully better than a cheap one here".
//!
//! # Why it looks like this
//!
//! Routing happens on every call, so the scorer must be cheap (one pass over the
//! bytes, no heap allocation, no model download) and explainable (every score comes
//! with the features that moved it). It is a linear model fitted offline by
//! `scripts/fit_scorer.py` on real strong-vs-weak outcomes (RouteLLM's GSM8K, MMLU and
//! MT-Bench pairs, train half only):
//!
//! * 26 engineered, general features: length, numbers, symbol counts, code markers,
//!   sentence/question/line counts, and word-class counts (math, logic, science, law,
//!   medicine, code, writing, formatting, role-play, constraints, sequencing, small
//!   talk);
//! * hashed word 1-, 2- and 3-grams (2^15 buckets, presence, divided by the square root
//!   of the number of distinct buckets), so wording such as "how many more" or
//!   "implement a function" can count without a vocabulary file.
//!
//! The linear predictor is squashed with a logistic curve whose centre is the median
//! training prompt (0.5) and whose 10th/90th training percentiles land on 0.2/0.8.
//!
//! The weights live in the generated sibling file `scorer_weights.rs`, pulled in with
//! `include!` (so `router/mod.rs` only needs `pub mod scorer;`). Regenerate it with
//! `python3 scripts/fit_scorer.py`; the feature definitions there and here must stay in
//! sync (the script's docstring is the specification, and its `--emit-scores` output is
//! compared with this code on all 15k data rows).
//!
//! # Cost
//!
//! Linear in the prompt length, constant extra memory (a 4 KiB bitset and a few
//! counters on the stack). A multi-megabyte prompt is just a longer loop.

#![allow(clippy::cast_precision_loss)]

mod weights {
    include!("scorer_weights.rs");
}

use weights::{
    BUCKET_BITS, DENSE_COEF, DENSE_MEAN, DENSE_NAMES, INTERCEPT, LEX_BITS, LEX_FIRST, LEXICON,
    N_DENSE, NGRAM_Q, NGRAM_SCALE, TEXT_MEAN, Z_MID, Z_SCALE,
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// FNV-1a 64 of "0": every number token hashes to this.
const NUMBER_HASH: u64 = (FNV_OFFSET ^ b'0' as u64).wrapping_mul(FNV_PRIME);
const N_BUCKETS: usize = 1 << BUCKET_BITS;
const BITSET_WORDS: usize = N_BUCKETS / 64;
/// How many example phrases a score keeps per direction (for `reasons`).
const KEEP_PHRASES: usize = 3;
/// Longest phrase excerpt kept, in bytes.
const PHRASE_BYTES: usize = 40;
/// Contributions smaller than this (log-odds) are not worth reporting.
const MIN_REASON: f64 = 1e-3;

// Indices of the dense features (order fixed by `scorer_weights.rs`; checked in tests).
const F_LENGTH: usize = 0;
const F_AVG_WORD_LEN: usize = 1;
const F_NUMBERS: usize = 2;
const F_NUMBER_DENSITY: usize = 3;
const F_QUESTIONS: usize = 4;
const F_SENTENCES: usize = 5;
const F_LINES: usize = 6;
const F_MATH_SYMBOLS: usize = 7;
const F_QUANTITIES: usize = 8;
const F_LATEX: usize = 9;
const F_CODE_SYMBOLS: usize = 10;
const F_CODE_BLOCKS: usize = 11;
const F_NON_ASCII: usize = 12;
const F_UPPERCASE: usize = 13;
const N_LEX: usize = N_DENSE - LEX_FIRST;

// Byte classes for the single scanning pass.
const C_UPPER: u8 = 1;
const C_LOWER: u8 = 2;
const C_DIGIT: u8 = 4;
const C_SPACE: u8 = 8;
const C_MATH: u8 = 16;
const C_CODE: u8 = 32;
const C_QUANT: u8 = 64;

const fn byte_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut k = 0u8;
        if c.is_ascii_uppercase() {
            k |= C_UPPER;
        }
        if c.is_ascii_lowercase() {
            k |= C_LOWER;
        }
        if c.is_ascii_digit() {
            k |= C_DIGIT;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            k |= C_SPACE;
        }
        if matches!(c, b'=' | b'+' | b'^' | b'<' | b'>') {
            k |= C_MATH;
        }
        if matches!(c, b'{' | b'}' | b';' | b'`' | b'_' | b'#') {
            k |= C_CODE;
        }
        if matches!(c, b'%' | b'$') {
            k |= C_QUANT;
        }
        t[b] = k;
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = byte_classes();

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    (a.rotate_left(23) ^ b).wrapping_mul(GOLDEN)
}

#[inline]
fn bucket(k: u64) -> usize {
    ((k ^ (k >> 32)).wrapping_mul(GOLDEN) >> (64 - BUCKET_BITS)) as usize
}

/// Class bit mask of a token or bigram key (0 when not in the lexicon).
#[inline]
fn lexicon_classes(key: u64) -> u16 {
    let mask = (1usize << LEX_BITS) - 1;
    let mut i = ((key ^ (key >> 32)).wrapping_mul(GOLDEN) >> (64 - LEX_BITS)) as usize;
    // The table is at most half full, so this terminates well before a full cycle.
    for _ in 0..=mask {
        let (k, classes) = LEXICON[i];
        if k == key {
            return classes;
        }
        if k == 0 {
            return 0;
        }
        i = (i + 1) & mask;
    }
    0
}

/// A short excerpt of the prompt whose n-gram carried a large weight (explanations only).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phrase {
    bytes: [u8; PHRASE_BYTES],
    len: u8,
    weight: i16,
}

const NO_PHRASE: Phrase = Phrase {
    bytes: [0; PHRASE_BYTES],
    len: 0,
    weight: 0,
};

impl Phrase {
    fn text(&self) -> String {
        let raw = &self.bytes[..usize::from(self.len)];
        // The excerpt may have been cut inside a UTF-8 sequence: keep the valid prefix.
        let valid = match std::str::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut out = String::with_capacity(valid.len());
        let mut last_space = false;
        for ch in valid.chars() {
            if ch.is_whitespace() || ch.is_control() {
                if !last_space {
                    out.push(' ');
                }
                last_space = true;
            } else {
                out.push(ch);
                last_space = false;
            }
        }
        out.trim().to_owned()
    }
}

/// Keeps the `KEEP_PHRASES` phrases with the largest (or, with `sign = -1`, smallest)
/// weights. Insertion copies at most `PHRASE_BYTES` bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TopPhrases {
    items: [Phrase; KEEP_PHRASES],
    n: usize,
}

impl TopPhrases {
    const fn new() -> Self {
        Self {
            items: [NO_PHRASE; KEEP_PHRASES],
            n: 0,
        }
    }

    /// `key` is the weight already oriented so that larger is better.
    #[inline]
    fn offer(&mut self, key: i32, weight: i16, text: &[u8]) {
        if self.n == KEEP_PHRASES && key <= self.key(KEEP_PHRASES - 1, weight) {
            return;
        }
        // Skip duplicates of the same excerpt (the same phrase can map to several buckets).
        let len = text.len().min(PHRASE_BYTES);
        let excerpt = &text[..len];
        if self.items[..self.n]
            .iter()
            .any(|p| &p.bytes[..usize::from(p.len)] == excerpt)
        {
            return;
        }
        let mut p = NO_PHRASE;
        p.bytes[..len].copy_from_slice(excerpt);
        p.len = len as u8; // len <= PHRASE_BYTES < 256
        p.weight = weight;
        let mut pos = self.n.min(KEEP_PHRASES - 1);
        while pos > 0 && self.key(pos - 1, weight) < key {
            pos -= 1;
        }
        let end = self.n.min(KEEP_PHRASES - 1);
        let mut i = end;
        while i > pos {
            self.items[i] = self.items[i - 1];
            i -= 1;
        }
        self.items[pos] = p;
        self.n = (self.n + 1).min(KEEP_PHRASES);
    }

    /// The orientation of stored items matches the orientation of `weight`'s list.
    #[inline]
    fn key(&self, i: usize, probe: i16) -> i32 {
        let w = i32::from(self.items[i].weight);
        if probe >= 0 { w } else { -w }
    }
}

/// The scorer's verdict on one prompt.
///
/// `value` is what routing uses; the private fields keep, without heap allocation,
/// what [`Score::reasons`] needs to explain it (per-feature contributions, the raw
/// quantities behind them and a few example phrases).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// 0.0..=1.0, higher = needs a stronger model. 0.5 is the median prompt of the
    /// training mix; 0.2 and 0.8 are its 10th and 90th percentiles.
    pub value: f64,
    /// The value before the logistic squash (log-odds); reasons are in these units.
    logit: f64,
    /// Contribution of each dense feature to `logit`, relative to a typical prompt.
    contrib: [f64; N_DENSE],
    /// The human-scale quantity behind each dense feature (a count or a ratio).
    raw: [f64; N_DENSE],
    /// Contribution of the hashed n-gram (wording) term to `logit`.
    text_contrib: f64,
    /// Phrases with the largest positive n-gram weights present in the prompt.
    up: TopPhrases,
    /// Phrases with the largest negative n-gram weights present in the prompt.
    down: TopPhrases,
}

/// One feature's share in a score, for explaining a routing decision to a user.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Reason {
    /// Stable feature name, e.g. `numbers`, `lex_math`, `length`, `wording`.
    pub feature: String,
    /// Push on the score in log-odds units, relative to a typical prompt: positive
    /// pushes towards the strong model, negative towards the cheap one.
    pub contribution: f64,
    /// A human sentence, e.g. "contains 7 numbers (math word problem)".
    pub detail: String,
}

impl Score {
    /// The features that moved the score most, strongest first (at most `n`), for
    /// explaining the decision. Sorted by |contribution|; features whose push is
    /// negligible (below 0.001 log-odds) are left out, so an empty prompt may have none.
    pub fn reasons(&self, n: usize) -> Vec<Reason> {
        let mut idx: Vec<(usize, f64)> = Vec::with_capacity(N_DENSE + 1);
        for (j, &c) in self.contrib.iter().enumerate() {
            if c.abs() >= MIN_REASON {
                idx.push((j, c));
            }
        }
        if self.text_contrib.abs() >= MIN_REASON {
            idx.push((N_DENSE, self.text_contrib));
        }
        idx.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        idx.truncate(n);
        idx.into_iter()
            .map(|(j, c)| {
                if j == N_DENSE {
                    Reason {
                        feature: "wording".to_owned(),
                        contribution: c,
                        detail: self.wording_detail(c),
                    }
                } else {
                    Reason {
                        feature: DENSE_NAMES[j].to_owned(),
                        contribution: c,
                        detail: dense_detail(j, self.raw[j], c),
                    }
                }
            })
            .collect()
    }

    /// The score before the logistic squash (log-odds scale); useful for thresholds
    /// that must stay distinguishable near 0 or 1.
    pub fn logit(&self) -> f64 {
        self.logit
    }

    fn wording_detail(&self, c: f64) -> String {
        let list = if c >= 0.0 { &self.up } else { &self.down };
        let examples: Vec<String> = list.items[..list.n]
            .iter()
            .map(Phrase::text)
            .filter(|t| !t.is_empty())
            .map(|t| format!("\"{t}\""))
            .collect();
        let what = if c >= 0.0 {
            "wording typical of prompts where the strong model did better"
        } else {
            "wording typical of prompts a cheap model handles as well"
        };
        if examples.is_empty() {
            what.to_owned()
        } else {
            format!("{what}, e.g. {}", examples.join(", "))
        }
    }
}

fn plural(n: f64, one: &str, many: &str) -> String {
    let k = n.round();
    if k == 1.0 {
        format!("1 {one}")
    } else {
        format!("{k:.0} {many}")
    }
}

fn dense_detail(j: usize, raw: f64, c: f64) -> String {
    let dir = if c >= 0.0 { "more" } else { "less" };
    match j {
        F_LENGTH => format!(
            "{} long; {} prompts tend to need a stronger model",
            plural(raw, "character", "characters"),
            if c >= 0.0 { "longer" } else { "short" }
        ),
        F_AVG_WORD_LEN => format!("average word length {raw:.1} letters"),
        F_NUMBERS => format!(
            "contains {} (math word problem signal)",
            plural(raw, "number", "numbers")
        ),
        F_NUMBER_DENSITY => format!("{:.0}% of the tokens are numbers", raw * 100.0),
        F_QUESTIONS => format!("{}", plural(raw, "question mark", "question marks")),
        F_SENTENCES => format!("{}", plural(raw, "sentence", "sentences")),
        F_LINES => format!("{}", plural(raw + 1.0, "line", "lines")),
        F_MATH_SYMBOLS => format!("{}", plural(raw, "math symbol", "math symbols")),
        F_QUANTITIES => format!(
            "{} (quantities)",
            plural(raw, "% or $ sign", "% or $ signs")
        ),
        F_LATEX => format!(
            "{} (LaTeX or escapes)",
            plural(raw, "backslash", "backslashes")
        ),
        F_CODE_SYMBOLS => format!(
            "{} such as braces or semicolons",
            plural(raw, "code symbol", "code symbols")
        ),
        F_CODE_BLOCKS => format!("{}", plural(raw, "fenced code block", "fenced code blocks")),
        F_NON_ASCII => format!("{:.0}% non-ASCII characters", raw * 100.0),
        F_UPPERCASE => format!("{:.0}% of the letters are upper-case", raw * 100.0),
        _ if j >= LEX_FIRST && j < N_DENSE => {
            let class = DENSE_NAMES[j].trim_start_matches("lex_");
            let hint = match class {
                "math" => " (e.g. total, percent, equation, how many)",
                "logic" => " (e.g. prove, therefore, assume)",
                "science" => " (e.g. velocity, enzyme, algorithm)",
                "law" => " (e.g. plaintiff, statute, negligence)",
                "medicine" => " (e.g. patient, diagnosis, dose)",
                "code" => " (e.g. function, implement, python)",
                "writing" => " (e.g. write, story, email)",
                "format" => " (e.g. extract, table, summarize)",
                "roleplay" => " (e.g. pretend, persona, role)",
                "constraint" => " (e.g. must, only, at least, not)",
                "steps" => " (e.g. first, then, remaining)",
                "smalltalk" => " (e.g. hello, thanks)",
                _ => "",
            };
            format!(
                "{} from the {class} vocabulary{hint}",
                plural(raw, "word", "words")
            )
        }
        _ => format!("pushes the score {dir}"),
    }
}

/// Everything counted in one pass over the bytes.
struct Scan {
    chars: u64,
    non_ascii: u64,
    letters: u64,
    upper: u64,
    words: u64,
    letters_in_words: u64,
    numbers: u64,
    questions: u64,
    sentences: u64,
    lines: u64,
    math_symbols: u64,
    quantities: u64,
    backslashes: u64,
    code_symbols: u64,
    fences: u64,
    lex: [u64; N_LEX],
    // n-gram state
    seen: [u64; BITSET_WORDS],
    distinct: u64,
    qsum: i64,
    prev1: u64,
    prev_bi: u64,
    ntok: u64,
    starts: [usize; 3],
    up: TopPhrases,
    down: TopPhrases,
}

impl Scan {
    fn new() -> Self {
        Self {
            chars: 0,
            non_ascii: 0,
            letters: 0,
            upper: 0,
            words: 0,
            letters_in_words: 0,
            numbers: 0,
            questions: 0,
            sentences: 0,
            lines: 0,
            math_symbols: 0,
            quantities: 0,
            backslashes: 0,
            code_symbols: 0,
            fences: 0,
            lex: [0; N_LEX],
            seen: [0; BITSET_WORDS],
            distinct: 0,
            qsum: 0,
            prev1: 0,
            prev_bi: 0,
            ntok: 0,
            starts: [0; 3],
            up: TopPhrases::new(),
            down: TopPhrases::new(),
        }
    }

    #[inline]
    fn add_lex(&mut self, classes: u16) {
        if classes != 0 {
            for (i, slot) in self.lex.iter_mut().enumerate() {
                *slot += u64::from((classes >> i) & 1);
            }
        }
    }

    #[inline]
    fn add_gram(&mut self, key: u64, text: &[u8]) {
        let b = bucket(key);
        let (word, bit) = (b >> 6, 1u64 << (b & 63));
        if self.seen[word] & bit != 0 {
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        let q = NGRAM_Q[b];
        self.qsum += i64::from(q);
        if q > 0 {
            self.up.offer(i32::from(q), q, text);
        } else if q < 0 {
            self.down.offer(-i32::from(q), q, text);
        }
    }

    /// A finished word (`is_word`) or number token spanning `data[start..end]`.
    #[inline]
    fn token(&mut self, data: &[u8], h: u64, start: usize, end: usize, is_word: bool) {
        if is_word {
            self.words += 1;
            self.letters_in_words += (end - start) as u64;
            let c = lexicon_classes(h);
            self.add_lex(c);
        } else {
            self.numbers += 1;
        }
        self.starts = [self.starts[1], self.starts[2], start];
        self.add_gram(h, &data[start..end]);
        if self.ntok >= 1 {
            let bi = mix(self.prev1, h);
            let c = lexicon_classes(bi);
            self.add_lex(c);
            self.add_gram(bi, &data[self.starts[1]..end]);
            if self.ntok >= 2 {
                let tri = mix(self.prev_bi, h);
                self.add_gram(tri, &data[self.starts[0]..end]);
            }
            self.prev_bi = bi;
        }
        self.prev1 = h;
        self.ntok += 1;
    }

    fn run(&mut self, data: &[u8]) {
        let n = data.len();
        let mut in_word = false;
        let mut word_start = 0usize;
        let mut h = FNV_OFFSET;
        let mut in_num = false;
        let mut num_start = 0usize;
        let mut ticks = 0u32;
        let mut i = 0usize;
        while i < n {
            let b = data[i];
            let k = CLASS[usize::from(b)];
            // Words: maximal runs of ASCII letters, lower-cased, length >= 2.
            if k & (C_UPPER | C_LOWER) != 0 {
                if !in_word {
                    in_word = true;
                    word_start = i;
                    h = FNV_OFFSET;
                }
                self.letters += 1;
                if k & C_UPPER != 0 {
                    self.upper += 1;
                }
                h = (h ^ u64::from(b | 0x20)).wrapping_mul(FNV_PRIME);
            } else if in_word {
                in_word = false;
                if i - word_start >= 2 {
                    self.token(data, h, word_start, i, true);
                }
            }
            // Numbers: [0-9]+([.,][0-9]+)*
            if k & C_DIGIT != 0 {
                if !in_num {
                    in_num = true;
                    num_start = i;
                }
            } else if in_num {
                let continues = (b == b'.' || b == b',')
                    && i + 1 < n
                    && CLASS[usize::from(data[i + 1])] & C_DIGIT != 0;
                if !continues {
                    in_num = false;
                    self.token(data, NUMBER_HASH, num_start, i, false);
                }
            }
            // Characters and symbols.
            if b & 0xC0 != 0x80 {
                self.chars += 1;
            }
            if b >= 0xC0 {
                self.non_ascii += 1;
            }
            if b == b'`' {
                ticks += 1;
                if ticks == 3 {
                    self.fences += 1;
                    ticks = 0;
                }
            } else {
                ticks = 0;
            }
            if k & (C_MATH | C_CODE | C_QUANT) != 0 {
                self.math_symbols += u64::from(k & C_MATH != 0);
                self.code_symbols += u64::from(k & C_CODE != 0);
                self.quantities += u64::from(k & C_QUANT != 0);
            } else {
                match b {
                    b'?' => {
                        self.questions += 1;
                        if i + 1 == n || CLASS[usize::from(data[i + 1])] & C_SPACE != 0 {
                            self.sentences += 1;
                        }
                    }
                    b'.' | b'!' => {
                        if i + 1 == n || CLASS[usize::from(data[i + 1])] & C_SPACE != 0 {
                            self.sentences += 1;
                        }
                    }
                    b'\n' => self.lines += 1,
                    b'\\' => self.backslashes += 1,
                    0xCE | 0xCF => self.math_symbols += 1,
                    0xC2 | 0xC3 | 0xE2 if i + 1 < n => {
                        let nx = data[i + 1];
                        let hit = match b {
                            0xE2 => (0x88..=0x8B).contains(&nx),
                            0xC3 => nx == 0x97 || nx == 0xB7,
                            _ => matches!(nx, 0xB0 | 0xB1 | 0xB2 | 0xB3 | 0xB9),
                        };
                        self.math_symbols += u64::from(hit);
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        if in_word && n - word_start >= 2 {
            self.token(data, h, word_start, n, true);
        }
        if in_num {
            self.token(data, NUMBER_HASH, num_start, n, false);
        }
    }
}

#[inline]
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Scores one prompt. Pure function of the text: one linear pass, no heap allocation,
/// no panics, always returns a finite value in 0.0..=1.0.
pub fn score(prompt: &str) -> Score {
    let data = prompt.as_bytes();
    let mut s = Scan::new();
    s.run(data);

    let mut x = [0.0f64; N_DENSE];
    let mut raw = [0.0f64; N_DENSE];
    let counts = [
        (F_LENGTH, s.chars),
        (F_NUMBERS, s.numbers),
        (F_QUESTIONS, s.questions),
        (F_SENTENCES, s.sentences),
        (F_LINES, s.lines),
        (F_MATH_SYMBOLS, s.math_symbols),
        (F_QUANTITIES, s.quantities),
        (F_LATEX, s.backslashes),
        (F_CODE_SYMBOLS, s.code_symbols),
        (F_CODE_BLOCKS, s.fences),
    ];
    for (j, c) in counts {
        raw[j] = c as f64;
        x[j] = raw[j].ln_1p();
    }
    raw[F_AVG_WORD_LEN] = ratio(s.letters_in_words, s.words).min(12.0);
    raw[F_NUMBER_DENSITY] = ratio(s.numbers, s.words + s.numbers + 1);
    raw[F_NON_ASCII] = ratio(s.non_ascii, s.chars);
    raw[F_UPPERCASE] = ratio(s.upper, s.letters);
    for j in [F_AVG_WORD_LEN, F_NUMBER_DENSITY, F_NON_ASCII, F_UPPERCASE] {
        x[j] = raw[j];
    }
    for (i, &c) in s.lex.iter().enumerate() {
        raw[LEX_FIRST + i] = c as f64;
        x[LEX_FIRST + i] = (c as f64).ln_1p();
    }

    let mut contrib = [0.0f64; N_DENSE];
    let mut z = INTERCEPT;
    for j in 0..N_DENSE {
        let c = DENSE_COEF[j] * (x[j] - DENSE_MEAN[j]);
        contrib[j] = c / Z_SCALE;
        z += c;
    }
    let text = if s.distinct > 0 {
        s.qsum as f64 * NGRAM_SCALE / (s.distinct as f64).sqrt()
    } else {
        0.0
    };
    z += text - TEXT_MEAN;
    let logit = ((z - Z_MID) / Z_SCALE).clamp(-700.0, 700.0);
    let value = (1.0 / (1.0 + (-logit).exp())).clamp(0.0, 1.0);
    Score {
        value,
        logit,
        contrib,
        raw,
        text_contrib: (text - TEXT_MEAN) / Z_SCALE,
        up: s.up,
        down: s.down,
    }
}

/// Baseline used by the benchmarks and evaluation: prompt length only, squashed to
/// 0..1 as `chars / (chars + 500)` (0.5 at 500 characters). Strictly increasing in the
/// number of Unicode scalar values, so it ranks prompts exactly like their length.
pub fn length_only(prompt: &str) -> f64 {
    let chars = prompt.chars().count() as f64;
    chars / (chars + 500.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_order_matches_weights() {
        let expected = [
            "length",
            "avg_word_len",
            "numbers",
            "number_density",
            "questions",
            "sentences",
            "lines",
            "math_symbols",
            "quantities",
            "latex",
            "code_symbols",
            "code_blocks",
            "non_ascii",
            "uppercase",
        ];
        assert_eq!(&DENSE_NAMES[..expected.len()], &expected);
        assert_eq!(LEX_FIRST, expected.len());
        assert!(N_LEX <= 16, "lexicon classes must fit the u16 mask");
        assert_eq!(NUMBER_HASH, {
            let mut h = FNV_OFFSET;
            h ^= u64::from(b'0');
            h.wrapping_mul(FNV_PRIME)
        });
    }

    #[test]
    fn greeting_scores_below_proof_request() {
        let greeting = score("Hi there! How are you?");
        let proof = score(
            "Prove that for every integer n > 1 the number of primes between n and 2n is at least one. \
             First state the lemma you need, then derive the bound on the binomial coefficient step by step, \
             and finally show how the two inequalities combine.",
        );
        assert!(
            greeting.value < proof.value,
            "{} !< {}",
            greeting.value,
            proof.value
        );
        assert!(score("thanks").value < score("Implement a function in Python that returns the median of two sorted arrays in O(log n) time.").value);
    }

    fn assert_bounded(s: &Score) {
        assert!(
            s.value.is_finite() && (0.0..=1.0).contains(&s.value),
            "value {}",
            s.value
        );
        assert!(s.logit().is_finite());
        for r in s.reasons(usize::MAX) {
            assert!(r.contribution.is_finite());
        }
    }

    #[test]
    fn bounds_on_edge_cases() {
        let five_mb: String =
            "The quick brown fox computes 12.5% of 3,400 = ? ".repeat(5 * 1024 * 1024 / 48);
        let control: String = (0u8..32).map(char::from).collect::<String>().repeat(100);
        let cases: Vec<String> = vec![
            String::new(),
            " ".into(),
            "a".into(),
            "0".into(),
            "1.2.3,4,,5..6".into(),
            control,
            "\u{FFFD}\u{FFFD}\u{FEFF}\u{200B}\u{10FFFF}".into(),
            "😀🚀🔥 emoji only 👍🏽👨‍👩‍👧".into(),
            "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ± π".into(),
            "```".repeat(1000),
            "9".repeat(100_000),
            "ab ".repeat(100_000),
            "x".repeat(1_000_000),
            five_mb,
        ];
        for c in &cases {
            assert_bounded(&score(c));
            let l = length_only(c);
            assert!((0.0..=1.0).contains(&l));
        }
    }

    #[test]
    fn long_prompt_is_linear_and_deterministic() {
        let text = "Compute the eigenvalues of the matrix and prove the bound. ".repeat(50_000);
        let a = score(&text);
        let b = score(&text);
        assert_eq!(a, b);
        assert_bounded(&a);
    }

    #[test]
    fn reasons_sorted_and_non_empty() {
        for p in [
            "Janet has 16 eggs. She eats 3 and bakes with 4 more. She sells the rest for $2 each. How much does she make?",
            "Write a persuasive email to my manager asking for a day off.",
            "Implement a lock-free queue in Rust; explain the memory ordering of every atomic operation.",
        ] {
            let s = score(p);
            let r = s.reasons(5);
            assert!(!r.is_empty(), "no reasons for {p}");
            assert!(r.len() <= 5);
            for w in r.windows(2) {
                assert!(w[0].contribution.abs() >= w[1].contribution.abs());
            }
            for x in &r {
                assert!(!x.feature.is_empty() && !x.detail.is_empty());
            }
        }
        assert!(score("hello").reasons(0).is_empty());
    }

    #[test]
    fn wording_reason_quotes_prompt_text() {
        let s = score(
            "How many more apples than oranges does she have left after giving twice as many away?",
        );
        let all = s.reasons(usize::MAX);
        if let Some(w) = all.iter().find(|r| r.feature == "wording") {
            assert!(w.detail.contains("wording"));
        }
    }

    #[test]
    fn tokeniser_counts() {
        let mut s = Scan::new();
        s.run(b"Is 3.14 > 3,000? Yes.\nx = 2 + 2; `code` ```rust``` 50% $5 \\frac");
        assert_eq!(s.numbers, 6); // 3.14 3,000 2 2 50 5
        assert_eq!(s.questions, 1);
        assert_eq!(s.sentences, 2);
        assert_eq!(s.lines, 1);
        assert_eq!(s.fences, 2);
        assert_eq!(s.quantities, 2);
        assert_eq!(s.backslashes, 1);
        assert_eq!(s.math_symbols, 3); // > = +
        // words of >= 2 letters: Is Yes code rust frac
        assert_eq!(s.words, 5);
    }

    #[test]
    fn length_only_is_monotone() {
        assert_eq!(length_only(""), 0.0);
        assert!(length_only("ab") < length_only("abc"));
        assert!((length_only(&"é".repeat(500)) - 0.5).abs() < 1e-12);
    }
}
