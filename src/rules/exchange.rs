//! What the engine sees of one request/response exchange, and the readers over it: server-sent
//! event splitting, query and form lookup, and recorded exchanges (the JSON shape used by
//! `classify` input lines and by rule test cases).

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// The parts of an exchange known once the upstream response head has arrived.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeHead<'a> {
    pub provider: &'a str,
    pub method: &'a Method,
    /// Upstream path plus `?query`, percent-encoded as sent on the wire.
    pub path_and_query: &'a str,
    pub request_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub response_headers: &'a HeaderMap,
}

impl<'a> ExchangeHead<'a> {
    pub fn path(&self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(path, _)| path)
    }

    pub fn query(&self) -> Option<&'a str> {
        self.path_and_query.split_once('?').map(|(_, query)| query)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub head: ExchangeHead<'a>,
    /// Captured prefix of the request body (may be empty).
    pub request_body: &'a [u8],
    pub response_body: ResponseBody<'a>,
    pub scope: Scope<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody<'a> {
    /// The whole body, at most `max_body_bytes`. For `text/event-stream` the engine splits the
    /// events itself.
    Complete(&'a [u8]),
    /// The `data` of one server-sent event, as the proxy feeds events while they stream.
    SseEvent(&'a [u8]),
    /// Larger than `max_body_bytes`, or not buffered: body matchers are false.
    Uninspected,
}

/// The session scope (free-form JSON object, e.g. `{"slack_channel": "C0123ABCD"}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope<'a> {
    /// Not loaded yet; rules that compare with it make `classify` answer `NeedsScope`.
    Unknown,
    /// Loaded; `None` when the session has no scope at all.
    Known(Option<&'a Value>),
}

/// Whether a response is a `text/event-stream` (parameters and case ignored).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    const EVENT_STREAM: &[u8] = b"text/event-stream";
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    // Asked of every response: compared as bytes, without splitting the parameters off.
    let mime = value.as_bytes().trim_ascii_start();
    mime.len() >= EVENT_STREAM.len()
        && mime[..EVENT_STREAM.len()].eq_ignore_ascii_case(EVENT_STREAM)
        && mime[EVENT_STREAM.len()..]
            .trim_ascii_start()
            .first()
            .is_none_or(|&next| next == b';')
}

// === Server-sent events ===

/// Splits a complete `text/event-stream` body into the `data` of each event.
///
/// Lines end in LF, CRLF or CR; a blank line ends an event; several `data:` lines join with
/// `\n`; one space after the colon is dropped; comments, other fields and events without
/// data are skipped (WHATWG event-stream rules). A final event without its blank line is still
/// yielded, since the body is known to be complete.
pub fn sse_events(body: &[u8]) -> std::vec::IntoIter<Cow<'_, [u8]>> {
    let mut events = Vec::new();
    parse_events(body, true, |event| events.push(event));
    events.into_iter()
}

/// Splits an event stream that arrives in chunks, with the same rules as [`sse_events`].
/// Events whose data is larger than `limit` are skipped whole, so one oversized event cannot
/// grow the buffer without bound.
#[derive(Debug)]
pub struct SseStream {
    /// Bytes after the last complete event.
    pending: Vec<u8>,
    limit: usize,
    /// An oversized event was dropped; skip up to its blank line.
    discarding: bool,
    /// What was consumed ended in CR: an LF starting the next chunk completes that CRLF.
    skip_lf: bool,
}

impl SseStream {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            limit,
            discarding: false,
            skip_lf: false,
        }
    }

    /// Feeds a chunk; calls `on_event` with the data of each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        let chunk = match chunk.split_first() {
            Some((b'\n', rest)) if self.skip_lf => rest,
            _ => chunk,
        };
        if chunk.is_empty() {
            return;
        }
        self.skip_lf = false;
        self.pending.extend_from_slice(chunk);
        if self.discarding {
            let mut offset = 0;
            while let Some((line, used)) = terminated_line(&self.pending[offset..]) {
                offset += used;
                if line.is_empty() {
                    self.discarding = false;
                    break;
                }
            }
            // Inside the dropped event nothing is kept, not even a partial line.
            let upto = if self.discarding {
                self.pending.len()
            } else {
                offset
            };
            self.consume(upto);
            if self.discarding {
                return;
            }
        }
        let limit = self.limit;
        let consumed = parse_events(&self.pending, false, |event| {
            if event.len() <= limit {
                on_event(&event);
            }
        });
        self.consume(consumed);
        if self.pending.len() > self.limit {
            let all = self.pending.len();
            self.consume(all);
            self.discarding = true;
        }
    }

    fn consume(&mut self, upto: usize) {
        if upto > 0 {
            // Only a CR that ends everything received may be the first half of a CRLF.
            self.skip_lf = upto == self.pending.len() && self.pending[upto - 1] == b'\r';
            self.pending.drain(..upto);
        }
    }
}

