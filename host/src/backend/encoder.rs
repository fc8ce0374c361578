//! The encoder contract: a model without caches that takes `input_ids` and `attention_mask`
//! (`[rows, positions]`, i64, rows padded on the right and masked) and returns one row per input row in
//! every output (`sentence_embedding`, `[rows, dimensions]`). Padding a row further changes none of its
//! results, so the passes of concurrent contexts can run as one: rows stacked, each padded to the widest
//! ([`merge`]), the outputs cut back into each pass's rows ([`split`]).

use super::{BackendError, ElementType, NamedTensors, Tensor};

const IDS: &str = "input_ids";
const MASK: &str = "attention_mask";

/// Whether a model's inputs and outputs (name, element type, rank) follow the contract.
pub fn follows_contract<'a>(
    inputs: impl IntoIterator<Item = (&'a str, Option<ElementType>)>,
    output_ranks: impl IntoIterator<Item = usize>,
) -> bool {
    let mut names: Vec<_> = inputs
        .into_iter()
        .map(|(name, ty)| (name, ty == Some(ElementType::I64)))
        .collect();
    names.sort_unstable();
    let mut ranks = output_ranks.into_iter().peekable();
    names == [(MASK, true), (IDS, true)] && ranks.peek().is_some() && ranks.all(|rank| rank == 2)
}

/// One context's pass, checked: both inputs, i64, of the same `[rows, width]`.
pub struct Pass {
    pub rows: usize,
    pub width: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
}

impl Pass {
    pub fn of(inputs: NamedTensors) -> Result<Self, BackendError> {
        let find = |name: &str| {
            inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    BackendError::InvalidArgument(format!("an encoder pass needs {name}"))
                })
        };
        let (ids, mask) = (find(IDS)?, find(MASK)?);
        if inputs.len() != 2 {
            return Err(BackendError::InvalidArgument(format!(
                "an encoder pass takes only {IDS} and {MASK}"
            )));
        }
        let &[rows, width] = ids.dims.as_slice() else {
            return Err(BackendError::InvalidArgument(format!(
                "{IDS} must be [rows, positions], not {:?}",
                ids.dims
            )));
        };
        if mask.dims != ids.dims {
            return Err(BackendError::InvalidArgument(format!(
                "{MASK} {:?} does not match {IDS} {:?}",
                mask.dims, ids.dims
            )));
        }
        Ok(Self {
            rows: rows as usize,
            width: width as usize,
            ids: ids.integers(IDS)?.collect(),
            mask: mask.integers(MASK)?.collect(),
        })
    }

    pub fn positions(&self) -> usize {
        self.rows * self.width
    }
}

