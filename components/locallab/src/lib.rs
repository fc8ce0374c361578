//! The LocalLab API as a WASI component: `/generate`, `/generate/batch`, `/chat`, `/models/*`,
//! `/system/info` and `/health`, over the shared generation loop of `nnspin-guest`.

// Natively nothing calls the handler; the wasm build keeps every lint.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

// Public (with an rlib beside the component) so `tests/fuzz` can drive the validation layer natively.
pub mod request;

use serde_json::{Value, json};

use nnspin_guest::bindings::nnspin::llm::models::{self, ModelError, ModelStatus};
use nnspin_guest::bindings::nnspin::llm::system;
use nnspin_guest::bindings::nnspin::llm::text::Message;
use nnspin_guest::generate::{self, Generation, GenerationParams, Model, Outcome};
use nnspin_guest::http::{self, EventStream, Framing, RequestHead};
use nnspin_guest::{ApiError, chat};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use request::{BatchRequest, ChatRequest, GenerateRequest, ModelRequest, Settings, parse};

struct LocalLab;

// Exported in the wasm build only: natively (unit tests, `tests/fuzz`) the crate is a library of its
// validation layer, and `wasi:http/…` export names are not valid native symbols.
#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(LocalLab);

impl wasip2::exports::http::incoming_handler::Guest for LocalLab {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = RequestHead::of(&request);
        let result = match (head.method.as_str(), head.route_path.trim_end_matches('/')) {
            ("GET", "/health") => Ok(Reply::Json(json!({ "status": "healthy" }))),
            ("GET", "/openapi.json") => {
                Ok(Reply::Json(http::openapi_document(OPENAPI, head.mount())))
            }
            ("GET", "/system/info") => Ok(Reply::Json(system_info())),
            ("GET", "/models/available") => Ok(Reply::Json(available_models())),
            ("GET", "/models/current") => Ok(Reply::Json(current_model())),
            ("POST", "/models/load") => http::read_body(request).and_then(|body| load_model(&body)),
            ("POST", "/models/unload") => {
                http::read_body(request).and_then(|body| unload_model(&body))
            }
            ("POST", "/generate") => http::read_body(request).and_then(|body| generate_text(&body)),
            ("POST", "/generate/batch") => {
                http::read_body(request).and_then(|body| generate_batch(&body))
            }
            ("POST", "/chat") => {
                http::read_body(request).and_then(|body| chat_completion(&body, &head))
            }
            (
                _,
                "/health" | "/openapi.json" | "/system/info" | "/models/available"
                | "/models/current",
            ) => Err(ApiError::method_not_allowed(
                &head.method,
                &head.path,
                "GET",
            )),
            (_, "/models/load" | "/models/unload" | "/generate" | "/generate/batch" | "/chat") => {
                Err(ApiError::method_not_allowed(
                    &head.method,
                    &head.path,
                    "POST",
                ))
            }
            _ => Err(ApiError::not_found(format!(
                "no route for {} {}",
                head.method, head.path
            ))),
        };
        match result {
            Ok(Reply::Json(value)) => http::send_json(out, 200, &value),
            Ok(Reply::Stream(job)) => job.run(out),
            Err(error) => http::send_error(out, &locallab_status(error)),
        }
    }
}

/// The OpenAPI 3.1 description of this API (paths relative to the mount), served at `/openapi.json`.
const OPENAPI: &str = include_str!("../openapi.json");

/// What a route answers once the request is validated.
enum Reply {
    Json(Value),
    /// Boxed: a job holds the model and its settings, far larger than a JSON value.
    Stream(Box<StreamJob>),
}

/// LocalLab reports input beyond the model's context as 413.
fn locallab_status(mut error: ApiError) -> ApiError {
    if error.code == Some("context_length_exceeded") {
        error.status = 413;
    }
    error
}

/// The model a request names, or the current one.
fn open_model(requested: Option<&str>) -> Result<Model, ApiError> {
    match requested.filter(|id| !id.is_empty()) {
        Some(id) => Model::open(id),
        None => {
            let current = models::current().ok_or_else(|| {
                ApiError::unavailable("no model is loaded: load one with POST /models/load")
            })?;
            Model::open(&current.id)
        }
    }
}

