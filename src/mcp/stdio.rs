//! The stdio transport of the MCP server: newline-delimited JSON-RPC on
//! stdin/stdout, with the error replies JSON-RPC 2.0 requires.
//!
//! rmcp's own stdio transport drops a line it cannot parse without a word,
//! so a client that sent junk (or a message its own bug mangled) waits for
//! an answer that never comes. JSON-RPC 2.0 says an unparseable message gets
//! `{"id": null, "error": {"code": -32700}}` and a parseable one that is not
//! a valid request gets -32600 (with its id when one can be read). So we
//! read the lines ourselves and hand rmcp only messages that decode.
//!
//! Every line written to stdout, rmcp's replies and ours alike, goes
//! through one writer task fed by a channel: two writers on one pipe could
//! interleave the bytes of two messages.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{CallToolRequestParams, ClientNotification, ClientRequest, JsonRpcMessage};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The longest message accepted, in bytes (newline included). A longer
/// line is answered with an error and skipped as it arrives, never held in
/// memory whole, so a client that never sends a newline cannot grow the
/// server without bound. 16 MiB: the cap rmcp's transport had, comfortably
/// above the 4 MiB prompt limit plus JSON escaping.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Lines waiting for the writer. Enough that replies to a burst of
/// requests do not wait for each other; a client that stops reading
/// stdout slows the server down instead of growing this queue.
const WRITE_QUEUE: usize = 256;

/// How long `close` waits for queued lines to reach stdout.
const CLOSE_FLUSH: Duration = Duration::from_secs(3);

/// A line buffer larger than this is freed after use rather than kept, so
/// one huge message does not pin its size in memory for the session.
const KEEP_LINE_CAPACITY: usize = 1024 * 1024;

/// JSON-RPC 2.0 error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

/// The server side of MCP over a byte stream pair (stdin/stdout in
/// production): see the module docs.
pub struct StdioTransport<R> {
    read: BufReader<R>,
    /// The line being read; kept across calls, because rmcp polls
    /// `receive` in a `select!` and drops the future whenever something
    /// else is ready first: a partial line must survive that.
    line: Vec<u8>,
    /// Skipping the rest of a line already refused as too long.
    discarding: bool,
    /// The id of the last line refused as too long, if its first bytes
    /// named one: the error reply carries it, so the client can match it
    /// to its request instead of waiting for a timeout.
    too_long_id: Value,
    /// Stdin has ended: the next `receive` returns `None`.
    eof: bool,
    /// An error reply not yet handed to the writer (the queue was full).
    pending: Option<Vec<u8>>,
    /// The writer's queue; `None` once closed.
    out: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    max_line: usize,
    /// Ids of the requests in flight (as JSON text). MCP forbids reusing
    /// one: rmcp keeps one cancellation token per id, so a second request
    /// with the id of one still running made the first's answer (paid
    /// for) vanish. Such a request is refused instead.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Ids of the requests the client cancelled, latest last (at most
    /// [`CANCELLED_KEPT`]): still refused, because rmcp gets no reply for
    /// them and so the transport cannot tell when their handler ends; one
    /// ending after a new request took its id cancelled that one instead.
    cancelled: VecDeque<String>,
    /// No `initialize` request has been passed on yet. rmcp's server
    /// ends the whole session (the process exits) on anything else first,
    /// a stray notification included, so until then the transport answers
    /// or drops what rmcp cannot take (see [`StdioTransport::before_init`]).
    awaiting_init: bool,
}

/// Cancelled ids remembered (MCP forbids reusing ids in a session anyway).
const CANCELLED_KEPT: usize = 1024;

/// What one line of input turned out to be.
#[derive(Debug)]
enum Decoded {
    /// A message for rmcp.
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// Nothing to do (a blank line, or a notification rmcp does not know:
    /// JSON-RPC forbids replying to notifications).
    Nothing,
    /// An error reply to write, already encoded as a line.
    Reply(Vec<u8>),
}

/// How a bounded line read ended.
enum LineRead {
    /// `line` holds a whole line, newline included.
    Complete,
    /// The line was longer than the limit; it is being skipped.
    TooLong,
    /// End of input.
    Eof,
    /// Reading failed.
    Failed(io::Error),
}

