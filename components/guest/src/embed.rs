//! Sentence embeddings over `wasi:nn`: a request's inputs run through one execution context in as few
//! passes as the padding allows. Inputs are sorted by length so each pass pads its rows to a similar
//! width, and each pass holds at most [`PASS_TOKENS`] positions (rows × width), which bounds its
//! attention memory.

use crate::ApiError;
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::{Tensor, TensorType};
use crate::model::{Model, nn_error};

/// Positions (rows × padded width) one pass may hold: 16 inputs of 256 tokens.
pub const PASS_TOKENS: usize = 4096;

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
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut vectors = vec![Vec::new(); inputs.len()];
    for pass in passes(&order, |i| inputs[i].len()) {
        let rows: Vec<&[u32]> = pass.iter().map(|&i| inputs[i].as_slice()).collect();
        for (&i, vector) in pass.iter().zip(run_pass(&execution, &rows, dimensions)?) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// Splits `order` (sorted by length, shortest first) into runs whose rows × longest length stays within
/// [`PASS_TOKENS`]; an input longer than that runs alone.
fn passes(order: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut passes = Vec::new();
    let mut start = 0;
    for end in 1..=order.len() {
        let next_fits = order
            .get(end)
            .is_some_and(|&next| (end + 1 - start) * len(next) <= PASS_TOKENS);
        if !next_fits {
            passes.push(&order[start..end]);
            start = end;
        }
    }
    passes
}

/// One pass: rows padded on the right with id 0 and masked, one vector back per row.
fn run_pass(
    execution: &GraphExecutionContext,
    rows: &[&[u32]],
    dimensions: u32,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width * 8);
    let mut mask = Vec::with_capacity(rows.len() * width * 8);
    for row in rows {
        for position in 0..width {
            let token = row.get(position);
            ids.extend_from_slice(&i64::from(token.copied().unwrap_or(0)).to_le_bytes());
            mask.extend_from_slice(&i64::from(token.is_some()).to_le_bytes());
        }
    }
    let dims = [rows.len() as u32, width as u32];
    let inputs = vec![
        (
            "input_ids".to_string(),
            Tensor::new(&dims, TensorType::I64, &ids),
        ),
        (
            "attention_mask".to_string(),
            Tensor::new(&dims, TensorType::I64, &mask),
        ),
    ];
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
    Ok(vectors
        .data()
        .chunks_exact(4 * dimensions as usize)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_keep_rows_times_width_within_the_budget() {
        let lengths = [3usize, 3, 10, 200, 300, 5000];
        let order: Vec<usize> = (0..lengths.len()).collect();
        let passes = passes(&order, |i| lengths[i]);
        assert_eq!(passes, [&[0, 1, 2, 3, 4][..], &[5][..]]);
        let many = vec![256usize; 40];
        let order: Vec<usize> = (0..many.len()).collect();
        let passes = super::passes(&order, |i| many[i]);
        assert_eq!(passes.len(), 3);
        assert!(passes.iter().all(|p| p.len() * 256 <= PASS_TOKENS));
        assert_eq!(passes.iter().map(|p| p.len()).sum::<usize>(), 40);
        assert!(super::passes(&[], |_| 1).is_empty());
    }
}
