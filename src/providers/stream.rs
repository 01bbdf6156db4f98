//! Incremental parsers for the two streaming formats providers use:
//! Server-Sent Events (Anthropic, the OpenAI family, Gemini) and
//! newline-delimited JSON (Ollama). Both take bytes as they arrive, in
//! chunks that may split lines anywhere, and bound what they buffer.

use std::time::Duration;

use futures_util::StreamExt;

use super::{ErrorKind, MAX_RESPONSE_BYTES, ProviderError, ProviderId};

/// Receives the text of an answer as it streams in, so the caller can
/// report progress. Called from the request task; keep it cheap.
pub trait StreamSink: Send + Sync {
    /// A piece of answer text arrived.
    fn on_text(&self, delta: &str);

    /// A piece of the model's thinking arrived (Anthropic thinking
    /// deltas, Gemini thought parts, DeepSeek `reasoning_content`): never
    /// shown as the answer, but billed as output, so an attempt cancelled
    /// or cut off while the model thinks is charged for it.
    fn on_reasoning(&self, _delta: &str) {}

    /// An attempt is about to call a provider. Told before every attempt
    /// (fallbacks included), so a caller that streams can name the model
    /// that answers before its text arrives; most sinks ignore it.
    fn on_attempt(&self, _route: &AttemptRoute<'_>) {}

    /// Whether text passed to [`StreamSink::on_text`] is final for the
    /// caller: shown as the answer and impossible to take back (an OpenAI
    /// SSE stream). The optimizer then never retries or falls back after
    /// an attempt that streamed text, which would append a second answer to
    /// the first. Progress reports (MCP), replaced by the final result, are
    /// not final.
    fn is_final(&self) -> bool {
        false
    }

    /// A budget alert fired by a call that then failed (told by the
    /// optimizer, never by a provider): the failed result has no `alerts`
    /// field, so a transport that notifies its client (MCP) hears of it
    /// here. Alerts of a successful call are in its result instead.
    fn on_alert(&self, _alert: &crate::budget::alerts::BudgetAlert) {}
}

/// Where one attempt of a call goes, as told to [`StreamSink::on_attempt`].
#[derive(Debug, Clone, Copy)]
pub struct AttemptRoute<'a> {
    /// The provider called.
    pub provider: ProviderId,
    /// The catalog model id.
    pub model: &'a str,
    /// The tier the model was picked from.
    pub tier: &'a str,
    /// The prompt's complexity score.
    pub score: f64,
    /// The ledger's id for the whole call (all attempts share it).
    pub request_id: &'a str,
}

/// A sink that ignores everything.
pub struct NoSink;

impl StreamSink for NoSink {
    fn on_text(&self, _delta: &str) {}
}

/// A sink that keeps what it is told apart: the providers' tests check
/// that thinking never reaches the answer and is still counted.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub text: std::sync::Mutex<String>,
    pub reasoning: std::sync::Mutex<String>,
}

#[cfg(test)]
impl StreamSink for Recorder {
    fn on_text(&self, delta: &str) {
        self.text.lock().unwrap().push_str(delta);
    }

    fn on_reasoning(&self, delta: &str) {
        self.reasoning.lock().unwrap().push_str(delta);
    }
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into lines, keeping the unfinished tail.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn push(&mut self, chunk: &[u8], mut f: impl FnMut(&str)) {
        // The kept tail holds no newline (every complete line was taken
        // out): search only the new bytes, or a long line arriving in many
        // small chunks is rescanned from its start on every chunk
        // (quadratic: a 16 MiB line in 16 KiB chunks is ~8 G comparisons).
        let mut from = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.buf[from..].iter().position(|b| *b == b'\n') {
            let end = from + pos;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            f(&String::from_utf8_lossy(line));
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start);
    }

    fn finish(&mut self, mut f: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            let tail = std::mem::take(&mut self.buf);
            let tail = tail.strip_suffix(b"\r").unwrap_or(&tail);
            f(&String::from_utf8_lossy(tail));
        }
    }
}

/// An incremental SSE parser (the WHATWG event-stream rules that matter:
/// `event:`/`data:` fields, `:` comments, blank line dispatches).
#[derive(Default)]
pub struct SseParser {
    lines: Lines,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let (event, data) = (&mut self.event, &mut self.data);
        self.lines
            .push(chunk, |line| sse_line(line, event, data, &mut out));
        out
    }

    /// Ends the stream; returns a last event not followed by a blank line
    /// (Gemini's final chunk sometimes is).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let (event, data) = (&mut self.event, &mut self.data);
        self.lines
            .finish(|line| sse_line(line, event, data, &mut out));
        sse_line("", event, data, &mut out);
        out
    }
}