impl<R: AsyncRead + Unpin + Send> StdioTransport<R> {
    /// A transport reading `read` and writing `write` (a writer task is
    /// spawned on the current Tokio runtime).
    pub fn new<W>(read: R, write: W) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        StdioTransport {
            read: BufReader::new(read),
            line: Vec::new(),
            discarding: false,
            too_long_id: Value::Null,
            eof: false,
            pending: None,
            out: Some(tx),
            writer: Some(tokio::spawn(write_lines(write, rx))),
            max_line: MAX_LINE_BYTES,
            in_flight: Arc::default(),
            cancelled: VecDeque::new(),
            awaiting_init: true,
        }
    }

    /// What becomes of a message that arrives before `initialize`: the
    /// `initialize` request itself goes on (`None`), a `ping` is answered
    /// (MCP allows it before initialization), another request gets an
    /// error naming what to do, and a notification or a response is
    /// dropped (JSON-RPC answers neither). `Some(None)`: dropped.
    fn before_init(m: &RxJsonRpcMessage<RoleServer>) -> Option<Option<Vec<u8>>> {
        match m {
            JsonRpcMessage::Request(r) => {
                let id = serde_json::to_value(&r.id).unwrap_or(Value::Null);
                match &r.request {
                    ClientRequest::InitializeRequest(_) => None,
                    ClientRequest::PingRequest(_) => {
                        let mut line =
                            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}})
                                .to_string()
                                .into_bytes();
                        line.push(b'\n');
                        Some(Some(line))
                    }
                    _ => Some(Some(error_line(
                        id,
                        INVALID_REQUEST,
                        "Invalid Request: the session is not initialized; send initialize first",
                    ))),
                }
            }
            _ => {
                tracing::info!("dropped a message sent before initialize");
                Some(None)
            }
        }
    }

    /// Notes a request's id as in flight, or refuses it when a request
    /// with that id still is, or was cancelled (see `cancelled`).
    fn track(&mut self, m: &RxJsonRpcMessage<RoleServer>) -> Result<(), Vec<u8>> {
        let mut ids = lock_ignoring_poison(&self.in_flight);
        match m {
            JsonRpcMessage::Request(r) => {
                let key = id_key(&r.id);
                if !self.cancelled.contains(&key) && ids.insert(key) {
                    Ok(())
                } else {
                    tracing::info!(id = %id_key(&r.id), "refused a request reusing the id of one in flight");
                    Err(error_line(
                        serde_json::to_value(&r.id).unwrap_or(Value::Null),
                        INVALID_REQUEST,
                        "Invalid Request: this id is already used by a request in flight; ids must not be reused",
                    ))
                }
            }
            JsonRpcMessage::Notification(n) => {
                if let ClientNotification::CancelledNotification(c) = &n.notification
                    && let Some(id) = &c.params.request_id
                {
                    let key = id_key(id);
                    if ids.remove(&key) {
                        self.cancelled.push_back(key);
                        if self.cancelled.len() > CANCELLED_KEPT {
                            self.cancelled.pop_front();
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Lowers (or raises) the line limit; tests use a small one.
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.max(1);
        self
    }

    /// Reads one line into `self.line`, never letting it grow past the
    /// limit. Cancellation-safe: bytes move from the reader's buffer into
    /// `self.line` (or are skipped) and are consumed in the same
    /// synchronous step, so a dropped future loses nothing.
    async fn read_line(&mut self) -> LineRead {
        loop {
            let available = match self.read.fill_buf().await {
                Ok(b) => b,
                Err(e) => return LineRead::Failed(e),
            };
            if available.is_empty() {
                return LineRead::Eof;
            }
            let newline = memchr::memchr(b'\n', available);
            let used = newline.map_or(available.len(), |i| i + 1);
            let mut outcome = None;
            if self.discarding {
                self.discarding = newline.is_none();
            } else if self.line.len() + used > self.max_line {
                let mut head = std::mem::take(&mut self.line);
                head.extend_from_slice(&available[..used.min(ID_SCAN_BYTES)]);
                self.too_long_id = early_id(&head[..head.len().min(ID_SCAN_BYTES)]);
                self.discarding = newline.is_none();
                outcome = Some(LineRead::TooLong);
            } else {
                self.line.extend_from_slice(&available[..used]);
                if newline.is_some() {
                    outcome = Some(LineRead::Complete);
                }
            }
            self.read.consume(used);
            if let Some(o) = outcome {
                return o;
            }
        }
    }

    /// Hands an error reply to the writer. Waiting for room in the queue is
    /// cancellation-safe: the reply stays in `pending` until it is queued.
    async fn flush_pending(&mut self) {
        if self.pending.is_none() {
            return;
        }
        let Some(out) = &self.out else {
            self.pending = None;
            return;
        };
        match out.reserve().await {
            Ok(permit) => {
                if let Some(line) = self.pending.take() {
                    permit.send(line);
                }
            }
            // The writer is gone (stdout closed): nobody can read it.
            Err(_) => self.pending = None,
        }
    }

    /// Queues an error reply, without waiting if there is room.
    fn queue_reply(&mut self, line: Vec<u8>) {
        match self.out.as_ref().map(|out| out.try_send(line)) {
            Some(Err(mpsc::error::TrySendError::Full(line))) => self.pending = Some(line),
            Some(Ok(())) | Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {}
        }
    }

    /// Empties the line buffer, freeing it if one huge line inflated it.
    fn reset_line(&mut self) {
        self.line.clear();
        if self.line.capacity() > KEEP_LINE_CAPACITY {
            self.line = Vec::new();
        }
    }
}

impl<R: AsyncRead + Unpin + Send> Transport<RoleServer> for StdioTransport<R> {
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), io::Error>> + Send + 'static {
        let out = self.out.clone();
        // The request is answered: its id may be used again.
        let answered = match &item {
            JsonRpcMessage::Response(r) => Some(id_key(&r.id)),
            JsonRpcMessage::Error(e) => e.id.as_ref().map(id_key),
            _ => None,
        };
        if let Some(key) = answered {
            lock_ignoring_poison(&self.in_flight).remove(&key);
        }
        // Encoded in the caller's task, not the writer's: a large tool
        // result does not hold up the other replies being written.
        async move {
            let mut line = Vec::with_capacity(256);
            serde_json::to_writer(&mut line, &item)?;
            line.push(b'\n');
            match out {
                Some(out) => out.send(line).await.map_err(|_| stdout_closed()),
                None => Err(stdout_closed()),
            }
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            self.flush_pending().await;
            if self.eof {
                return None;
            }
            let decoded = match self.read_line().await {
                LineRead::Complete => {
                    let d = decode(&self.line);
                    self.reset_line();
                    d
                }
                LineRead::TooLong => {
                    self.reset_line();
                    tracing::warn!(
                        limit = self.max_line,
                        "a message longer than the limit was refused and skipped"
                    );
                    Decoded::Reply(error_line(
                        std::mem::take(&mut self.too_long_id),
                        INVALID_REQUEST,
                        &format!(
                            "Invalid Request: message longer than {} bytes; it was discarded",
                            self.max_line
                        ),
                    ))
                }
                LineRead::Eof => {
                    // A last message without its newline is still a message.
                    self.eof = true;
                    if self.line.is_empty() || self.discarding {
                        return None;
                    }
                    let d = decode(&self.line);
                    self.reset_line();
                    d
                }
                LineRead::Failed(e) => {
                    tracing::error!(error = %e, "cannot read stdin; closing the session");
                    return None;
                }
            };
            match decoded {
                Decoded::Message(m) if self.awaiting_init => match Self::before_init(&m) {
                    None => {
                        self.awaiting_init = false;
                        if let Err(reply) = self.track(&m) {
                            self.queue_reply(reply);
                            continue;
                        }
                        return Some(*m);
                    }
                    Some(Some(reply)) => self.queue_reply(reply),
                    Some(None) => {}
                },
                Decoded::Message(m) => match self.track(&m) {
                    Ok(()) => return Some(*m),
                    Err(reply) => self.queue_reply(reply),
                },
                Decoded::Nothing => {}
                Decoded::Reply(line) => self.queue_reply(line),
            }
        }
    }

    async fn close(&mut self) -> Result<(), io::Error> {
        // The writer ends once every sender is gone and the queue is
        // written; wait for that (bounded: a send still blocked on a client
        // that stopped reading must not keep the process alive).
        self.out = None;
        if let Some(w) = self.writer.take()
            && tokio::time::timeout(CLOSE_FLUSH, w).await.is_err()
        {
            tracing::warn!("stdout did not drain at exit; unwritten replies were dropped");
        }
        Ok(())
    }
}

/// A request id as the key of the in-flight set (`7` and `"7"` differ).
fn id_key(id: &rmcp::model::RequestId) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stdout_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "stdout is closed")
}

