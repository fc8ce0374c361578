//! `POST /v1/chat/completions`: whole responses and SSE streams, with structured output, tool calls
//! and logprobs.

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::bindings::nnspin::llm::text::Message;
use nnspin_guest::generate::{self, Generation, GenerationParams, Model, Outcome, Piece};
use nnspin_guest::http::{self, EventStream, Framing};
use nnspin_guest::sampling::TokenLogprob;
use nnspin_guest::structured::Structure;
use nnspin_guest::{ApiError, chat};

use crate::request::{ChatRequest, openai_status};
use crate::response::{self, Completion, Response, Usage};
use crate::tools::{Call, Tools};

const OBJECT: &str = "chat.completion";
const CHUNK: &str = "chat.completion.chunk";

/// What a request asks for, checked without a model: the parsed request, the structure its output must
/// have, and its messages as template input. Every malformed request fails here; public for the fuzz
/// targets, which hold this layer to arbitrary bodies.
pub struct Validated {
    pub request: ChatRequest,
    pub structure: Option<Structure>,
    /// The model may answer with a tool call.
    pub tools: bool,
    pub messages: Vec<Message>,
}

impl Validated {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request = ChatRequest::parse(body)?;
        let format = request.response_structure()?;
        let tools = Tools::from_request(request.tools.as_ref(), request.tool_choice.as_ref())?;
        let structure = match &tools {
            Some(tools) => Some(tools.structure()?),
            None => format,
        };
        let mut messages = chat::template_messages(&request.messages).map_err(openai_status)?;
        if let Some(tools) = &tools {
            tools.describe(&mut messages);
        }
        Ok(Self {
            request,
            structure,
            tools: tools.is_some(),
            messages,
        })
    }
}

/// A validated request, ready to generate.
struct Prepared {
    request: ChatRequest,
    model: Model,
    prompt: Vec<u32>,
    structure: Option<Structure>,
    /// The model may answer with a tool call.
    tools: bool,
}

impl Prepared {
    /// Validates the request and tokenizes its prompt: every client error surfaces here, before any
    /// response is started.
    fn new(body: &[u8]) -> Result<Self, ApiError> {
        let Validated {
            request,
            structure,
            tools,
            messages,
        } = Validated::parse(body)?;
        let model = Model::open(&request.sampling.resolve_model()?)?;
        // A last assistant message is a prefill: the model continues it.
        let prompt = match messages.last() {
            Some(last) if last.role == "assistant" => model.continuation_prompt(&messages)?,
            _ => model.chat_prompt(&messages)?,
        };
        let prepared = Self {
            request,
            model,
            prompt,
            structure,
            tools,
        };
        generate::check(&prepared.model, &prepared.prompt, &prepared.params(0))?;
        Ok(prepared)
    }

    fn params(&self, index: u32) -> generate::GenerationParams {
        let mut params = self.request.generation_params(index);
        params.structure = self.structure.clone();
        params
    }

    fn logprobs(&self, logprobs: &[TokenLogprob]) -> Value {
        match self.request.logprobs {
            true => response::chat_logprobs(self.model.vocabulary(), logprobs),
            false => Value::Null,
        }
    }

    /// The model's output as a tool call, if it wrote one.
    fn call(&self, text: &str, outcome: &Outcome) -> Option<Call> {
        (self.tools && outcome.structured)
            .then(|| Call::parse(text))
            .flatten()
    }
}

