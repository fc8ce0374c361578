//! The decoder contract every backend serves, in the Hugging Face Optimum layout: a model takes
//! `input_ids`, `attention_mask`, `position_ids` and one `past_key_values.*` input per cache, and returns
//! `logits` and a `present.*` output per cache. The execution context keeps the caches (or, in a stateful
//! OpenVINO IR, the infer request's state with its `beam_idx` input), so a guest sends only the new
//! tokens of each step and never a cache.

use super::{BackendError, ElementType, NamedTensors};

/// Prefix of the cache inputs a context fills itself.
pub const PAST_PREFIX: &str = "past_key_values.";
/// Prefix of the outputs a context keeps as its next step's caches.
pub const PRESENT_PREFIX: &str = "present.";
/// A stateful model's input naming which cache row each batch row continues.
pub const BEAM_IDX: &str = "beam_idx";

/// One cache input of a decoder and the output its next state comes back in.
#[derive(Debug, Clone)]
pub struct CacheInput {
    pub name: String,
    /// The `present.*` output.
    pub present: String,
    /// `[rows, kv_heads, positions, head_dim]` as the model declares it, -1 where it leaves an axis free.
    pub dims: Vec<i64>,
}

impl CacheInput {
    /// Key/value heads and head size, when the model fixes them (the batching backends need both).
    pub fn heads_and_dim(&self) -> Option<(usize, usize)> {
        match self.dims.as_slice() {
            &[_, heads, _, head_dim] if heads > 0 && head_dim > 0 => {
                Some((heads as usize, head_dim as usize))
            }
            _ => None,
        }
    }

    /// The dimensions of an empty cache (no positions yet) for `rows` sequences.
    pub fn empty_dims(&self, rows: i64) -> Vec<i64> {
        self.dims
            .iter()
            .enumerate()
            .map(|(axis, &d)| match axis {
                0 => rows,
                2 => 0,
                _ => d.max(1),
            })
            .collect()
    }
}

/// Pairs each `past_key_values.*` input of a model (name, element type, dimensions) with its `present.*`
/// output. Caches are fp32: the only type the contexts create.
pub fn cache_inputs<'a>(
    inputs: impl IntoIterator<Item = (&'a str, Option<ElementType>, Vec<i64>)>,
    has_output: impl Fn(&str) -> bool,
) -> Result<Vec<CacheInput>, BackendError> {
    let mut caches = Vec::new();
    for (name, ty, dims) in inputs {
        let Some(suffix) = name.strip_prefix(PAST_PREFIX) else {
            continue;
        };
        let present = format!("{PRESENT_PREFIX}{suffix}");
        if !has_output(&present) {
            return Err(BackendError::Load(format!(
                "the model has no output {present} for its input {name}"
            )));
        }
        if ty != Some(ElementType::F32) {
            return Err(BackendError::Unsupported(format!(
                "cache input {name} is not fp32, the only cache type nnspin keeps"
            )));
        }
        caches.push(CacheInput {
            name: name.to_string(),
            present,
            dims,
        });
    }
    Ok(caches)
}

/// Refuses the caches a context keeps itself; a refusal leaves the context as it was.
pub fn check_cache_inputs(inputs: &NamedTensors) -> Result<(), BackendError> {
    match inputs
        .iter()
        .find(|(name, _)| name.starts_with(PAST_PREFIX))
    {
        Some((name, _)) => Err(BackendError::InvalidArgument(format!(
            "{name} is kept by the execution context; send only the new tokens"
        ))),
        None => Ok(()),
    }
}

/// Refuses the inputs of a context that holds one sequence and computes alone: the caches it keeps,
/// and `beam_idx` (only batching contexts carry several sequences).
pub fn check_guest_inputs(inputs: &NamedTensors) -> Result<(), BackendError> {
    check_cache_inputs(inputs)?;
    match inputs.iter().any(|(name, _)| name == BEAM_IDX) {
        true => Err(BackendError::InvalidArgument(format!(
            "{BEAM_IDX} is kept by the execution context: this model's contexts hold one sequence \
             each"
        ))),
        false => Ok(()),
    }
}

/// How many sequences a step holds: the rows of its `input_ids` (one when it has none).
pub fn rows(inputs: &NamedTensors) -> i64 {
    inputs
        .iter()
        .find(|(name, _)| name == "input_ids")
        .and_then(|(_, tensor)| tensor.dims.first())
        .map_or(1, |&rows| i64::from(rows))
}