fn sse_line(
    line: &str,
    event: &mut Option<String>,
    data: &mut Option<String>,
    out: &mut Vec<SseEvent>,
) {
    if line.is_empty() {
        // An event with empty data (`data:` alone, a heartbeat some
        // servers send) is not dispatched, as the SSE specification says.
        if let Some(d) = data.take().filter(|d| !d.is_empty()) {
            out.push(SseEvent {
                event: event.take(),
                data: d,
            });
        }
        *event = None;
        return;
    }
    if line.starts_with(':') {
        return; // comment / keep-alive
    }
    let (field, value) = match line.split_once(':') {
        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
        None => (line, ""),
    };
    match field {
        "event" => *event = Some(value.to_string()),
        "data" => match data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => *data = Some(value.to_string()),
        },
        _ => {}
    }
}

/// An incremental newline-delimited JSON splitter.
#[derive(Default)]
pub struct NdjsonParser {
    lines: Lines,
}

impl NdjsonParser {
    /// Feeds bytes; returns the complete non-empty lines.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.push(chunk, |l| {
            if !l.trim().is_empty() {
                out.push(l.to_string())
            }
        });
        out
    }

    /// Ends the stream; returns an unterminated last line, if any.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.finish(|l| {
            if !l.trim().is_empty() {
                out.push(l.to_string())
            }
        });
        out
    }
}

/// Most bytes a streamed answer of at most `max_tokens` may take on the
/// wire: [`MAX_RESPONSE_BYTES`] plus 1 KiB a token. Streams frame each token
/// in an event of 150–350 bytes (OpenRouter, DeepSeek), so a flat 16 MiB
/// broke off answers of 50–60k tokens the provider had billed; what stays
/// in memory is the text, not the framing.
pub fn reply_limit(max_tokens: u32) -> usize {
    MAX_RESPONSE_BYTES.saturating_add((max_tokens as usize).saturating_mul(1024))
}

/// How many idle timeouts a stream may send keep-alives only (see
/// [`drive`]): 8 minutes with the default 120 s.
pub const KEEPALIVE_ONLY_LIMIT: u32 = 4;

/// What [`drive`]'s chunk handler saw in one chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step {
    /// The stream said it is complete.
    pub done: bool,
    /// An event of the answer arrived (not a keep-alive).
    pub progressed: bool,
}

/// Drives a streaming response: feeds each chunk to `on_chunk` until the
/// body ends or `on_chunk` says the stream is done. Bounds the total size
/// to `limit` bytes (see [`reply_limit`]) and turns transport failures
/// mid-body into classified errors.
///
/// A stream with no answer event for [`KEEPALIVE_ONLY_LIMIT`] times `idle`
/// is stalled: the HTTP client's read timeout (`idle`) restarts on every
/// byte, so a provider sending only keep-alive comments (DeepSeek's
/// `: keep-alive` while it queues a request, for up to 30 minutes) held the
/// call until the total timeout, then ended it without trying anyone else.
/// Longer than `idle`, because keep-alives can also mean work: OpenRouter
/// sends its `PROCESSING` comments while a model reasons without streaming
/// its reasoning (OpenAI's o-series, for minutes).
pub async fn drive(
    provider: ProviderId,
    resp: reqwest::Response,
    limit: usize,
    idle: Duration,
    mut on_chunk: impl FnMut(&[u8]) -> Result<Step, ProviderError>,
) -> Result<(), ProviderError> {
    let mut total = 0usize;
    let mut body = resp.bytes_stream();
    let limit_without_answer = idle.saturating_mul(KEEPALIVE_ONLY_LIMIT);
    let mut stalled_at = tokio::time::Instant::now() + limit_without_answer;
    loop {
        let Ok(next) = tokio::time::timeout_at(stalled_at, body.next()).await else {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Timeout,
                Some(200),
                format!(
                    "the stream sent nothing of the answer for {} s (keep-alives only)",
                    limit_without_answer.as_secs()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            let mut err = ProviderError::from_reqwest(provider, &e);
            if err.kind == ErrorKind::Malformed || err.kind == ErrorKind::Connection {
                err.detail = format!("the stream broke mid-answer: {}", err.detail);
                err.kind = ErrorKind::Connection;
            }
            err
        })?;
        total += chunk.len();
        if total > limit {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Malformed,
                Some(200),
                format!("streamed reply larger than {limit} bytes"),
            ));
        }
        let step = on_chunk(&chunk)?;
        if step.done {
            return Ok(());
        }
        if step.progressed {
            stalled_at = tokio::time::Instant::now() + limit_without_answer;
        }
    }
    Ok(())
}

