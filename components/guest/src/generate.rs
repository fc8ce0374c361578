//! The generation loop over `wasi:nn`: prefill the prompt, then one `compute` per new token.
//!
//! The execution context keeps the KV cache in the host, so each step sends only the new tokens with
//! their positions and receives the last position's logits.

use crate::ApiError;
use crate::bindings::nnspin::llm::text::{self, Message, ModelInfo, TextError, Tokenizer};
use crate::bindings::wasi::nn::errors::{Error as NnError, ErrorCode};
use crate::bindings::wasi::nn::graph::{self, Graph};
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::{Tensor, TensorType};
use crate::sampling::{self, Penalties, PenaltyParams, Sampler, SamplingParams, TokenLogprob};
use crate::stop::StopFilter;
use crate::structured::{Constraint, Structure};
use crate::vocabulary::Vocabulary;
use std::cell::OnceCell;

/// A model a component may use: its graph and its tokenizer.
pub struct Model {
    pub info: ModelInfo,
    tokenizer: Tokenizer,
    graph: Graph,
    vocabulary: OnceCell<Vocabulary>,
}

/// The models this component may use, the first being the default.
pub fn models() -> Vec<ModelInfo> {
    text::models()
}

impl Model {
    pub fn open(name: &str) -> Result<Self, ApiError> {
        let tokenizer = Tokenizer::open(name).map_err(|e| match e {
            TextError::NotFound(_) => ApiError::model_not_found(name),
            TextError::InvalidInput(message) => ApiError::internal(message),
        })?;
        let graph = graph::load_by_name(name).map_err(|e| nn_error(&e))?;
        Ok(Self {
            info: tokenizer.info(),
            tokenizer,
            graph,
            vocabulary: OnceCell::new(),
        })
    }

    /// Each token's bytes, fetched from the host on first use.
    pub fn vocabulary(&self) -> &Vocabulary {
        self.vocabulary
            .get_or_init(|| self.tokenizer.vocabulary().into())
    }

    /// Renders the chat template so that the model continues the last message, an assistant turn the
    /// client started (a prefill), instead of opening a new turn.
    pub fn continuation_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, ApiError> {
        let prompt = self
            .tokenizer
            .apply_chat_template(messages, false)
            .map_err(text_error)?;
        let last = messages.last().map_or("", |m| m.content.as_str());
        let end = match prompt.rfind(last) {
            Some(at) if !last.is_empty() => at + last.len(),
            _ => prompt.len(),
        };
        self.encode(&prompt[..end])
    }

    /// Renders the chat template and tokenizes the prompt.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, ApiError> {
        let prompt = self
            .tokenizer
            .apply_chat_template(messages, true)
            .map_err(text_error)?;
        self.encode(&prompt)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer.encode(text).map_err(text_error)
    }
}

fn text_error(e: TextError) -> ApiError {
    match e {
        TextError::NotFound(message) => ApiError::not_found(message),
        TextError::InvalidInput(message) => ApiError::bad_request(message).with_param("messages"),
    }
}

