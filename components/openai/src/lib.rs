//! The OpenAI API as a WASI component: `/v1/models`, `/v1/chat/completions` (with SSE streaming) and
//! `/health`, over the shared generation loop of `nnspin-guest`.

mod request;
mod response;

use nnspin_guest::generate::{self, Model};
use nnspin_guest::http::{self, EventStream, Framing, RequestHead};
use nnspin_guest::{ApiError, chat};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use request::ChatRequest;
use response::{ChatChunk, ChatCompletion, Completion, Usage};

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
    let completion = Completion::new(&model.info.id);
    if request.stream {
        return stream(out, &request, &model, &prompt, completion);
    }
    let choices: Result<Vec<_>, _> = (0..request.choices())
        .map(|index| generate::complete(&model, &prompt, &request.generation_params(index)))
        .collect();
    match choices {
        Ok(choices) => http::send_json(out, 200, &ChatCompletion::new(&completion, choices)),
        Err(error) => http::send_error(out, &error),
    }
}

/// Validates the request and tokenizes its prompt: every client error surfaces here, before any
/// response is started.
fn prepare(body: &[u8]) -> Result<(ChatRequest, Model, Vec<u32>), ApiError> {
    let request = ChatRequest::parse(body)?;
    let model = Model::open(&request.resolve_model()?)?;
    let messages = chat::template_messages(&request.messages)?;
    let prompt = model.chat_prompt(&messages)?;
    generate::check(&model, &prompt, &request.generation_params(0))?;
    Ok((request, model, prompt))
}

/// Streams every choice in turn; each chunk names its choice's `index`.
fn stream(
    out: ResponseOutparam,
    request: &ChatRequest,
    model: &Model,
    prompt: &[u32],
    completion: Completion,
) {
    let include_usage = request.include_usage();
    let mut events = EventStream::start(out, Framing::ServerSentEvents);
    let mut usage = Usage {
        prompt_tokens: prompt.len() as u32,
        completion_tokens: 0,
    };
    for index in 0..request.choices() {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            ChatChunk::new(&completion, index, delta, finish, include_usage)
        };
        events.send_json(&chunk(
            serde_json::json!({ "role": "assistant", "content": "" }),
            None,
        ));
        let params = request.generation_params(index);
        let result = generate::generate(model, prompt, &params, |piece| {
            events.send_json(&chunk(serde_json::json!({ "content": piece }), None))
        });
        match result {
            Ok(outcome) => {
                usage.completion_tokens += outcome.completion_tokens;
                events.send_json(&chunk(
                    serde_json::json!({}),
                    Some(outcome.finish_reason.as_str()),
                ));
            }
            // The response has started: the error becomes the stream's last event.
            Err(error) => {
                events.send_json(&error.body());
                events.send("[DONE]");
                return events.finish();
            }
        }
    }
    if include_usage {
        events.send_json(&ChatChunk::usage(&completion, &usage));
    }
    events.send("[DONE]");
    events.finish();
}
