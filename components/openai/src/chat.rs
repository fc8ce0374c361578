//! `POST /v1/chat/completions`: whole responses and SSE streams, with structured output, tool calls
//! and logprobs.

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::generate::{Completed, GenerationRequest, Outcome, Piece};
use nnspin_guest::sampling::TokenLogprob;

use crate::choices::{self, Endpoint, Sequence, StreamedChoice};
use crate::errors;
use crate::request::{self, ChatRequest};
use crate::response::{self, Usage};
use crate::tools::Call;

pub fn chat_completions(request: IncomingRequest, out: ResponseOutparam) {
    let (chat, model) = match request::read(request, ChatRequest::parse, |r| &r.sampling) {
        Ok(prepared) => prepared,
        Err(error) => return errors::send(out, &error),
    };
    // A last assistant message is a prefill: the model continues it.
    let prompt = match chat.messages.last() {
        Some(last) if last.role == "assistant" => model.continuation_prompt(&chat.messages),
        _ => model.chat_prompt(&chat.messages),
    };
    let generation =
        prompt.and_then(|prompt| GenerationRequest::new(&model, prompt, chat.generation_params()));
    let generation = match generation {
        Ok(generation) => generation,
        Err(error) => return errors::send(out, &error),
    };
    let usage = Usage {
        prompt_tokens: generation.prompt().len() as u32,
        completion_tokens: 0,
    };
    let endpoint = Chat {
        request: &chat,
        generation: &generation,
    };
    choices::respond(out, &endpoint, &model, usage, &chat.sampling);
}

struct Chat<'a, 'm> {
    request: &'a ChatRequest,
    generation: &'a GenerationRequest<'m>,
}

impl Chat<'_, '_> {
    fn logprobs(&self, logprobs: &[TokenLogprob]) -> Value {
        match self.request.logprobs {
            Some(_) => response::chat_logprobs(self.generation.model().vocabulary(), logprobs),
            None => Value::Null,
        }
    }

    /// The model's output as a tool call, if it wrote one.
    fn call(&self, text: &str, outcome: &Outcome) -> Option<Call> {
        (self.request.tools && outcome.structured)
            .then(|| Call::parse(text))
            .flatten()
    }
}

impl Endpoint for Chat<'_, '_> {
    const ID_PREFIX: &'static str = "chatcmpl";
    const OBJECT: &'static str = "chat.completion";
    const CHUNK_OBJECT: &'static str = "chat.completion.chunk";
    fn sequences(&self) -> Vec<Sequence<'_, '_>> {
        (0..self.request.sampling.choices())
            .map(|index| Sequence {
                index,
                generation: self.generation,
                choice: index,
            })
            .collect()
    }

    fn choice(&self, index: u32, completed: Completed) -> Value {
        let Completed {
            text,
            logprobs,
            outcome,
        } = completed;
        let (message, finish_reason) = match self.call(&text, &outcome) {
            Some(call) => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [call.to_json()]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": text, "refusal": null}),
                outcome.finish_reason.as_str(),
            ),
        };
        json!({
            "index": index,
            "message": message,
            "logprobs": self.logprobs(&logprobs),
            "finish_reason": finish_reason,
        })
    }

    fn streamed(&self, index: u32) -> Box<dyn StreamedChoice + '_> {
        Box::new(StreamedChat {
            chat: self,
            index,
            deciding: self.request.tools,
            calling: false,
            held: String::new(),
            held_logprobs: Vec::new(),
        })
    }
}

/// A streamed chat choice. A possible tool call (output opening with `{` when tools are offered) is held
/// back and sent whole once complete.
struct StreamedChat<'s> {
    chat: &'s Chat<'s, 's>,
    index: u32,
    /// Until the first visible text, an offered tool call may still come: text is held back.
    deciding: bool,
    calling: bool,
    held: String,
    held_logprobs: Vec<TokenLogprob>,
}

impl StreamedChat<'_> {
    fn delta(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        json!({"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
    }
}

impl StreamedChoice for StreamedChat<'_> {
    fn opening(&mut self) -> Vec<Value> {
        vec![self.delta(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
            None,
        )]
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Value> {
        if !self.deciding && !self.calling {
            let logprobs = self.chat.logprobs(piece.logprobs);
            return Some(self.delta(json!({ "content": piece.text }), logprobs, None));
        }
        self.held.push_str(piece.text);
        self.held_logprobs.extend_from_slice(piece.logprobs);
        let visible = self.held.trim_start();
        if visible.is_empty() || self.calling {
            return None;
        }
        self.deciding = false;
        self.calling = visible.starts_with('{');
        if self.calling {
            return None;
        }
        let text = std::mem::take(&mut self.held);
        let logprobs = self.chat.logprobs(&std::mem::take(&mut self.held_logprobs));
        Some(self.delta(json!({ "content": text }), logprobs, None))
    }

    fn closing(&mut self, outcome: &Outcome) -> Vec<Value> {
        let mut chunks = Vec::with_capacity(2);
        let logprobs = self.chat.logprobs(&self.held_logprobs);
        let finish = match self.chat.call(&self.held, outcome) {
            Some(call) => {
                let mut call = call.to_json();
                call["index"] = json!(0);
                chunks.push(self.delta(json!({ "tool_calls": [call] }), logprobs, None));
                "tool_calls"
            }
            None => {
                if !self.held.is_empty() {
                    chunks.push(self.delta(json!({ "content": self.held }), logprobs, None));
                }
                outcome.finish_reason.as_str()
            }
        };
        chunks.push(self.delta(json!({}), Value::Null, Some(finish)));
        chunks
    }
}
