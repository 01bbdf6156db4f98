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
//! * hashed words and word pairs (1- and 2-grams; 2^15 buckets taken from the top bits
//!   of the key, presence, divided by the square root of the number of distinct
//!   buckets, `i8` weights), so wording such as "how many" or "implement a" can count
//!   without a vocabulary file. (Trigrams and a separate bucket hash were dropped in
//!   December 2026: they cost a third of the scan and, on the train half, bought no
//!   routing quality beyond the noise; `fit_scorer.py` lists the figures.)
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
//! Linear in the prompt length, no heap allocation per call. Three entry points, the
//! same arithmetic (bit-identical values, checked in the tests):
//!
//! * [`decide`]: the routing decision only (the value).
//! * [`score_unexplained`]: value, logit and per-feature contributions, so
//!   [`Score::top_features`] works; no example phrases (what `ai-cost-optimizer score`
//!   prints).
//! * [`score`]: everything, including the prompt phrases [`Score::reasons`] quotes.
//!
//! The scan classifies the prompt 64 bytes at a time into bit masks (letters,
//! digits, bytes worth counting; SSE2 on x86_64), so it visits token starts and the
//! few counted bytes only, never the letters inside a word or the spaces between
//! words one by one. Words are lower-cased and hashed eight bytes at a time into a
//! buffer; a second tight loop does the lexicon filter and the two n-gram lookups
//! per token. Presence of an n-gram bucket is answered by a per-thread copy of the
//! weight table stamped with the current prompt (see `Scratch`), so nothing is
//! cleared between prompts, and the hot loops avoid branches whose outcome follows
//! the text (repeated n-grams, sentence ends), which no predictor could learn. On
//! x86_64 CPUs with AVX2 and BMI, a second build of the scan runs (same integers,
//! fewer instructions; see `Scan::run`). About 9.9k instructions remain for the
//! average (447-byte, 70-token) routing prompt with `decide` (12.9k before the
//! December 2026 model change, 25.7k before December 2026); `docs/BENCHMARKS.md`
//! ("Scoring throughput") says where they go.

#![allow(clippy::cast_precision_loss)]

mod weights {
    include!("scorer_weights.rs");
}

use weights::{
    BUCKET_BITS, BUCKET_FROM_KEY, DENSE_COEF, DENSE_MEAN, DENSE_NAMES, INTERCEPT, LEX_BITS,
    LEX_FIRST, LEXICON, N_DENSE, NGRAM_ORDER, NGRAM_PRESENCE, NGRAM_Q, NGRAM_SCALE, SCAN_CAP,
    TEXT_MEAN, TOKEN_FINISH, Z_MID, Z_SCALE,
};

// The scan implements one n-gram specification of `scripts/fit_scorer.py`: words and
// bigrams, distinct buckets, the bucket from the key's top bits, the token hash with its
// finishing mix. Weights fitted with other settings must not compile against it.
const _: () = assert!(
    NGRAM_ORDER == 2 && NGRAM_PRESENCE && BUCKET_FROM_KEY && TOKEN_FINISH,
    "scorer_weights.rs was fitted with an n-gram specification this scanner does not implement"
);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Starting state of the token hash.
const TOKEN_SEED: u64 = 0x243f_6a88_85a3_08d3;
/// Every number token hashes like the word "0".
const NUMBER_HASH: u64 = token_hash_finish(token_hash_step(TOKEN_SEED, b'0' as u64), 1);
const N_BUCKETS: usize = 1 << BUCKET_BITS;
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

// Byte kinds for the scanning pass. Letters and digits start tokens; every other byte
// goes to one counter (`Scan::other`), and a few need a closer look (SPECIAL).
const K_NONE: u8 = 0;
const K_QUESTION: u8 = 1;
const K_NEWLINE: u8 = 2;
const K_MATH: u8 = 3;
const K_QUANT: u8 = 4;
const K_BACKSLASH: u8 = 5;
const K_CODE: u8 = 6;
const K_CONTINUATION: u8 = 7;
const K_NON_ASCII: u8 = 8;
const N_KINDS: usize = 9;
const K_MASK: u8 = 0x0f;
const LETTER: u8 = 0x10;
const DIGIT: u8 = 0x20;
const SPACE: u8 = 0x40;
const SPECIAL: u8 = 0x80;

const fn byte_kinds() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else {
            match c {
                b'?' => K_QUESTION,
                b'\n' => K_NEWLINE | SPACE,
                b' ' | b'\t' | b'\r' => SPACE,
                b'=' | b'+' | b'^' | b'<' | b'>' => K_MATH,
                b'%' | b'$' => K_QUANT,
                b'\\' => K_BACKSLASH,
                b'`' => K_CODE | SPECIAL,
                b'{' | b'}' | b';' | b'_' | b'#' => K_CODE,
                0x80..=0xBF => K_CONTINUATION,
                0xC2 | 0xC3 | 0xCE | 0xCF | 0xE2 => K_NON_ASCII | SPECIAL,
                0xC0..=0xFF => K_NON_ASCII,
                _ => K_NONE,
            }
        };
        b += 1;
    }
    t
}

static KIND: [u8; 256] = byte_kinds();

/// One 8-byte chunk of a word into the token hash.
#[inline]
const fn token_hash_step(h: u64, chunk: u64) -> u64 {
    (h.rotate_left(29) ^ chunk).wrapping_mul(GOLDEN)
}

/// Final mixing of the token hash with the token length.
#[inline]
const fn token_hash_finish(h: u64, len: u64) -> u64 {
    let h = (h ^ len).wrapping_mul(GOLDEN);
    h ^ (h >> 29)
}

/// Little-endian load of `data[i..i + 8]`, zero-padded past the end.
#[inline]
fn load8(data: &[u8], i: usize) -> u64 {
    let mut buf = [0u8; 8];
    match data.get(i..i + 8) {
        Some(chunk) => buf.copy_from_slice(chunk),
        None => {
            let tail = data.get(i..).unwrap_or_default();
            let k = tail.len().min(8);
            buf[..k].copy_from_slice(&tail[..k]);
        }
    }
    u64::from_le_bytes(buf)
}

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;
const CASE: u64 = 0x2020_2020_2020_2020;

/// For 8 bytes: how many leading bytes are ASCII letters, and those bytes lower-cased
/// (the rest zeroed). SWAR, no per-byte branches.
#[inline]
fn leading_letters(v: u64) -> (usize, u64) {
    let x = v | CASE;
    let y = x & LO7;
    let ge_a = y.wrapping_add(ONES * (0x80 - 0x61)) & HI;
    let gt_z = y.wrapping_add(ONES * (0x80 - 0x7B)) & HI;
    let letters = ge_a & !gt_z & !(v & HI);
    let stop = !letters & HI;
    let len = if stop == 0 {
        8
    } else {
        (stop.trailing_zeros() / 8) as usize
    };
    let keep = if len == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    };
    (len, x & keep)
}

/// Bytes per block of the classifying pass: one bit per byte in a `u64`.
const BLOCK: usize = 64;
/// Bytes the token pass of one block may read: the block, the next one (for words
/// that run across the boundary) and 8 more, so an 8-byte load at any offset of the
/// two blocks stays inside.
const VIEW: usize = 2 * BLOCK + 8;

/// One block's bytes by class, bit `i` for byte `i` of the block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Masks {
    /// ASCII letters.
    letter: u64,
    /// ASCII upper-case letters (counted for the upper-case share: one more compare
    /// per 16 bytes here is far cheaper than a second pass over the text).
    upper: u64,
    /// ASCII digits.
    digit: u64,
    /// Every other byte except the plain space: what the per-kind counters and the
    /// special cases look at. Punctuation nobody counts (',', '(' ...) is in here too
    /// and costs a table lookup; spaces, the most common byte after letters, are not.
    other: u64,
}

