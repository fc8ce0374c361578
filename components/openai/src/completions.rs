//! `POST /v1/completions`: OpenAI's legacy prompt completion, without a chat template.

use serde::Deserialize;
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::generate::{self, Generation, GenerationParams, Model, Piece};
use nnspin_guest::http::{self, EventStream, Framing};
use nnspin_guest::request::whole_number;
use nnspin_guest::sampling::TokenLogprob;

use crate::request::{SamplingFields, parse};
use crate::response::{self, Completion, Response, Usage};

const OBJECT: &str = "text_completion";
/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: u32 = 16;
/// Most log-probability alternatives the legacy endpoint gives.
const MAX_LOGPROBS: u32 = 5;
/// Most prompts × choices one request may ask for.
const MAX_SEQUENCES: usize = 16;

/// A legacy completion request; public for the fuzz targets.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    prompt: Value,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default, deserialize_with = "whole_number")]
    logprobs: Option<u32>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    best_of: Option<u32>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

impl CompletionRequest {
    /// 400 for anything malformed or out of range, naming the field; the prompt's shape is checked
    /// against the model when its tokens are read.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = parse(body)?;
        request.sampling.validate()?;
        if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(invalid(
                "suffix",
                "`suffix` (fill-in-the-middle) is not supported by this model",
            ));
        }
        if let Some(best_of) = request.best_of
            && best_of != request.sampling.choices()
        {
            return Err(invalid(
                "best_of",
                "`best_of` is not supported unless it equals `n`",
            ));
        }
        if let Some(n) = request.logprobs
            && n > MAX_LOGPROBS
        {
            return Err(invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {n}"),
            ));
        }
        if request.echo && request.logprobs.is_some() {
            return Err(invalid(
                "echo",
                "`echo` together with `logprobs` (prompt log-probabilities) is not supported",
            ));
        }
        Ok(request)
    }

    fn params(&self, index: u32) -> GenerationParams {
        let mut params = self
            .sampling
            .generation_params(index, None, DEFAULT_MAX_TOKENS);
        params.logprobs = self.logprobs.map(|n| n as usize);
        params
    }
}

/// A prompt as text (to echo) and tokens.
struct Prompt {
    text: String,
    tokens: Vec<u32>,
}

fn prompts(model: &Model, prompt: &Value) -> Result<Vec<Prompt>, ApiError> {
    let shape = || {
        invalid(
            "prompt",
            "`prompt` must be a string, a list of strings, a list of token ids or a list of such lists",
        )
    };
    let from_text = |text: &str| -> Result<Prompt, ApiError> {
        Ok(Prompt {
            text: text.to_string(),
            tokens: model.encode(text)?,
        })
    };
    let from_ids = |ids: &[Value]| -> Result<Prompt, ApiError> {
        let tokens = ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .filter(|&id| id < model.info.vocab_size)
                    .ok_or_else(|| {
                        invalid("prompt", format!("{id} is not a token id of this model"))
                    })
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

/// A validated request with its model and tokenized prompts.
struct Prepared {
    request: CompletionRequest,
    model: Model,
    prompts: Vec<Prompt>,
}

impl Prepared {
    fn new(body: &[u8]) -> Result<Self, ApiError> {
        let request = CompletionRequest::parse(body)?;
        let model = Model::open(&request.sampling.resolve_model()?)?;
        let prompts = prompts(&model, &request.prompt)?;
        if prompts.len() * request.sampling.choices() as usize > MAX_SEQUENCES {
            return Err(invalid(
                "prompt",
                format!("prompts × `n` may be at most {MAX_SEQUENCES}"),
            ));
        }
        for prompt in &prompts {
            generate::check(&model, &prompt.tokens, &request.params(0)).map_err(|e| ApiError {
                param: Some("prompt".into()),
                ..e
            })?;
        }
        Ok(Self {
            request,
            model,
            prompts,
        })
    }

    /// Every choice to generate: (its index, its prompt, its choice number within the prompt).
    fn sequences(&self) -> impl Iterator<Item = (u32, &Prompt, u32)> {
        let n = self.request.sampling.choices();
        self.prompts
            .iter()
            .enumerate()
            .flat_map(move |(p, prompt)| (0..n).map(move |j| (p as u32 * n + j, prompt, j)))
    }

    fn echoed<'p>(&self, prompt: &'p Prompt) -> &'p str {
        if self.request.echo { &prompt.text } else { "" }
    }

    fn logprobs(&self, logprobs: &[TokenLogprob], offset: usize) -> Value {
        match self.request.logprobs {
            Some(_) => response::legacy_logprobs(self.model.vocabulary(), logprobs, offset),
            None => Value::Null,
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompts.iter().map(|p| p.tokens.len() as u32).sum(),
            completion_tokens: 0,
        }
    }
}

