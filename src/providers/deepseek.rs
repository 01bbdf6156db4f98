//! DeepSeek: OpenAI-compatible, reports prompt-cache hits in its usage.

use std::sync::Arc;

use super::openai_compat::{OpenAiCompatible, Quirks};
use super::{Provider, ProviderConfig, ProviderId, ProviderSpec};

/// DeepSeek: `DEEPSEEK_API_KEY`, base `DEEPSEEK_BASE_URL`.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Deepseek,
    display_name: "DeepSeek",
    key_envs: &["DEEPSEEK_API_KEY"],
    base_url_env: "DEEPSEEK_BASE_URL",
    default_base_url: "https://api.deepseek.com",
    key_help_url: "https://platform.deepseek.com/api_keys",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    OpenAiCompatible::client(ProviderId::Deepseek, config, Quirks::default())
}