/// The writer task: the only code that writes stdout. Writes what is
/// queued, flushing once per batch, until every sender is gone.
async fn write_lines<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(16);
    while rx.recv_many(&mut batch, 64).await > 0 {
        for line in batch.drain(..) {
            if let Err(e) = w.write_all(&line).await {
                tracing::info!(error = %e, "cannot write stdout; the client has gone");
                return;
            }
        }
        if let Err(e) = w.flush().await {
            tracing::info!(error = %e, "cannot flush stdout; the client has gone");
            return;
        }
    }
}

/// `text` with every `\uXXXX` escape of a lone UTF-16 surrogate (one not
/// in a high-low pair) inside a JSON string replaced by `\uFFFD`; `None`
/// when there is none. Escaped backslashes are respected (`\\ud800` is
/// text, not an escape).
fn replace_lone_surrogates(text: &str) -> Option<String> {
    fn escape_at(b: &[u8], i: usize) -> Option<u16> {
        let hex = b.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied, mut in_string, mut changed) = (0, 0, false, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match escape_at(b, i) {
                // A high-low pair: a character, kept.
                Some(0xD800..=0xDBFF) if matches!(escape_at(b, i + 6), Some(0xDC00..=0xDFFF)) => {
                    i += 12;
                }
                Some(0xD800..=0xDFFF) => {
                    out.push_str(&text[copied..i]);
                    out.push_str("\\uFFFD");
                    i += 6;
                    copied = i;
                    changed = true;
                }
                // Any other escape: skip the backslash and the escaped
                // character (an escaped quote does not end the string).
                _ => i += 2,
            },
            _ => i += 1,
        }
    }
    changed.then(|| {
        out.push_str(&text[copied.min(text.len())..]);
        out
    })
}

