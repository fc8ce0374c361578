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
use crate::text::Detokenizer;

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

    /// How many of the request's choices decode together, as rows of one batch: the model's
    /// execution contexts carry that many sequences (the host's batching engines), else 1.
    pub fn choices_per_batch(&self) -> u32 {
        self.model.info.sequences_per_context.max(1)
    }

    /// Opens choice `choice`'s generation (each choice samples with its own seed). Opening the context
    /// takes the request's place in the model's queue, or is refused (503, the queue is full): a
    /// streaming API opens it before its response starts, so overload is a status, not an error event
    /// inside a 200 stream.
    pub fn open(&self, choice: u32) -> Result<Generation<'_, 'm>, ApiError> {
        self.open_choices(choice, 1)
    }

    /// Opens the generation of choices `first..first + count`, which prefill the prompt once and then
    /// decode as rows of one execution context (at most [`choices_per_batch`](Self::choices_per_batch)).
    pub fn open_choices(&self, first: u32, count: u32) -> Result<Generation<'_, 'm>, ApiError> {
        let execution = self
            .model
            .graph
            .init_execution_context()
            .map_err(|e| nn_error(&e))?;
        Ok(Generation {
            request: self,
            choices: first..first + count,
            execution,
        })
    }

    /// Generates choice `choice` whole (no streaming).
    pub fn complete(&self, choice: u32) -> Result<Completed, ApiError> {
        let mut completed = self.complete_choices(choice, 1)?;
        Ok(completed.pop().expect("one choice"))
    }

    /// Generates choices `first..first + count` whole, as rows of one batch.
    pub fn complete_choices(&self, first: u32, count: u32) -> Result<Vec<Completed>, ApiError> {
        let mut texts = vec![(String::new(), Vec::new()); count as usize];
        let outcomes = self.open_choices(first, count)?.run_choices(|row, event| {
            if let Event::Piece(piece) = event {
                let (text, logprobs) = &mut texts[row];
                text.push_str(piece.text);
                logprobs.extend_from_slice(piece.logprobs);
            }
            true
        })?;
        Ok(texts
            .into_iter()
            .zip(outcomes)
            .map(|((text, logprobs), outcome)| Completed {
                text,
                logprobs,
                outcome,
            })
            .collect())
    }
}

/// The generation of one or more choices of a request, holding their execution context.
pub struct Generation<'r, 'm> {
    request: &'r GenerationRequest<'m>,
    choices: std::ops::Range<u32>,
    execution: GraphExecutionContext,
}