/// Little-endian `u64` at `b[i..i + 8]` (0 if that is out of range, which the callers'
/// offsets never are).
#[inline(always)]
fn le64(b: &[u8; VIEW], i: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(i..i + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// `VIEW` bytes of `text` from `base`: borrowed when the text has them, else the rest
/// of the text copied into `pad` and zero-filled (only the last two blocks of a
/// prompt).
#[inline]
fn view_at<'t>(text: &'t [u8], base: usize, pad: &'t mut [u8; VIEW]) -> &'t [u8; VIEW] {
    let tail = text.get(base..).unwrap_or_default();
    if let Some(v) = tail.first_chunk::<VIEW>() {
        return v;
    }
    let k = tail.len().min(VIEW);
    *pad = [0; VIEW];
    pad[..k].copy_from_slice(&tail[..k]);
    pad
}

/// The masks of the block at `view[at..at + BLOCK]`, of which the first `avail` bytes
/// are text (the rest, if any, is `view_at`'s zero padding).
#[inline]
fn block_masks(view: &[u8; VIEW], at: usize, avail: usize) -> Masks {
    let mut m = classify(view, at);
    if avail < BLOCK {
        let valid = (1u64 << avail) - 1;
        m.letter &= valid;
        m.upper &= valid;
        m.digit &= valid;
        m.other &= valid;
    }
    m
}

/// Classifies 64 bytes with SSE2, 16 per compare: about 40 instructions a block,
/// where a lookup per byte costs over 200.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn classify(view: &[u8; VIEW], at: usize) -> Masks {
    // SAFETY: `classify_sse2` only requires SSE2, which the `cfg` above guarantees
    // the target has (SSE2 is part of the x86_64 baseline). It takes no pointers.
    unsafe { classify_sse2(view, at) }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
#[inline]
fn classify_sse2(view: &[u8; VIEW], at: usize) -> Masks {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set_epi64x, _mm_set1_epi8,
    };
    let mut m = Masks::default();
    for k in 0..BLOCK / 16 {
        let lo = le64(view, at + 16 * k);
        let hi = le64(view, at + 16 * k + 8);
        let v = _mm_set_epi64x(hi as i64, lo as i64);
        // SSE2 compares signed bytes only, so each range is moved to start at -128:
        // a letter is (v | 0x20) in b'a'..=b'z', i.e. (v | 0x20) + 0x1f < -128 + 26;
        // a digit is v + 0x50 < -128 + 10. Bytes >= 0x80 land outside both.
        let folded = _mm_add_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8(0x1f));
        let letter = _mm_cmplt_epi8(folded, _mm_set1_epi8(-128 + 26));
        // Upper case: v + 0x3f < -128 + 26 (b'A' lands on -128).
        let upper = _mm_cmplt_epi8(
            _mm_add_epi8(v, _mm_set1_epi8(0x3f)),
            _mm_set1_epi8(-128 + 26),
        );
        let digit = _mm_cmplt_epi8(
            _mm_add_epi8(v, _mm_set1_epi8(0x50)),
            _mm_set1_epi8(-128 + 10),
        );
        let space = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x20));
        let plain = _mm_or_si128(_mm_or_si128(letter, digit), space);
        // `movemask` puts one bit per byte in the low 16 bits.
        let shift = 16 * k;
        m.letter |= u64::from(_mm_movemask_epi8(letter) as u16) << shift;
        m.upper |= u64::from(_mm_movemask_epi8(upper) as u16) << shift;
        m.digit |= u64::from(_mm_movemask_epi8(digit) as u16) << shift;
        m.other |= u64::from(!(_mm_movemask_epi8(plain) as u16)) << shift;
    }
    m
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
fn classify(view: &[u8; VIEW], at: usize) -> Masks {
    classify_portable(view, at)
}