/// Decodes one line (newline included) into a message for rmcp, or the
/// error reply JSON-RPC 2.0 asks for.
fn decode(raw: &[u8]) -> Decoded {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // RFC 8259 §8.1: a parser may ignore a leading byte order mark.
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Decoded::Nothing;
    }
    // Checked once here, so serde_json reads a `&str` and does not
    // validate each string again.
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(at = e.valid_up_to(), "refused a line that is not UTF-8");
            // With the id when it precedes the bad byte, as for a syntax
            // error: a client waits for the reply to its id.
            return Decoded::Reply(error_line(
                early_id(&line[..e.valid_up_to()]),
                PARSE_ERROR,
                &format!("Parse error: invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
    };
    let parsed = match serde_json::from_str::<RxJsonRpcMessage<RoleServer>>(text) {
        // A lone UTF-16 surrogate escape (`"\ud83d"`: text cut inside an
        // emoji, as JavaScript's JSON.stringify writes it) is valid JSON
        // grammar that serde_json refuses: read it as U+FFFD, as a lossy
        // UTF-8 decoder would, rather than fail the whole request.
        Err(e) if e.is_syntax() => match replace_lone_surrogates(text) {
            Some(fixed) => serde_json::from_str(&fixed)
                .inspect(|_| tracing::info!("read lone surrogate escapes as U+FFFD"))
                .map_err(|_| e),
            None => Err(e),
        },
        other => other,
    };
    let e = match parsed {
        Ok(m) => {
            return match misfit_params(&m) {
                Some(reply) => Decoded::Reply(reply),
                None => Decoded::Message(Box::new(m)),
            };
        }
        Err(e) => e,
    };
    if e.is_syntax() || e.is_eof() {
        tracing::info!(error = %e, "refused a line that is not JSON");
        // With the id when it can be read before the fault, so the client
        // can match the error to its request.
        return Decoded::Reply(error_line(
            early_id(line),
            PARSE_ERROR,
            &format!("Parse error: {e}"),
        ));
    }
    // Valid JSON, but not a message rmcp knows: find what can be answered.
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let Value::Object(obj) = &value else {
        let what = if value.is_array() {
            "batches are not supported; send one message per line"
        } else {
            "a JSON-RPC message is an object"
        };
        tracing::info!(what, "refused a line that is not a JSON-RPC message");
        return Decoded::Reply(error_line(
            Value::Null,
            INVALID_REQUEST,
            &format!("Invalid Request: {what}"),
        ));
    };
    // An id that is a number but no integer (1.5, or past 64 bits) is the
    // request's fault, not its params'; and it cannot be echoed exactly.
    // (Whole-valued floats are integers to rmcp, as to JSON Schema.)
    if obj.get("id").is_some_and(|v| {
        v.is_number()
            && v.as_i64().is_none()
            && !v
                .as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
    }) {
        tracing::info!("refused a request whose id is not an integer");
        return Decoded::Reply(error_line(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: id must be a string or an integer that fits 64 signed bits",
        ));
    }
    let version_ok = obj.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let method = obj.get("method").and_then(Value::as_str);
    let id = obj
        .get("id")
        .filter(|id| id.is_string() || id.is_number())
        .cloned();
    match (id, method) {
        // A notification: never answered, whatever is wrong with it.
        (None, Some(method)) if version_ok && !obj.contains_key("id") => {
            tracing::info!(method, error = %e, "ignored a notification that does not decode");
            Decoded::Nothing
        }
        // A well-formed request whose parameters do not fit its method.
        (Some(id), Some(method)) if version_ok => {
            tracing::info!(method, error = %e, "refused a request with invalid parameters");
            // serde's own message here ("unrecognized JSON-RPC message")
            // names no field; say what is wrong in the client's terms.
            let why = match obj.get("params") {
                Some(p) if !p.is_object() => "params must be a JSON object",
                _ => "the params do not match the method's schema",
            };
            Decoded::Reply(error_line(
                id,
                INVALID_PARAMS,
                &format!("Invalid params for {method}: {why}"),
            ))
        }
        (id, _) => {
            tracing::info!(error = %e, "refused an invalid JSON-RPC request");
            let why = if !version_ok {
                "\"jsonrpc\" must be \"2.0\"".to_string()
            } else if method.is_none() && obj.contains_key("method") {
                "\"method\" must be a string".to_string()
            } else {
                e.to_string()
            };
            Decoded::Reply(error_line(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                &format!("Invalid Request: {why}"),
            ))
        }
    }
}

/// Methods rmcp decodes into a typed request. One of these arriving as a
/// `CustomRequest` means its params did not fit (rmcp falls back to the
/// untyped variant), which rmcp would answer "method not found": wrong,
/// since the method exists. JSON-RPC calls that "Invalid params".
const TYPED_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/call",
    "tools/list",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/get",
    "prompts/list",
    "completion/complete",
    "logging/setLevel",
];

