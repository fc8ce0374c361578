//! `POST /v1/chat/completions`: whole responses and SSE streams, with structured output, tool calls
//! and logprobs.

use std::borrow::Cow;

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::generate::{Completed, GenerationRequest, Outcome, Piece};
use nnspin_guest::model::Model;
use nnspin_guest::sampling::TokenLogprob;

use crate::choices::{self, Endpoint, Sequence, StreamedChoice};
use crate::errors;
use crate::request::{self, ChatRequest};
use crate::response::{self, Usage};
use crate::tools::{Call, CallFormat};

pub fn chat_completions(request: IncomingRequest, out: ResponseOutparam) {
    let (chat, model) = match request::read(request, ChatRequest::parse, |r| &r.sampling) {
        Ok(prepared) => prepared,
        Err(error) => return errors::send(out, &error),
    };
    let generations = match Generations::new(&chat, &model) {
        Ok(generations) => generations,
        Err(error) => return errors::send(out, &error),
    };
    let usage = Usage::new(generations.main.prompt().len() as u32);
    choices::respond(out, &generations.chat(&chat), &model, usage, &chat.sampling);
}

/// What a chat request generates from: its prompt, and (under `auto` once calls have results) the
/// answer in text written apart from the calls; the calls in the model's format.
pub struct Generations<'m> {
    pub main: GenerationRequest<'m>,
    pub answer: Option<GenerationRequest<'m>>,
    format: CallFormat,
}

impl<'m> Generations<'m> {
    pub fn new(chat: &ChatRequest, model: &'m Model) -> Result<Self, ApiError> {
        let format = match chat.tools {
            Some(_) => CallFormat::of(model).tokenized(model)?,
            None => CallFormat::of(model),
        };
        let prompt = chat.prompt(&format)?;
        let tokens = model.conversation_prompt(&prompt.messages, prompt.tools.as_deref())?;
        let main = GenerationRequest::new(model, tokens, chat.generation_params(prompt.structure))?;
        // Its prompt is no longer than the main one, so it fits wherever that does.
        let answer = prompt.answer_messages.as_ref().map(|messages| {
            GenerationRequest::new(
                model,
                model.chat_prompt(messages, None)?,
                chat.answer_params(),
            )
        });
        Ok(Self {
            main,
            answer: answer.transpose()?,
            format,
        })
    }

    /// How the outputs of these generations read, for `request`.
    pub fn chat<'a>(&'a self, request: &'a ChatRequest) -> Chat<'a, 'm> {
        Chat {
            request,
            generation: &self.main,
            answer: self.answer.as_ref(),
            format: &self.format,
        }
    }
}

/// A chat request's generations, and how their outputs read: as text, or as tool calls.
pub struct Chat<'a, 'm> {
    pub request: &'a ChatRequest,
    pub generation: &'a GenerationRequest<'m>,
    /// The answer in text, generated when the model declines to call or only repeats calls the
    /// conversation has already answered.
    pub answer: Option<&'a GenerationRequest<'m>>,
    /// How the model writes calls.
    pub format: &'a CallFormat,
}

impl<'a, 'm> Chat<'a, 'm> {
    fn logprobs(&self, logprobs: &[TokenLogprob]) -> Value {
        match self.request.logprobs {
            Some(_) => response::chat_logprobs(self.generation.model().vocabulary(), logprobs),
            None => Value::Null,
        }
    }

    /// The model's output as tool calls, if it wrote any, less those the conversation has already
    /// answered (when it can answer in text instead).
    pub fn calls(&self, text: &str, outcome: &Outcome) -> Option<Vec<Call>> {
        let mut calls = (self.request.tools.is_some() && outcome.structured)
            .then(|| Call::parse(text, self.format))
            .flatten()?;
        if self.answer.is_some() {
            calls.retain(|call| !call.repeats(self.request.answered()));
        }
        Some(calls)
    }

    /// The answer to generate instead of this output: when the model declined to call, or made only
    /// calls already answered.
    pub fn replacement(&self, text: &str, outcome: &Outcome) -> Option<&'a GenerationRequest<'m>> {
        let only_repeats = self
            .calls(text, outcome)
            .is_some_and(|calls| calls.is_empty());
        self.answer.filter(|_| outcome.declined || only_repeats)
    }

    /// What holds a streamed output back while it may be a call.
    pub fn hold(&self) -> CallHold {
        CallHold::new(
            self.request
                .tools
                .as_ref()
                .map(|_| self.format.opening().to_string()),
        )
    }