/// The same masks eight bytes at a time in a `u64` (SWAR), for targets without the
/// SSE2 path (about 35 instructions per 8 bytes; on x86_64 the tests compare both
/// with a byte-by-byte classification).
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn classify_portable(view: &[u8; VIEW], at: usize) -> Masks {
    // Per byte, the high bit is set iff the byte (its low 7 bits `x7`, high bit clear)
    // is in `lo..lo + n`: adding `0x80 - lo` to `x7` cannot carry into the next byte.
    fn in_range(x7: u64, v: u64, lo: u8, n: u8) -> u64 {
        let ge_lo = x7.wrapping_add(ONES * u64::from(0x80 - lo));
        let ge_hi = x7.wrapping_add(ONES * u64::from(0x80 - (lo + n)));
        ge_lo & !ge_hi & !v & HI
    }
    // The high bit of each byte of `m` (a flag per byte) gathered into 8 bits: the
    // multiply moves flag i to bit 56 + i, with no two partial products colliding.
    fn gather(m: u64) -> u64 {
        ((m >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    }
    let mut m = Masks::default();
    for k in 0..BLOCK / 8 {
        let v = le64(view, at + 8 * k);
        let letter = in_range((v | CASE) & LO7, v, b'a', 26);
        let upper = in_range(v & LO7, v, b'A', 26);
        let digit = in_range(v & LO7, v, b'0', 10);
        // Zero-byte test of v ^ spaces: the high bit is set iff the byte is not a space.
        let d = v ^ (ONES * u64::from(b' '));
        let not_space = (((d & LO7).wrapping_add(LO7)) | d) & HI;
        let plain = letter | digit | (!not_space & HI);
        m.letter |= gather(letter) << (8 * k);
        m.upper |= gather(upper) << (8 * k);
        m.digit |= gather(digit) << (8 * k);
        m.other |= gather(!plain & HI) << (8 * k);
    }
    m
}

/// `KEEP[k]`: a mask of the low `k` bytes (k <= 8; padded to 16 entries so that an
/// index taken modulo 16 needs no bounds check).
const KEEP: [u64; 16] = {
    let mut t = [u64::MAX; 16];
    let mut k = 0;
    while k < 8 {
        t[k] = (1u64 << (8 * k)) - 1;
        k += 1;
    }
    t
};

/// Token hash of the `len` (>= 1) ASCII letters at `view[p..]`, lower-cased and
/// hashed 8 bytes at a time (the last chunk zero-padded).
///
/// Words of up to 16 letters (nearly all) take no branch on their length: both
/// chunks are hashed and the right hash is selected with a mask. A loop whose trip
/// count is the word's length mispredicted on about one word in seven (callgrind's
/// branch simulation: ten mispredictions a prompt), which cost more than the
/// second multiply does.
#[inline(always)]
fn hash_letters(view: &[u8; VIEW], p: usize, len: usize) -> u64 {
    // `p + len < 2 * BLOCK` (the word ends inside the view's two blocks); the modulo
    // shows the compiler that the 8-byte loads stay inside the view, so it drops the
    // bounds checks.
    if len > 16 {
        return hash_long_letters(view, p, len);
    }
    let first = le64(view, p % (2 * BLOCK)) | CASE;
    let one = token_hash_step(TOKEN_SEED, first & KEEP[len.min(8)]);
    // Read for every word, used only by words of 9..=16 letters, for which it is
    // inside the word's view (p + 8 < p + len).
    let second = le64(view, (p + 8) % (2 * BLOCK)) | CASE;
    let two = token_hash_step(one, second & KEEP[len.wrapping_sub(8) % 16]);
    let longer = 0u64.wrapping_sub(u64::from(len > 8));
    token_hash_finish(one ^ ((one ^ two) & longer), len as u64)
}

/// [`hash_letters`] for a word of more than 16 letters, 8 at a time.
#[inline(never)]
fn hash_long_letters(view: &[u8; VIEW], p: usize, len: usize) -> u64 {
    let mut h = TOKEN_SEED;
    let mut i = 0;
    while len - i > 8 {
        h = token_hash_step(h, le64(view, (p + i) % (2 * BLOCK)) | CASE);
        i += 8;
    }
    // 1..=8 letters left: keep those bytes, zero the rest.
    let last = le64(view, (p + i) % (2 * BLOCK)) | CASE;
    h = token_hash_step(h, last & KEEP[(len - i) % 16]);
    token_hash_finish(h, len as u64)
}

/// Token hash and end of the letter run at `data[start..]`, for the rare word too long
/// for [`hash_letters`]'s view.
#[inline(never)]
fn hash_word(data: &[u8], start: usize) -> (u64, usize) {
    let mut h = TOKEN_SEED;
    let mut i = start;
    loop {
        let (len, chunk) = leading_letters(load8(data, i));
        if len == 0 {
            break;
        }
        h = token_hash_step(h, chunk);
        i += len;
        if len < 8 {
            break;
        }
    }
    (token_hash_finish(h, (i - start) as u64), i)
}

/// End of the number token starting at `data[start]` (a digit): `[0-9]+([.,][0-9]+)*`.
#[inline(never)]
fn scan_number(data: &[u8], start: usize) -> usize {
    let digit = |i: usize| data.get(i).is_some_and(u8::is_ascii_digit);
    let mut i = start;
    loop {
        while digit(i) {
            i += 1;
        }
        if matches!(data.get(i), Some(b'.' | b',')) && digit(i + 1) {
            i += 1;
            continue;
        }
        return i;
    }
}

/// Bytes the features are computed from: all of `data`, or (when a fit sets
/// `SCAN_CAP`) up to the first token, single letters included, that starts at or after
/// `SCAN_CAP`.
///
/// Tokens are read from the last byte before the cap that no token can contain (not a
/// letter, digit, '.' or ','): the tokens from there on are the tokens of the whole
/// text from there on, so the bytes before it need no walk. Usually that byte is a
/// few bytes before the cap.
// `SCAN_CAP` is generated: `usize::MAX` when a fit turns the cap off (then the
// comparison always holds).
#[allow(clippy::absurd_extreme_comparisons)]
fn scan_end(data: &[u8]) -> usize {
    if data.len() <= SCAN_CAP {
        return data.len();
    }
    let mut i = SCAN_CAP;
    while i > 0 && matches!(data[i - 1], b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b',') {
        i -= 1;
    }
    while let Some(&b) = data.get(i) {
        let k = KIND[usize::from(b)];
        if k & (LETTER | DIGIT) == 0 {
            i += 1;
            continue;
        }
        if i >= SCAN_CAP {
            return i;
        }
        if k & LETTER != 0 {
            while data.get(i).is_some_and(u8::is_ascii_alphabetic) {
                i += 1;
            }
        } else {
            i = scan_number(data, i);
        }
    }
    data.len()
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    (a.rotate_left(23) ^ b).wrapping_mul(GOLDEN)
}

/// The n-gram bucket of a key: its top `BUCKET_BITS` bits. Every key is the output of
/// a multiply by `GOLDEN` (the token hash, `mix`), whose top bits depend on all of its
/// input, so no second hash is needed (the model is fitted with this bucketing).
#[inline]
const fn bucket(k: u64) -> usize {
    (k >> (64 - BUCKET_BITS)) as usize
}

const fn lexicon_buckets() -> [u64; N_BUCKETS / 64] {
    let mut f = [0u64; N_BUCKETS / 64];
    let mut i = 0;
    while i < LEXICON.len() {
        let k = LEXICON[i].0;
        if k != 0 {
            let b = bucket(k);
            f[b >> 6] |= 1 << (b & 63);
        }
        i += 1;
    }
    f
}

/// The n-gram buckets some lexicon key falls in (a 4 KiB bit set), copied into the
/// flag bit of each `Scratch` table entry (`LEX_FLAG`). Most tokens and bigrams are
/// not in the lexicon; as their bucket's entry is loaded anyway for the weight, the
/// flag rejects them with one bit test (about 1.5% of buckets are flagged, so a few
/// keys per prompt take the exact lookup for nothing).
static LEX_BUCKETS: [u64; N_BUCKETS / 64] = lexicon_buckets();

/// Whether some lexicon key falls in n-gram bucket `b`.
fn lexicon_bucket(b: usize) -> bool {
    LEX_BUCKETS
        .get(b >> 6)
        .is_some_and(|w| w & (1 << (b & 63)) != 0)
}

/// Class bit mask of a token or bigram key (0 when not in the lexicon); callers check
/// the bucket's `LEX_FLAG` first.
fn lexicon_probe(key: u64) -> u16 {
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
}

const NO_PHRASE: Phrase = Phrase {
    bytes: [0; PHRASE_BYTES],
    len: 0,
};

impl Phrase {
    fn from_bytes(text: &[u8]) -> Self {
        let len = text.len().min(PHRASE_BYTES);
        let mut p = NO_PHRASE;
        p.bytes[..len].copy_from_slice(&text[..len]);
        p.len = len as u8; // len <= PHRASE_BYTES < 256
        p
    }

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

/// The strongest positive and negative n-gram of each order (1 or 2 tokens; the third
/// slot stays empty) seen so far, packed as `weight << 48 | start << 16 | len` in an
/// `i64`, so that keeping the best is one `max` (positive side) and one `min`
/// (negative side) per n-gram.
#[derive(Debug, Clone, Copy)]
struct Best {
    up: [i64; KEEP_PHRASES],
    down: [i64; KEEP_PHRASES],
}

impl Best {
    const fn new() -> Self {
        Self {
            up: [0; KEEP_PHRASES],
            down: [0; KEEP_PHRASES],
        }
    }

    /// `w` must fit in 16 bits (it is an `i8` weight). Offsets past 4 GiB or tokens
    /// longer than 64 KiB wrap, which can only garble the excerpt (it is bounds-checked
    /// when read).
    #[inline(always)]
    fn consider(&mut self, order: usize, w: i32, start: usize, end: usize) {
        let pos = (i64::from(start as u32) << 16) | i64::from((end - start) as u16);
        let key = (i64::from(w) << 48) | pos;
        self.up[order] = self.up[order].max(key);
        self.down[order] = self.down[order].min(key);
    }

    /// The kept spans of one direction as excerpts, strongest first, skipping any that
    /// overlaps a stronger one (e.g. "many" inside "how many").
    fn phrases(&self, data: &[u8], positive: bool) -> ([Phrase; KEEP_PHRASES], u8) {
        let mut keys = if positive { self.up } else { self.down };
        if positive {
            keys.sort_unstable_by(|a, b| b.cmp(a));
        } else {
            keys.sort_unstable();
        }
        let mut out = [NO_PHRASE; KEEP_PHRASES];
        let mut used: [(usize, usize); KEEP_PHRASES] = [(0, 0); KEEP_PHRASES];
        let mut n = 0usize;
        for k in keys {
            let w = k >> 48;
            if (positive && w <= 0) || (!positive && w >= 0) {
                continue;
            }
            let s = ((k >> 16) & 0xffff_ffff) as usize;
            let e = s.saturating_add((k & 0xffff) as usize);
            if used[..n].iter().any(|&(us, ue)| us < e && s < ue) {
                continue;
            }
            if let Some(text) = data.get(s..e) {
                out[n] = Phrase::from_bytes(text);
                used[n] = (s, e);
                n += 1;
            }
        }
        (out, n as u8) // n <= KEEP_PHRASES
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
    up: [Phrase; KEEP_PHRASES],
    /// How many entries of `up` are filled.
    n_up: u8,
    /// Phrases with the largest negative n-gram weights present in the prompt.
    down: [Phrase; KEEP_PHRASES],
    /// How many entries of `down` are filled.
    n_down: u8,
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
        self.ranked(n)
            .into_iter()
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

    /// Just the names of the features [`Score::reasons`] would list, in the same
    /// order: for bulk scoring (`ai-cost-optimizer score`), where building the
    /// human sentences would cost more than the score itself.
    pub fn top_features(&self, n: usize) -> Vec<&'static str> {
        self.ranked(n)
            .into_iter()
            .map(|(j, _)| DENSE_NAMES.get(j).copied().unwrap_or("wording"))
            .collect()
    }

    /// (feature index, contribution) of the `n` largest contributions; index
    /// `N_DENSE` is the wording term.
    fn ranked(&self, n: usize) -> Vec<(usize, f64)> {
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
        idx
    }

    /// The score before the logistic squash (log-odds scale); useful for thresholds
    /// that must stay distinguishable near 0 or 1.
    pub fn logit(&self) -> f64 {
        self.logit
    }

    fn wording_detail(&self, c: f64) -> String {
        let list = if c >= 0.0 {
            &self.up[..usize::from(self.n_up)]
        } else {
            &self.down[..usize::from(self.n_down)]
        };
        let examples: Vec<String> = list
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
            "{} long; {}",
            plural(raw, "character", "characters"),
            if c >= 0.0 {
                "longer prompts tend to need a stronger model"
            } else {
                "short prompts rarely need a stronger model"
            }
        ),
        F_AVG_WORD_LEN => format!("average word length {raw:.1} letters"),
        F_NUMBERS => format!(
            "contains {} (math word problem signal)",
            plural(raw, "number", "numbers")
        ),
        F_NUMBER_DENSITY => format!("{:.0}% of the tokens are numbers", raw * 100.0),
        F_QUESTIONS => plural(raw, "question mark", "question marks"),
        F_SENTENCES => plural(raw, "sentence", "sentences"),
        F_LINES => plural(raw + 1.0, "line", "lines"),
        F_MATH_SYMBOLS => plural(raw, "math symbol", "math symbols"),
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
        F_CODE_BLOCKS => plural(raw, "fenced code block", "fenced code blocks"),
        F_NON_ASCII => format!("{:.0}% non-ASCII characters", raw * 100.0),
        F_UPPERCASE => format!("{:.0}% of the letters are upper-case", raw * 100.0),
        _ if (LEX_FIRST..N_DENSE).contains(&j) => {
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

/// Per-thread scratch memory of the scan (about 130 KiB on the heap, allocated once
/// per thread and reused by every prompt scored on it).
///
/// * `table`: this thread's copy of [`NGRAM_Q`], each weight paired with the stamp of
///   the last prompt that counted its bucket. Presence (not frequency) is part of the
///   model, so every n-gram asks "seen this bucket before in this prompt?"; answering
///   from the weight's own entry costs one load and one store, and nothing has to be
///   cleared between prompts: a new prompt takes a new stamp. (A separate bitset cost
///   a second table, a shift and a test per n-gram and a 4 KiB clear per prompt.)
/// * `spans` (when explaining): the byte spans of the tokens buffered for `flush`
///   (their hashes are on the stack of `Scan::run`), so that tokenising and n-gram
///   counting run as two tight loops instead of one whose state does not fit in
///   registers.
/// * `lex_keys`: the lexicon candidates of one `flush`.
struct Scratch {
    table: [Entry; N_BUCKETS],
    /// Stamp of the current prompt (never 0 while scanning; 0 marks "no prompt yet").
    stamp: u16,
    /// Byte span of each buffered token (only filled when explaining).
    spans: [(usize, usize); CHUNK],
    /// Token and bigram keys that passed the lexicon filter in one `flush`, looked up
    /// after its loop (a call inside the loop would make it spill its registers).
    lex_keys: [u64; 2 * CHUNK],
}

/// One n-gram bucket of a thread's table: the weight (`i8`) in the top byte, whether
/// some lexicon key falls in the bucket (`LEX_FLAG`) below it, and the stamp of the
/// last prompt that counted the bucket in the low half. One `u32`, loaded whole, so
/// that the weight is in a register before the "seen already?" test and the compiler
/// selects it branch-free rather than loading it behind a branch, and the lexicon
/// filter needs no load of its own.
type Entry = u32;

/// The entry bit that says "some lexicon key falls in this bucket".
const LEX_FLAG: Entry = 1 << 16;

const fn entry(weight: i8, lexicon: bool, stamp: u16) -> Entry {
    ((weight as i32) << 24) as u32 | if lexicon { LEX_FLAG } else { 0 } | stamp as u32
}

/// Tokens buffered between the tokeniser and the n-gram loop (a power of two, and at
/// least a block's worth: the buffer is flushed when a block could overfill it).
const CHUNK: usize = 128;
const _: () = assert!(CHUNK.is_power_of_two() && CHUNK >= BLOCK);

impl Scratch {
    fn new() -> Box<Self> {
        let mut s = Box::new(Self {
            table: [0; N_BUCKETS],
            stamp: 0,
            spans: [(0, 0); CHUNK],
            lex_keys: [0; 2 * CHUNK],
        });
        s.restamp();
        s
    }

    /// Every entry back to stamp 0 with its weight and lexicon flag.
    fn restamp(&mut self) {
        for (b, (e, &weight)) in self.table.iter_mut().zip(NGRAM_Q.iter()).enumerate() {
            *e = entry(weight, lexicon_bucket(b), 0);
        }
        self.stamp = 0;
    }

    /// Takes a stamp no entry carries yet, for the next prompt.
    #[inline]
    fn next_stamp(&mut self) -> u16 {
        if self.stamp == u16::MAX {
            // Once per 65,535 prompts: clear the old stamps (128 KiB of stores).
            self.restamp();
        }
        self.stamp += 1;
        self.stamp
    }
}

/// Whether this CPU runs the scan's second build (see [`Scan::run`]); asked once per
/// process.
#[cfg(target_arch = "x86_64")]
static FAST_CPU: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("lzcnt")
});

#[cfg(target_arch = "x86_64")]
#[inline]
fn fast_cpu() -> bool {
    *FAST_CPU
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<Scratch>> = std::cell::RefCell::new(Scratch::new());
}

/// Runs `f` with this thread's scratch. A nested call (impossible today: scoring calls
/// nothing that scores) would get a fresh scratch, not a panic.
#[inline]
fn with_scratch<R>(mut f: impl FnMut(&mut Scratch) -> R) -> R {
    match SCRATCH.try_with(|cell| cell.try_borrow_mut().ok().map(|mut s| f(&mut s))) {
        Ok(Some(r)) => r,
        // Thread-local storage being torn down, or a nested call.
        _ => f(&mut Scratch::new()),
    }
}

/// Everything counted in the scan of one prompt. With `EXPLAIN` it also keeps the
/// strongest phrases for [`Score::reasons`]; without it (the routing decision) that
/// bookkeeping compiles away.
struct Scan<'a, const EXPLAIN: bool> {
    data: &'a [u8],
    /// Counters indexed by byte kind (`K_*`).
    other: [u64; N_KINDS],
    sentences: u64,
    fences: u64,
    /// Length of the current run of backticks (for `fences`).
    tick_run: u64,
    /// End of the last number token: a digit run that starts before it (after the '.'
    /// of "3.14") belongs to that number.
    number_end: usize,
    /// Unicode math signs (Greek letters, U+2200..U+22FF, multiply/divide, degree ...).
    math_unicode: u64,
    /// Bytes scanned: all of them, or up to the first token that starts at or after
    /// `SCAN_CAP` (the length feature still counts the rest).
    scanned: usize,
    /// Word and number tokens.
    ntok: u64,
    numbers: u64,
    /// ASCII letters with no letter on either side (runs of one: not word tokens).
    single_letters: u64,
    /// ASCII letters, and upper-case ones, of the scanned bytes.
    letters: u64,
    upper: u64,
    lex: [u64; N_LEX],
    g: Grams,
    /// Start offsets of the last three tokens (for phrase excerpts; `EXPLAIN` only).
    starts: [usize; 3],
    best: Best,
}

/// The lexicon candidates of one `flush`: `keys[..n]`.
struct Lex<'s> {
    keys: &'s mut [u64; 2 * CHUNK],
    n: usize,
}

/// The n-gram state carried from one buffered batch of tokens to the next.
#[derive(Debug, Clone, Copy, Default)]
struct Grams {
    /// Over the distinct n-gram buckets seen, `weight * 65536 + 1` summed: the sum of
    /// their weights in the high bits, their number (at most 32,768 < 65,536) in the
    /// low 16, so that one add per n-gram counts both.
    acc: i64,
    /// Key of the previous token (for the bigram).
    prev1: u64,
    /// Tokens counted so far (only whether it is 0 matters).
    seen_tokens: u64,
}

impl<'a, const EXPLAIN: bool> Scan<'a, EXPLAIN> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            other: [0; N_KINDS],
            sentences: 0,
            fences: 0,
            tick_run: 0,
            number_end: 0,
            math_unicode: 0,
            scanned: scan_end(data),
            ntok: 0,
            numbers: 0,
            single_letters: 0,
            letters: 0,
            upper: 0,
            lex: [0; N_LEX],
            g: Grams::default(),
            starts: [0; 3],
            best: Best::new(),
        }
    }

    #[inline(never)]
    fn add_lex_slow(&mut self, key: u64) {
        let mut classes = lexicon_probe(key);
        // Nearly always one class: visit the set bits only.
        while classes != 0 {
            if let Some(c) = self.lex.get_mut(classes.trailing_zeros() as usize) {
                *c += 1;
            }
            classes &= classes - 1;
        }
    }

    /// Counts the n-gram `key` in bucket `b`: queues the key for the lexicon lookup if
    /// its bucket is flagged (most keys are in no class and are not; every occurrence
    /// counts there, repeated or not), and returns its (quantised) weight if the
    /// bucket is new in this prompt (its entry does not carry this prompt's `stamp`),
    /// else 0.
    #[inline(always)]
    fn add_gram(
        g: &mut Grams,
        table: &mut [Entry; N_BUCKETS],
        lex: &mut Lex<'_>,
        stamp: u16,
        key: u64,
        b: usize,
    ) -> i32 {
        let e = table[b];
        // Weight and flag stay, the stamp half becomes this prompt's.
        table[b] = (e & 0xffff_0000) | u32::from(stamp);
        // The entry's share of `acc`: the weight above bit 16 (the arithmetic shift
        // brings the top byte down, sign and all; the mask drops flag and stamp), a
        // count of 1 below. Selected branch-free on purpose: about 40% of unigrams
        // repeat within a prompt, far too irregular for a branch predictor.
        let v = (i64::from((e as i32) >> 8) & !0xffff) | 1;
        let v = if e as u16 != stamp { v } else { 0 };
        g.acc += v;
        // Stored always, kept only if flagged: a branch here mispredicted about
        // seven times a prompt.
        lex.keys[lex.n % (2 * CHUNK)] = key;
        lex.n += ((e & LEX_FLAG) >> 16) as usize;
        (v >> 16) as i32
    }

    /// Lexicon and n-gram counting of one token (hash `h`, byte span `span`): its
    /// unigram, and its bigram with the previous token unless it is the prompt's first
    /// (`first`). Called with a literal `false` in the hot loop, so the check folds
    /// away there.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn token(
        &mut self,
        g: &mut Grams,
        table: &mut [Entry; N_BUCKETS],
        lex: &mut Lex<'_>,
        stamp: u16,
        h: u64,
        span: (usize, usize),
        first: bool,
    ) {
        // Number tokens share one hash that is not in the lexicon (checked in the
        // tests), so looking every token up is the same as looking up words only.
        let w1 = Self::add_gram(g, table, lex, stamp, h, bucket(h));
        if EXPLAIN {
            self.starts = [self.starts[1], self.starts[2], span.0];
            self.best.consider(0, w1, span.0, span.1);
        }
        if !first {
            let bi = mix(g.prev1, h);
            let w2 = Self::add_gram(g, table, lex, stamp, bi, bucket(bi));
            if EXPLAIN {
                self.best.consider(1, w2, self.starts[1], span.1);
            }
        }
        g.prev1 = h;
    }

    /// [`Scan::flush`] in the build for this CPU (`FAST`: see [`Scan::run`]). Out of
    /// line: it runs once per `CHUNK` tokens, and the tokeniser loop keeps its
    /// registers.
    #[inline(always)]
    fn flush_for<const FAST: bool>(
        &mut self,
        s: &mut Scratch,
        hashes: &[u64; CHUNK],
        m: usize,
        stamp: u16,
    ) {
        #[cfg(target_arch = "x86_64")]
        if FAST {
            // SAFETY: `FAST` is true only inside `run_fast`, which runs only after
            // `fast_cpu()` found every feature `flush_fast` is compiled for.
            unsafe { self.flush_fast(s, hashes, m, stamp) };
            return;
        }
        self.flush_plain(s, hashes, m, stamp);
    }

    #[inline(never)]
    fn flush_plain(&mut self, s: &mut Scratch, hashes: &[u64; CHUNK], m: usize, stamp: u16) {
        self.flush(s, hashes, m, stamp);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt")]
    #[inline(never)]
    fn flush_fast(&mut self, s: &mut Scratch, hashes: &[u64; CHUNK], m: usize, stamp: u16) {
        self.flush(s, hashes, m, stamp);
    }

    /// Lexicon and n-gram counting of the first `m` buffered tokens.
    #[inline(always)]
    fn flush(&mut self, s: &mut Scratch, hashes: &[u64; CHUNK], m: usize, stamp: u16) {
        let Scratch {
            table,
            spans,
            lex_keys,
            ..
        } = s;
        let mut lex = Lex {
            keys: lex_keys,
            n: 0,
        };
        let m = m.min(CHUNK);
        let mut g = self.g;
        let mut j = 0;
        // The prompt's first token has no bigram; every later one has one, without a
        // check per token.
        if j < m && g.seen_tokens == 0 {
            self.token(&mut g, table, &mut lex, stamp, hashes[j], spans[j], true);
            g.seen_tokens += 1;
            j += 1;
        }
        if EXPLAIN {
            for (&h, &span) in hashes[j..m].iter().zip(&spans[j..m]) {
                self.token(&mut g, table, &mut lex, stamp, h, span, false);
            }
        } else {
            for &h in &hashes[j..m] {
                self.token(&mut g, table, &mut lex, stamp, h, (0, 0), false);
            }
        }
        g.seen_tokens += (m - j) as u64;
        self.g = g;
        for &key in &lex.keys[..lex.n.min(2 * CHUNK)] {
            self.add_lex_slow(key);
        }
    }

    /// Tokenises the scanned bytes (word and number tokens into the scratch buffer,
    /// n-grams counted per full buffer) and counts every other byte by kind.
    ///
    /// The bytes are classified 64 at a time into bit masks (letters, digits, and
    /// "other": neither nor a plain space), so the loops below visit token starts
    /// and the few bytes that need counting, never the letters inside words or the
    /// spaces between them one by one.
    ///
    /// The same code is compiled twice: for the x86_64 baseline, and (on x86_64) for
    /// CPUs with AVX2, BMI1/2, POPCNT and LZCNT (three-operand vector code, `blsr`,
    /// `andn`, `shrx`, hardware `popcnt`: fewer instructions for the same counts),
    /// chosen at run time. Both compute exactly the same integers (tested).
    fn run(&mut self, s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if fast_cpu() {
            // SAFETY: `fast_cpu()` just found every feature `run_fast` is compiled for.
            unsafe { self.run_fast(s) };
            return;
        }
        self.run_for::<false>(s);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt")]
    fn run_fast(&mut self, s: &mut Scratch) {
        self.run_for::<true>(s);
    }

    #[inline(always)]
    fn run_for<const FAST: bool>(&mut self, s: &mut Scratch) {
        let stamp = s.next_stamp();
        let data = self.data;
        let text = data.get(..self.scanned).unwrap_or_default();
        let n = text.len();
        // The token hashes, counted by `flush` in batches; on the stack, so that the
        // loop below needs no register for the buffer's address.
        let mut hashes = [0u64; CHUNK];
        // Tokens buffered in `hashes`: at most CHUNK - BLOCK when a block starts, and
        // a block adds at most BLOCK (one per byte at most), so the buffer is checked
        // once per block, not per token.
        let mut m = 0usize;
        // Letters in runs of one (not tokens); every other letter is in a word token.
        let mut single_letters = 0u64;
        let (mut letters, mut upper) = (0u64, 0u64);
        // Whether the byte before the block is a letter (bit 0) or a digit (bit 1).
        let mut carry = 0u64;
        let mut pad = [0u8; VIEW];
        let mut cur = block_masks(view_at(text, 0, &mut pad), 0, n);
        let mut base = 0usize;
        while base < n {
            let view = view_at(text, base, &mut pad);
            let next = block_masks(view, BLOCK, n.saturating_sub(base + BLOCK));
            if m > CHUNK - BLOCK {
                self.flush_for::<FAST>(s, &hashes, m, stamp);
                self.ntok += m as u64;
                m = 0;
            }
            let (l, d) = (cur.letter, cur.digit);
            // Letters with a letter before / after them (across block boundaries too).
            let (l_before, l_after) = ((l << 1) | (carry & 1), (l >> 1) | (next.letter << 63));
            // First letter of a run of two or more (a single letter is no token) and
            // first digit of a run.
            let word_starts = l & !l_before & l_after;
            let number_starts = d & !((d << 1) | (carry >> 1));
            // `count_ones`, not a loop over the bits: zero to a few per block, too
            // irregular for the loop's exit branch to be predicted.
            single_letters += u64::from((l & !l_before & !l_after).count_ones());
            letters += u64::from(l.count_ones());
            upper += u64::from(cur.upper.count_ones());
            let mut starts = word_starts | number_starts;
            while starts != 0 {
                let p = starts.trailing_zeros() as usize;
                starts &= starts - 1;
                let start = base + p;
                let (h, end);
                if (number_starts >> p) & 1 != 0 {
                    match self.number(start) {
                        Some(e) => end = e,
                        None => continue,
                    }
                    h = NUMBER_HASH;
                } else {
                    // The letter run, continued into the next block if it reaches
                    // this one's end; hashed from the view unless it runs past that too.
                    let mut len = (!(l >> p)).trailing_zeros() as usize;
                    if p + len == BLOCK {
                        len += (!next.letter).trailing_zeros() as usize;
                    }
                    if p + len < 2 * BLOCK {
                        h = hash_letters(view, p, len);
                        end = start + len;
                    } else {
                        (h, end) = hash_word(data, start);
                    }
                }
                hashes[m % CHUNK] = h;
                if EXPLAIN {
                    s.spans[m % CHUNK] = (start, end);
                }
                m += 1;
            }
            carry = (l >> 63) | ((d >> 63) << 1);
            // Every byte that is not a letter, digit or space: one counter by kind;
            // the rare ones that need a look at their neighbours go out of line.
            let mut other = cur.other;
            while other != 0 {
                let p = (other.trailing_zeros() & 63) as usize;
                other &= other - 1;
                let b = view[p];
                let k = KIND[usize::from(b)];
                self.other[usize::from(k & K_MASK)] += 1;
                // A sentence ends at '.', '!' or '?' followed by a blank or the end of
                // the prompt. Counted branch-free: such punctuation is about half of
                // these bytes, in no pattern a branch predictor could learn. (Past the
                // scanned prefix the view holds zero padding, no blank; the real next
                // byte there starts a token, no blank either.)
                let end = matches!(b, b'.' | b'!' | b'?');
                let then_blank = KIND[usize::from(view[p + 1])] & SPACE != 0;
                let last = base + p + 1 == data.len();
                self.sentences += u64::from(end & (then_blank | last));
                if k & SPECIAL != 0 {
                    self.special(b, base + p);
                }
            }
            cur = next;
            base += BLOCK;
        }
        self.flush_for::<FAST>(s, &hashes, m, stamp);
        self.ntok += m as u64;
        self.single_letters = single_letters;
        self.letters = letters;
        self.upper = upper;
    }

    /// The number token starting at `start` (a digit), unless that digit run belongs
    /// to the previous number (the "14" of "3.14"): counts it and returns its end. Out
    /// of line: numbers are rare, and the word loop keeps its registers.
    #[inline(never)]
    fn number(&mut self, start: usize) -> Option<usize> {
        if start < self.number_end {
            return None;
        }
        self.number_end = scan_number(self.data, start);
        self.numbers += 1;
        Some(self.number_end)
    }

    /// Two-byte unicode math signs and code fences, for the byte `b` at `i` (bytes are
    /// visited in order).
    #[inline(never)]
    fn special(&mut self, b: u8, i: usize) {
        let data = self.data;
        let next = data.get(i + 1).copied();
        match b {
            b'`' => {
                // Code fences: non-overlapping "```" inside a run of backticks, i.e.
                // one per third backtick of a run.
                let continues = i > 0 && data.get(i - 1) == Some(&b'`');
                self.tick_run = if continues { self.tick_run + 1 } else { 1 };
                self.fences += u64::from(self.tick_run.is_multiple_of(3));
            }
            0xCE | 0xCF => self.math_unicode += 1,
            _ => {
                if let Some(nx) = next {
                    let hit = match b {
                        0xE2 => (0x88..=0x8B).contains(&nx),
                        0xC3 => nx == 0x97 || nx == 0xB7,
                        0xC2 => matches!(nx, 0xB0 | 0xB1 | 0xB2 | 0xB3 | 0xB9),
                        _ => false,
                    };
                    self.math_unicode += u64::from(hit);
                }
            }
        }
    }

    fn kind(&self, k: u8) -> u64 {
        self.other[usize::from(k)]
    }

    /// The dense feature values (`x`, what the weights multiply) and the human-scale
    /// quantities behind them (`raw`), plus the n-gram text term.
    #[inline(always)]
    fn features(&self) -> Features {
        let scanned_chars = self.scanned as u64 - self.kind(K_CONTINUATION);
        let rest = self.data.get(self.scanned..).unwrap_or_default();
        let chars = scanned_chars + count_chars(rest);
        let mut x = [0.0f64; N_DENSE];
        let mut raw = [0.0f64; N_DENSE];
        let counts = [
            (F_LENGTH, chars),
            (F_NUMBERS, self.numbers),
            (F_QUESTIONS, self.kind(K_QUESTION)),
            (F_SENTENCES, self.sentences),
            (F_LINES, self.kind(K_NEWLINE)),
            (F_MATH_SYMBOLS, self.kind(K_MATH) + self.math_unicode),
            (F_QUANTITIES, self.kind(K_QUANT)),
            (F_LATEX, self.kind(K_BACKSLASH)),
            (F_CODE_SYMBOLS, self.kind(K_CODE)),
            (F_CODE_BLOCKS, self.fences),
        ];
        for (j, c) in counts {
            raw[j] = c as f64;
            x[j] = ln1p_count(c);
        }
        let words = self.ntok - self.numbers;
        let (upper, letters) = (self.upper, self.letters);
        // Letters in word tokens: every letter except those standing alone.
        let letters_in_words = letters - self.single_letters;
        raw[F_AVG_WORD_LEN] = ratio(letters_in_words, words).min(12.0);
        raw[F_NUMBER_DENSITY] = ratio(self.numbers, words + self.numbers + 1);
        raw[F_NON_ASCII] = ratio(self.kind(K_NON_ASCII), scanned_chars);
        raw[F_UPPERCASE] = ratio(upper, letters);
        for j in [F_AVG_WORD_LEN, F_NUMBER_DENSITY, F_NON_ASCII, F_UPPERCASE] {
            x[j] = raw[j];
        }
        for (i, &c) in self.lex.iter().enumerate() {
            raw[LEX_FIRST + i] = c as f64;
            x[LEX_FIRST + i] = ln1p_count(c);
        }
        let (distinct, qsum) = (self.g.acc & 0xffff, self.g.acc >> 16);
        let text = if distinct > 0 {
            qsum as f64 * NGRAM_SCALE / (distinct as f64).sqrt()
        } else {
            0.0
        };
        Features { x, raw, text }
    }
}

/// What the linear model reads from one prompt.
struct Features {
    x: [f64; N_DENSE],
    raw: [f64; N_DENSE],
    /// The hashed n-gram (wording) term, in z units.
    text: f64,
}

/// `ln(1 + n)` of the counts 0..256, computed once with `ln_1p` itself (so
/// the values are bit-identical): nearly every count a prompt yields is small,
/// and a table load is far cheaper than the ~20 calls to `ln_1p` a score
/// would otherwise make.
static LN1P: std::sync::LazyLock<[f64; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0.0f64; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = (i as f64).ln_1p();
    }
    t
});