/// A single-turn prompt in the model's chat format, with an optional system prompt.
fn prompt_tokens(
    model: &Model,
    system_prompt: Option<&str>,
    prompt: &str,
) -> Result<Vec<u32>, ApiError> {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = system_prompt.filter(|s| !s.is_empty()) {
        messages.push(Message {
            role: "system".into(),
            content: system.into(),
        });
    }
    messages.push(Message {
        role: "user".into(),
        content: prompt.into(),
    });
    model.chat_prompt(&messages)
}

fn usage(outcome: &Outcome) -> Value {
    json!({
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    })
}

/// A validated generation whose response is streamed.
struct StreamJob {
    model: Model,
    prompt: Vec<u32>,
    params: GenerationParams,
    kind: StreamKind,
}

enum StreamKind {
    /// `/generate`: each event is the text itself, newlines escaped; `[DONE]` ends, `[ERROR] …` fails.
    Text,
    /// `/chat`: each event is a JSON object; JSON lines unless the client asked for server-sent events.
    Chat(Framing),
}

impl StreamJob {
    fn run(self, out: ResponseOutparam) {
        let framing = match self.kind {
            StreamKind::Text => Framing::ServerSentEvents,
            StreamKind::Chat(framing) => framing,
        };
        let model_id = self.model.info.id.clone();
        // Opened before the response starts, so a model at capacity is a 503.
        let generation = match Generation::open(&self.model, &self.prompt, &self.params) {
            Ok(generation) => generation,
            Err(error) => return http::send_error(out, &locallab_status(error)),
        };
        let mut events = EventStream::start(out, framing);
        let result = generation.run(|piece| {
            let piece = piece.text;
            match self.kind {
            StreamKind::Text => events.send(&piece.replace('\r', "\\r").replace('\n', "\\n")),
            StreamKind::Chat(_) => events.send_json(&json!({
                "model": model_id,
                "choices": [{ "index": 0, "delta": { "content": piece }, "finish_reason": null }],
            })),
        }
        });
        match (&self.kind, result) {
            (StreamKind::Text, Ok(_)) => {}
            (StreamKind::Text, Err(error)) => {
                events.send(&format!("[ERROR] {}", error.message));
            }
            (StreamKind::Chat(_), Ok(outcome)) => {
                events.send_json(&json!({
                    "model": model_id,
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": outcome.finish_reason.as_str() }],
                    "usage": usage(&outcome),
                }));
            }
            (StreamKind::Chat(_), Err(error)) => {
                events.send_json(&locallab_status(error).body());
            }
        }
        match framing {
            Framing::ServerSentEvents => events.send("[DONE]"),
            // A line that parses as JSON, as clients of the JSON-lines stream parse every line.
            Framing::JsonLines => events.send_json(&"[DONE]"),
        };
        events.finish();
    }
}

/// `application/json` or no preference gets JSON lines; `text/event-stream` gets server-sent events.
fn chat_framing(head: &RequestHead) -> Framing {
    let accept = head
        .header("accept")
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    if accept.contains("text/event-stream") {
        Framing::ServerSentEvents
    } else {
        Framing::JsonLines
    }
}

fn prepare(settings: &Settings) -> Result<(Model, GenerationParams), ApiError> {
    settings.validate()?;
    let model = open_model(settings.model_id.as_deref())?;
    Ok((model, settings.generation_params()))
}

fn generate_text(body: &[u8]) -> Result<Reply, ApiError> {
    let request: GenerateRequest = parse(body)?;
    let (model, params) = prepare(&request.settings)?;
    let prompt = prompt_tokens(&model, request.system_prompt.as_deref(), &request.prompt)?;
    if request.settings.stream {
        generate::check(&model, &prompt, &params)?;
        return Ok(Reply::Stream(Box::new(StreamJob {
            model,
            prompt,
            params,
            kind: StreamKind::Text,
        })));
    }
    let (text, _, outcome) = generate::complete(&model, &prompt, &params)?;
    Ok(Reply::Json(json!({
        "response": text,
        "text": text,
        "model": model.info.id,
        "finish_reason": outcome.finish_reason.as_str(),
        "usage": usage(&outcome),
    })))
}

