//! The `wasi:http` side of a handler: reading the request, writing JSON and server-sent events.

use serde::Serialize;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{OutputStream, StreamError};

use crate::ApiError;

/// Largest request body a handler reads; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// `wasi:io` writes at most 4096 bytes per blocking call.
const WRITE_CHUNK: usize = 4096;

/// The parts of a request a router needs.
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The path below the component's wildcard route (the host's `spin-path-info`), so a component
    /// mounted at `/locallab/...` sees `/generate`; the whole path when the route is exact.
    pub route_path: String,
    /// The query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    pub fn of(request: &IncomingRequest) -> Self {
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other,
        };
        let full = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = match full.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (full, String::new()),
        };
        let headers = request.headers().entries();
        let route_path = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("spin-path-info"))
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .filter(|info| !info.is_empty())
            .unwrap_or_else(|| path.clone());
        Self {
            method,
            path,
            route_path,
            query,
            headers,
        }
    }

    /// Where the component is mounted: the path before [`Self::route_path`] (`/locallab`), empty at
    /// the root or on an exact route.
    pub fn mount(&self) -> &str {
        self.path
            .strip_suffix(self.route_path.as_str())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
pub fn read_body(request: IncomingRequest) -> Result<Vec<u8>, ApiError> {
    let body = request
        .consume()
        .map_err(|()| ApiError::internal("request body already consumed"))?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| ApiError::internal("request body stream unavailable"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(ApiError::invalid(format!(
                        "reading the request body: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
    }
    IncomingBody::finish(body);
    Ok(bytes)
}

fn start(
    out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &str)],
) -> (OutgoingBody, OutputStream) {
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&fields).expect("handler headers are valid");
    let response = OutgoingResponse::new(fields);
    response
        .set_status_code(status)
        .expect("handler status codes are valid");
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("a new body has a stream");
    (body, stream)
}

/// Writes all of `bytes`; false once the client has gone away.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(WRITE_CHUNK)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

fn finish(body: OutgoingBody, stream: OutputStream) {
    drop(stream);
    // The client may already be gone; there is no one left to tell.
    let _ = OutgoingBody::finish(body, None);
}

/// Sends a complete JSON response.
pub fn send_json(out: ResponseOutparam, status: u16, value: &impl Serialize) {
    send_json_with(out, status, value, &[]);
}

/// A component's OpenAPI document (embedded JSON) with `servers` naming `server_url`, so tools
/// resolve its paths against where spin.toml mounted the component.
pub fn openapi_document(document: &str, server_url: &str) -> serde_json::Value {
    let mut document: serde_json::Value =
        serde_json::from_str(document).expect("the embedded OpenAPI document is JSON");
    let url = if server_url.is_empty() {
        "/"
    } else {
        server_url
    };
    document["servers"] = serde_json::json!([{ "url": url }]);
    document
}

/// Sends an error as JSON with the status its API gives its kind, and the headers the kind calls for.
pub fn send_error(out: ResponseOutparam, status: u16, error: &ApiError) {
    send_json_with(out, status, &error.body(), &error.headers());
}

fn send_json_with(
    out: ResponseOutparam,
    status: u16,
    value: &impl Serialize,
    extra: &[(&str, &str)],
) {
    let bytes = serde_json::to_vec(value).expect("response values serialize");
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let (body, stream) = start(out, status, &headers);
    write_all(&stream, &bytes);
    finish(body, stream);
}

/// How a streamed response separates its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: each event is `data: …` and a blank line.
    ServerSentEvents,
    /// `application/x-ndjson`: each event is one line, for clients that parse every line as JSON.
    JsonLines,
}

/// A streamed response in progress.
pub struct EventStream {
    body: OutgoingBody,
    stream: OutputStream,
    framing: Framing,
    open: bool,
}

impl EventStream {
    pub fn start(out: ResponseOutparam, framing: Framing) -> Self {
        let content_type = match framing {
            Framing::ServerSentEvents => "text/event-stream",
            Framing::JsonLines => "application/x-ndjson",
        };
        let (body, stream) = start(
            out,
            200,
            &[
                ("content-type", content_type),
                ("cache-control", "no-cache"),
                ("x-accel-buffering", "no"),
            ],
        );
        Self {
            body,
            stream,
            framing,
            open: true,
        }
    }

    /// Sends one event; false once the client has disconnected.
    pub fn send(&mut self, data: &str) -> bool {
        self.write(None, data)
    }

    pub fn send_json(&mut self, value: &impl Serialize) -> bool {
        self.send(&serde_json::to_string(value).expect("event values serialize"))
    }

    /// Sends one named event (`event: NAME` before its JSON data), as OpenAI's Responses API streams;
    /// JSON lines carry the data only.
    pub fn send_named(&mut self, name: &str, value: &impl Serialize) -> bool {
        let data = serde_json::to_string(value).expect("event values serialize");
        self.write(Some(name), &data)
    }

    fn write(&mut self, name: Option<&str>, data: &str) -> bool {
        if self.open {
            let mut event = String::with_capacity(data.len() + 32);
            match self.framing {
                Framing::ServerSentEvents => {
                    if let Some(name) = name {
                        event.push_str("event: ");
                        event.push_str(name);
                        event.push('\n');
                    }
                    event.push_str("data: ");
                    event.push_str(data);
                    event.push_str("\n\n");
                }
                Framing::JsonLines => {
                    event.push_str(data);
                    event.push('\n');
                }
            }
            self.open = write_all(&self.stream, event.as_bytes());
        }
        self.open
    }

    pub fn finish(self) {
        finish(self.body, self.stream);
    }
}
