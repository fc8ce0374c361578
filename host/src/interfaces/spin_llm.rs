//! Spin's `fermyon:spin/llm@2.0.0` over the same resident models, for Spin apps built with spin-sdk
//! (`llm::infer`, `llm::generate_embeddings`). The interface hands over a whole prompt and wants the whole
//! answer, so the host runs the passes itself: the decoding loop for `infer` (with Spin's sampling
//! parameters), the encoder passes for `generate-embeddings`. Each call holds one of its model's slots,
//! as a wasi-nn execution context does, and runs on the blocking pool.
//!
//! As Spin's own engines do, `infer` feeds the prompt to the model as written (no chat template: Spin
//! apps write their model's prompt format themselves) and stops at an end-of-sequence token or after
//! `max-tokens`.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use nnspin_core::inputs::{self, Input};
use nnspin_core::passes;
use nnspin_core::sampling::{Sampler, SamplingParams};

use super::bindings::spin_llm::{
    self, EmbeddingsResult, EmbeddingsUsage, Error, InferencingParams, InferencingResult,
    InferencingUsage,
};
use super::resources::NnError;
use super::view::LlmView;
use super::wasi_nn::open_context;
use crate::backend::{BackendError, BackendExecutionContext, ElementType, NamedTensors, Tensor};
use crate::metrics::Metrics;
use crate::registry::model::{Model, Task};

/// What spin-sdk sends when an app passes no parameters (`llm::infer`).
const SPIN_DEFAULTS: InferencingParams = InferencingParams {
    max_tokens: 100,
    repeat_penalty: 1.1,
    repeat_penalty_last_n_token_count: 64,
    temperature: 0.8,
    top_k: 40,
    top_p: 0.9,
};

impl spin_llm::Host for LlmView<'_> {
    async fn infer(
        &mut self,
        model: String,
        prompt: String,
        params: Option<InferencingParams>,
    ) -> wasmtime::Result<Result<InferencingResult, Error>> {
        let Some(model) = self.grants.model(&model) else {
            return Ok(Err(Error::ModelNotSupported));
        };
        let metrics = self.grants.registry().metrics().clone();
        Ok(infer(model, metrics, &prompt, params.unwrap_or(SPIN_DEFAULTS)).await)
    }

    async fn generate_embeddings(
        &mut self,
        model: String,
        text: Vec<String>,
    ) -> wasmtime::Result<Result<EmbeddingsResult, Error>> {
        let Some(model) = self.grants.model(&model) else {
            return Ok(Err(Error::ModelNotSupported));
        };
        let metrics = self.grants.registry().metrics().clone();
        Ok(embed(model, metrics, &text).await)
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidInput(message.into())
}

fn runtime(error: impl std::fmt::Display) -> Error {
    Error::RuntimeError(error.to_string())
}

fn context_error(error: NnError) -> Error {
    match error {
        NnError::Backend(BackendError::InvalidArgument(message)) => invalid(message),
        other => runtime(other),
    }
}

/// Spin's parameters, checked: each as its engines accept it.
fn sampling(params: &InferencingParams) -> Result<SamplingParams, Error> {
    let InferencingParams {
        temperature,
        top_p,
        repeat_penalty,
        ..
    } = *params;
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(invalid(format!("temperature {temperature} is not >= 0")));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!("top-p {top_p} is not in (0, 1]")));
    }
    if !repeat_penalty.is_finite() || repeat_penalty <= 0.0 {
        return Err(invalid(format!(
            "repeat-penalty {repeat_penalty} is not > 0"
        )));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k: params.top_k as usize,
        // Spin's interface has no seed: each call draws its own.
        seed: RandomState::new().hash_one(std::time::Instant::now()),
    })
}

async fn infer(
    model: Arc<Model>,
    metrics: Arc<Metrics>,
    prompt: &str,
    params: InferencingParams,
) -> Result<InferencingResult, Error> {
    let facts = &model.facts;
    if facts.task != Task::Generation {
        return Err(invalid(format!(
            "model {:?} is an embedding model: use generate-embeddings",
            facts.id
        )));
    }
    let sampling = sampling(&params)?;
    let prompt = model
        .text
        .encode(prompt, false)
        .map_err(|e| invalid(e.to_string()))?;
    if prompt.is_empty() {
        return Err(invalid("the prompt is empty"));
    }
    let room = (facts.context_length as usize).saturating_sub(prompt.len());
    if room == 0 {
        return Err(invalid(format!(
            "the prompt has {} tokens; model {:?} holds {} in all",
            prompt.len(),
            facts.id,
            facts.context_length
        )));
    }
    let budget = room.min(params.max_tokens as usize);
    let mut context = open_context(model.clone(), metrics)
        .await
        .map_err(context_error)?;
    let Some(mut backend) = context.backend.take() else {
        return Err(runtime("the context failed"));
    };
    let window = params.repeat_penalty_last_n_token_count as usize;
    let penalty = params.repeat_penalty;
    let decoding = model.clone();
    let prompt_tokens = prompt.len() as u32;
    let generated = tokio::task::spawn_blocking(move || {
        let facts = &decoding.facts;
        let mut sampler = Sampler::new(sampling);
        let mut sequence = prompt;
        let mut generated = Vec::new();
        let (mut past, mut step_started) = (0, std::time::Instant::now());
        while generated.len() < budget {
            let new = &sequence[past..];
            let mut logits = last_row(
                compute(backend.as_mut(), inputs::decoder_step(new, past), "logits")?,
                facts.vocab_size as usize,
            );
            past = sequence.len();
            match generated.len() {
                0 => context
                    .metrics
                    .first_token(&facts.id, context.opened.elapsed()),
                _ => context
                    .metrics
                    .decoded(&facts.id, 1, step_started.elapsed()),
            }
            step_started = std::time::Instant::now();
            repeat_penalty(
                &mut logits,
                &sequence[sequence.len().saturating_sub(window)..],
                penalty,
            );
            let token = sampler.sample(&logits);
            if facts.eos_token_ids.contains(&token) {
                break;
            }
            generated.push(token);
            sequence.push(token);
        }
        Ok::<_, BackendError>(generated)
    })
    .await
    .map_err(runtime)?
    .map_err(runtime)?;
    Ok(InferencingResult {
        text: model.text.decode(&generated, true),
        usage: InferencingUsage {
            prompt_token_count: prompt_tokens,
            generated_token_count: generated.len() as u32,
        },
    })
}