    /// The `tool_calls` of a message, each with its `index` when streamed.
    fn tool_calls(calls: &[Call], indexed: bool) -> Value {
        let calls = calls.iter().enumerate().map(|(i, call)| {
            let mut call = call.to_json();
            if indexed {
                call["index"] = json!(i);
            }
            call
        });
        Value::Array(calls.collect())
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
        let (message, finish_reason) = match self.calls(&text, &outcome) {
            Some(calls) if !calls.is_empty() => (
                json!({"role": "assistant", "content": null, "refusal": null,
                       "tool_calls": Self::tool_calls(&calls, false)}),
                "tool_calls",
            ),
            _ => (
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

    fn instead(&self, completed: &Completed) -> Option<&GenerationRequest<'_>> {
        self.replacement(&completed.text, &completed.outcome)
    }

    fn streamed(&self, index: u32) -> Box<dyn StreamedChoice<'_> + '_> {
        Box::new(StreamedChat {
            chat: self,
            index,
            hold: self.hold(),
            held_logprobs: Vec::new(),
        })
    }
}

/// A streamed output that may be a tool call, held back: until its first visible text (a call may still
/// come), and wholly once it opens as a call does (a call is sent whole once complete).
pub struct CallHold {
    /// What a call begins with (`{`, or a template's `<tool_call>`); `None` when calls are not offered.
    opening: Option<String>,
    deciding: bool,
    calling: bool,
    /// What is held back.
    pub held: String,
}

impl CallHold {
    pub fn new(opening: Option<String>) -> Self {
        Self {
            deciding: opening.is_some(),
            opening,
            calling: false,
            held: String::new(),
        }
    }

    /// The text to send now: the piece itself, or what was held with it; `None` holds it back.
    pub fn pass<'t>(&mut self, text: &'t str) -> Option<Cow<'t, str>> {
        if !self.deciding && !self.calling {
            return Some(Cow::Borrowed(text));
        }
        self.held.push_str(text);
        let visible = self.held.trim_start();
        if visible.is_empty() || self.calling {
            return None;
        }
        let opening = self.opening.as_deref().unwrap_or("{");
        // A template's opening may come in several pieces: held while the text could still be one.
        if opening != "{" && opening.starts_with(visible) && visible.len() < opening.len() {
            return None;
        }
        self.deciding = false;
        // Bare JSON calls may also be an array of calls.
        self.calling = match opening {
            "{" => visible.starts_with(['{', '[']),
            _ => visible.starts_with(opening),
        };
        match self.calling {
            true => None,
            false => Some(Cow::Owned(std::mem::take(&mut self.held))),
        }
    }

    /// Drops what was held: the answer generated in its place streams as text from its first piece.
    pub fn release(&mut self) {
        self.held.clear();
        (self.deciding, self.calling) = (false, false);
    }
}

/// A streamed chat choice.
struct StreamedChat<'s> {
    chat: &'s Chat<'s, 's>,
    index: u32,
    hold: CallHold,
    /// The log-probabilities of the text held back.
    held_logprobs: Vec<TokenLogprob>,
}

impl StreamedChat<'_> {
    fn delta(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        json!({"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
    }
}

impl<'s> StreamedChoice<'s> for StreamedChat<'s> {
    fn opening(&mut self) -> Vec<Value> {
        vec![self.delta(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
            None,
        )]
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Value> {
        self.held_logprobs.extend_from_slice(piece.logprobs);
        let text = self.hold.pass(piece.text)?;
        let logprobs = self.chat.logprobs(&std::mem::take(&mut self.held_logprobs));
        Some(self.delta(json!({ "content": text }), logprobs, None))
    }

    fn instead(&mut self, outcome: &Outcome) -> Option<&'s GenerationRequest<'s>> {
        let answer = self.chat.replacement(&self.hold.held, outcome)?;
        self.hold.release();
        self.held_logprobs.clear();
        Some(answer)
    }

    fn closing(&mut self, outcome: &Outcome) -> Vec<Value> {
        let mut chunks = Vec::with_capacity(2);
        let logprobs = self.chat.logprobs(&self.held_logprobs);
        let held = &self.hold.held;
        let finish = match self.chat.calls(held, outcome) {
            Some(calls) if !calls.is_empty() => {
                let calls = Chat::tool_calls(&calls, true);
                chunks.push(self.delta(json!({ "tool_calls": calls }), logprobs, None));
                "tool_calls"
            }
            _ => {
                if !held.is_empty() {
                    chunks.push(self.delta(json!({ "content": held }), logprobs, None));
                }
                outcome.finish_reason.as_str()
            }
        };
        chunks.push(self.delta(json!({}), Value::Null, Some(finish)));
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(hold: &mut CallHold, pieces: &[&str]) -> Vec<Option<String>> {
        pieces
            .iter()
            .map(|p| hold.pass(p).map(|t| t.into_owned()))
            .collect()
    }

    #[test]
    fn text_that_may_open_a_call_is_held_until_it_cannot() {
        let template = || CallHold::new(Some("<tool_call>\n".into()));
        let mut calling = template();
        assert_eq!(
            passed(&mut calling, &["<tool", "_call>", "\n{"]),
            [None, None, None]
        );
        assert_eq!(calling.held, "<tool_call>\n{");
        let mut answering = template();
        assert_eq!(
            passed(&mut answering, &[" ", "<b", ">x"]),
            [None, Some(" <b".into()), Some(">x".into())]
        );
        let mut bare = CallHold::new(Some("{".into()));
        assert_eq!(passed(&mut bare, &["[", "{"]), [None, None]);
        let mut none = CallHold::new(None);
        assert_eq!(passed(&mut none, &["{"]), [Some("{".into())]);
    }
}
