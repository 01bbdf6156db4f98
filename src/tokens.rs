//! Token estimates before a call, for routing and budget reservations.
//!
//! We count with tiktoken-rs's `o200k_base` (bundled, no download) and
//! scale by a per-provider factor, because each provider's tokenizer splits
//! text differently: o200k counts 5–10 % fewer tokens than DeepSeek's and
//! 14–18 % fewer than Claude's older tokenizer, and Anthropic documents up
//! to ~30 % more for its newest models (see `../shared/reference`). Bills
//! always come from the usage the provider reports; this is only a forecast.
//!
//! **Memory.** tiktoken-rs's `CoreBPE` keeps the 200k-token vocabulary three
//! times over (an encoder map, a decoder map and a sorted copy, each entry
//! its own heap allocation) plus 256 clones of its two regexes: about 45 MB
//! resident for a server whose every other part fits in 15. Counting needs
//! only the encoder. So we build tiktoken-rs's o200k `CoreBPE` once, copy its
//! byte → rank map out of it, drop it, hand the freed pages back to the
//! kernel, and count with tiktoken-rs's own BPE merge
//! ([`tiktoken_rs::byte_pair_split`]) over that one map and the o200k
//! pre-tokenizer pattern ([`tiktoken_rs::O200K_BASE_PAT_STR`]). The counts
//! are tiktoken's `encode_ordinary` counts (tested below against tiktoken-rs
//! itself); the resident cost is about 15 MB instead of 45.
//!
//! The table is built on first use (tens of milliseconds), not at start-up,
//! so a server that has not estimated anything yet stays small.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use tiktoken_rs::Rank;

use crate::providers::ProviderId;

/// Texts longer than this are estimated from samples instead of being
/// tokenized whole: BPE over megabytes costs real time and the estimate
/// only has to be roughly right.
const TOKENIZE_LIMIT_BYTES: usize = 256 * 1024;

/// The size of each of the three samples of a longer text.
const SAMPLE_BYTES: usize = 64 * 1024;

/// Bytes per token assumed when a text cannot be tokenized at all (the
/// tokenizer failed to build; about 4 for English).
const BYTES_PER_TOKEN: u64 = 4;

/// Pre-tokenizer pieces longer than this (a base64 blob, a minified line)
/// are merged in chunks of this size. tiktoken's pair merge is quadratic in
/// the piece length; a token never spans two chunks, so chunking can only
/// add tokens — the estimate errs high, which is the safe side for a budget
/// hold.
const MAX_PIECE_BYTES: usize = 256;

/// Highest rank probed when copying the vocabulary out of tiktoken-rs
/// (o200k's ordinary tokens are 0..=199_997; its special tokens sit just
/// above and are skipped).
const MAX_RANK: Rank = 201_000;

/// What counting needs and nothing else: the byte → rank map and the
/// pre-tokenizer.
struct Counter {
    ranks: FxHashMap<Vec<u8>, Rank>,
    pieces: fancy_regex::Regex,
}

static COUNTER: OnceLock<Option<Counter>> = OnceLock::new();

/// Builds the counter from tiktoken-rs's o200k tables. `None` only if
/// tiktoken-rs cannot build its own bundled encoding (then every estimate
/// falls back to bytes rather than failing a call).
fn build() -> Option<Counter> {
    let pieces = fancy_regex::Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).ok()?;
    let ranks = {
        let bpe = tiktoken_rs::o200k_base().ok()?;
        let special: Vec<&str> = bpe.special_tokens().into_iter().collect();
        let mut ranks = FxHashMap::with_capacity_and_hasher(200_000, Default::default());
        for rank in 0..MAX_RANK {
            if let Ok(bytes) = bpe.decode_bytes(&[rank])
                && !special.iter().any(|s| s.as_bytes() == bytes.as_slice())
            {
                ranks.insert(bytes, rank);
            }
        }
        ranks
        // `bpe` (three copies of the vocabulary) is dropped here.
    };
    release_free_heap();
    Some(Counter { ranks, pieces })
}

/// Returns freed heap pages to the kernel. glibc keeps freed memory for
/// reuse, and building the tables frees about 30 MB in small chunks that
/// would otherwise stay resident for the life of the process.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases memory the
    // allocator already considers free.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn counter() -> Option<&'static Counter> {
    COUNTER.get_or_init(build).as_ref()
}

