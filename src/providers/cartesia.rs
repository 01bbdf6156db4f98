//! Cartesia text-to-speech (`POST /tts/bytes`): reads an answer aloud.
//!
//! Cartesia is not a chat provider, so it has its own small client instead
//! of a [`super::Provider`]. It bills about one credit per character of
//! transcript and publishes no machine-readable catalog, so prices come
//! from [`PRICES`], a documented table (override with
//! `[pricing.overrides."cartesia/<model>"] input_per_mtok`, read as USD per
//! million characters).

use std::path::Path;

use serde_json::json;
use tokio::io::AsyncWriteExt;

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

/// Default TTS model. `sonic-3`: since June 2026 `sonic-2` no longer speaks
/// Italian, Dutch, Polish, Russian, Swedish, Turkish or Hindi (Cartesia's
/// "API changes" page), while `sonic-3` speaks the 42 languages of
/// [`LANGUAGES`] and stays served. (`sonic-3.5`, Cartesia's newest, is
/// documented as 42 languages too, but without the per-language list this
/// client validates against.)
pub const DEFAULT_MODEL: &str = "sonic-3";

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

/// The languages [`DEFAULT_MODEL`] speaks (ISO 639-1, as Cartesia's
/// `language` field takes them, in the order of Cartesia's model table
/// for `sonic-3`). Cartesia reads a transcript with the language's
/// pronunciation, so French text sent as `en` comes out as English
/// phonetics of French words.
pub const LANGUAGES: &[&str] = &[
    "en", "de", "es", "fr", "ja", "pt", "zh", "hi", "ko", "it", "nl", "pl", "ru", "sv", "tr", "tl",
    "bg", "ro", "ar", "cs", "el", "fi", "hr", "ms", "sk", "da", "ta", "uk", "hu", "no", "vi", "bn",
    "th", "he", "ka", "id", "te", "gu", "kn", "ml", "mr", "pa",
];

/// The language of `text`, if it is one of [`LANGUAGES`] and the guess is
/// reliable; `None` leaves the choice to the caller (English, as before
/// detection). Short or mixed texts are often unreliable: a two-word
/// answer is read as English rather than guessed at. Only the first
/// [`DETECT_CHARS`] characters are looked at.
pub fn detect_language(text: &str) -> Option<&'static str> {
    use whatlang::Lang;
    let end = text
        .char_indices()
        .nth(DETECT_CHARS)
        .map_or(text.len(), |(i, _)| i);
    let info = whatlang::detect(&text[..end])?;
    if !info.is_reliable() {
        return None;
    }
    Some(match info.lang() {
        Lang::Eng => "en",
        Lang::Deu => "de",
        Lang::Spa => "es",
        Lang::Fra => "fr",
        Lang::Jpn => "ja",
        Lang::Por => "pt",
        Lang::Cmn => "zh",
        Lang::Hin => "hi",
        Lang::Kor => "ko",
        Lang::Ita => "it",
        Lang::Nld => "nl",
        Lang::Pol => "pl",
        Lang::Rus => "ru",
        Lang::Swe => "sv",
        Lang::Tur => "tr",
        Lang::Tgl => "tl",
        Lang::Bul => "bg",
        Lang::Ron => "ro",
        Lang::Ara => "ar",
        Lang::Ces => "cs",
        Lang::Ell => "el",
        Lang::Fin => "fi",
        Lang::Hrv => "hr",
        Lang::Slk => "sk",
        Lang::Dan => "da",
        Lang::Tam => "ta",
        Lang::Ukr => "uk",
        Lang::Hun => "hu",
        Lang::Nob => "no",
        Lang::Vie => "vi",
        Lang::Ben => "bn",
        Lang::Tha => "th",
        Lang::Heb => "he",
        Lang::Kat => "ka",
        Lang::Ind => "id",
        Lang::Tel => "te",
        Lang::Guj => "gu",
        Lang::Kan => "kn",
        Lang::Mal => "ml",
        Lang::Mar => "mr",
        Lang::Pan => "pa",
        // Malay ("ms") is spoken but whatlang does not tell it apart.
        _ => return None,
    })
}

