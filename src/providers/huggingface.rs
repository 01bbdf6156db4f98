//! HuggingFace's inference router: OpenAI-compatible, model ids `org/name`
//! or `org/name:provider`. The LiteLLM catalog has no prices for it, so its
//! models are unpriced unless the user adds `[pricing.overrides]`.

use std::sync::Arc;

use super::openai_compat::{OpenAiCompatible, Quirks};
use super::{Provider, ProviderConfig, ProviderId, ProviderSpec};

/// HuggingFace: `HF_TOKEN` or `HUGGINGFACE_API_KEY`, base `HF_BASE_URL`.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Huggingface,
    display_name: "HuggingFace",
    key_envs: &["HF_TOKEN", "HUGGINGFACE_API_KEY"],
    base_url_env: "HF_BASE_URL",
    default_base_url: "https://router.huggingface.co/v1",
    key_help_url: "https://huggingface.co/settings/tokens",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    OpenAiCompatible::client(ProviderId::Huggingface, config, Quirks::default())
}