/// `ln(1 + c)` for a count.
#[inline]
fn ln1p_count(c: u64) -> f64 {
    match usize::try_from(c).ok().and_then(|i| LN1P.get(i)) {
        Some(v) => *v,
        None => (c as f64).ln_1p(),
    }
}

/// Characters (bytes that are not UTF-8 continuation bytes) of an unscanned tail.
/// Counted in `u8` lanes per 255-byte chunk, which the compiler vectorises (16 bytes
/// per compare-and-subtract) where `u64` lanes would widen every byte.
fn count_chars(bytes: &[u8]) -> u64 {
    bytes
        .chunks(255)
        .map(|chunk| {
            let n = chunk
                .iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from((b as i8) >= -0x40)));
            u64::from(n)
        })
        .sum()
}

#[inline]
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Scans `data`, with or without phrase bookkeeping; returns the features and, when
/// explaining, the strongest phrases seen.
#[inline(always)]
fn scan<const EXPLAIN: bool>(data: &[u8]) -> (Features, Best) {
    with_scratch(|scratch| {
        let mut s = Scan::<EXPLAIN>::new(data);
        s.run(scratch);
        (s.features(), s.best)
    })
}

/// Squashes z onto 0..1; returns (value, logit).
#[inline]
fn squash(z: f64) -> (f64, f64) {
    let logit = ((z - Z_MID) / Z_SCALE).clamp(-700.0, 700.0);
    let value = (1.0 / (1.0 + (-logit).exp())).clamp(0.0, 1.0);
    (value, logit)
}