fn chat_completion(body: &[u8], head: &RequestHead) -> Result<Reply, ApiError> {
    let request: ChatRequest = parse(body)?;
    let (model, params) = prepare(&request.settings)?;
    let prompt = model.chat_prompt(&chat::template_messages(&request.messages)?)?;
    if request.settings.stream {
        generate::check(&model, &prompt, &params)?;
        let kind = StreamKind::Chat(chat_framing(head));
        return Ok(Reply::Stream(Box::new(StreamJob {
            model,
            prompt,
            params,
            kind,
        })));
    }
    let (text, _, outcome) = generate::complete(&model, &prompt, &params)?;
    Ok(Reply::Json(json!({
        "model": model.info.id,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": outcome.finish_reason.as_str(),
        }],
        "usage": usage(&outcome),
    })))
}

fn generate_batch(body: &[u8]) -> Result<Reply, ApiError> {
    let request: BatchRequest = parse(body)?;
    if request.prompts.is_empty() || request.prompts.len() > request::MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "`prompts` must hold 1 to {} prompts",
            request::MAX_BATCH
        ))
        .with_param("prompts"));
    }
    let (model, params) = prepare(&request.settings)?;
    // Tokenize every prompt first, so a bad one fails the batch before any generation runs.
    let prompts = request
        .prompts
        .iter()
        .map(|prompt| prompt_tokens(&model, request.system_prompt.as_deref(), prompt))
        .collect::<Result<Vec<_>, _>>()?;
    let mut responses = Vec::with_capacity(prompts.len());
    let (mut prompt_total, mut completion_total) = (0, 0);
    for prompt in &prompts {
        let (text, _, outcome) = generate::complete(&model, prompt, &params)?;
        prompt_total += outcome.prompt_tokens;
        completion_total += outcome.completion_tokens;
        responses.push(text);
    }
    Ok(Reply::Json(json!({
        "responses": responses,
        "model": model.info.id,
        "usage": {
            "prompt_tokens": prompt_total,
            "completion_tokens": completion_total,
            "total_tokens": prompt_total + completion_total,
        },
    })))
}

fn model_json(status: &ModelStatus) -> Value {
    json!({
        "id": status.id,
        "model_id": status.id,
        "name": status.id,
        "loaded": status.loaded,
        "current": status.current,
        "context_length": status.info.as_ref().map(|i| i.context_length),
        "vocab_size": status.info.as_ref().map(|i| i.vocab_size),
        "backend": status.backend,
        "device": status.device,
    })
}

fn model_error(error: ModelError) -> ApiError {
    match error {
        ModelError::NotFound(message) => ApiError::not_found(message),
        ModelError::Denied(message) => ApiError::forbidden(message),
        ModelError::Failed(message) => ApiError::internal(message),
    }
}

fn available_models() -> Value {
    json!({ "models": models::available().iter().map(model_json).collect::<Vec<_>>() })
}

fn current_model() -> Value {
    match models::current() {
        Some(status) => model_json(&status),
        None => json!({ "model_id": null, "loaded": false }),
    }
}

fn load_model(body: &[u8]) -> Result<Reply, ApiError> {
    let request: ModelRequest = parse(body)?;
    let id = request
        .model_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::unprocessable("`model_id` is required").with_param("model_id"))?;
    let status = models::load(&id).map_err(model_error)?;
    Ok(Reply::Json(
        json!({ "status": "success", "model_id": id, "model": model_json(&status) }),
    ))
}

fn unload_model(body: &[u8]) -> Result<Reply, ApiError> {
    let request: ModelRequest = parse(body)?;
    let id = match request.model_id.filter(|id| !id.is_empty()) {
        Some(id) => id,
        None => models::current()
            .map(|s| s.id)
            .ok_or_else(|| ApiError::bad_request("no model is loaded"))?,
    };
    models::unload(&id).map_err(model_error)?;
    Ok(Reply::Json(
        json!({ "status": "Model unloaded successfully", "model_id": id }),
    ))
}

fn system_info() -> Value {
    let info = system::info();
    let current = models::current();
    json!({
        "host": { "name": info.host_name, "os": info.os, "arch": info.arch },
        "cpu": { "count": info.cpu_count },
        "memory": {
            "total_bytes": info.memory_total_bytes,
            "available_bytes": info.memory_available_bytes,
            "process_bytes": info.process_memory_bytes,
        },
        "backend": current.as_ref().map(|m| m.backend.clone()),
        "device": current.as_ref().map(|m| m.device.clone()),
        "model": current.as_ref().map(model_json),
        "uptime_seconds": info.uptime_seconds,
        "versions": info.versions.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<_, _>>(),
    })
}
