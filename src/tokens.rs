//! Token estimates before a call, for routing and budget reservations.
//!
//! We count with tiktoken-rs's `o200k_base` (bundled, no download) and
//! scale by a per-provider factor, because each provider's tokenizer splits
//! text differently: o200k counts 5–10 % fewer tokens than DeepSeek's and
//! 14–18 % fewer than Claude's older tokenizer, and Anthropic documents up
//! to ~30 % more for its newest models (see `../shared/reference`). Bills
//! always come from the usage the provider reports; this is only a forecast.
//!
//! The tokenizer is built on first use (it takes tens of milliseconds), so
//! start-up stays fast; `warm_up` lets the server build it in the background.

use crate::providers::ProviderId;

/// Texts longer than this are estimated from their byte length instead of
/// being tokenized: BPE over megabytes costs real time and the estimate
/// only has to be roughly right (about 4 bytes per token for English).
const TOKENIZE_LIMIT_BYTES: usize = 256 * 1024;

/// Tokens of `text` under o200k_base.
pub fn count_o200k(text: &str) -> u64 {
    if text.len() > TOKENIZE_LIMIT_BYTES {
        return (text.len() as u64).div_ceil(4);
    }
    tiktoken_rs::o200k_base_singleton()
        .encode_with_special_tokens(text)
        .len() as u64
}

/// The factor by which `provider`'s tokenizer tends to exceed o200k.
pub fn provider_factor(provider: ProviderId) -> f64 {
    match provider {
        ProviderId::Anthropic => 1.25,
        ProviderId::Deepseek => 1.08,
        ProviderId::Gemini => 1.05,
        _ => 1.0,
    }
}

/// Estimated input tokens of a chat call (system + prompt + a small
/// per-message overhead for role markers).
pub fn estimate_input(provider: ProviderId, system: Option<&str>, prompt: &str) -> u64 {
    let base = count_o200k(prompt) + system.map(count_o200k).unwrap_or(0);
    let messages = if system.is_some() { 2 } else { 1 };
    ((base as f64) * provider_factor(provider)).ceil() as u64 + 4 * messages
}

/// Builds the tokenizer now, so the first real call does not pay for it.
pub fn warm_up() {
    let _ = count_o200k("warm up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_plausible() {
        let n = count_o200k("The quick brown fox jumps over the lazy dog.");
        assert!((8..=12).contains(&n), "{n}");
        assert_eq!(count_o200k(""), 0);
    }

    #[test]
    fn anthropic_estimates_more_than_openai_style() {
        let p = "Explain the difference between a mutex and a semaphore in detail.";
        assert!(
            estimate_input(ProviderId::Anthropic, None, p)
                > estimate_input(ProviderId::Cerebras, None, p)
        );
    }

    #[test]
    fn huge_inputs_use_the_byte_estimate() {
        let big = "word ".repeat(200_000);
        assert_eq!(count_o200k(&big), (big.len() as u64).div_ceil(4));
    }
}