/// The API error for a wasi-nn failure.
pub fn nn_error(e: &NnError) -> ApiError {
    match e.code() {
        ErrorCode::NotFound => ApiError::not_found(e.data()),
        ErrorCode::InvalidArgument => ApiError::bad_request(e.data()),
        // The host reports a full queue as a timeout (wasi-nn has no "busy").
        ErrorCode::Timeout => ApiError::busy(e.data()),
        _ => ApiError::internal(format!("inference failed: {}", e.data())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop | Self::Cancelled => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_tokens: u32,
    /// The `max_tokens` the client asked for, before the cap: when prompt and it exceed the context the
    /// request is refused rather than given a shorter completion.
    pub requested_max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub penalties: PenaltyParams,
    /// Added to the logits of these tokens before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Generation ends where one of these appears; it is not part of the output.
    pub stop: Vec<String>,
    /// Stop generating (finish reason `length`) once this much time has passed.
    pub time_limit: Option<std::time::Duration>,
    /// Output held to a JSON schema by constrained decoding.
    pub structure: Option<Structure>,
    /// Report each token's log-probability and this many alternatives (0-20).
    pub logprobs: Option<usize>,
}

/// Largest number of new tokens a request may ask for, unless `NNSPIN_MAX_TOKENS_CAP` (a component's
/// environment in spin.toml) says otherwise.
pub const DEFAULT_MAX_TOKENS_CAP: u32 = 1024;

/// The number of tokens to generate: what the request asked for, or `default`, within the cap.
pub fn max_new_tokens(requested: Option<u32>, default: u32) -> u32 {
    let cap = std::env::var("NNSPIN_MAX_TOKENS_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_TOKENS_CAP);
    requested.unwrap_or(default).min(cap)
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    /// The output is JSON held to the requested structure.
    pub structured: bool,
}

/// Text that is ready to send, with the log-probabilities of the tokens generated since the last piece
/// (when asked for).
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

/// Checks a generation against the model before anything runs (so a streaming API can still answer
/// with an error status); returns how many tokens may be generated.
pub fn check(model: &Model, prompt: &[u32], params: &GenerationParams) -> Result<usize, ApiError> {
    let context = model.info.context_length as usize;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    if prompt.len() >= context {
        return Err(ApiError::context_length_exceeded(format!(
            "the prompt has {} tokens but the model's context length is {context} tokens",
            prompt.len()
        )));
    }
    if let Some(requested) = params.requested_max_tokens
        && prompt.len() + requested as usize > context
    {
        return Err(ApiError::context_length_exceeded(format!(
            "the model's context length is {context} tokens, but {} were requested: {} in the prompt \
             and {requested} for the completion",
            prompt.len() + requested as usize,
            prompt.len(),
        )));
    }
    let vocab = model.info.vocab_size;
    if let Some(&(token, _)) = params.logit_bias.iter().find(|(token, _)| *token >= vocab) {
        return Err(ApiError::bad_request(format!(
            "logit_bias names token {token}, beyond the vocabulary"
        ))
        .with_param("logit_bias"));
    }
    Ok((params.max_tokens as usize).min(context - prompt.len()))
}

/// Generates a completion of `prompt`, handing each piece of text to `on_piece` as soon as it is
/// complete; `on_piece` returns false to stop (the client disconnected).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerationParams,
    on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<Outcome, ApiError> {
    Generation::open(model, prompt, params)?.run(on_piece)
}

/// A checked generation holding its execution context. Opening the context takes the request's place
/// in the model's queue, or is refused (503, the queue is full): a streaming API opens it before its
/// response starts, so overload is a status, not an error event inside a 200 stream.
pub struct Generation<'a> {
    model: &'a Model,
    prompt: &'a [u32],
    params: &'a GenerationParams,
    budget: usize,
    execution: GraphExecutionContext,
}

impl<'a> Generation<'a> {
    pub fn open(
        model: &'a Model,
        prompt: &'a [u32],
        params: &'a GenerationParams,
    ) -> Result<Self, ApiError> {
        let budget = check(model, prompt, params)?;
        let execution = model
            .graph
            .init_execution_context()
            .map_err(|e| nn_error(&e))?;
        Ok(Self {
            model,
            prompt,
            params,
            budget,
            execution,
        })
    }

    /// Runs the generation to its end; see [`generate`].
    pub fn run(self, on_piece: impl FnMut(Piece<'_>) -> bool) -> Result<Outcome, ApiError> {
        let Self {
            model,
            prompt,
            params,
            budget,
            execution,
        } = self;
        decode(model, prompt, params, budget, &execution, on_piece)
    }
}

fn decode(
    model: &Model,
    prompt: &[u32],
    params: &GenerationParams,
    budget: usize,
    execution: &GraphExecutionContext,
    mut on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<Outcome, ApiError> {
    let detokenizer = model.tokenizer.detokenizer(true);
    let mut sampler = Sampler::new(params.sampling.clone());
    let vocab = model.info.vocab_size as usize;
    let mut penalties = Penalties::new(params.penalties, vocab);
    if penalties.is_active() {
        prompt.iter().for_each(|&t| penalties.observe_prompt(t));
    }
    let mut constraint = params.structure.clone().map(Constraint::new);
    let mut logprobs = Vec::new();
    let mut stops = StopFilter::new(&params.stop);
    let eos = &model.info.eos_token_ids;
    let started = wasip2::clocks::monotonic_clock::now();
    let out_of_time = || {
        params.time_limit.is_some_and(|limit| {
            let elapsed = wasip2::clocks::monotonic_clock::now().saturating_sub(started);
            elapsed >= limit.as_nanos() as u64
        })
    };

    let mut outcome = Outcome {
        prompt_tokens: prompt.len() as u32,
        completion_tokens: 0,
        finish_reason: FinishReason::Length,
        structured: false,
    };
    let mut logits = step(execution, prompt, 0)?;
    let mut position = prompt.len();
    let finished = loop {
        if (outcome.completion_tokens as usize) >= budget || out_of_time() {
            break FinishReason::Length;
        }
        let row = last_row(&mut logits, vocab);
        penalties.apply(row);
        for &(token, bias) in &params.logit_bias {
            row[token as usize] += bias;
        }
        if let Some(constraint) = &mut constraint {
            constraint.mask(row, model.vocabulary(), eos)?;
        }
        let token = sampler.sample(row);
        if eos.contains(&token) {
            break FinishReason::Stop;
        }
        if let Some(top_n) = params.logprobs {
            logprobs.push(sampling::logprobs(row, token, top_n));
        }
        outcome.completion_tokens += 1;
        penalties.observe_generated(token);
        if let Some(constraint) = &mut constraint {
            constraint.observe(model.vocabulary().token(token));
            outcome.structured = constraint.is_json();
        }
        let piece = detokenizer.push(token);
        let (text, stopped) = stops.push(&piece);
        if !text.is_empty() {
            if !on_piece(Piece {
                text: &text,
                logprobs: &logprobs,
            }) {
                outcome.finish_reason = FinishReason::Cancelled;
                return Ok(outcome);
            }
            logprobs.clear();
        }
        if stopped || constraint.as_ref().is_some_and(Constraint::is_complete) {
            break FinishReason::Stop;
        }
        if (outcome.completion_tokens as usize) < budget {
            logits = step(execution, &[token], position)?;
            position += 1;
        }
    };
    outcome.finish_reason = finished;
    // Text held back as a possible stop sequence's start turned out not to be one.
    let rest = stops.flush();
    if (!rest.is_empty() || !logprobs.is_empty())
        && !on_piece(Piece {
            text: &rest,
            logprobs: &logprobs,
        })
    {
        outcome.finish_reason = FinishReason::Cancelled;
    }
    Ok(outcome)
}

/// Generates the whole completion at once (no streaming): its text, and its tokens' log-probabilities
/// when asked for.
pub fn complete(
    model: &Model,
    prompt: &[u32],
    params: &GenerationParams,
) -> Result<(String, Vec<TokenLogprob>, Outcome), ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let outcome = generate(model, prompt, params, |piece| {
        text.push_str(piece.text);
        logprobs.extend_from_slice(piece.logprobs);
        true
    })?;
    Ok((text, logprobs, outcome))
}

/// Runs the model on `tokens` placed after `past` cached positions; returns the logits bytes decoded.
fn step(
    execution: &GraphExecutionContext,
    tokens: &[u32],
    past: usize,
) -> Result<Vec<f32>, ApiError> {
    let n = tokens.len();
    let ids: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| i64::from(t).to_le_bytes())
        .collect();
    let mask: Vec<u8> = std::iter::repeat_n(1i64.to_le_bytes(), past + n)
        .flatten()
        .collect();
    let positions: Vec<u8> = (past..past + n)
        .flat_map(|p| (p as i64).to_le_bytes())
        .collect();
    let inputs = vec![
        (
            "input_ids".to_string(),
            Tensor::new(&[1, n as u32], TensorType::I64, &ids),
        ),
        (
            "attention_mask".to_string(),
            Tensor::new(&[1, (past + n) as u32], TensorType::I64, &mask),
        ),
        (
            "position_ids".to_string(),
            Tensor::new(&[1, n as u32], TensorType::I64, &positions),
        ),
    ];
    let outputs = execution.compute(inputs).map_err(|e| nn_error(&e))?;
    let (_, logits) = outputs
        .into_iter()
        .find(|(name, _)| name == "logits")
        .ok_or_else(|| ApiError::internal("the model produced no `logits` output"))?;
    if logits.ty() != TensorType::Fp32 {
        return Err(ApiError::internal("the model's logits are not fp32"));
    }
    Ok(logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The last position's row: models that return logits for every position end with the one we need.
fn last_row(logits: &mut [f32], vocab: usize) -> &mut [f32] {
    let start = logits.len().saturating_sub(vocab);
    &mut logits[start..]
}
