//! `/generate`, `/generate/batch` and `/chat`: every request read, its model opened and its generation
//! checked before anything runs, then answered whole or streamed.

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::bindings::nnspin::llm::models;
use nnspin_guest::chat::text_message;
use nnspin_guest::generate::{Completed, GenerationRequest};
use nnspin_guest::http::{self, EventStream, Framing, RequestHead};
use nnspin_guest::model::Model;

use crate::errors;
use crate::request::{BatchRequest, ChatRequest, GenerateRequest, Settings};

/// The model a request names, or the current one.
fn open_model(requested: Option<&str>) -> Result<Model, ApiError> {
    match requested.filter(|id| !id.is_empty()) {
        Some(id) => Model::open_generator(id),
        None => {
            let current = models::current().ok_or_else(|| {
                ApiError::unavailable("no model is loaded: load one with POST /models/load")
            })?;
            Model::open_generator(&current.id)
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
        messages.push(text_message("system", system.into()));
    }
    messages.push(text_message("user", prompt.into()));
    model.chat_prompt(&messages, None)
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Reads a request body and opens the model its settings name.
fn read<R>(
    request: IncomingRequest,
    parse: fn(&[u8]) -> Result<R, ApiError>,
    settings: fn(&R) -> &Settings,
) -> Result<(R, Model), ApiError> {
    let request = parse(&http::read_body(request)?)?;
    let model = open_model(settings(&request).model_id.as_deref())?;
    Ok((request, model))
}

/// How a streamed response frames its events.
#[derive(Clone, Copy)]
enum StreamKind {
    /// `/generate`: each event is the text itself, newlines escaped; `[DONE]` ends, `[ERROR] …` fails.
    Text,
    /// `/chat`: each event is a JSON object; JSON lines unless the client asked for server-sent events.
    Chat(Framing),
}

/// Generates `prompt` as `settings` say and answers: whole, as `whole` shapes the text, or streamed.
fn respond(
    out: ResponseOutparam,
    model: &Model,
    prompt: Result<Vec<u32>, ApiError>,
    settings: &Settings,
    kind: StreamKind,
    whole: impl FnOnce(Completed) -> Value,
) {
    let generation = prompt
        .and_then(|prompt| GenerationRequest::new(model, prompt, settings.generation_params()));
    let generation = match generation {
        Ok(generation) => generation,
        Err(error) => return errors::send(out, &error),
    };
    if settings.stream {
        return stream(out, &generation, kind);
    }
    match generation.complete(0) {
        Ok(completed) => http::send_json(out, 200, &whole(completed)),
        Err(error) => errors::send(out, &error),
    }
}

fn stream(out: ResponseOutparam, generation: &GenerationRequest<'_>, kind: StreamKind) {
    let framing = match kind {
        StreamKind::Text => Framing::ServerSentEvents,
        StreamKind::Chat(framing) => framing,
    };
    let model_id = &generation.model().info.id;
    // Opened before the response starts, so a model at capacity is a 503.
    let opened = match generation.open(0) {
        Ok(opened) => opened,
        Err(error) => return errors::send(out, &error),
    };
    let mut events = EventStream::start(out, framing);
    let result = opened.run(|piece| match kind {
        StreamKind::Text => events.send(&piece.text.replace('\r', "\\r").replace('\n', "\\n")),
        StreamKind::Chat(_) => events.send_json(&json!({
            "model": model_id,
            "choices": [{ "index": 0, "delta": { "content": piece.text }, "finish_reason": null }],
        })),
    });
    match (kind, result) {
        (StreamKind::Text, Ok(_)) => {}
        (StreamKind::Text, Err(error)) => {
            events.send(&format!("[ERROR] {}", error.message));
        }
        (StreamKind::Chat(_), Ok(outcome)) => {
            events.send_json(&json!({
                "model": model_id,
                "choices": [{ "index": 0, "delta": {}, "finish_reason": outcome.finish_reason.as_str() }],
                "usage": usage(outcome.prompt_tokens, outcome.completion_tokens),
            }));
        }
        (StreamKind::Chat(_), Err(error)) => {
            events.send_json(&error.body());
        }
    }
    match framing {
        Framing::ServerSentEvents => events.send("[DONE]"),
        // A line that parses as JSON, as clients of the JSON-lines stream parse every line.
        Framing::JsonLines => events.send_json(&"[DONE]"),
    };
    events.finish();
}

pub fn generate(request: IncomingRequest, out: ResponseOutparam) {
    let (request, model) = match read(request, GenerateRequest::parse, |r| &r.settings) {
        Ok(read) => read,
        Err(error) => return errors::send(out, &error),
    };
    let prompt = prompt_tokens(&model, request.system_prompt.as_deref(), &request.prompt);
    respond(
        out,
        &model,
        prompt,
        &request.settings,
        StreamKind::Text,
        |Completed { text, outcome, .. }| {
            json!({
                "response": text,
                "text": text,
                "model": model.info.id,
                "finish_reason": outcome.finish_reason.as_str(),
                "usage": usage(outcome.prompt_tokens, outcome.completion_tokens),
            })
        },
    );
}

pub fn chat(request: IncomingRequest, head: &RequestHead, out: ResponseOutparam) {
    let (request, model) = match read(request, ChatRequest::parse, |r| &r.settings) {
        Ok(read) => read,
        Err(error) => return errors::send(out, &error),
    };
    let prompt = model.chat_prompt(&request.messages, None);
    let kind = StreamKind::Chat(chat_framing(head));
    respond(
        out,
        &model,
        prompt,
        &request.settings,
        kind,
        |Completed { text, outcome, .. }| {
            json!({
                "model": model.info.id,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "finish_reason": outcome.finish_reason.as_str(),
                }],
                "usage": usage(outcome.prompt_tokens, outcome.completion_tokens),
            })
        },
    );
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

pub fn batch(request: IncomingRequest, out: ResponseOutparam) {
    let answered =
        read(request, BatchRequest::parse, |r| &r.settings).and_then(|(request, model)| {
            // Every prompt is checked before any generation runs, so a bad one fails the batch at once.
            let generations = request
                .prompts
                .iter()
                .map(|prompt| {
                    let tokens = prompt_tokens(&model, request.system_prompt.as_deref(), prompt)?;
                    GenerationRequest::new(&model, tokens, request.settings.generation_params())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut responses = Vec::with_capacity(generations.len());
            let (mut prompt_total, mut completion_total) = (0, 0);
            for generation in &generations {
                let Completed { text, outcome, .. } = generation.complete(0)?;
                prompt_total += outcome.prompt_tokens;
                completion_total += outcome.completion_tokens;
                responses.push(text);
            }
            Ok(json!({
                "responses": responses,
                "model": model.info.id,
                "usage": usage(prompt_total, completion_total),
            }))
        });
    match answered {
        Ok(value) => http::send_json(out, 200, &value),
        Err(error) => errors::send(out, &error),
    }
}