/// llama.cpp's repeat penalty, as Spin's engines apply it: each distinct token of the last tokens has its
/// logit divided by `penalty` when positive and multiplied by it when negative.
fn repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen: Vec<u32> = recent.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for token in seen {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit = if *logit > 0.0 {
                *logit / penalty
            } else {
                *logit * penalty
            };
        }
    }
}

/// The last position's row of a step's logits.
fn last_row(mut logits: Vec<f32>, vocab: usize) -> Vec<f32> {
    logits.drain(..logits.len().saturating_sub(vocab));
    logits
}

/// Runs one pass and returns the fp32 values of its output `name`.
fn compute(
    backend: &mut dyn BackendExecutionContext,
    inputs: impl IntoIterator<Item = Input>,
    name: &str,
) -> Result<Vec<f32>, BackendError> {
    let named: NamedTensors = inputs
        .into_iter()
        .map(|input| {
            let tensor = Tensor {
                dims: input.dims,
                ty: ElementType::I64,
                data: input.data,
            };
            (input.name.to_string(), tensor)
        })
        .collect();
    let outputs = backend.compute(named)?;
    let (_, tensor) = outputs
        .into_iter()
        .find(|(output, _)| output == name)
        .ok_or_else(|| BackendError::Runtime(format!("the model returned no {name}")))?;
    if tensor.ty != ElementType::F32 {
        return Err(BackendError::Runtime(format!("{name} is not fp32")));
    }
    Ok(inputs::f32_values(&tensor.data))
}

async fn embed(
    model: Arc<Model>,
    metrics: Arc<Metrics>,
    texts: &[String],
) -> Result<EmbeddingsResult, Error> {
    let facts = &model.facts;
    let Task::Embedding { dimensions } = facts.task else {
        return Err(invalid(format!(
            "model {:?} generates text and does not embed: use infer",
            facts.id
        )));
    };
    let mut rows = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let tokens = model
            .text
            .encode(text, true)
            .map_err(|e| invalid(e.to_string()))?;
        if tokens.len() > facts.context_length as usize {
            return Err(invalid(format!(
                "text {i} has {} tokens; model {:?} takes at most {}",
                tokens.len(),
                facts.id,
                facts.context_length
            )));
        }
        rows.push(tokens);
    }
    let prompt_token_count = rows.iter().map(Vec::len).sum::<usize>() as u32;
    if rows.is_empty() {
        return Ok(EmbeddingsResult {
            embeddings: Vec::new(),
            usage: EmbeddingsUsage { prompt_token_count },
        });
    }
    let mut context = open_context(model, metrics).await.map_err(context_error)?;
    let Some(mut backend) = context.backend.take() else {
        return Err(runtime("the context failed"));
    };
    let embeddings = tokio::task::spawn_blocking(move || {
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let mut vectors = vec![Vec::new(); rows.len()];
        for pass in passes::passes(&lengths) {
            let batch: Vec<&[u32]> = pass.iter().map(|&i| rows[i].as_slice()).collect();
            let values = compute(
                backend.as_mut(),
                inputs::encoder_pass(&batch),
                "sentence_embedding",
            )?;
            for (&i, vector) in pass.iter().zip(values.chunks_exact(dimensions as usize)) {
                vectors[i] = vector.to_vec();
            }
        }
        drop(context);
        Ok::<_, BackendError>(vectors)
    })
    .await
    .map_err(runtime)?
    .map_err(runtime)?;
    Ok(EmbeddingsResult {
        embeddings,
        usage: EmbeddingsUsage { prompt_token_count },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repeat_penalty_pushes_recent_tokens_down_once_each() {
        let mut logits = vec![2.0, -2.0, 1.0];
        repeat_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn spins_parameters_are_checked() {
        assert!(sampling(&SPIN_DEFAULTS).is_ok());
        for params in [
            InferencingParams {
                temperature: -1.0,
                ..SPIN_DEFAULTS
            },
            InferencingParams {
                top_p: 0.0,
                ..SPIN_DEFAULTS
            },
            InferencingParams {
                repeat_penalty: f32::NAN,
                ..SPIN_DEFAULTS
            },
        ] {
            assert!(matches!(sampling(&params), Err(Error::InvalidInput(_))));
        }
    }
}
