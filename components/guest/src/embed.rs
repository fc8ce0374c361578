//! Sentence embeddings over `wasi:nn`: a request's inputs run through one execution context in as few
//! passes as the padding allows ([`nnspin_core::passes`]).

use crate::ApiError;
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::TensorType;
use crate::model::{Model, nn_error, nn_inputs};
use nnspin_core::inputs;

/// The vector of each input (token ids as the tokenizer framed them), in the inputs' order.
pub fn embed(
    model: &Model,
    inputs: &[Vec<u32>],
    dimensions: u32,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let execution = model
        .graph
        .init_execution_context()
        .map_err(|e| nn_error(&e))?;
    let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut vectors = vec![Vec::new(); inputs.len()];
    for pass in nnspin_core::passes::passes(&lengths) {
        let rows: Vec<&[u32]> = pass.iter().map(|&i| inputs[i].as_slice()).collect();
        for (&i, vector) in pass.iter().zip(run_pass(&execution, &rows, dimensions)?) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// One pass, one vector back per row.
fn run_pass(
    execution: &GraphExecutionContext,
    rows: &[&[u32]],
    dimensions: u32,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let inputs = nn_inputs(inputs::encoder_pass(rows));
    let outputs = execution.compute(inputs).map_err(|e| nn_error(&e))?;
    let (_, vectors) = outputs
        .into_iter()
        .find(|(name, _)| name == "sentence_embedding")
        .ok_or_else(|| ApiError::internal("the model produced no `sentence_embedding` output"))?;
    if vectors.ty() != TensorType::Fp32 || vectors.dimensions() != [rows.len() as u32, dimensions] {
        return Err(ApiError::internal(format!(
            "the model's sentence_embedding is not fp32 of [{}, {dimensions}]",
            rows.len()
        )));
    }
    Ok(inputs::f32_values(&vectors.data())
        .chunks_exact(dimensions as usize)
        .map(<[f32]>::to_vec)
        .collect())
}