/// The -32602 reply to a known method whose params do not fit it.
fn misfit_params(m: &RxJsonRpcMessage<RoleServer>) -> Option<Vec<u8>> {
    let JsonRpcMessage::Request(r) = m else {
        return None;
    };
    let ClientRequest::CustomRequest(c) = &r.request else {
        return None;
    };
    if !TYPED_METHODS.contains(&c.method.as_str()) {
        return None;
    }
    // The reason, where it is worth finding: the tool call is what
    // clients (and models writing arguments) get wrong.
    let why = match (c.method.as_str(), &c.params) {
        ("tools/call", Some(p)) => serde_json::from_value::<CallToolRequestParams>(p.clone())
            .err()
            .map(|e| e.to_string()),
        _ => None,
    }
    .unwrap_or_else(|| "they do not match the method's schema".into());
    tracing::info!(
        method = c.method,
        why,
        "refused a request with invalid params"
    );
    let id = serde_json::to_value(&r.id).unwrap_or(Value::Null);
    Some(error_line(
        id,
        INVALID_PARAMS,
        &format!("Invalid params for {}: {why}", c.method),
    ))
}

/// A JSON-RPC error response, encoded as one line.
/// How much of an over-long line is searched for its id.
const ID_SCAN_BYTES: usize = 64 * 1024;