pub fn chat_completions(request: IncomingRequest, out: ResponseOutparam) {
    let prepared = http::read_body(request).and_then(|body| Prepared::new(&body));
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return http::send_error(out, &error),
    };
    let completion = Completion::new("chatcmpl", &prepared.model.info.id);
    if prepared.request.sampling.stream {
        return stream(out, &prepared, &completion);
    }
    let mut usage = Usage {
        prompt_tokens: prepared.prompt.len() as u32,
        completion_tokens: 0,
    };
    let mut choices = Vec::new();
    for index in 0..prepared.request.sampling.choices() {
        let (text, logprobs, outcome) =
            match generate::complete(&prepared.model, &prepared.prompt, &prepared.params(index)) {
                Ok(done) => done,
                Err(error) => return http::send_error(out, &error),
            };
        usage.completion_tokens += outcome.completion_tokens;
        let (message, finish_reason) = match prepared.call(&text, &outcome) {
            Some(call) => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [call.to_json()]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": text, "refusal": null}),
                outcome.finish_reason.as_str(),
            ),
        };
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": prepared.logprobs(&logprobs),
            "finish_reason": finish_reason,
        }));
    }
    http::send_json(
        out,
        200,
        &Response::whole(&completion, OBJECT, choices, &usage),
    );
}

/// Streams every choice in turn; each chunk names its choice's `index`. A possible tool call (output
/// opening with `{` when tools are offered) is held back and sent whole once complete.
fn stream(out: ResponseOutparam, prepared: &Prepared, completion: &Completion) {
    let include_usage = prepared.request.sampling.include_usage();
    let params: Vec<GenerationParams> = (0..prepared.request.sampling.choices())
        .map(|index| prepared.params(index))
        .collect();
    // Opened before the response starts, so a model at capacity is a 503 (the others open in turn).
    let mut first = match Generation::open(&prepared.model, &prepared.prompt, &params[0]) {
        Ok(generation) => Some(generation),
        Err(error) => return http::send_error(out, &error),
    };
    let mut events = EventStream::start(out, Framing::ServerSentEvents);
    let mut usage = Usage {
        prompt_tokens: prepared.prompt.len() as u32,
        completion_tokens: 0,
    };
    for (index, params) in (0u32..).zip(&params) {
        let chunk = |delta: Value, logprobs: Value, finish: Option<&str>| {
            let choice = json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
            Response::chunk(completion, CHUNK, choice, include_usage)
        };
        events.send_json(&chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
            None,
        ));
        // Until the first visible text, an offered tool call may still come: hold text back.
        let mut deciding = prepared.tools;
        let mut calling = false;
        let mut held = String::new();
        let mut held_logprobs: Vec<TokenLogprob> = Vec::new();
        let generation = first.take().map_or_else(
            || Generation::open(&prepared.model, &prepared.prompt, params),
            Ok,
        );
        let result = generation.and_then(|generation| {
            generation.run(|piece: Piece| {
                if deciding || calling {
                    held.push_str(piece.text);
                    held_logprobs.extend_from_slice(piece.logprobs);
                    let visible = held.trim_start();
                    if visible.is_empty() || calling {
                        return true;
                    }
                    deciding = false;
                    calling = visible.starts_with('{');
                    if calling {
                        return true;
                    }
                    let text = std::mem::take(&mut held);
                    let logprobs = prepared.logprobs(&std::mem::take(&mut held_logprobs));
                    return events.send_json(&chunk(json!({ "content": text }), logprobs, None));
                }
                let logprobs = prepared.logprobs(piece.logprobs);
                events.send_json(&chunk(json!({ "content": piece.text }), logprobs, None))
            })
        });
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => return response::fail_stream(events, &error),
        };
        usage.completion_tokens += outcome.completion_tokens;
        let logprobs = prepared.logprobs(&held_logprobs);
        let finish = match prepared.call(&held, &outcome) {
            Some(call) => {
                let mut call = call.to_json();
                call["index"] = json!(0);
                events.send_json(&chunk(json!({ "tool_calls": [call] }), logprobs, None));
                "tool_calls"
            }
            None => {
                if !held.is_empty() {
                    events.send_json(&chunk(json!({ "content": held }), logprobs, None));
                }
                outcome.finish_reason.as_str()
            }
        };
        events.send_json(&chunk(json!({}), Value::Null, Some(finish)));
    }
    response::end_stream(events, completion, CHUNK, include_usage.then_some(&usage));
}
