//! OpenRouter: OpenAI-compatible gateway to many models. It reports the
//! exact charge in `usage.cost`, which wins over the catalog.

use std::sync::Arc;

use super::openai_compat::{OpenAiCompatible, Quirks};
use super::{Provider, ProviderConfig, ProviderId, ProviderSpec};

/// OpenRouter: `OPENROUTER_API_KEY`, base `OPENROUTER_BASE_URL`.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Openrouter,
    display_name: "OpenRouter",
    key_envs: &["OPENROUTER_API_KEY"],
    base_url_env: "OPENROUTER_BASE_URL",
    default_base_url: "https://openrouter.ai/api/v1",
    key_help_url: "https://openrouter.ai/settings/keys",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    OpenAiCompatible::client(
        ProviderId::Openrouter,
        config,
        Quirks {
            // OpenRouter's optional app attribution headers.
            extra_headers: &[
                ("HTTP-Referer", "https://github.com/ai-cost-optimizer"),
                ("X-Title", "AI Cost Optimizer"),
            ],
            ..Quirks::default()
        },
    )
}
