//! Cartesia text-to-speech (`POST /tts/bytes`): reads an answer aloud.
//!
//! Cartesia is not a chat provider, so it has its own small client instead
//! of a [`super::Provider`]. It bills about one credit per character of
//! transcript and publishes no machine-readable catalog, so prices come
//! from [`PRICES`], a documented table (override with
//! `[pricing.overrides."cartesia/<model>"] input_per_mtok`, read as USD per
//! million characters).

use serde_json::json;

use super::{ErrorKind, ProviderConfig, ProviderError, ProviderId, ProviderSpec, read_body};

/// Cartesia: `CARTESIA_API_KEY`, base `CARTESIA_BASE_URL`.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Cartesia,
    display_name: "Cartesia",
    key_envs: &["CARTESIA_API_KEY"],
    base_url_env: "CARTESIA_BASE_URL",
    default_base_url: "https://api.cartesia.ai",
    key_help_url: "https://play.cartesia.ai/keys",
    // Speech, not chat: built by the registry as a `Cartesia` client.
    build: None,
};

/// The API version this client speaks (`Cartesia-Version` header).
pub const API_VERSION: &str = "2025-04-16";

/// Default TTS model.
pub const DEFAULT_MODEL: &str = "sonic-2";

/// Default voice ("Barbershop Man", one of Cartesia's stock voices).
pub const DEFAULT_VOICE: &str = "a0e99841-438c-4a64-b679-ae501e7d6091";

/// USD per character of transcript. Cartesia charges 1 credit per
/// character; $0.00005 is the Pro plan's rate (100k credits for $5,
/// Nov 2026). Larger plans are cheaper, so this errs high.
pub const PRICES: &[(&str, f64)] = &[
    ("sonic-2", 0.000_05),
    ("sonic-3", 0.000_05),
    ("sonic-3.5", 0.000_05),
    ("sonic-turbo", 0.000_05),
];

/// The price per character of `model`, if known.
pub fn price_per_char(model: &str) -> Option<f64> {
    PRICES.iter().find(|(m, _)| *m == model).map(|(_, p)| *p)
}

/// Longest transcript sent in one request, in characters.
pub const MAX_TRANSCRIPT_CHARS: usize = 20_000;

/// One text-to-speech request.
#[derive(Debug, Clone)]
pub struct SpeechRequest {
    /// What to say.
    pub transcript: String,
    /// Cartesia model id.
    pub model: String,
    /// Voice id.
    pub voice: String,
}

/// A Cartesia client.
pub struct Cartesia {
    config: ProviderConfig,
}

impl Cartesia {
    /// Builds a client.
    pub fn new(config: ProviderConfig) -> Cartesia {
        Cartesia { config }
    }

    /// Synthesises `req` to WAV bytes (16-bit PCM, 44.1 kHz).
    pub async fn synthesize(&self, req: &SpeechRequest) -> Result<Vec<u8>, ProviderError> {
        let body = json!({
            "model_id": req.model,
            "transcript": req.transcript,
            "voice": {"mode": "id", "id": req.voice},
            "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 44100},
            "language": "en",
        });
        let mut builder = self
            .config
            .http
            .post(format!("{}/tts/bytes", self.config.base_url))
            .header("Cartesia-Version", API_VERSION);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let resp = builder
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(ProviderId::Cartesia, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_body(ProviderId::Cartesia, resp).await?;
        if !status.is_success() {
            return Err(ProviderError::from_http(
                ProviderId::Cartesia,
                status.as_u16(),
                &headers,
                &bytes,
            ));
        }
        // A WAV file starts with "RIFF....WAVE"; anything else (an HTML
        // error page from a proxy, JSON) is not audio.
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(ProviderError::new(
                ProviderId::Cartesia,
                ErrorKind::Malformed,
                Some(status.as_u16()),
                "the reply is not WAV audio",
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_per_character() {
        assert_eq!(price_per_char("sonic-2"), Some(0.000_05));
        assert_eq!(price_per_char("nope"), None);
    }
}