/// Tokens of one pre-tokenizer piece.
fn piece_tokens(ranks: &FxHashMap<Vec<u8>, Rank>, piece: &[u8]) -> u64 {
    if ranks.contains_key(piece) {
        return 1;
    }
    piece
        .chunks(MAX_PIECE_BYTES)
        .map(|chunk| match chunk.len() {
            0 => 0,
            1 => 1, // every single byte is a token in o200k
            _ if ranks.contains_key(chunk) => 1,
            _ => tiktoken_rs::byte_pair_split(chunk, ranks).len() as u64,
        })
        .sum()
}

/// Tokens of `text` under o200k_base, special-token strings counted as
/// ordinary text (as tiktoken's `encode_ordinary` does; a literal
/// `<|endoftext|>` in a prompt counts a few tokens instead of one, erring
/// high).
pub fn count_o200k(text: &str) -> u64 {
    if text.len() > TOKENIZE_LIMIT_BYTES {
        return sampled_count(text);
    }
    count_whole(text)
}

/// Tokens of a text too long to tokenize whole: its start, middle and end
/// are tokenized and their tokens per byte scaled to the whole length. A
/// flat 4 bytes per token undercounted dense text (JSON numbers, base64,
/// code) two to three times, and a budget hold sized on it came out as
/// small.
fn sampled_count(text: &str) -> u64 {
    let len = text.len();
    let mut tokens = 0;
    let mut sampled = 0;
    for start in [0, len / 2 - SAMPLE_BYTES / 2, len - SAMPLE_BYTES] {
        let (from, to) = (
            char_start(text, start),
            char_start(text, start + SAMPLE_BYTES),
        );
        tokens += count_whole(&text[from..to]);
        sampled += to - from;
    }
    if sampled == 0 {
        return (len as u64).div_ceil(BYTES_PER_TOKEN);
    }
    (tokens as f64 * len as f64 / sampled as f64).ceil() as u64
}