fn choice(index: u32, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
    json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})
}

pub fn completions(request: IncomingRequest, out: ResponseOutparam) {
    let prepared = match http::read_body(request).and_then(|body| Prepared::new(&body)) {
        Ok(prepared) => prepared,
        Err(error) => return http::send_error(out, &error),
    };
    let completion = Completion::new("cmpl", &prepared.model.info.id);
    if prepared.request.sampling.stream {
        return stream(out, &prepared, &completion);
    }
    let mut usage = prepared.usage();
    let mut choices = Vec::new();
    for (index, prompt, j) in prepared.sequences() {
        let params = prepared.request.params(j);
        let (text, logprobs, outcome) =
            match generate::complete(&prepared.model, &prompt.tokens, &params) {
                Ok(done) => done,
                Err(error) => return http::send_error(out, &error),
            };
        usage.completion_tokens += outcome.completion_tokens;
        let echoed = prepared.echoed(prompt);
        choices.push(choice(
            index,
            &format!("{echoed}{text}"),
            prepared.logprobs(&logprobs, echoed.len()),
            Some(outcome.finish_reason.as_str()),
        ));
    }
    http::send_json(
        out,
        200,
        &Response::whole(&completion, OBJECT, choices, &usage),
    );
}

fn stream(out: ResponseOutparam, prepared: &Prepared, completion: &Completion) {
    let include_usage = prepared.request.sampling.include_usage();
    let params: Vec<GenerationParams> = (0..prepared.request.sampling.choices())
        .map(|j| prepared.request.params(j))
        .collect();
    let (_, first_prompt, _) = prepared.sequences().next().expect("a request has a prompt");
    // Opened before the response starts, so a model at capacity is a 503 (the others open in turn).
    let mut first = match Generation::open(&prepared.model, &first_prompt.tokens, &params[0]) {
        Ok(generation) => Some(generation),
        Err(error) => return http::send_error(out, &error),
    };
    let mut events = EventStream::start(out, Framing::ServerSentEvents);
    let mut usage = prepared.usage();
    for (index, prompt, j) in prepared.sequences() {
        let send = |events: &mut EventStream, choice: Value| {
            events.send_json(&Response::chunk(completion, OBJECT, choice, include_usage))
        };
        let echoed = prepared.echoed(prompt);
        if !echoed.is_empty() {
            send(&mut events, choice(index, echoed, Value::Null, None));
        }
        let mut offset = echoed.len();
        let generation = first.take().map_or_else(
            || Generation::open(&prepared.model, &prompt.tokens, &params[j as usize]),
            Ok,
        );
        let result = generation.and_then(|generation| {
            generation.run(|piece: Piece| {
                let logprobs = prepared.logprobs(piece.logprobs, offset);
                offset += piece.text.len();
                send(&mut events, choice(index, piece.text, logprobs, None))
            })
        });
        match result {
            Ok(outcome) => {
                usage.completion_tokens += outcome.completion_tokens;
                let finish = Some(outcome.finish_reason.as_str());
                send(&mut events, choice(index, "", Value::Null, finish));
            }
            Err(error) => return response::fail_stream(events, &error),
        }
    }
    response::end_stream(events, completion, OBJECT, include_usage.then_some(&usage));
}