/// Builds a [`Score`] (contributions and all) from the scan's output.
fn assemble(data: &[u8], f: &Features, best: Option<&Best>) -> Score {
    let mut contrib = [0.0f64; N_DENSE];
    let mut z = INTERCEPT;
    for j in 0..N_DENSE {
        let c = DENSE_COEF[j] * (f.x[j] - DENSE_MEAN[j]);
        contrib[j] = c / Z_SCALE;
        z += c;
    }
    z += f.text - TEXT_MEAN;
    let (value, logit) = squash(z);
    let ((up, n_up), (down, n_down)) = match best {
        Some(b) => (b.phrases(data, true), b.phrases(data, false)),
        None => (
            ([NO_PHRASE; KEEP_PHRASES], 0),
            ([NO_PHRASE; KEEP_PHRASES], 0),
        ),
    };
    Score {
        value,
        logit,
        contrib,
        raw: f.raw,
        text_contrib: (f.text - TEXT_MEAN) / Z_SCALE,
        up,
        n_up,
        down,
        n_down,
    }
}

/// Scores one prompt and keeps everything [`Score::reasons`] needs, including
/// example phrases for the wording reason. Pure function of the text: one linear
/// pass, no heap allocation, no panics, always returns a finite value in 0.0..=1.0.
pub fn score(prompt: &str) -> Score {
    let data = prompt.as_bytes();
    let (f, best) = scan::<true>(data);
    assemble(data, &f, Some(&best))
}

