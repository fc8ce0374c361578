//! The generation loop over `wasi:nn`: prefill the prompt, then one `compute` per new token.
//!
//! The execution context keeps the KV cache in the host, so each step sends only the new tokens with
//! their positions and receives the last position's logits.

use crate::ApiError;
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::TensorType;
use crate::model::{Model, nn_error, nn_inputs};
use crate::sampling::{self, Penalties, PenaltyParams, Sampler, SamplingParams, TokenLogprob};
use crate::stop::StopFilter;
use crate::structured::{Constraint, Structure};

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
    /// Prompt tokens the host found in its prefix cache, whose prefill it skipped.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    /// The output is JSON held to the requested structure.
    pub structured: bool,
    /// The structure let the model decline to write text ([`Structure::JsonOrDecline`]), and it did:
    /// the output is empty.
    pub declined: bool,
}

/// A whole generated completion: its text, its tokens' log-probabilities (when asked for) and how it
/// ended.
#[derive(Debug, Clone)]
pub struct Completed {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub outcome: Outcome,
}

/// Text that is ready to send, with the log-probabilities of the tokens generated since the last piece
/// (when asked for).
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

/// What one prompt of a request asks to generate, checked once against its model before anything runs
/// (so a streaming API can still answer with an error status): the prompt fits the context with the
/// requested completion, and `logit_bias` names tokens of the vocabulary. Each of the request's choices
/// opens its own generation from it.
pub struct GenerationRequest<'m> {
    model: &'m Model,
    prompt: Vec<u32>,
    params: GenerationParams,
    /// How many tokens may be generated.
    budget: usize,
}

impl<'m> GenerationRequest<'m> {
    pub fn new(
        model: &'m Model,
        prompt: Vec<u32>,
        params: GenerationParams,
    ) -> Result<Self, ApiError> {
        let context = model.info.context_length as usize;
        if prompt.is_empty() {
            return Err(ApiError::invalid("the prompt is empty"));
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
                "the model's context length is {context} tokens, but {} were requested: {} in the \
                 prompt and {requested} for the completion",
                prompt.len() + requested as usize,
                prompt.len(),
            )));
        }
        let vocab = model.info.vocab_size;
        if let Some(&(token, _)) = params.logit_bias.iter().find(|(token, _)| *token >= vocab) {
            return Err(ApiError::invalid(format!(
                "logit_bias names token {token}, beyond the vocabulary"
            ))
            .with_param("logit_bias"));
        }
        let budget = (params.max_tokens as usize).min(context - prompt.len());
        Ok(Self {
            model,
            prompt,
            params,
            budget,
        })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Opens choice `choice`'s generation (each choice samples with its own seed). Opening the context
    /// takes the request's place in the model's queue, or is refused (503, the queue is full): a
    /// streaming API opens it before its response starts, so overload is a status, not an error event
    /// inside a 200 stream.
    pub fn open(&self, choice: u32) -> Result<Generation<'_, 'm>, ApiError> {
        let execution = self
            .model
            .graph
            .init_execution_context()
            .map_err(|e| nn_error(&e))?;
        Ok(Generation {
            request: self,
            seed: self.params.sampling.seed.wrapping_add(u64::from(choice)),
            execution,
        })
    }

    /// Generates choice `choice` whole (no streaming).
    pub fn complete(&self, choice: u32) -> Result<Completed, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let outcome = self.open(choice)?.run(|piece| {
            text.push_str(piece.text);
            logprobs.extend_from_slice(piece.logprobs);
            true
        })?;
        Ok(Completed {
            text,
            logprobs,
            outcome,
        })
    }
}

/// One choice's generation, holding its execution context.
pub struct Generation<'r, 'm> {
    request: &'r GenerationRequest<'m>,
    seed: u64,
    execution: GraphExecutionContext,
}

impl Generation<'_, '_> {
    /// Generates the completion, handing each piece of text to `on_piece` as soon as it is complete;
    /// `on_piece` returns false to stop (the client disconnected).
    pub fn run(self, on_piece: impl FnMut(Piece<'_>) -> bool) -> Result<Outcome, ApiError> {
        decode(self.request, self.seed, &self.execution, on_piece)
    }
}

fn decode(
    request: &GenerationRequest,
    seed: u64,
    execution: &GraphExecutionContext,
    mut on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<Outcome, ApiError> {
    let GenerationRequest {
        model,
        prompt,
        params,
        budget,
    } = request;
    let (model, budget) = (*model, *budget);
    let detokenizer = model.tokenizer.detokenizer(true);
    let mut sampler = Sampler::new(SamplingParams {
        seed,
        ..params.sampling.clone()
    });
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
        cached_tokens: 0,
        completion_tokens: 0,
        finish_reason: FinishReason::Length,
        structured: false,
        declined: false,
    };
    let (mut logits, cached) = step(execution, prompt, 0)?;
    outcome.cached_tokens = cached;
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
            if constraint.is_declined() {
                outcome.declined = true;
                break FinishReason::Stop;
            }
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
            logits = step(execution, &[token], position)?.0;
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

/// Runs the model on `tokens` placed after `past` cached positions; returns the logits decoded and, for
/// a prompt, how many of its tokens the host had cached (its optional `cached_tokens` output, i64).
fn step(
    execution: &GraphExecutionContext,
    tokens: &[u32],
    past: usize,
) -> Result<(Vec<f32>, u32), ApiError> {
    let inputs = nn_inputs(nnspin_core::inputs::decoder_step(tokens, past));
    let (mut logits, mut first, mut cached) = (None, None, 0);
    for (name, tensor) in execution.compute(inputs).map_err(|e| nn_error(&e))? {
        match name.as_str() {
            "logits" => logits = Some(tensor),
            // Upstream wasmtime's OpenVINO backend names outputs by position, not by the model's names.
            "0" => first = Some(tensor),
            "cached_tokens" if tensor.ty() == TensorType::I64 => {
                let bytes = tensor.data();
                cached = bytes
                    .get(..8)
                    .map_or(0, |b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
            }
            _ => {}
        }
    }
    let logits = logits
        .or(first)
        .ok_or_else(|| ApiError::internal("the model produced no `logits` output"))?;
    if logits.ty() != TensorType::Fp32 {
        return Err(ApiError::internal("the model's logits are not fp32"));
    }
    let cached = u32::try_from(cached.max(0)).unwrap_or(u32::MAX);
    Ok((nnspin_core::inputs::f32_values(&logits.data()), cached))
}

/// The last position's row: models that return logits for every position end with the one we need.
fn last_row(logits: &mut [f32], vocab: usize) -> &mut [f32] {
    let start = logits.len().saturating_sub(vocab);
    &mut logits[start..]
}