/// Characters [`detect_language`] reads: a paragraph tells the language
/// as well as a whole answer, and a 20,000-character answer should not
/// cost a trigram pass over all of it.
const DETECT_CHARS: usize = 2_000;

/// Longest transcript sent in one request, in characters.
pub const MAX_TRANSCRIPT_CHARS: usize = 20_000;

/// Bytes per second of the audio asked for (16-bit mono PCM at 44.1 kHz).
const WAV_BYTES_PER_SECOND: u64 = 44_100 * 2;

/// The most WAV bytes a transcript of `chars` characters can take: read at
/// a very slow 4 characters a second, plus a minute of slack. Speech is
/// about 15 characters a second, so a real reply never comes near it,
/// while a misbehaving server cannot fill the disk. (A fixed cap cannot do
/// both: 16 MiB is only about 190 s of audio, and Cartesia bills the
/// characters whether or not we keep the audio.)
pub fn max_wav_bytes(chars: usize) -> u64 {
    44 + WAV_BYTES_PER_SECOND * (chars as u64 / 4 + 60)
}

/// One text-to-speech request.
#[derive(Debug, Clone)]
pub struct SpeechRequest {
    /// What to say.
    pub transcript: String,
    /// Cartesia model id.
    pub model: String,
    /// Voice id.
    pub voice: String,
    /// Language to read the transcript in (one of [`LANGUAGES`]).
    pub language: String,
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