/// The top-level `"id"` of a JSON-RPC message, from its first bytes only
/// (the rest was never kept): a number or a string, if the key comes
/// before the cut. Clients usually write `jsonrpc`, `id`, `method` first.
fn early_id(head: &[u8]) -> Value {
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the next string at depth 1 is a key.
    let mut key_next = false;
    while i < head.len() {
        match head[i] {
            b'{' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = depth == 1,
            b'"' => {
                // The string's end, skipping escapes.
                let start = i + 1;
                let mut j = start;
                while j < head.len() && head[j] != b'"' {
                    j += if head[j] == b'\\' { 2 } else { 1 };
                }
                if j >= head.len() {
                    return Value::Null;
                }
                let is_id_key = key_next && &head[start..j] == b"id";
                key_next = false;
                i = j + 1;
                if is_id_key {
                    let rest = &head[i..];
                    let colon = rest.iter().position(|b| !b.is_ascii_whitespace());
                    if let Some(c) = colon.filter(|c| rest[*c] == b':') {
                        let value = serde_json::Deserializer::from_slice(&rest[c + 1..])
                            .into_iter::<Value>()
                            .next();
                        return match value {
                            Some(Ok(v @ (Value::Number(_) | Value::String(_)))) => v,
                            _ => Value::Null,
                        };
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Value::Null
}

fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message},
    });
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_id_reads_the_top_level_id_from_the_head() {
        let cut = |s: &str| early_id(s.as_bytes());
        assert_eq!(
            cut(r#"{"jsonrpc":"2.0","id":91,"method":"tools/call","params":{"x":"aaa"#),
            json!(91)
        );
        assert_eq!(
            cut(r#"{ "id" : "req-7" , "method":"x","params":"#),
            json!("req-7")
        );
        // A nested "id" is not the message's.
        assert_eq!(cut(r#"{"params":{"id":5,"x":"aaaa"#), Value::Null);
        assert_eq!(
            cut(r#"{"method":"x","params":{"id":5},"id":6,"x":"#),
            json!(6)
        );
        // A string value "id" is not a key; escapes inside strings are skipped.
        assert_eq!(cut(r#"{"a":"id","b":"q\"id\"","id":3}"#), json!(3));
        // Cut before the id, or an id of the wrong type: none.
        assert_eq!(
            cut(r#"{"jsonrpc":"2.0","method":"x","params":{"#),
            Value::Null
        );
        assert_eq!(cut(r#"{"id":{"a":1}}"#), Value::Null);
        assert_eq!(cut("{{{{{{"), Value::Null);
    }
    use serde_json::json;

    fn reply(d: Decoded) -> Value {
        match d {
            Decoded::Reply(line) => serde_json::from_slice(&line).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// A request reusing the id of one in flight is refused (rmcp would
    /// drop one of the two answers); once answered, or cancelled, the id
    /// is free again.
    #[test]
    fn ids_in_flight_are_not_reused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, server_in) = tokio::io::duplex(1 << 16);
            let (server_out, mut client_out) = tokio::io::duplex(1 << 16);
            let mut t = StdioTransport::new(server_in, server_out);
            let call = |id: &str| {
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/list\"}}\n"
                )
            };
            let mut client = client;
            use tokio::io::AsyncReadExt;
            // The session starts with `initialize` (anything else first is
            // answered or dropped by the transport itself).
            client
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\":\"0\"}}}\n")
                .await
                .unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
            client.write_all(call("903").as_bytes()).await.unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
            // The same id again, then another: the first is refused.
            client.write_all(call("903").as_bytes()).await.unwrap();
            client.write_all(call("\"903\"").as_bytes()).await.unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
            let mut buf = vec![0u8; 4096];
            let n = client_out.read(&mut buf).await.unwrap();
            let err: Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(err["id"], json!(903), "{err}");
            assert_eq!(err["error"]["code"], json!(INVALID_REQUEST), "{err}");
            // Answered: 903 may be used again.
            let answer: TxJsonRpcMessage<RoleServer> = serde_json::from_value(
                json!({"jsonrpc": "2.0", "id": 903, "result": {"tools": []}}),
            )
            .unwrap();
            t.send(answer).await.unwrap();
            client.write_all(call("903").as_bytes()).await.unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
            // Cancelled: still refused (its handler may yet end, and its
            // reply would cancel whichever request has the id by then).
            client
                .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":903}}\n")
                .await
                .unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Notification(_))));
            client.write_all(call("903").as_bytes()).await.unwrap();
            client.write_all(call("904").as_bytes()).await.unwrap();
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
            // After the answer sent above, the refusal.
            let mut text = String::new();
            while !text.contains("\"error\"") {
                let n = client_out.read(&mut buf).await.unwrap();
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let last = text.lines().last().unwrap_or_default();
            let err: Value = serde_json::from_str(last).unwrap();
            assert_eq!(err["id"], json!(903), "{text}");
            assert_eq!(err["error"]["code"], json!(INVALID_REQUEST), "{text}");
        });
    }

    #[test]
    fn good_messages_decode_and_blank_lines_are_skipped() {
        let d = decode(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\r\n");
        assert!(matches!(d, Decoded::Message(_)), "{d:?}");
        let d = decode(b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"ping\"}\n");
        assert!(matches!(d, Decoded::Message(_)), "{d:?}");
        assert!(matches!(decode(b" \t\r\n"), Decoded::Nothing));
    }

    #[test]
    fn lone_surrogate_escapes_become_replacement_characters() {
        let fix = |s: &str| replace_lone_surrogates(s);
        assert_eq!(
            fix(r#"{"p":"hi \ud83d there"}"#).as_deref(),
            Some(r#"{"p":"hi \uFFFD there"}"#)
        );
        // A trailing lone low surrogate, and one at the end of a string.
        assert_eq!(
            fix(r#"{"p":"\udc00x","q":"a\ud800"}"#).as_deref(),
            Some(r#"{"p":"\uFFFDx","q":"a\uFFFD"}"#)
        );
        // A proper pair, an escaped backslash and plain escapes: untouched.
        assert_eq!(fix(r#"{"p":"\ud83d\ude00 \\ud800 \" \n \u00e9"}"#), None);
        // And the line then decodes.
        let d = decode(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":{"prompt":"hi \ud83d"}}}"#,
        );
        assert!(matches!(d, Decoded::Message(_)), "{d:?}");
    }

    #[test]
    fn errors_follow_json_rpc() {
        assert_eq!(
            reply(decode(b"\xff\xfe{}\n")),
            json!({"jsonrpc": "2.0", "id": null,
                   "error": {"code": -32700, "message": "Parse error: invalid UTF-8 at byte 0"}})
        );
        assert_eq!(
            reply(decode(b"hello\n")),
            json!({"jsonrpc": "2.0", "id": null,
                   "error": {"code": -32700, "message": "Parse error: expected value at line 1 column 1"}})
        );
        let v = reply(decode(br#"{"jsonrpc":2,"id":7,"method":"tools/list"}"#));
        assert_eq!(v["id"], json!(7));
        assert_eq!(v["error"]["code"], json!(-32600));
        assert_eq!(
            v["error"]["message"],
            json!("Invalid Request: \"jsonrpc\" must be \"2.0\"")
        );
        let v = reply(decode(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#));
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], json!(-32600));
    }

    #[test]
    fn known_methods_with_misfit_params_are_invalid_params() {
        let v = reply(decode(
            br#"{"jsonrpc":"2.0","id":"p","method":"tools/call","params":{"name":5}}"#,
        ));
        assert_eq!(v["id"], json!("p"));
        assert_eq!(v["error"]["code"], json!(-32602));
        let v = reply(decode(
            br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":"oops"}"#,
        ));
        assert_eq!(v["id"], json!(8));
        assert_eq!(v["error"]["code"], json!(-32602));
        assert_eq!(
            v["error"]["message"],
            json!("Invalid params for tools/call: params must be a JSON object")
        );
        let d = decode(br#"{"jsonrpc":"2.0","id":3,"method":"x/custom","params":{"a":1}}"#);
        assert!(matches!(d, Decoded::Message(_)), "{d:?}");
    }

    /// An id that is no integer is the request's fault; a line broken after
    /// its id keeps it in the parse error.
    #[test]
    fn bad_ids_and_broken_lines_are_answered_by_what_is_readable() {
        let r = reply(decode(
            b"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}\n",
        ));
        assert_eq!(r["error"]["code"], json!(INVALID_REQUEST), "{r}");
        assert_eq!(r["id"], Value::Null);
        let r = reply(decode(
            b"{\"jsonrpc\":\"2.0\",\"id\":55,\"method\":\"tools/call\",\"params\":{\"x\":\"hi \\q there\"}}\n",
        ));
        assert_eq!(r["error"]["code"], json!(PARSE_ERROR), "{r}");
        assert_eq!(r["id"], json!(55), "{r}");
    }

    #[test]
    fn unknown_notifications_get_no_reply() {
        let d = decode(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":5}"#);
        assert!(matches!(d, Decoded::Nothing), "{d:?}");
    }
}