/// The next line of `rest` and the bytes it spans with its terminator (LF, CRLF or CR);
/// `None` while no terminator has arrived.
fn terminated_line(rest: &[u8]) -> Option<(&[u8], usize)> {
    let end = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
    let used = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
        end + 2
    } else {
        end + 1
    };
    Some((&rest[..end], used))
}

/// Calls `on_event` for each complete event of `input` and returns the bytes consumed: up to
/// the end of the last blank line, or everything `at_end` (when the input is the whole rest
/// of the stream, a final unterminated line and event count). Single-line events are borrowed.
fn parse_events<'a>(
    input: &'a [u8],
    at_end: bool,
    mut on_event: impl FnMut(Cow<'a, [u8]>),
) -> usize {
    let mut data: Option<Cow<'a, [u8]>> = None;
    let mut offset = 0;
    let mut consumed = 0;
    loop {
        let rest = &input[offset..];
        let line = match terminated_line(rest) {
            Some((line, used)) => {
                offset += used;
                line
            }
            None if at_end && !rest.is_empty() => {
                offset = input.len();
                rest
            }
            None => break,
        };
        if line.is_empty() {
            consumed = offset;
            if let Some(event) = data.take().filter(|event| !event.is_empty()) {
                on_event(event);
            }
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field != b"data" {
            continue;
        }
        data = Some(match data {
            None => Cow::Borrowed(value),
            Some(previous) => {
                let mut joined = previous.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    if at_end {
        if let Some(event) = data.filter(|event| !event.is_empty()) {
            on_event(event);
        }
        return input.len();
    }
    consumed
}

// === Request readers ===

/// All values of a query or form parameter, percent-decoded (`+` is a space).
pub(crate) fn form_values<'q>(
    encoded: &'q [u8],
    name: &'q str,
) -> impl Iterator<Item = Cow<'q, str>> + 'q {
    url::form_urlencoded::parse(encoded)
        .filter(move |(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The request body as the request matchers read it.
#[derive(Debug)]
pub(crate) enum RequestBodyView {
    Json(Value),
    Form,
    Opaque,
}

impl RequestBodyView {
    /// JSON when the content type says so, a form when it says so; otherwise sniffed.
    pub(crate) fn read(headers: &HeaderMap, body: &[u8]) -> RequestBodyView {
        if body.is_empty() {
            return RequestBodyView::Opaque;
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let parse_json =
            || serde_json::from_slice(body).map_or(RequestBodyView::Opaque, RequestBodyView::Json);
        if content_type.contains("json") {
            parse_json()
        } else if content_type.contains("x-www-form-urlencoded") {
            RequestBodyView::Form
        } else if content_type.is_empty() || content_type.starts_with("text/plain") {
            match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | Some(b'[') => parse_json(),
                Some(_) if body.contains(&b'=') => RequestBodyView::Form,
                _ => RequestBodyView::Opaque,
            }
        } else {
            RequestBodyView::Opaque
        }
    }
}

// === Recorded exchanges (classify input lines, test cases) ===

/// Header maps in JSON: name -> value, or name -> [values] for repeated headers.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(transparent)]
pub struct RecordedHeaders(BTreeMap<String, OneOrMany>);

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RecordedHeaders {
    fn to_header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        for (name, values) in &self.0 {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name `{name}`"))?;
            let values = match values {
                OneOrMany::One(value) => std::slice::from_ref(value),
                OneOrMany::Many(values) => values.as_slice(),
            };
            for value in values {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("invalid value for header `{name}`"))?;
                map.append(header.clone(), value);
            }
        }
        Ok(map)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// A full URL (`https://slack.com/api/chat.postMessage?x=1`) or just a path and query.
    pub url: String,
    #[serde(default)]
    pub headers: RecordedHeaders,
    #[serde(default)]
    pub body: RecordedBody,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: RecordedHeaders,
    #[serde(default)]
    pub body: RecordedBody,
}

/// A recorded body: a string is the body's bytes verbatim (non-JSON bodies, or JSON whose exact
/// bytes matter); any other value is a JSON body written as a structured value, sent as its
/// compact encoding (object members in sorted order). Absent or `null`: no body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct RecordedBody(pub Option<Value>);

impl RecordedBody {
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => text.as_bytes().to_vec(),
            Some(value) => serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

impl From<&str> for RecordedBody {
    fn from(text: &str) -> Self {
        RecordedBody(Some(Value::String(text.to_owned())))
    }
}

/// A recorded exchange turned into the owned parts an `Exchange` borrows.
#[derive(Debug, Clone)]
pub struct PreparedExchange {
    pub method: Method,
    pub host: Option<String>,
    pub path_and_query: String,
    pub request_headers: HeaderMap,
    pub request_body: Vec<u8>,
    pub status: StatusCode,
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
}

impl PreparedExchange {
    pub fn prepare(
        request: &RecordedRequest,
        response: &RecordedResponse,
    ) -> Result<PreparedExchange, String> {
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("invalid request method `{}`", request.method))?;
        let (host, path_and_query) = if request.url.starts_with('/') {
            (None, request.url.clone())
        } else {
            let url = url::Url::parse(&request.url)
                .map_err(|error| format!("invalid request url `{}`: {error}", request.url))?;
            let mut path_and_query = url.path().to_owned();
            if let Some(query) = url.query() {
                path_and_query.push('?');
                path_and_query.push_str(query);
            }
            (url.host_str().map(str::to_ascii_lowercase), path_and_query)
        };
        let status = StatusCode::from_u16(response.status)
            .map_err(|_| format!("invalid response status {}", response.status))?;
        Ok(PreparedExchange {
            method,
            host,
            path_and_query,
            request_headers: request
                .headers
                .to_header_map()
                .map_err(|error| format!("request: {error}"))?,
            request_body: request.body.to_bytes(),
            status,
            response_headers: response
                .headers
                .to_header_map()
                .map_err(|error| format!("response: {error}"))?,
            response_body: response.body.to_bytes(),
        })
    }

    pub fn head<'a>(&'a self, provider: &'a str) -> ExchangeHead<'a> {
        ExchangeHead {
            provider,
            method: &self.method,
            path_and_query: &self.path_and_query,
            request_headers: &self.request_headers,
            status: self.status,
            response_headers: &self.response_headers,
        }
    }

    /// The exchange as the proxy would present it: a body over `max_body_bytes` is uninspected.
    pub fn exchange<'a>(
        &'a self,
        provider: &'a str,
        scope: Scope<'a>,
        max_body_bytes: usize,
    ) -> Exchange<'a> {
        let response_body = if self.response_body.len() > max_body_bytes {
            ResponseBody::Uninspected
        } else {
            ResponseBody::Complete(&self.response_body)
        };
        Exchange {
            head: self.head(provider),
            request_body: &self.request_body,
            response_body,
            scope,
        }
    }
}

/// (host, provider) of the built-in routes, used when a recorded exchange names no provider
/// and no host map is given (MCP servers have no fixed host).
pub fn default_hosts() -> Vec<(String, String)> {
    crate::route::RouteTable::known().host_providers()
}

/// Picks the provider: the explicit one, else the first `hosts` entry for the URL host.
pub fn resolve_provider<'a>(
    explicit: Option<&'a str>,
    host: Option<&str>,
    hosts: &'a [(String, String)],
) -> Option<&'a str> {
    if let Some(provider) = explicit {
        return Some(provider);
    }
    let host = host?;
    hosts
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(host))
        .map(|(_, provider)| provider.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_told_by_their_media_type_alone() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, value.parse().unwrap());
            is_event_stream(&headers)
        };
        for yes in [
            "text/event-stream",
            "Text/Event-Stream",
            " text/event-stream ; charset=utf-8",
            "text/event-stream;charset=utf-8",
        ] {
            assert!(with(yes), "{yes:?}");
        }
        for no in [
            "application/json",
            "text/event-streams",
            "text/event-stream-x; a=b",
            "text/event",
            "",
        ] {
            assert!(!with(no), "{no:?}");
        }
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    fn events(body: &str) -> Vec<String> {
        sse_events(body.as_bytes())
            .map(|event| String::from_utf8(event.into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn sse_splits_events_on_blank_lines() {
        assert_eq!(
            events("event: message\ndata: {\"a\":1}\n\ndata: {\"b\":2}\n\n"),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
    }

    #[test]
    fn sse_joins_multi_line_data_and_handles_crlf_and_cr() {
        assert_eq!(
            events("data: {\"a\":\r\ndata:  1}\r\n\r\ndata:x\r\rdata: y"),
            vec!["{\"a\":\n 1}", "x", "y"]
        );
    }

    #[test]
    fn sse_skips_comments_other_fields_and_empty_events() {
        assert_eq!(
            events(": keep-alive\n\nid: 7\nretry: 10\n\ndata\n\ndata: z\nid: 8\n\n\n"),
            vec!["z"]
        );
    }

    fn streamed(chunks: &[&[u8]], limit: usize) -> Vec<String> {
        let mut stream = SseStream::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            stream.feed(chunk, |data| {
                out.push(String::from_utf8_lossy(data).into_owned())
            });
        }
        out
    }

    #[test]
    fn streamed_events_split_across_chunks_and_line_endings() {
        assert_eq!(streamed(&[b"data: {\"a\":1}\n\n"], 1024), vec!["{\"a\":1}"]);
        assert_eq!(
            streamed(&[b"data: a\r", b"\ndata: b\r\n\r\n"], 1024),
            vec!["a\nb"]
        );
        assert_eq!(
            streamed(&[b"event: x\nid: 1\ndata:x\r\rdata: y\n", b"\n"], 1024),
            vec!["x", "y"]
        );
        assert_eq!(
            streamed(&[b": comment\n\n", b"retry: 5\n\n"], 1024),
            Vec::<String>::new()
        );
        // "database" is another field; a data line with nothing in it makes no event.
        assert_eq!(
            streamed(&[b"database: 1\ndata\n\n"], 1024),
            Vec::<String>::new()
        );
        // An event is only complete at its blank line.
        assert_eq!(streamed(&[b"data: a\n"], 1024), Vec::<String>::new());
    }

    #[test]
    fn streamed_oversized_events_are_skipped_whole() {
        assert_eq!(
            streamed(&[b"data: 0123456789abcdef\n\ndata: ok\n\n"], 8),
            vec!["ok"]
        );
        // Larger than the limit before its blank line arrives.
        assert_eq!(
            streamed(
                &[b"data: 0123456789", b"abcdef more", b"\n\ndata: ok\n\n"],
                8
            ),
            vec!["ok"]
        );
    }

    #[test]
    fn sse_borrows_single_line_events() {
        let body = b"data: one\n\n";
        let first = sse_events(body).next().unwrap();
        assert!(matches!(first, Cow::Borrowed(b"one")));
    }

    #[test]
    fn query_and_form_values_are_decoded() {
        let values: Vec<_> = form_values(b"channel=C1&x=%2Fa+b&channel=C2", "channel").collect();
        assert_eq!(values, vec!["C1", "C2"]);
        let values: Vec<_> = form_values(b"x=%2Fa+b", "x").collect();
        assert_eq!(values, vec!["/a b"]);
    }

    #[test]
    fn request_body_kind_follows_content_type_then_sniffing() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            RequestBodyView::read(&headers, b"{\"channel\":\"C1\"}"),
            RequestBodyView::Json(_)
        ));
        assert!(matches!(
            RequestBodyView::read(&headers, b"channel=C1"),
            RequestBodyView::Form
        ));
        assert!(matches!(
            RequestBodyView::read(&headers, b""),
            RequestBodyView::Opaque
        ));
        headers.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(matches!(
            RequestBodyView::read(&headers, b"{\"a\":1}"),
            RequestBodyView::Form
        ));
        headers.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(matches!(
            RequestBodyView::read(&headers, b"not json"),
            RequestBodyView::Opaque
        ));
    }

    #[test]
    fn prepared_exchange_splits_url_and_limits_body() {
        let request: RecordedRequest = serde_json::from_value(serde_json::json!({
            "method": "POST", "url": "https://Slack.com/api/chat.postMessage?channel=C1",
            "headers": {"x-multi": ["a", "b"]}
        }))
        .unwrap();
        let response: RecordedResponse =
            serde_json::from_value(serde_json::json!({"status": 200, "body": "0123456789"}))
                .unwrap();
        let prepared = PreparedExchange::prepare(&request, &response).unwrap();
        assert_eq!(prepared.host.as_deref(), Some("slack.com"));
        assert_eq!(prepared.path_and_query, "/api/chat.postMessage?channel=C1");
        assert_eq!(
            prepared.request_headers.get_all("x-multi").iter().count(),
            2
        );
        let head = prepared.head("slack");
        assert_eq!(head.path(), "/api/chat.postMessage");
        assert_eq!(head.query(), Some("channel=C1"));
        let small = prepared.exchange("slack", Scope::Unknown, 10);
        assert_eq!(small.response_body, ResponseBody::Complete(b"0123456789"));
        let large = prepared.exchange("slack", Scope::Unknown, 9);
        assert_eq!(large.response_body, ResponseBody::Uninspected);
    }

    #[test]
    fn provider_comes_from_the_explicit_field_then_the_host() {
        let hosts = vec![("api.github.com".to_owned(), "github".to_owned())];
        assert_eq!(
            resolve_provider(Some("slack"), Some("api.github.com"), &hosts),
            Some("slack")
        );
        assert_eq!(
            resolve_provider(None, Some("API.github.com"), &hosts),
            Some("github")
        );
        assert_eq!(resolve_provider(None, Some("example.com"), &hosts), None);
        assert_eq!(resolve_provider(None, None, &hosts), None);
    }
}