fn i64_tensor(dims: Vec<u32>, values: &[i64]) -> Tensor {
    Tensor {
        dims,
        ty: ElementType::I64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The passes as one: rows in order, each padded with id 0 and mask 0 to the widest.
pub fn merge(passes: &[Pass]) -> NamedTensors {
    let width = passes.iter().map(|p| p.width).max().unwrap_or(0);
    let rows: usize = passes.iter().map(|p| p.rows).sum();
    let mut ids = Vec::with_capacity(rows * width);
    let mut mask = Vec::with_capacity(rows * width);
    for pass in passes {
        for row in 0..pass.rows {
            let span = row * pass.width..(row + 1) * pass.width;
            ids.extend_from_slice(&pass.ids[span.clone()]);
            mask.extend_from_slice(&pass.mask[span]);
            ids.resize(ids.len() + width - pass.width, 0);
            mask.resize(mask.len() + width - pass.width, 0);
        }
    }
    let dims = vec![rows as u32, width as u32];
    vec![
        (IDS.to_string(), i64_tensor(dims.clone(), &ids)),
        (MASK.to_string(), i64_tensor(dims, &mask)),
    ]
}

/// Each pass's rows of the merged outputs, in the passes' order.
pub fn split(outputs: NamedTensors, rows: &[usize]) -> Result<Vec<NamedTensors>, BackendError> {
    let total: usize = rows.iter().sum();
    let mut split: Vec<NamedTensors> = rows.iter().map(|_| Vec::new()).collect();
    for (name, tensor) in outputs {
        if tensor.dims.first().map(|&d| d as usize) != Some(total) {
            return Err(BackendError::Runtime(format!(
                "output {name} {:?} does not have the pass's {total} rows",
                tensor.dims
            )));
        }
        let row_bytes = tensor.data.len() / total.max(1);
        let mut start = 0;
        for (pass, &n) in split.iter_mut().zip(rows) {
            let mut dims = tensor.dims.clone();
            dims[0] = n as u32;
            let data = tensor.data[start * row_bytes..(start + n) * row_bytes].to_vec();
            pass.push((
                name.clone(),
                Tensor {
                    dims,
                    ty: tensor.ty,
                    data,
                },
            ));
            start += n;
        }
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(rows: &[&[i64]]) -> Pass {
        let width = rows.iter().map(|r| r.len()).max().unwrap();
        let cell = |r: &[i64], i: usize| r.get(i).copied();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| (0..width).map(move |i| cell(r, i).unwrap_or(0)))
            .collect();
        let mask: Vec<i64> = rows
            .iter()
            .flat_map(|r| (0..width).map(move |i| i64::from(cell(r, i).is_some())))
            .collect();
        let dims = vec![rows.len() as u32, width as u32];
        Pass::of(vec![
            (IDS.into(), i64_tensor(dims.clone(), &ids)),
            (MASK.into(), i64_tensor(dims, &mask)),
        ])
        .unwrap()
    }

    fn values(tensor: &Tensor) -> Vec<i64> {
        tensor.integers("t").unwrap().collect()
    }

    #[test]
    fn passes_merge_padded_to_the_widest_and_split_back() {
        let merged = merge(&[pass(&[&[5, 6, 7]]), pass(&[&[8], &[9, 10]])]);
        assert_eq!(merged[0].1.dims, vec![3, 3]);
        assert_eq!(values(&merged[0].1), [5, 6, 7, 8, 0, 0, 9, 10, 0]);
        assert_eq!(values(&merged[1].1), [1, 1, 1, 1, 0, 0, 1, 1, 0]);

        let vectors = Tensor {
            dims: vec![3, 2],
            ty: ElementType::F32,
            data: (0..6u8).flat_map(|v| f32::from(v).to_le_bytes()).collect(),
        };
        let split = split(vec![("v".into(), vectors)], &[1, 2]).unwrap();
        assert_eq!(split[0][0].1.dims, vec![1, 2]);
        assert_eq!(split[1][0].1.dims, vec![2, 2]);
        assert_eq!(split[1][0].1.data.len(), 16);
    }

    #[test]
    fn only_the_two_inputs_and_row_outputs_are_an_encoder() {
        let i64 = Some(ElementType::I64);
        assert!(follows_contract([(IDS, i64), (MASK, i64)], [2]));
        assert!(
            !follows_contract([(IDS, i64), (MASK, i64)], [3, 2]),
            "token_embeddings"
        );
        assert!(!follows_contract(
            [(IDS, i64), (MASK, i64), ("position_ids", i64)],
            [2]
        ));
        assert!(!follows_contract(
            [(IDS, Some(ElementType::I32)), (MASK, i64)],
            [2]
        ));
    }

    #[test]
    fn malformed_passes_are_refused() {
        let t = |dims: Vec<u32>| {
            i64_tensor(
                dims.clone(),
                &vec![1; dims.iter().product::<u32>() as usize],
            )
        };
        assert!(Pass::of(vec![(IDS.into(), t(vec![1, 2]))]).is_err());
        assert!(
            Pass::of(vec![
                (IDS.into(), t(vec![1, 2])),
                (MASK.into(), t(vec![1, 3]))
            ])
            .is_err()
        );
        assert!(Pass::of(vec![(IDS.into(), t(vec![2])), (MASK.into(), t(vec![2]))]).is_err());
    }
}