/// Whether an SSE event is the answer's, not a keep-alive: Anthropic sends
/// `ping` events while it works (comments and empty data are never
/// dispatched at all).
fn is_progress(ev: &SseEvent) -> bool {
    ev.event.as_deref() != Some("ping") && !ev.data.contains(r#""type":"ping""#)
}

/// Feeds each SSE event of `resp` to `on_event` until it returns `Ok(true)`
/// (the stream said it is complete) or the body ends.
pub async fn drive_sse(
    provider: ProviderId,
    resp: reqwest::Response,
    limit: usize,
    idle: Duration,
    mut on_event: impl FnMut(&SseEvent) -> Result<bool, ProviderError>,
) -> Result<(), ProviderError> {
    let mut parser = SseParser::default();
    let mut complete = false;
    drive(provider, resp, limit, idle, |chunk| {
        let mut step = Step::default();
        for ev in parser.push(chunk) {
            step.progressed |= is_progress(&ev);
            if on_event(&ev)? {
                complete = true;
                step.done = true;
                return Ok(step);
            }
        }
        Ok(step)
    })
    .await?;
    if !complete {
        for ev in parser.finish() {
            if on_event(&ev)? {
                break;
            }
        }
    }
    Ok(())
}

/// Reads a whole (non-streamed) JSON reply.
pub async fn read_json(
    provider: ProviderId,
    resp: reqwest::Response,
) -> Result<serde_json::Value, ProviderError> {
    let bytes = super::read_body(provider, resp).await?;
    json(provider, &String::from_utf8_lossy(&bytes))
}

/// Sends a streaming POST; a non-2xx reply is read whole and classified.
pub async fn send(
    provider: ProviderId,
    builder: reqwest::RequestBuilder,
    body: &serde_json::Value,
) -> Result<reqwest::Response, ProviderError> {
    let resp = builder
        .json(body)
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(provider, &e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let headers = resp.headers().clone();
    let bytes = super::read_body(provider, resp).await?;
    Err(ProviderError::from_http(
        provider,
        status.as_u16(),
        &headers,
        &bytes,
    ))
}

/// The error for a stream that ended without its closing event.
/// Whether `e`, ending a stream whose answer had already finished (its
/// finish reason and usage arrived), lost nothing but the closing event: a
/// connection dropped or timed out just before it. The answer is then kept;
/// thrown away, it would be paid for again by a retry or a fallback.
pub fn only_the_close_was_lost(e: &ProviderError) -> bool {
    matches!(e.kind, ErrorKind::Connection | ErrorKind::Timeout)
}

pub fn truncated(provider: ProviderId, what: &str) -> ProviderError {
    ProviderError::new(
        provider,
        ErrorKind::Malformed,
        Some(200),
        format!("the stream ended before {what}"),
    )
}

/// Parses one JSON payload of a stream.
pub fn json(provider: ProviderId, data: &str) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(data).map_err(|e| {
        ProviderError::new(
            provider,
            ErrorKind::Malformed,
            Some(200),
            format!("a streamed chunk is not valid JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_handles_split_chunks_comments_and_crlf() {
        let mut p = SseParser::default();
        let mut events = p.push(b": keep-alive\r\nevent: message_start\r\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(p.push(b":1}\r\n\r\ndata: one\ndata: two\n\n"));
        events.extend(p.push(b"data: [DONE]\n\n"));
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "one\ntwo".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    /// `data:` with nothing after it (a heartbeat) is not an event: it
    /// used to reach the JSON parser and fail an accepted call.
    #[test]
    fn sse_events_with_empty_data_are_not_dispatched() {
        let mut p = SseParser::default();
        let mut events = p.push(b"data:\n\ndata: \r\n\r\nevent: ping\ndata:\n\n");
        events.extend(p.push(b"data: {}\n\n"));
        assert_eq!(
            events,
            vec![SseEvent {
                event: None,
                data: "{}".into()
            }]
        );
    }

    #[test]
    fn sse_finish_flushes_an_unterminated_event() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"last\":true}").is_empty());
        assert_eq!(p.finish()[0].data, "{\"last\":true}");
    }

    #[test]
    fn lines_are_the_same_whatever_the_chunking() {
        let text = format!("a\r\nbb\n\n{}\r\nccc\ntail", "x".repeat(5000));
        let whole = {
            let mut l = Lines::default();
            let mut out = Vec::new();
            l.push(text.as_bytes(), |s| out.push(s.to_string()));
            l.finish(|s| out.push(s.to_string()));
            out
        };
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[3], "x".repeat(5000));
        for size in [1, 2, 3, 7, 64, 4999, 5001] {
            let mut l = Lines::default();
            let mut out = Vec::new();
            for c in text.as_bytes().chunks(size) {
                l.push(c, |s| out.push(s.to_string()));
            }
            l.finish(|s| out.push(s.to_string()));
            assert_eq!(out, whole, "chunks of {size}");
        }
    }

    #[test]
    fn ndjson_splits_lines_across_chunks() {
        let mut p = NdjsonParser::default();
        let mut lines = p.push(b"{\"a\":1}\n{\"b\"");
        lines.extend(p.push(b":2}\n\n"));
        lines.extend(p.push(b"{\"c\":3}"));
        lines.extend(p.finish());
        assert_eq!(lines, vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }

    #[test]
    fn multibyte_characters_split_across_chunks_survive() {
        let text = "data: héllo 日本\n\n".as_bytes();
        let mut p = SseParser::default();
        let mut events = Vec::new();
        for b in text.chunks(1) {
            events.extend(p.push(b));
        }
        assert_eq!(events[0].data, "héllo 日本");
    }
}
