//! `POST /v1/completions`: OpenAI's legacy prompt completion, without a chat template.

use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::generate::{Completed, GenerationRequest, Outcome, Piece};
use nnspin_guest::model::Model;
use nnspin_guest::sampling::TokenLogprob;

use crate::choices::{self, Endpoint, Sequence, StreamedChoice};
use crate::errors;
use crate::request::{self, CompletionRequest};
use crate::response::{self, Usage};

/// Most prompts × choices one request may ask for.
const MAX_SEQUENCES: usize = 16;

fn invalid_prompt(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).with_param("prompt")
}

/// A prompt as text (to echo) and tokens.
struct Prompt {
    text: String,
    tokens: Vec<u32>,
}

/// The request's prompts, read against the model's tokenizer and vocabulary.
fn prompts(model: &Model, prompt: &Value) -> Result<Vec<Prompt>, ApiError> {
    let shape = || {
        invalid_prompt(
            "`prompt` must be a string, a list of strings, a list of token ids or a list of such lists",
        )
    };
    // A text prompt is framed as the model reads a text (Gemma's BOS; nothing for SmolLM2), as vLLM's
    // completions add special tokens by default.
    let from_text = |text: &str| -> Result<Prompt, ApiError> {
        Ok(Prompt {
            text: text.to_string(),
            tokens: model.encode_framed(text)?,
        })
    };
    let from_ids = |ids: &[Value]| -> Result<Prompt, ApiError> {
        let tokens = ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .filter(|&id| id < model.info.vocab_size)
                    .ok_or_else(|| invalid_prompt(format!("{id} is not a token id of this model")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text = tokens
            .iter()
            .map(|&t| String::from_utf8_lossy(model.vocabulary().token(t)).into_owned())
            .collect();
        Ok(Prompt { text, tokens })
    };
    match prompt {
        Value::String(text) => Ok(vec![from_text(text)?]),
        Value::Array(items) if items.is_empty() => Err(shape()),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![from_ids(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => from_text(text),
                Value::Array(ids) => from_ids(ids),
                _ => Err(shape()),
            })
            .collect(),
        _ => Err(shape()),
    }
}

pub fn completions(request: IncomingRequest, out: ResponseOutparam) {
    let (request, model) = match request::read(request, CompletionRequest::parse, |r| &r.sampling) {
        Ok(prepared) => prepared,
        Err(error) => return errors::send(out, &error),
    };
    let generations = prompts(&model, &request.prompt).and_then(|prompts| {
        if prompts.len() * request.sampling.choices() as usize > MAX_SEQUENCES {
            return Err(invalid_prompt(format!(
                "prompts × `n` may be at most {MAX_SEQUENCES}"
            )));
        }
        prompts
            .into_iter()
            .map(|prompt| {
                let generation =
                    GenerationRequest::new(&model, prompt.tokens, request.generation_params())
                        .map_err(|e| e.with_param("prompt"))?;
                Ok((prompt.text, generation))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    });
    let generations = match generations {
        Ok(generations) => generations,
        Err(error) => return errors::send(out, &error),
    };
    let usage = Usage::new(
        generations
            .iter()
            .map(|(_, g)| g.prompt().len() as u32)
            .sum(),
    );
    let endpoint = Completions {
        request: &request,
        model: &model,
        generations: &generations,
    };
    choices::respond(out, &endpoint, &model, usage, &request.sampling);
}

struct Completions<'a, 'm> {
    request: &'a CompletionRequest,
    model: &'m Model,
    /// Each prompt's text (to echo) and generation.
    generations: &'a [(String, GenerationRequest<'m>)],
}

impl Completions<'_, '_> {
    /// What a choice starts with: its prompt when `echo` asks for it.
    fn echoed(&self, index: u32) -> &str {
        let n = self.request.sampling.choices();
        match self.request.echo {
            true => &self.generations[(index / n) as usize].0,
            false => "",
        }
    }

    fn logprobs(&self, logprobs: &[TokenLogprob], offset: usize) -> Value {
        match self.request.logprobs {
            Some(_) => response::legacy_logprobs(self.model.vocabulary(), logprobs, offset),
            None => Value::Null,
        }
    }
}

fn choice(index: u32, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
    json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})
}

impl Endpoint for Completions<'_, '_> {
    const ID_PREFIX: &'static str = "cmpl";
    const OBJECT: &'static str = "text_completion";
    const CHUNK_OBJECT: &'static str = "text_completion";
    /// Every prompt's choices in turn: choice `j` of prompt `p` is `p * n + j`.
    fn sequences(&self) -> Vec<Sequence<'_, '_>> {
        let n = self.request.sampling.choices();
        (0u32..)
            .zip(self.generations)
            .flat_map(|(p, (_, generation))| {
                (0..n).map(move |choice| Sequence {
                    index: p * n + choice,
                    generation,
                    choice,
                })
            })
            .collect()
    }

    fn choice(&self, index: u32, completed: Completed) -> Value {
        let echoed = self.echoed(index);
        choice(
            index,
            &format!("{echoed}{}", completed.text),
            self.logprobs(&completed.logprobs, echoed.len()),
            Some(completed.outcome.finish_reason.as_str()),
        )
    }

    fn streamed(&self, index: u32) -> Box<dyn StreamedChoice<'_> + '_> {
        Box::new(StreamedCompletion {
            completions: self,
            index,
            offset: 0,
        })
    }
}

struct StreamedCompletion<'s> {
    completions: &'s Completions<'s, 's>,
    index: u32,
    /// Where the next piece starts in the choice's text (the echoed prompt included).
    offset: usize,
}

impl StreamedChoice<'_> for StreamedCompletion<'_> {
    fn opening(&mut self) -> Vec<Value> {
        let echoed = self.completions.echoed(self.index);
        self.offset = echoed.len();
        match echoed.is_empty() {
            true => Vec::new(),
            false => vec![choice(self.index, echoed, Value::Null, None)],
        }
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Value> {
        let logprobs = self.completions.logprobs(piece.logprobs, self.offset);
        self.offset += piece.text.len();
        Some(choice(self.index, piece.text, logprobs, None))
    }

    fn closing(&mut self, outcome: &Outcome) -> Vec<Value> {
        let finish = Some(outcome.finish_reason.as_str());
        vec![choice(self.index, "", Value::Null, finish)]
    }
}
