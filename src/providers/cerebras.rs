//! Cerebras inference: OpenAI-compatible, very fast, cheap open models.

use std::sync::Arc;

use super::openai_compat::{OpenAiCompatible, Quirks};
use super::{Provider, ProviderConfig, ProviderId, ProviderSpec};

/// Cerebras: `CEREBRAS_API_KEY`, base `CEREBRAS_BASE_URL`.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Cerebras,
    display_name: "Cerebras",
    key_envs: &["CEREBRAS_API_KEY"],
    base_url_env: "CEREBRAS_BASE_URL",
    default_base_url: "https://api.cerebras.ai/v1",
    key_help_url: "https://cloud.cerebras.ai",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    OpenAiCompatible::client(
        ProviderId::Cerebras,
        config,
        Quirks {
            max_completion_tokens: true,
            ..Quirks::default()
        },
    )
}