/// [`score`] without the example phrases: the same value, logit and per-feature
/// contributions (so [`Score::top_features`] and the ranking of [`Score::reasons`] are
/// identical), but the wording reason quotes no prompt text. For bulk scoring
/// (`ai-cost-optimizer score`), where tracking phrases nobody reads would cost more
/// than the feature names it prints.
pub fn score_unexplained(prompt: &str) -> Score {
    let data = prompt.as_bytes();
    let (f, _) = scan::<false>(data);
    assemble(data, &f, None)
}

/// The routing decision only: exactly `score(prompt).value`, without the phrase
/// bookkeeping or the per-feature contributions (the hot path of routing).
pub fn decide(prompt: &str) -> f64 {
    // The linear predictor is computed inside the scratch closure, so that only the
    // `f64` leaves it (the `Features` arrays are not copied out, and the unused `raw`
    // half is never built).
    let z = with_scratch(|scratch| {
        let mut s = Scan::<false>::new(prompt.as_bytes());
        s.run(scratch);
        let f = s.features();
        let mut z = INTERCEPT;
        for j in 0..N_DENSE {
            z += DENSE_COEF[j] * (f.x[j] - DENSE_MEAN[j]);
        }
        z + (f.text - TEXT_MEAN)
    });
    squash(z).0
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
        const { assert!(N_LEX <= 16, "lexicon classes must fit the u16 mask") };
        assert_eq!(
            NUMBER_HASH,
            token_hash_finish(token_hash_step(TOKEN_SEED, 0x30), 1)
        );
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
        let s = score("Prove that there are infinitely many primes.");
        let names: Vec<String> = s.reasons(4).into_iter().map(|r| r.feature).collect();
        assert_eq!(s.top_features(4), names);
    }

    #[test]
    fn wording_reason_quotes_prompt_text() {
        let s = score(
            "How many more apples than oranges does she have left after giving twice as many away?",
        );
        let all = s.reasons(usize::MAX);
        let w = all
            .iter()
            .find(|r| r.feature == "wording")
            .expect("a wording reason");
        // The phrases quoted are the prompt's own words.
        let (_, quoted) = w
            .detail
            .split_once(", e.g. ")
            .unwrap_or_else(|| panic!("no phrase quoted: {}", w.detail));
        let prompt =
            "how many more apples than oranges does she have left after giving twice as many away?";
        let phrases: Vec<&str> = quoted.split('"').skip(1).step_by(2).collect();
        assert!(!phrases.is_empty(), "{}", w.detail);
        for p in phrases {
            assert!(
                prompt.contains(&p.to_lowercase()),
                "{p:?} not in the prompt"
            );
        }
    }

    #[test]
    fn tokeniser_counts() {
        let text = b"Is 3.14 > 3,000? Yes.\nx = 2 + 2; `code` ```rust``` 50% $5 \\frac";
        let mut s = Scan::<false>::new(text);
        with_scratch(|scratch| s.run(scratch));
        assert_eq!(s.numbers, 6); // 3.14 3,000 2 2 50 5
        assert_eq!(s.kind(K_QUESTION), 1);
        assert_eq!(s.sentences, 2);
        assert_eq!(s.kind(K_NEWLINE), 1);
        assert_eq!(s.fences, 2);
        assert_eq!(s.kind(K_CODE), 9); // 8 backticks + ;
        assert_eq!(s.kind(K_QUANT), 2);
        assert_eq!(s.kind(K_BACKSLASH), 1);
        assert_eq!(s.kind(K_MATH), 3); // > = +
        // words of >= 2 letters: Is Yes code rust frac
        assert_eq!(s.ntok - s.numbers, 5);
    }

    /// Prompts that exercise every path of the scan: empty, one token, exactly and
    /// more than one token buffer, repeats (presence), numbers, non-ASCII, fences.
    fn varied_prompts() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "hi",
            "Hi there! How are you?",
            "Janet has 16 eggs. She eats 3 and bakes with 4 more. She sells the rest for $2 each. How much does she make?",
            "Implement a lock-free queue in Rust; explain the memory ordering of every atomic operation.",
            "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ± π ```rust fn main() {}```",
            "the the the the the the the the",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            v.push((0..n).map(|i| format!("w{} ", i % 37)).collect());
        }
        v.push("Compute the eigenvalues of the matrix and prove the bound. ".repeat(400));
        v
    }

    #[test]
    fn fast_paths_match_the_explained_score() {
        for p in varied_prompts() {
            let full = score(&p);
            let lean = score_unexplained(&p);
            assert_eq!(full.value.to_bits(), decide(&p).to_bits(), "{p:.40}");
            assert_eq!(full.value.to_bits(), lean.value.to_bits());
            assert_eq!(full.logit.to_bits(), lean.logit.to_bits());
            assert_eq!(full.contrib, lean.contrib);
            assert_eq!(full.text_contrib.to_bits(), lean.text_contrib.to_bits());
            assert_eq!(full.top_features(5), lean.top_features(5));
            assert_eq!(lean.n_up + lean.n_down, 0);
        }
    }

    #[test]
    fn stamp_wrap_and_threads_give_the_same_scores() {
        let prompts = varied_prompts();
        let expected: Vec<u64> = prompts.iter().map(|p| decide(p).to_bits()).collect();
        // Force the once-per-65,535-prompts restamp in the middle of a run.
        SCRATCH.with(|c| c.borrow_mut().stamp = 0xfffd);
        for _ in 0..3 {
            let got: Vec<u64> = prompts.iter().map(|p| decide(p).to_bits()).collect();
            assert_eq!(got, expected);
        }
        // A fresh scratch (a new thread) starts from the same state.
        let other = std::thread::spawn(move || {
            prompts
                .iter()
                .map(|p| decide(p).to_bits())
                .collect::<Vec<u64>>()
        })
        .join()
        .unwrap_or_default();
        assert_eq!(other, expected);
    }

    #[test]
    fn byte_counts_match_a_plain_count() {
        // Longer than one 255-byte chunk, all byte values, upper and lower case.
        let mut bytes: Vec<u8> = (0..=255u8).cycle().take(3 * 255 + 17).collect();
        bytes.extend("Ünïcödé ΑΒΓ abc XYZ".as_bytes().repeat(40));
        for len in [0, 1, 254, 255, 256, 511, bytes.len()] {
            let b = &bytes[..len];
            let chars = b.iter().filter(|&&c| c & 0xC0 != 0x80).count() as u64;
            assert_eq!(count_chars(b), chars, "len {len}");
        }
    }

    /// The scan's counts, recomputed from the specification in `scripts/fit_scorer.py`
    /// one byte at a time: tokens by walking the text, n-gram presence with a
    /// `HashSet`, byte kinds with plain `match`es. Independent of the block masks,
    /// the stamped table and the lexicon filter that `Scan::run` uses.
    #[derive(Debug, PartialEq)]
    struct SpecCounts {
        tokens: u64,
        numbers: u64,
        letters: u64,
        upper: u64,
        letters_in_words: u64,
        /// '?', '\n', math signs, quantities, backslashes, code symbols, continuation
        /// bytes, lead bytes >= 0xC0.
        kinds: [u64; 8],
        sentences: u64,
        fences: u64,
        math_unicode: u64,
        lex: [u64; N_LEX],
        distinct: i64,
        qsum: i64,
    }

    /// End of the number token starting at `data[i]` (a digit), by the
    /// specification: `[0-9]+([.,][0-9]+)*`.
    fn spec_number_end(data: &[u8], mut i: usize) -> usize {
        let digit = |i: usize| data.get(i).is_some_and(u8::is_ascii_digit);
        loop {
            while digit(i) {
                i += 1;
            }
            if i + 1 < data.len() && (data[i] == b'.' || data[i] == b',') && digit(i + 1) {
                i += 1;
                continue;
            }
            return i;
        }
    }

    /// Where the specification's scan stops: the start of the first token (single
    /// letters included) at or after `SCAN_CAP`, tokens read from the start of the text.
    #[allow(clippy::absurd_extreme_comparisons)]
    fn spec_scan_end(data: &[u8]) -> usize {
        if data.len() <= SCAN_CAP {
            return data.len();
        }
        let n = data.len();
        let mut i = 0;
        while i < n {
            let token = data[i].is_ascii_alphanumeric();
            if token && i >= SCAN_CAP {
                return i;
            }
            if data[i].is_ascii_alphabetic() {
                while i < n && data[i].is_ascii_alphabetic() {
                    i += 1;
                }
            } else if data[i].is_ascii_digit() {
                i = spec_number_end(data, i);
            } else {
                i += 1;
            }
        }
        n
    }

    fn spec_counts(full: &[u8]) -> SpecCounts {
        // Every count but the length is of the scanned prefix; a byte's neighbour
        // after it is read from the whole text.
        let data = &full[..spec_scan_end(full)];
        let n = data.len();
        let mut toks: Vec<u64> = Vec::new();
        let (mut numbers, mut letters_in_words) = (0, 0);
        let mut lex = [0u64; N_LEX];
        let count_lex = |key: u64, lex: &mut [u64; N_LEX]| {
            for (c, slot) in lex.iter_mut().enumerate() {
                *slot += u64::from((lexicon_probe(key) >> c) & 1);
            }
        };
        let mut i = 0;
        while i < n {
            if data[i].is_ascii_alphabetic() {
                let s = i;
                while i < n && data[i].is_ascii_alphabetic() {
                    i += 1;
                }
                if i - s >= 2 {
                    let lower = data[s..i].to_ascii_lowercase();
                    let mut h = TOKEN_SEED;
                    for chunk in lower.chunks(8) {
                        let mut b = [0u8; 8];
                        b[..chunk.len()].copy_from_slice(chunk);
                        h = token_hash_step(h, u64::from_le_bytes(b));
                    }
                    let h = token_hash_finish(h, (i - s) as u64);
                    count_lex(h, &mut lex);
                    toks.push(h);
                    letters_in_words += (i - s) as u64;
                }
            } else if data[i].is_ascii_digit() {
                i = spec_number_end(data, i);
                toks.push(NUMBER_HASH);
                numbers += 1;
            } else {
                i += 1;
            }
        }
        let mut buckets = std::collections::HashSet::new();
        for (t, &h) in toks.iter().enumerate() {
            buckets.insert(bucket(h));
            if t >= 1 {
                let bi = mix(toks[t - 1], h);
                count_lex(bi, &mut lex);
                buckets.insert(bucket(bi));
            }
        }
        let qsum = buckets.iter().map(|&b| i64::from(NGRAM_Q[b])).sum();
        let mut kinds = [0u64; 8];
        let (mut sentences, mut fences, mut math_unicode, mut run) = (0, 0, 0, 0);
        for (i, &b) in data.iter().enumerate() {
            let next = full.get(i + 1).copied();
            let k = match b {
                b'?' => Some(0),
                b'\n' => Some(1),
                b'=' | b'+' | b'^' | b'<' | b'>' => Some(2),
                b'%' | b'$' => Some(3),
                b'\\' => Some(4),
                b'{' | b'}' | b';' | b'_' | b'#' | b'`' => Some(5),
                0x80..=0xBF => Some(6),
                0xC0..=0xFF => Some(7),
                _ => None,
            };
            if let Some(k) = k {
                kinds[k] += 1;
            }
            if matches!(b, b'.' | b'!' | b'?')
                && next.is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            {
                sentences += 1;
            }
            math_unicode += u64::from(match (b, next) {
                (0xCE | 0xCF, _) => true,
                (0xE2, Some(c)) => (0x88..=0x8B).contains(&c),
                (0xC3, Some(c)) => c == 0x97 || c == 0xB7,
                (0xC2, Some(c)) => matches!(c, 0xB0 | 0xB1 | 0xB2 | 0xB3 | 0xB9),
                _ => false,
            });
            run = if b == b'`' { run + 1 } else { 0 };
            fences += u64::from(b == b'`' && next != Some(b'`')) * (run / 3);
        }
        SpecCounts {
            tokens: toks.len() as u64,
            numbers,
            letters: data.iter().filter(|b| b.is_ascii_alphabetic()).count() as u64,
            upper: data.iter().filter(|b| b.is_ascii_uppercase()).count() as u64,
            letters_in_words,
            kinds,
            sentences,
            fences,
            math_unicode,
            lex,
            distinct: buckets.len() as i64,
            qsum,
        }
    }

    /// The scan's counts, by the build `run` picks on this CPU or (`plain`) by the
    /// x86_64-baseline build.
    fn scan_counts_by(data: &[u8], plain: bool) -> SpecCounts {
        let mut s = Scan::<false>::new(data);
        if plain {
            with_scratch(|scratch| s.run_for::<false>(scratch));
        } else {
            with_scratch(|scratch| s.run(scratch));
        }
        SpecCounts {
            tokens: s.ntok,
            numbers: s.numbers,
            letters: s.letters,
            upper: s.upper,
            letters_in_words: s.letters - s.single_letters,
            kinds: [
                s.kind(K_QUESTION),
                s.kind(K_NEWLINE),
                s.kind(K_MATH),
                s.kind(K_QUANT),
                s.kind(K_BACKSLASH),
                s.kind(K_CODE),
                s.kind(K_CONTINUATION),
                s.kind(K_NON_ASCII),
            ],
            sentences: s.sentences,
            fences: s.fences,
            math_unicode: s.math_unicode,
            lex: s.lex,
            distinct: s.g.acc & 0xffff,
            qsum: s.g.acc >> 16,
        }
    }

    fn scan_counts(data: &[u8]) -> SpecCounts {
        let fast = scan_counts_by(data, false);
        assert_eq!(fast, scan_counts_by(data, true), "builds differ");
        fast
    }

    /// Prompts whose tokens straddle the 64-byte blocks and 136-byte views of the scan
    /// in every way: words of 1..=200 letters at every offset around a block end,
    /// numbers and backtick runs across it, multi-byte characters on it.
    fn boundary_prompts() -> Vec<String> {
        let mut v = Vec::new();
        for offset in [0, 1, 7, 55, 56, 57, 62, 63, 64, 65, 120, 127, 128, 129] {
            for len in [
                1, 2, 7, 8, 9, 16, 17, 63, 64, 65, 72, 127, 128, 129, 136, 200,
            ] {
                let word: String = "AbcdefghijKLMNOPQRstuvwxyz"
                    .chars()
                    .cycle()
                    .take(len)
                    .collect();
                v.push(format!("{}{word} x 12.5", " ".repeat(offset)));
                v.push(format!("{}{word}3.14,15{word}?", "9".repeat(offset)));
            }
            let pad = "z ".repeat(offset / 2);
            v.push(format!("{pad}1.2.3,4,,5..6 `````` ``` é ∀x ×² α. end."));
            v.push(format!("{pad}{}", "`".repeat(offset + 5)));
        }
        v
    }

    #[test]
    fn scan_counts_match_the_specification() {
        let mut prompts = boundary_prompts();
        prompts.extend(varied_prompts());
        for p in &prompts {
            assert_eq!(
                scan_counts(p.as_bytes()),
                spec_counts(p.as_bytes()),
                "{p:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, .. proptest::prelude::ProptestConfig::default() })]
        #[test]
        fn scan_counts_match_the_specification_on_random_text(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "I", "to", "the", "How", "many", "more", "step", "prove", "python",
                    "Supercalifragilisticexpialidocious", "0", "42", "3.14", "1,000", "7.", ",",
                    " ", "  ", "\t", "\r\n", "\n", ".", "?", "!", "`", "```", "{", "}", ";",
                    "_", "#", "=", "+", "^", "<", ">", "%", "$", "\\", "é", "∀", "≥", "×", "÷",
                    "°", "±", "²", "α", "Ω", "中文", "😀", "\u{0}",
                ]),
                0..160,
            )
        ) {
            let p = pieces.concat();
            proptest::prop_assert_eq!(scan_counts(p.as_bytes()), spec_counts(p.as_bytes()));
        }
    }

    /// Long prompts whose tokens straddle `SCAN_CAP` in every way: letter runs, single
    /// letters, numbers with '.' and ',' (and runs of them that are not numbers),
    /// multi-byte characters and sentence ends on the cut.
    fn prompts_around_the_cap() -> Vec<String> {
        let cap = SCAN_CAP.min(4096);
        let pieces = [
            "word",
            "a",
            "3.14",
            "1,000.5",
            "12..5",
            ",.,",
            "7.",
            "x9y",
            "é",
            "∀x",
            "end. Next",
            "```",
            "?",
            " ",
            "\n",
            "ABCDEFGHIJKLMNOPQRSTU",
        ];
        let mut v = Vec::new();
        for back in 0..24 {
            for piece in pieces {
                for after in [" tail words", "more", "5 6", ""] {
                    let lead = "z".repeat(cap.saturating_sub(back));
                    v.push(format!("{lead}{piece}{after}"));
                    let spaced = "ab ".repeat(cap / 3 + 1);
                    let cut = spaced.len().min(cap.saturating_sub(back));
                    v.push(format!("{}{piece}{after}", &spaced[..cut]));
                }
            }
        }
        // Text with no separator before the cap at all, and digits the same way.
        v.push("q".repeat(3 * cap));
        v.push(format!("{} z", "1.2".repeat(cap)));
        v
    }

    #[test]
    fn the_scan_stops_where_the_specification_does() {
        for p in prompts_around_the_cap() {
            let d = p.as_bytes();
            assert_eq!(
                scan_end(d),
                spec_scan_end(d),
                "{:?}",
                &p[p.len().min(SCAN_CAP.min(4096)).saturating_sub(30)..]
            );
            assert_eq!(
                scan_counts(d),
                spec_counts(d),
                "{:?}",
                &p[p.len().min(SCAN_CAP.min(4096)).saturating_sub(30)..]
            );
        }
    }

    #[test]
    fn block_masks_match_a_byte_by_byte_classification() {
        // Every byte value at every position of a block, and text around a boundary.
        let mut views: Vec<[u8; VIEW]> = Vec::new();
        for shift in 0..4u8 {
            let mut v = [0u8; VIEW];
            for (i, b) in v.iter_mut().enumerate() {
                *b = (i as u8)
                    .wrapping_mul(67)
                    .wrapping_add(shift.wrapping_mul(64));
            }
            views.push(v);
        }
        for start in 0..=255u8 {
            let mut v = [b' '; VIEW];
            for (i, b) in v.iter_mut().enumerate() {
                *b = start.wrapping_add(i as u8);
            }
            views.push(v);
        }
        for v in &views {
            for at in [0, BLOCK] {
                let mut want = Masks::default();
                for (i, &b) in v[at..at + BLOCK].iter().enumerate() {
                    want.letter |= u64::from(b.is_ascii_alphabetic()) << i;
                    want.upper |= u64::from(b.is_ascii_uppercase()) << i;
                    want.digit |= u64::from(b.is_ascii_digit()) << i;
                    want.other |= u64::from(!b.is_ascii_alphanumeric() && b != b' ') << i;
                }
                assert_eq!(classify(v, at), want, "{v:?} at {at}");
                assert_eq!(classify_portable(v, at), want, "{v:?} at {at}");
            }
        }
    }

    #[test]
    fn scores_match_the_python_mirror() {
        // `fit_scorer.py` scores these prompts with its own implementation of the
        // specification and writes the values beside the weights.
        for (p, want) in weights::PARITY {
            let got = decide(p);
            assert!((got - want).abs() < 1e-9, "{p:.40}: {got} != {want}");
            assert_eq!(score(p).value.to_bits(), got.to_bits());
        }
    }

    #[test]
    fn lexicon_buckets_are_flagged_in_the_table() {
        // The n-gram loop looks a key up in the lexicon only if its bucket's entry
        // carries LEX_FLAG: every lexicon key's bucket must, and weights and stamps
        // must be unaffected by the flag.
        let s = Scratch::new();
        let keys: Vec<u64> = LEXICON
            .iter()
            .map(|&(k, _)| k)
            .filter(|&k| k != 0)
            .collect();
        assert!(keys.len() > 300);
        for k in keys {
            assert_ne!(s.table[bucket(k)] & LEX_FLAG, 0, "{k:#x}");
        }
        let flagged = s.table.iter().filter(|&&e| e & LEX_FLAG != 0).count();
        let buckets: u32 = LEX_BUCKETS.iter().map(|w| w.count_ones()).sum();
        assert_eq!(flagged, buckets as usize);
        for (e, &w) in s.table.iter().zip(NGRAM_Q.iter()) {
            assert_eq!(((*e as i32) >> 24, *e as u16), (i32::from(w), 0));
        }
    }

    #[test]
    fn numbers_are_not_lexicon_words() {
        // `flush` looks every token up, numbers included; that equals the specified
        // "word tokens only" because the number hash is in no lexicon class.
        assert_eq!(lexicon_probe(NUMBER_HASH), 0);
    }

    #[test]
    fn length_only_is_monotone() {
        assert_eq!(length_only(""), 0.0);
        assert!(length_only("ab") < length_only("abc"));
        assert!((length_only(&"é".repeat(500)) - 0.5).abs() < 1e-12);
    }
}