/// The start of the character at or before byte `i`.
fn char_start(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Tokens of `text`, tokenized whole.
fn count_whole(text: &str) -> u64 {
    let by_bytes = |len: usize| (len as u64).div_ceil(BYTES_PER_TOKEN);
    let Some(c) = counter() else {
        return by_bytes(text.len());
    };
    let mut n = 0;
    let mut done = 0;
    for m in c.pieces.find_iter(text) {
        match m {
            Ok(m) => {
                n += piece_tokens(&c.ranks, m.as_str().as_bytes());
                done = m.end();
            }
            // The regex engine gave up (backtrack limit): estimate the rest.
            Err(_) => return n + by_bytes(text.len() - done),
        }
    }
    n
}

/// The factor by which `provider`'s tokenizer tends to exceed o200k, for a
/// model whose name does not say its family (see [`model_factor`]).
fn provider_factor(provider: ProviderId) -> f64 {
    match provider {
        ProviderId::Anthropic => CLAUDE_NEW_TOKENIZER,
        ProviderId::Deepseek => 1.08,
        ProviderId::Gemini => 1.05,
        _ => 1.0,
    }
}

/// Claude models before Opus 4.7: o200k counts 14–18 % fewer tokens.
const CLAUDE_OLD_TOKENIZER: f64 = 1.2;
/// Claude Opus 4.7 and later: Anthropic's updated tokenizer makes 1.0–1.35×
/// the tokens of the one before, so about 1.2 × 1.25.
const CLAUDE_NEW_TOKENIZER: f64 = 1.5;

/// The factor for `model` (a catalog id) at `provider`: by the model family
/// where the name tells it, since a Claude or DeepSeek model counts its
/// tokens the same way through OpenRouter as at its maker, and Claude's
/// tokenizer changed with Opus 4.7; else by the provider.
pub fn model_factor(provider: ProviderId, model: &str) -> f64 {
    let name = model.to_ascii_lowercase();
    if let Some(at) = name.find("claude") {
        // The first two numbers after "claude" are the version, in either
        // naming ("claude-opus-4-7", "claude-sonnet-4.6", "claude-3.5-sonnet").
        let mut numbers = name[at..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty() && p.len() <= 2)
            .filter_map(|p| p.parse::<u32>().ok());
        let version = (numbers.next(), numbers.next());
        return match version {
            (Some(major), minor) if (major, minor.unwrap_or(0)) < (4, 7) => CLAUDE_OLD_TOKENIZER,
            // Opus 4.7 and later, and names without a version (newer ones).
            _ => CLAUDE_NEW_TOKENIZER,
        };
    }
    if name.contains("deepseek") {
        return provider_factor(ProviderId::Deepseek);
    }
    if name.contains("gemini") || name.contains("gemma") {
        return provider_factor(ProviderId::Gemini);
    }
    provider_factor(provider)
}

/// A prompt counted once with o200k, to estimate its input tokens on many
/// providers (`check_model_costs` lists hundreds of models: counting the
/// prompt again for each cost seconds of CPU on a large one).
#[derive(Debug, Clone, Copy)]
pub struct PromptCount {
    base: u64,
    messages: u64,
}

impl PromptCount {
    /// Counts `prompt` (and `system`).
    pub fn of(system: Option<&str>, prompt: &str) -> PromptCount {
        PromptCount {
            base: count_o200k(prompt) + system.map(count_o200k).unwrap_or(0),
            messages: if system.is_some() { 2 } else { 1 },
        }
    }

    /// The input tokens of a chat call to `model` (a catalog id) at
    /// `provider`: the o200k count scaled by [`model_factor`], plus a small
    /// per-message overhead for role markers.
    pub fn for_model(self, provider: ProviderId, model: &str) -> u64 {
        let scaled = (self.base as f64) * model_factor(provider, model);
        scaled.ceil() as u64 + 4 * self.messages
    }

    /// The o200k count, before any provider's correction.
    pub fn o200k(self) -> u64 {
        self.base
    }
}

/// Builds the tables now, so the next estimate does not pay for it (for
/// commands that know they will estimate; the server builds them on
/// first use instead, to stay small while idle).
pub fn warm_up() {
    let _ = counter();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tiktoken-rs's own count, the reference.
    fn reference(text: &str) -> u64 {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len() as u64
    }

    #[test]
    fn counts_are_plausible() {
        let n = count_o200k("The quick brown fox jumps over the lazy dog.");
        assert!((8..=12).contains(&n), "{n}");
        assert_eq!(count_o200k(""), 0);
    }

    #[test]
    fn counts_equal_tiktoken_rs() {
        let texts = [
            "The quick brown fox jumps over the lazy dog.",
            "What is the capital of France?",
            "fn main() {\n    println!(\"hello, world\");\n}\n\n\n    \t  trailing   ",
            "Explain the difference between a mutex and a semaphore in detail, with examples in C++ and Rust.",
            "数学の問題を解いてください：x² + 2x + 1 = 0。Ответьте по-русски, пожалуйста! 🚀🔥👍🏽",
            "1234567890 3.14159 1,000,000 0xDEADBEEF 2026-12-01T16:52:11Z",
            "I'm sure they'll say we've done it; he'd THINK it's FINE.  Double  spaces\r\nand CRLF\r\n",
            "<|endoftext|> is a special token string in plain text",
            "SELECT count(*) FROM calls WHERE ts_ms >= ?1 AND user_id = ?2; -- sql\n",
            "      leading spaces, then tabs\t\t\tand newlines\n\n\n\nend",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ];
        for t in texts {
            assert_eq!(count_o200k(t), reference(t), "{t:?}");
        }
        // A realistic long prompt: many pieces, some repeated.
        let long = texts.join(" ").repeat(50);
        assert_eq!(count_o200k(&long), reference(&long));
    }

    /// Claude's tokenizer changed with Opus 4.7; a model counts its tokens
    /// the same way through OpenRouter as at its maker.
    #[test]
    fn factors_follow_the_model_family() {
        use ProviderId::*;
        for (provider, model, want) in [
            (
                Anthropic,
                "anthropic/claude-haiku-4-5",
                CLAUDE_OLD_TOKENIZER,
            ),
            (
                Anthropic,
                "anthropic/claude-sonnet-4-6",
                CLAUDE_OLD_TOKENIZER,
            ),
            (
                Anthropic,
                "anthropic/claude-opus-4-6-20260205",
                CLAUDE_OLD_TOKENIZER,
            ),
            (Anthropic, "anthropic/claude-opus-4-7", CLAUDE_NEW_TOKENIZER),
            (
                Anthropic,
                "anthropic/claude-opus-4-7-20260416",
                CLAUDE_NEW_TOKENIZER,
            ),
            (
                Anthropic,
                "anthropic/claude-haiku-5-5",
                CLAUDE_NEW_TOKENIZER,
            ),
            (
                Anthropic,
                "anthropic/claude-mythos-preview",
                CLAUDE_NEW_TOKENIZER,
            ),
            (
                Openrouter,
                "openrouter/anthropic/claude-sonnet-4.6",
                CLAUDE_OLD_TOKENIZER,
            ),
            (
                Openrouter,
                "openrouter/anthropic/claude-3.5-sonnet",
                CLAUDE_OLD_TOKENIZER,
            ),
            (
                Openrouter,
                "openrouter/anthropic/claude-opus-4.7",
                CLAUDE_NEW_TOKENIZER,
            ),
            (Openrouter, "openrouter/deepseek/deepseek-chat", 1.08),
            (Openrouter, "openrouter/google/gemini-2.5-flash", 1.05),
            (Openrouter, "openrouter/meta-llama/llama-3.1-8b", 1.0),
            (Deepseek, "deepseek/deepseek-v3.2", 1.08),
            (Cerebras, "cerebras/llama3.1-8b", 1.0),
        ] {
            assert_eq!(model_factor(provider, model), want, "{model}");
        }
        let p = PromptCount::of(None, "The quick brown fox jumps over the lazy dog.");
        assert!(
            p.for_model(Anthropic, "anthropic/claude-opus-4-7")
                > p.for_model(Anthropic, "anthropic/claude-haiku-4-5")
        );
    }

    #[test]
    fn long_pieces_never_count_low() {
        // One 4 KB pre-tokenizer piece (random lower-case letters, no
        // spaces): chunked, so the count may exceed tiktoken's, but never
        // falls below it.
        let mut x = 0x2545_f491_u32;
        let blob: String = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (b'a' + (x % 26) as u8) as char
            })
            .collect();
        let ours = count_o200k(&blob);
        let exact = reference(&blob);
        assert!(ours >= exact, "{ours} < {exact}");
        assert!(ours <= exact + exact / 10, "{ours} far above {exact}");
    }

    #[test]
    fn anthropic_estimates_more_than_openai_style() {
        let p = "Explain the difference between a mutex and a semaphore in detail.";
        let c = PromptCount::of(None, p);
        assert!(
            c.for_model(ProviderId::Anthropic, "anthropic/claude-haiku-4-5")
                > c.for_model(ProviderId::Cerebras, "cerebras/llama3.1-8b")
        );
    }

    /// Past 256 KiB the count is sampled, and stays near the whole count
    /// for dense text: 4 bytes per token counted JSON of numbers at half
    /// its tokens, so budget holds for it came out half as large.
    #[test]
    fn huge_inputs_are_sampled_not_guessed_at_four_bytes() {
        let words = "word ".repeat(200_000);
        // (Samples cut words at their edges: a few tokens more.)
        assert!((200_000..200_100).contains(&count_o200k(&words)));
        let row = |i: u64| {
            format!(
                "{{\"id\":{i},\"v\":[{}.{},{}]}},",
                i * 7919 % 10007,
                i % 97,
                i * 31 % 1009
            )
        };
        let dense: String = (0..200_000u64)
            .map(row)
            .take_while({
                let mut n = 0;
                move |r| {
                    n += r.len();
                    n < 600_000
                }
            })
            .collect();
        assert!(dense.len() > TOKENIZE_LIMIT_BYTES);
        let sampled = count_o200k(&dense);
        let whole = count_whole(&dense);
        assert!(
            whole > dense.len() as u64 / 3,
            "dense: {whole} tokens in {} bytes",
            dense.len()
        );
        let off = sampled as f64 / whole as f64;
        assert!(
            (0.9..1.1).contains(&off),
            "sampled {sampled} vs whole {whole}"
        );
        // Multi-byte text is cut at character boundaries.
        let cjk = "漢字かな交じり文。".repeat(40_000);
        assert!(count_o200k(&cjk) > 0);
    }
}