impl Generation<'_, '_> {
    /// Generates a single choice's completion, handing each piece of text to `on_piece` as soon as it
    /// is complete; `on_piece` returns false to stop (the client disconnected).
    pub fn run(self, mut on_piece: impl FnMut(Piece<'_>) -> bool) -> Result<Outcome, ApiError> {
        debug_assert_eq!(self.choices.len(), 1, "run generates one choice");
        let mut outcomes = self.run_choices(|_, event| match event {
            Event::Piece(piece) => on_piece(piece),
            Event::Ended(_) => true,
        })?;
        Ok(outcomes.swap_remove(0))
    }

    /// Generates every choice, handing what happens to each (its pieces, then its end) to `on_event`
    /// with the choice's place among them; the outcomes in that order. Once `on_event` returns false for
    /// a piece, every choice stops (the client disconnected).
    pub fn run_choices(
        self,
        on_event: impl FnMut(usize, Event<'_>) -> bool,
    ) -> Result<Vec<Outcome>, ApiError> {
        decode(self.request, self.choices, &self.execution, on_event)
    }
}

/// What happens to one of a generation's choices.
pub enum Event<'a> {
    /// Text ready to send.
    Piece(Piece<'a>),
    /// The choice has ended (its last piece came before); the others may still run.
    Ended(&'a Outcome),
}

/// What one choice carries from step to step: its sampler, penalties, constraint, stop filter and
/// detokenizer, and how it ended once it has.
struct Choice<'r> {
    request: &'r GenerationRequest<'r>,
    sampler: Sampler,
    penalties: Penalties,
    constraint: Option<Constraint>,
    stops: StopFilter,
    detokenizer: Detokenizer,
    /// Log-probabilities of the tokens generated since the last piece.
    logprobs: Vec<TokenLogprob>,
    outcome: Outcome,
}

/// What a choice does after a token.
enum Next {
    /// Feed this token back to the model.
    Continue(u32),
    /// It has ended; its outcome says how.
    Ended,
    /// The client went away: every choice stops.
    Cancelled,
}

impl<'r> Choice<'r> {
    fn new(request: &'r GenerationRequest<'r>, seed: u64, cached_tokens: u32) -> Self {
        let params = &request.params;
        let vocab = request.model.info.vocab_size as usize;
        let mut penalties = Penalties::new(params.penalties, vocab);
        if penalties.is_active() {
            request
                .prompt
                .iter()
                .for_each(|&t| penalties.observe_prompt(t));
        }
        Self {
            request,
            sampler: Sampler::new(SamplingParams {
                seed,
                ..params.sampling.clone()
            }),
            penalties,
            constraint: params.structure.clone().map(Constraint::new),
            stops: StopFilter::new(&params.stop),
            detokenizer: request.model.tokenizer.detokenizer(true),
            logprobs: Vec::new(),
            outcome: Outcome {
                prompt_tokens: request.prompt.len() as u32,
                cached_tokens,
                completion_tokens: 0,
                finish_reason: FinishReason::Length,
                structured: false,
                declined: false,
            },
        }
    }

    /// Chooses the next token from `row` (the logits after the choice's last token) and hands out the
    /// text it completes.
    fn next(
        &mut self,
        row: &mut [f32],
        out_of_time: bool,
        on_piece: &mut impl FnMut(Piece<'_>) -> bool,
    ) -> Result<Next, ApiError> {
        let GenerationRequest {
            model,
            params,
            budget,
            ..
        } = self.request;
        if (self.outcome.completion_tokens as usize) >= *budget || out_of_time {
            return Ok(self.end(FinishReason::Length, on_piece));
        }
        let eos = &model.info.eos_token_ids;
        self.penalties.apply(row);
        for &(token, bias) in &params.logit_bias {
            row[token as usize] += bias;
        }
        if let Some(constraint) = &mut self.constraint {
            constraint.mask(row, model.vocabulary(), eos)?;
            if constraint.is_declined() {
                self.outcome.declined = true;
                return Ok(self.end(FinishReason::Stop, on_piece));
            }
        }
        let token = self.sampler.sample(row);
        if eos.contains(&token) {
            return Ok(self.end(FinishReason::Stop, on_piece));
        }
        if let Some(top_n) = params.logprobs {
            self.logprobs.push(sampling::logprobs(row, token, top_n));
        }
        self.outcome.completion_tokens += 1;
        self.penalties.observe_generated(token);
        if let Some(constraint) = &mut self.constraint {
            constraint.observe(model.vocabulary().token(token));
            self.outcome.structured = constraint.is_json();
        }
        let piece = self.detokenizer.push(token);
        let (text, stopped) = self.stops.push(&piece);
        if !text.is_empty() {
            if !on_piece(Piece {
                text: &text,
                logprobs: &self.logprobs,
            }) {
                self.outcome.finish_reason = FinishReason::Cancelled;
                return Ok(Next::Cancelled);
            }
            self.logprobs.clear();
        }
        if stopped
            || self
                .constraint
                .as_ref()
                .is_some_and(Constraint::is_complete)
        {
            return Ok(self.end(FinishReason::Stop, on_piece));
        }
        if (self.outcome.completion_tokens as usize) >= *budget {
            return Ok(self.end(FinishReason::Length, on_piece));
        }
        Ok(Next::Continue(token))
    }

    /// Ends the choice: text held back as a possible stop sequence's start turned out not to be one.
    fn end(&mut self, reason: FinishReason, on_piece: &mut impl FnMut(Piece<'_>) -> bool) -> Next {
        self.outcome.finish_reason = reason;
        let rest = self.stops.flush();
        if (!rest.is_empty() || !self.logprobs.is_empty())
            && !on_piece(Piece {
                text: &rest,
                logprobs: &self.logprobs,
            })
        {
            self.outcome.finish_reason = FinishReason::Cancelled;
            return Next::Cancelled;
        }
        Next::Ended
    }
}

/// Prefills the prompt once, then decodes every choice in lockstep: each step sends the running
/// choices' tokens as rows of the execution context, `beam_idx` naming the row each continues (every
/// choice forks from the prompt's row at first; an ended choice's row is left out).
fn decode(
    request: &GenerationRequest,
    choices: std::ops::Range<u32>,
    execution: &GraphExecutionContext,
    mut on_event: impl FnMut(usize, Event<'_>) -> bool,
) -> Result<Vec<Outcome>, ApiError> {
    let vocab = request.model.info.vocab_size as usize;
    let seed = request.params.sampling.seed;
    let started = wasip2::clocks::monotonic_clock::now();
    let out_of_time = || {
        request.params.time_limit.is_some_and(|limit| {
            let elapsed = wasip2::clocks::monotonic_clock::now().saturating_sub(started);
            elapsed >= limit.as_nanos() as u64
        })
    };
    let (mut logits, cached) = step(execution, &[&request.prompt], 0, None)?;
    let mut running: Vec<Choice> = choices
        .map(|choice| Choice::new(request, seed.wrapping_add(u64::from(choice)), cached))
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; running.len()];
    // Each running choice's place among the request's choices, and the row of `logits` it reads: at
    // first every choice reads the prompt's row.
    let mut places: Vec<usize> = (0..running.len()).collect();
    let mut rows: Vec<usize> = vec![0; running.len()];
    let mut position = request.prompt.len();
    let mut forked_row = Vec::new();
    loop {
        let held = rows.iter().max().map_or(0, |&r| r + 1);
        let forking = running.len() > held;
        let late = out_of_time();
        let mut next = Vec::with_capacity(running.len());
        for ((choice, &place), &row) in running.iter_mut().zip(&places).zip(&rows) {
            let mut logits_row = row_of(&mut logits, held, row, vocab);
            if forking {
                // Every choice needs the shared row as it came.
                forked_row.clear();
                forked_row.extend_from_slice(logits_row);
                logits_row = &mut forked_row[..];
            }
            let mut to_client = |piece: Piece<'_>| on_event(place, Event::Piece(piece));
            match choice.next(logits_row, late, &mut to_client)? {
                Next::Continue(token) => next.push(Some(token)),
                Next::Ended => {
                    on_event(place, Event::Ended(&choice.outcome));
                    next.push(None)
                }
                Next::Cancelled => {
                    // The client has gone: what still runs ends here.
                    for (i, (choice, place)) in running.into_iter().zip(places).enumerate() {
                        let mut outcome = choice.outcome;
                        if next.get(i).is_none_or(Option::is_some) {
                            outcome.finish_reason = FinishReason::Cancelled;
                        }
                        outcomes[place] = Some(outcome);
                    }
                    return Ok(outcomes.into_iter().flatten().collect());
                }
            }
        }
        let (mut tokens, mut continuing, mut kept_rows, mut kept_places) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (((choice, place), row), token) in running.into_iter().zip(places).zip(rows).zip(next) {
            match token {
                Some(token) => {
                    tokens.push([token]);
                    continuing.push(choice);
                    kept_rows.push(row);
                    kept_places.push(place);
                }
                None => outcomes[place] = Some(choice.outcome),
            }
        }
        if continuing.is_empty() {
            break;
        }
        let beam = (!kept_rows.iter().copied().eq(0..held)).then_some(kept_rows.as_slice());
        let ids: Vec<&[u32]> = tokens.iter().map(|t| &t[..]).collect();
        logits = step(execution, &ids, position, beam)?.0;
        position += 1;
        rows = (0..continuing.len()).collect();
        running = continuing;
        places = kept_places;
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// Runs the model on `rows` of tokens placed after `past` cached positions, `beam` naming the
/// context's row each continues; returns the logits decoded and, for a prompt, how many of its tokens
/// the host had cached (its optional `cached_tokens` output, i64).
fn step(
    execution: &GraphExecutionContext,
    rows: &[&[u32]],
    past: usize,
    beam: Option<&[usize]>,
) -> Result<(Vec<f32>, u32), ApiError> {
    let inputs = nn_inputs(nnspin_core::inputs::decoder_rows(rows, past, beam));
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

/// Row `row`'s last position of logits holding `rows` rows: models that return logits for every
/// position end each row with the one we need.
fn row_of(logits: &mut [f32], rows: usize, row: usize, vocab: usize) -> &mut [f32] {
    let width = logits.len() / rows.max(1);
    let end = (row + 1) * width;
    &mut logits[end.saturating_sub(vocab)..end]
}
