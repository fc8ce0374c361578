//! The integer inputs of a model pass, as wasi-nn tensors carry them (i64, little-endian bytes): a
//! decoder's step and an encoder's padded batch. Components build them for `compute`; the host builds the
//! same for the passes it runs itself (Spin's LLM interface), so the two cannot drift apart.

/// One named i64 input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: &'static str,
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

fn i64_bytes(values: impl Iterator<Item = i64>) -> Vec<u8> {
    values.flat_map(i64::to_le_bytes).collect()
}

/// A decoder step of one sequence: `tokens` after `past` positions already in its cache.
pub fn decoder_step(tokens: &[u32], past: usize) -> [Input; 3] {
    let [ids, mask, positions] = step_of_rows(&[tokens], past);
    [ids, mask, positions]
}

/// A decoder step of several sequences of one execution context, each row's `tokens` after `past`
/// cached positions (all rows alike in length); `beam`, when given, names the context's row each
/// continues (`beam_idx`): a row named twice forks, a row left out ends.
pub fn decoder_rows(rows: &[&[u32]], past: usize, beam: Option<&[usize]>) -> Vec<Input> {
    let mut inputs = step_of_rows(rows, past).to_vec();
    if let Some(beam) = beam {
        inputs.push(Input {
            name: "beam_idx",
            dims: vec![beam.len() as u32],
            data: i64_bytes(beam.iter().map(|&row| row as i64)),
        });
    }
    inputs
}

fn step_of_rows(rows: &[&[u32]], past: usize) -> [Input; 3] {
    let n = rows.first().map_or(0, |row| row.len());
    let r = rows.len() as u32;
    [
        Input {
            name: "input_ids",
            dims: vec![r, n as u32],
            data: i64_bytes(
                rows.iter()
                    .flat_map(|row| row.iter().map(|&t| i64::from(t))),
            ),
        },
        Input {
            name: "attention_mask",
            dims: vec![r, (past + n) as u32],
            data: i64_bytes(std::iter::repeat_n(1, rows.len() * (past + n))),
        },
        Input {
            name: "position_ids",
            dims: vec![r, n as u32],
            data: i64_bytes(rows.iter().flat_map(|_| (past..past + n).map(|p| p as i64))),
        },
    ]
}

/// An encoder pass: rows padded on the right with id 0 to the longest, and masked.
pub fn encoder_pass(rows: &[&[u32]]) -> [Input; 2] {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let dims = vec![rows.len() as u32, width as u32];
    let cells = || {
        rows.iter()
            .flat_map(move |row| (0..width).map(move |i| row.get(i)))
    };
    [
        Input {
            name: "input_ids",
            dims: dims.clone(),
            data: i64_bytes(cells().map(|t| t.map_or(0, |&t| i64::from(t)))),
        },
        Input {
            name: "attention_mask",
            dims,
            data: i64_bytes(cells().map(|t| i64::from(t.is_some()))),
        },
    ]
}

/// The values of an fp32 output tensor's bytes.
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(input: &Input) -> Vec<i64> {
        input
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_step_continues_the_cache() {
        let [ids, mask, positions] = decoder_step(&[7, 8], 3);
        assert_eq!((ids.dims.clone(), values(&ids)), (vec![1, 2], vec![7, 8]));
        assert_eq!((mask.dims.clone(), values(&mask)), (vec![1, 5], vec![1; 5]));
        assert_eq!(values(&positions), vec![3, 4]);
    }

    #[test]
    fn rows_of_a_step_share_their_positions_and_name_their_sources() {
        let inputs = decoder_rows(&[&[7], &[9]], 4, Some(&[0, 0]));
        let [ids, mask, positions, beam] = inputs.as_slice() else {
            panic!("four inputs")
        };
        assert_eq!((ids.dims.clone(), values(ids)), (vec![2, 1], vec![7, 9]));
        assert_eq!(mask.dims, vec![2, 5]);
        assert_eq!(values(positions), vec![4, 4]);
        assert_eq!((beam.name, values(beam)), ("beam_idx", vec![0, 0]));
        assert_eq!(decoder_rows(&[&[7]], 4, None).len(), 3);
    }

    #[test]
    fn a_pass_pads_and_masks_short_rows() {
        let [ids, mask] = encoder_pass(&[&[1, 2, 3], &[4]]);
        assert_eq!(ids.dims, vec![2, 3]);
        assert_eq!(values(&ids), vec![1, 2, 3, 4, 0, 0]);
        assert_eq!(values(&mask), vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(f32_values(&1.5f32.to_le_bytes()), vec![1.5]);
    }
}
