//! Packing an encoder's inputs into passes: sorted by length so each pass pads its rows to a similar
//! width, each pass within [`PASS_TOKENS`] positions (rows × width), which bounds its attention memory.

/// Positions (rows × padded width) one pass may hold: 16 inputs of 256 tokens.
pub const PASS_TOKENS: usize = 4096;

/// The inputs' indices, shortest first, cut into passes.
pub fn passes(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    runs(&order, |i| lengths[i])
        .into_iter()
        .map(<[usize]>::to_vec)
        .collect()
}

/// Splits `order` (sorted by length, shortest first) into runs whose rows × longest length stays within
/// [`PASS_TOKENS`]; an input longer than that runs alone.
fn runs(order: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_keep_rows_times_width_within_the_budget() {
        let lengths = [300usize, 3, 10, 5000, 200, 3];
        assert_eq!(passes(&lengths), [vec![1, 5, 2, 4, 0], vec![3]]);
        let many = vec![256usize; 40];
        let passes_of_many = passes(&many);
        assert_eq!(passes_of_many.len(), 3);
        assert!(passes_of_many.iter().all(|p| p.len() * 256 <= PASS_TOKENS));
        assert_eq!(passes_of_many.iter().map(Vec::len).sum::<usize>(), 40);
        assert!(passes(&[]).is_empty());
    }
}