    /// Synthesises `req` as WAV audio (16-bit PCM, 44.1 kHz) streamed into a
    /// new file at `out` (created private); returns its size. The audio is
    /// written beside it as `<out>.part` and renamed when complete, so on
    /// failure or cancellation nothing is left at `out` (nor a `.part`). A
    /// failure after Cartesia accepted the request is marked
    /// [`ProviderError::accepted`]: the characters are billed anyway.
    pub async fn synthesize_to(
        &self,
        req: &SpeechRequest,
        out: &Path,
    ) -> Result<u64, ProviderError> {
        let body = json!({
            "model_id": req.model,
            "transcript": req.transcript,
            "voice": {"mode": "id", "id": req.voice},
            "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 44100},
            "language": req.language,
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
        if !status.is_success() {
            let headers = resp.headers().clone();
            let bytes = read_body(ProviderId::Cartesia, resp).await?;
            return Err(ProviderError::from_http(
                ProviderId::Cartesia,
                status.as_u16(),
                &headers,
                &bytes,
            ));
        }
        let cap = max_wav_bytes(req.transcript.chars().count());
        let part = PartFile(out.with_extension("wav.part"));
        let size = stream_wav(resp, &part.0, cap, status.as_u16())
            .await
            .map_err(|e| e.after_acceptance(super::Usage::default()))?;
        tokio::fs::rename(&part.0, out).await.map_err(|e| {
            ProviderError::new(
                ProviderId::Cartesia,
                ErrorKind::Malformed,
                Some(status.as_u16()),
                format!("could not save the audio: {e}"),
            )
            .after_acceptance(super::Usage::default())
        })?;
        Ok(size)
    }
}

/// A partly written audio file, removed when dropped (after a rename it is
/// gone already): an error or a cancelled call leaves nothing behind.
struct PartFile(std::path::PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the body of an accepted reply to `out`, checking it is WAV and
/// no longer than `cap` bytes.
async fn stream_wav(
    resp: reqwest::Response,
    out: &Path,
    cap: u64,
    status: u16,
) -> Result<u64, ProviderError> {
    use futures_util::StreamExt;
    let err =
        |kind, detail: String| ProviderError::new(ProviderId::Cartesia, kind, Some(status), detail);
    let io = |e: std::io::Error| {
        err(
            ErrorKind::Malformed,
            format!("could not save the audio: {e}"),
        )
    };
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts.open(out).await.map_err(io)?;
    let mut head: Vec<u8> = Vec::with_capacity(12);
    let mut written = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let mut e = ProviderError::from_reqwest(ProviderId::Cartesia, &e);
            if e.kind == ErrorKind::Malformed {
                e.kind = ErrorKind::Connection;
                e.detail = format!("the audio broke off: {}", e.detail);
            }
            e
        })?;
        if head.len() < 12 {
            let take = (12 - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            // A WAV file starts with "RIFF....WAVE"; anything else (an
            // HTML page from a proxy, JSON) is not audio.
            if head.len() == 12 && (&head[0..4] != b"RIFF" || &head[8..12] != b"WAVE") {
                return Err(err(
                    ErrorKind::Malformed,
                    "the reply is not WAV audio".into(),
                ));
            }
        }
        written += chunk.len() as u64;
        if written > cap {
            return Err(err(
                ErrorKind::Malformed,
                format!("the audio is longer than {cap} bytes, more than its transcript can take"),
            ));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    if head.len() < 12 {
        return Err(err(
            ErrorKind::Malformed,
            "the reply is not WAV audio".into(),
        ));
    }
    file.flush().await.map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    /// The cap grows with the transcript: a long answer read aloud (20,000
    /// characters, over 20 minutes at a normal pace) fits, 16 MiB would not.
    #[test]
    fn the_audio_cap_follows_the_transcript() {
        let normal_pace = |chars: u64| 44 + WAV_BYTES_PER_SECOND * chars / 15;
        for chars in [1usize, 200, 3_000, MAX_TRANSCRIPT_CHARS] {
            assert!(
                max_wav_bytes(chars) > normal_pace(chars as u64) * 3,
                "{chars}"
            );
        }
        assert!(normal_pace(MAX_TRANSCRIPT_CHARS as u64) > 16 * 1024 * 1024);
        assert!(max_wav_bytes(3) < 6 * 1024 * 1024);
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

    /// Answers are read in their own language when it is clear, and in
    /// English when it is not (too short, or a language Cartesia's model
    /// does not speak).
    #[test]
    fn the_answer_language_is_detected_when_clear() {
        let cases = [
            (
                "The capital of France is Paris, a city known for its museums and its food.",
                Some("en"),
            ),
            (
                "La capitale de la France est Paris, une ville connue pour ses musées et sa cuisine.",
                Some("fr"),
            ),
            (
                "Die Hauptstadt von Frankreich ist Paris, eine Stadt, die für ihre Museen bekannt ist.",
                Some("de"),
            ),
            (
                "La capital de Francia es París, una ciudad conocida por sus museos y su comida.",
                Some("es"),
            ),
            (
                "フランスの首都はパリです。美術館と料理で有名な街です。",
                Some("ja"),
            ),
            (
                "法国的首都是巴黎，这是一座以博物馆和美食闻名的城市。",
                Some("zh"),
            ),
            (
                "Столица Франции — Париж, город, известный своими музеями и кухней.",
                Some("ru"),
            ),
            (
                "프랑스의 수도는 파리이며 박물관과 음식으로 유명한 도시입니다.",
                Some("ko"),
            ),
            // Vietnamese: one of sonic-3's languages (not sonic-2's).
            (
                "Thủ đô của Pháp là Paris, một thành phố nổi tiếng với các bảo tàng và ẩm thực.",
                Some("vi"),
            ),
            // Esperanto: detected, but not a language Cartesia speaks.
            (
                "La ĉefurbo de Francio estas Parizo, urbo konata pro siaj muzeoj kaj bona manĝaĵo.",
                None,
            ),
            ("OK", None),
            ("", None),
        ];
        // Only the start is read: a long French answer with an English
        // tail is French.
        let long = format!(
            "{}{}",
            "La capitale de la France est Paris, une ville connue pour ses musées. ".repeat(40),
            "The rest of this answer is in English, a long tail of it. ".repeat(400)
        );
        assert_eq!(detect_language(&long), Some("fr"));
        for (text, want) in cases {
            let got = detect_language(text);
            assert_eq!(got, want, "{text}");
            if let Some(code) = got {
                assert!(LANGUAGES.contains(&code), "{code}");
            }
        }
    }
}
