//! The OpenAI API as a WASI component: `/v1/models`, `/v1/chat/completions` (with SSE streaming) and
//! `/health`, over the shared generation loop of `nnspin-guest`.

mod request;
mod response;

use nnspin_guest::generate::{self, GenerationParams, Model};
use nnspin_guest::http::{self, EventStream, Framing, RequestHead};
use nnspin_guest::{ApiError, chat};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use request::ChatRequest;
use response::{ChatChunk, ChatCompletion, Completion};

struct OpenAi;

wasip2::http::proxy::export!(OpenAi);

impl wasip2::exports::http::incoming_handler::Guest for OpenAi {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = RequestHead::of(&request);
        match (head.method.as_str(), head.path.trim_end_matches('/')) {
            ("GET", "/health") => http::send_json(out, 200, &serde_json::json!({ "ok": true })),
            ("GET", "/v1/models") => list_models(out),
            ("GET", path) if path.starts_with(MODEL_PREFIX) => {
                get_model(&path[MODEL_PREFIX.len()..], out)
            }
            ("POST", "/v1/chat/completions") => chat_completions(request, out),
            (_, "/health" | "/v1/models" | "/v1/chat/completions") => {
                http::send_error(out, &ApiError::method_not_allowed(&head.method, &head.path))
            }
            _ => http::send_error(
                out,
                &ApiError::not_found(format!("no route for {} {}", head.method, head.path)),
            ),
        }
    }
}

const MODEL_PREFIX: &str = "/v1/models/";

fn list_models(out: ResponseOutparam) {
    let data: Vec<_> = generate::models()
        .iter()
        .map(response::model_object)
        .collect();
    http::send_json(
        out,
        200,
        &serde_json::json!({ "object": "list", "data": data }),
    );
}

fn get_model(id: &str, out: ResponseOutparam) {
    match generate::models().iter().find(|m| m.id == id) {
        Some(model) => http::send_json(out, 200, &response::model_object(model)),
        None => http::send_error(out, &ApiError::model_not_found(id)),
    }
}

fn chat_completions(request: IncomingRequest, out: ResponseOutparam) {
    let prepared = http::read_body(request).and_then(|body| prepare(&body));
    let (request, model, prompt) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return http::send_error(out, &error),
    };
    let params = request.generation_params();
    let completion = Completion::new(&model.info.id);
    if request.stream {
        stream(out, &request, &model, &prompt, &params, completion);
    } else {
        match generate::complete(&model, &prompt, &params) {
            Ok((content, outcome)) => http::send_json(
                out,
                200,
                &ChatCompletion::new(&completion, content, &outcome),
            ),
            Err(error) => http::send_error(out, &error),
        }
    }
}

/// Validates the request and tokenizes its prompt: every client error surfaces here, before any
/// response is started.
fn prepare(body: &[u8]) -> Result<(ChatRequest, Model, Vec<u32>), ApiError> {
    let request = ChatRequest::parse(body)?;
    let model = Model::open(&request.resolve_model()?)?;
    let messages = chat::template_messages(&request.messages)?;
    let prompt = model.chat_prompt(&messages)?;
    Ok((request, model, prompt))
}

fn stream(
    out: ResponseOutparam,
    request: &ChatRequest,
    model: &Model,
    prompt: &[u32],
    params: &GenerationParams,
    completion: Completion,
) {
    let include_usage = request.include_usage();
    let mut events = EventStream::start(out, Framing::ServerSentEvents);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        ChatChunk::new(&completion, delta, finish, include_usage)
    };
    events.send_json(&chunk(
        serde_json::json!({ "role": "assistant", "content": "" }),
        None,
    ));
    let result = generate::generate(model, prompt, params, |piece| {
        events.send_json(&chunk(serde_json::json!({ "content": piece }), None))
    });
    match result {
        Ok(outcome) => {
            events.send_json(&chunk(
                serde_json::json!({}),
                Some(outcome.finish_reason.as_str()),
            ));
            if include_usage {
                events.send_json(&ChatChunk::usage(&completion, &outcome));
            }
        }
        // The response has started: the error becomes the stream's last event.
        Err(error) => {
            events.send_json(&error.body());
        }
    }
    events.send("[DONE]");
    events.finish();
}
