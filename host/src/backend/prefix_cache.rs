//! Prefix caching for a backend that keeps every sequence's KV cache in one row of shared buffers (ONNX
//! Runtime's batched path): which sequence holds which row, which tokens each row's cached positions
//! were computed from, and which finished rows are kept for prompts still to come.
//!
//! Granularity is the token: a row is reusable when its positions `0..length` were computed from
//! exactly its `tokens` at positions `0..length`, so any shared prefix of them holds the keys and
//! values a new prompt with that prefix would compute. A new sequence starts from the longest such
//! prefix among the rows of its model: a running sequence's row (concurrent requests sharing a system
//! prompt) or a finished one kept in the pool (the previous turn of a chat). A kept row the prompt
//! covers whole is taken over in place; otherwise the prefix is copied into a row of its own, so the
//! source keeps serving. Finished rows stay kept, least recently used evicted first, while the rows
//! they take stay within the model's budget. The bookkeeping knows nothing of the engine: the backend
//! copies the positions [`Start`] names.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix cache's figures for the metrics exposition, updated by the model's scheduler.
#[derive(Debug, Default)]
pub struct PrefixCacheStats {
    queried: AtomicU64,
    hits: AtomicU64,
    resident: AtomicU64,
    evictions: AtomicU64,
    kv_bytes: AtomicU64,
}

impl PrefixCacheStats {
    /// Prompt tokens looked up.
    pub fn queried_tokens(&self) -> u64 {
        self.queried.load(Ordering::Relaxed)
    }

    /// Prompt tokens found cached, whose prefill was skipped.
    pub fn hit_tokens(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Tokens whose cache entries a later prompt could start from (running and kept rows).
    pub fn resident_tokens(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Kept rows dropped to stay within the budget.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Bytes of the model's KV buffers.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes.load(Ordering::Relaxed)
    }

    pub fn set_kv_bytes(&self, bytes: u64) {
        self.kv_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A prompt of `queried` tokens was looked up and `hits` of them found.
    pub(crate) fn record_lookup(&self, queried: usize, hits: usize) {
        self.queried.fetch_add(queried as u64, Ordering::Relaxed);
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_resident_tokens(&self, tokens: usize) {
        self.resident.store(tokens as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Holder {
    #[default]
    Free,
    Sequence(u64),
    /// A finished sequence's row, kept for a later prompt.
    Kept,
}

#[derive(Debug, Default)]
struct Row {
    holder: Holder,
    /// Positions cached.
    length: usize,
    /// The tokens of positions `0..length`, while `reusable`.
    tokens: Vec<i64>,
    /// Whether the positions were computed from `tokens` at positions `0..length` (a guest may place
    /// tokens elsewhere, and then the row is its own).
    reusable: bool,
    /// When the row was last used, on [`CacheRows`]' clock.
    used: u64,
}

/// Where a sequence's first step runs.
#[derive(Debug)]
pub struct Start {
    pub row: usize,
    /// Leading tokens of the step already cached in `row`: only the rest is to be computed.
    pub cached: usize,
    /// The row to copy positions `0..cached` from into `row` before anything runs on either.
    pub copy_from: Option<usize>,
}

/// The rows of one model's shared KV buffers.
pub struct CacheRows {
    rows: Vec<Row>,
    clock: u64,
    /// Bytes kept rows may take; 0 switches prefix caching off (no row is shared or kept).
    budget: u64,
    stats: Arc<PrefixCacheStats>,
}

impl CacheRows {
    pub fn new(budget: u64) -> Self {
        Self {
            rows: Vec::new(),
            clock: 0,
            budget,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &Arc<PrefixCacheStats> {
        &self.stats
    }

    /// Rows in use (held, kept, or free below one that is).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row_of(&self, sequence: u64) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.holder == Holder::Sequence(sequence))
    }

    /// Positions cached in `row`.
    pub fn length(&self, row: usize) -> usize {
        self.rows[row].length
    }

    /// Positions cached in every row, in row order.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.length).collect()
    }

    /// A step of `sequence` at position 0: its first, or a restart. Takes the row it runs in, starting
    /// from the longest cached prefix of `ids` when `positions` place them at `0..`. At least the last
    /// token is left to compute, since the step must return its logits.
    pub fn start(&mut self, sequence: u64, ids: &[i64], positions: &[i64]) -> Start {
        let enabled = self.budget > 0;
        let canonical = positions.iter().copied().eq(0..positions.len() as i64);
        let own = self.row_of(sequence);
        let best = if enabled && canonical {
            self.longest_prefix(ids, own)
        } else {
            None
        };
        let now = self.tick();
        let start = match best {
            Some((row, cached)) if Some(row) == own => {
                self.rows[row].truncate(cached);
                Start {
                    row,
                    cached,
                    copy_from: None,
                }
            }
            Some((row, cached))
                if self.rows[row].holder == Holder::Kept && self.rows[row].length == cached =>
            {
                self.release(own);
                self.rows[row].holder = Holder::Sequence(sequence);
                Start {
                    row,
                    cached,
                    copy_from: None,
                }
            }
            best => {
                self.release(own);
                let row = self.free_row();
                let cached = best.map_or(0, |(_, cached)| cached);
                self.rows[row] = Row {
                    holder: Holder::Sequence(sequence),
                    length: cached,
                    tokens: ids[..cached].to_vec(),
                    reusable: canonical,
                    used: now,
                };
                Start {
                    row,
                    cached,
                    copy_from: best.map(|(source, _)| source),
                }
            }
        };
        self.rows[start.row].used = now;
        if let Some(source) = start.copy_from {
            self.rows[source].used = now;
        }
        self.stats
            .record_lookup(if enabled { ids.len() } else { 0 }, start.cached);
        start
    }

    /// The copy `start` asked for failed: its row holds nothing, and its prefix was not a hit.
    pub fn copy_failed(&mut self, start: &Start) {
        self.rows[start.row].truncate(0);
        self.stats
            .hits
            .fetch_sub(start.cached as u64, Ordering::Relaxed);
    }

    /// A run computed `ids` at `positions` in `row`, after its cached positions.
    pub fn advanced(&mut self, row: usize, ids: &[i64], positions: &[i64]) {
        let now = self.tick();
        let r = &mut self.rows[row];
        let after = r.length as i64;
        r.reusable &= positions
            .iter()
            .copied()
            .eq(after..after + ids.len() as i64);
        if r.reusable {
            r.tokens.extend_from_slice(ids);
        } else {
            r.tokens = Vec::new();
        }
        r.length += ids.len();
        r.used = now;
    }

    /// `sequence` ended: its row is kept if it can serve a later prompt, and kept rows beyond the budget
    /// (each taking `row_bytes`) are evicted, least recently used first. Of two kept rows one of which
    /// holds the other's tokens and more (the same request twice), only the longer stays: it serves every
    /// prompt the shorter would. Returns whether no row is left.
    pub fn close(&mut self, sequence: u64, row_bytes: u64) -> bool {
        let now = self.tick();
        if let Some(row) = self.row_of(sequence) {
            let r = &mut self.rows[row];
            if self.budget > 0 && r.reusable && r.length > 0 {
                r.holder = Holder::Kept;
                r.used = now;
                self.drop_redundant(row);
            } else {
                *r = Row::default();
            }
        }
        let room = self.budget.checked_div(row_bytes).unwrap_or(u64::MAX);
        let mut kept = self
            .rows
            .iter()
            .filter(|r| r.holder == Holder::Kept)
            .count() as u64;
        while kept > room {
            let oldest = self
                .rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.holder == Holder::Kept)
                .min_by_key(|(_, r)| r.used)
                .map(|(row, _)| row)
                .expect("kept rows remain");
            self.rows[oldest] = Row::default();
            self.stats.record_eviction();
            kept -= 1;
        }
        while self.rows.last().is_some_and(|r| r.holder == Holder::Free) {
            self.rows.pop();
        }
        self.rows.is_empty()
    }

    /// Frees whichever of the newly kept `row` and another kept row holds a prefix of the other's tokens.
    fn drop_redundant(&mut self, row: usize) {
        let tokens = &self.rows[row].tokens;
        let covering = self.rows.iter().enumerate().find(|&(other, r)| {
            other != row
                && r.holder == Holder::Kept
                && (r.tokens.starts_with(tokens) || tokens.starts_with(&r.tokens))
        });
        if let Some((other, r)) = covering {
            let shorter = if r.tokens.len() >= tokens.len() {
                row
            } else {
                other
            };
            let used = self.rows[row].used.max(self.rows[other].used);
            self.rows[shorter] = Row::default();
            let longer = if shorter == row { other } else { row };
            self.rows[longer].used = used;
        }
    }

    /// Publishes the tokens resident (once per round, not per token).
    pub fn publish(&self) {
        let resident: usize = self
            .rows
            .iter()
            .filter(|r| r.reusable && r.holder != Holder::Free)
            .map(|r| r.length)
            .sum();
        self.stats.set_resident_tokens(resident);
    }

    /// The row holding the longest prefix of `ids` (at most all but its last token), preferring the
    /// sequence's own row, then a kept row it covers whole (taken over without a copy).
    fn longest_prefix(&self, ids: &[i64], own: Option<usize>) -> Option<(usize, usize)> {
        let limit = ids.len().saturating_sub(1);
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.reusable && r.holder != Holder::Free)
            .map(|(row, r)| {
                let shared = r
                    .tokens
                    .iter()
                    .zip(&ids[..limit])
                    .take_while(|(a, b)| a == b)
                    .count();
                let whole = r.holder == Holder::Kept && shared == r.length;
                (row, shared, (Some(row) == own, whole))
            })
            .filter(|&(_, shared, _)| shared > 0)
            .max_by_key(|&(_, shared, preference)| (shared, preference))
            .map(|(row, shared, _)| (row, shared))
    }

    /// The lowest free row, so the rows in use stay together and a batched pass covers few idle ones.
    fn free_row(&mut self) -> usize {
        match self.rows.iter().position(|r| r.holder == Holder::Free) {
            Some(row) => row,
            None => {
                self.rows.push(Row::default());
                self.rows.len() - 1
            }
        }
    }

    fn release(&mut self, row: Option<usize>) {
        if let Some(row) = row {
            self.rows[row] = Row::default();
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

impl Row {
    fn truncate(&mut self, length: usize) {
        self.length = self.length.min(length);
        self.tokens.truncate(self.length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1000;
    const ROW: u64 = 400;

    fn positions(n: usize) -> Vec<i64> {
        (0..n as i64).collect()
    }

    /// Runs a whole prompt for `sequence` as a scheduler would: start, then compute the rest.
    fn prefill(rows: &mut CacheRows, sequence: u64, ids: &[i64]) -> Start {
        let start = rows.start(sequence, ids, &positions(ids.len()));
        let rest = &ids[start.cached..];
        let at: Vec<i64> = (start.cached as i64..ids.len() as i64).collect();
        rows.advanced(start.row, rest, &at);
        start
    }

    #[test]
    fn a_new_prompt_starts_from_a_finished_one_it_extends() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[5, 6, 7]);
        rows.advanced(0, &[8], &[3]);
        assert!(!rows.close(1, ROW));
        let start = prefill(&mut rows, 2, &[5, 6, 7, 8, 9, 10]);
        assert_eq!(
            (start.row, start.cached, start.copy_from),
            (0, 4, None),
            "covered whole: taken over in place"
        );
        assert_eq!(rows.stats().queried_tokens(), 9);
        assert_eq!(rows.stats().hit_tokens(), 4);
    }

    #[test]
    fn a_partial_match_is_copied_so_the_source_keeps_its_tokens() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[5, 6, 7, 8]);
        rows.close(1, ROW);
        let start = prefill(&mut rows, 2, &[5, 6, 9]);
        assert_eq!((start.row, start.cached, start.copy_from), (1, 2, Some(0)));
        // The kept row still serves its whole prompt.
        let again = prefill(&mut rows, 3, &[5, 6, 7, 8, 1]);
        assert_eq!((again.row, again.cached, again.copy_from), (0, 4, None));
    }

    #[test]
    fn running_rows_share_their_prefix_and_the_last_token_is_always_computed() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[1, 2, 3]);
        let start = prefill(&mut rows, 2, &[1, 2, 3]);
        assert_eq!((start.row, start.cached, start.copy_from), (1, 2, Some(0)));
    }

    #[test]
    fn a_restart_keeps_its_own_prefix() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[1, 2, 3, 4]);
        let start = prefill(&mut rows, 1, &[1, 2, 9]);
        assert_eq!((start.row, start.cached, start.copy_from), (0, 2, None));
        assert_eq!(rows.length(0), 3);
    }

    #[test]
    fn tokens_placed_elsewhere_are_neither_reused_nor_kept() {
        let mut rows = CacheRows::new(BUDGET);
        rows.start(1, &[1, 2, 3], &[4, 5, 6]);
        rows.advanced(0, &[1, 2, 3], &[4, 5, 6]);
        assert!(rows.close(1, ROW), "not kept");
        prefill(&mut rows, 2, &[1, 2, 3]);
        rows.advanced(0, &[4], &[7]);
        let start = prefill(&mut rows, 3, &[1, 2, 3, 4, 5]);
        assert_eq!(start.cached, 0, "a gap in the positions");
    }

    #[test]
    fn kept_rows_beyond_the_budget_go_least_recently_used_first() {
        let mut rows = CacheRows::new(BUDGET);
        for sequence in 0..3 {
            prefill(&mut rows, sequence, &[sequence as i64 + 10, 1]);
        }
        rows.close(0, ROW);
        rows.close(2, ROW);
        // Sequence 0's row is used again (taken over, then kept once more), so 2's is the older.
        prefill(&mut rows, 3, &[10, 1, 2]);
        rows.close(3, ROW);
        rows.close(1, ROW);
        assert_eq!(rows.stats().evictions(), 1);
        assert_eq!(prefill(&mut rows, 4, &[12, 1, 2]).cached, 0, "evicted");
        assert_eq!(prefill(&mut rows, 5, &[10, 1, 2, 3]).cached, 3);
    }

    #[test]
    fn a_zero_budget_shares_and_keeps_nothing() {
        let mut rows = CacheRows::new(0);
        prefill(&mut rows, 1, &[1, 2, 3]);
        assert_eq!(prefill(&mut rows, 2, &[1, 2, 3]).cached, 0);
        rows.close(2, ROW);
        assert!(rows.close(1, ROW));
        assert_eq!(rows.stats().queried_tokens(), 0);
    }

    #[test]
    fn the_same_prompt_twice_keeps_one_row() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[1, 2, 3]);
        rows.advanced(0, &[4], &[3]);
        rows.close(1, ROW);
        assert_eq!(prefill(&mut rows, 2, &[1, 2, 3]).copy_from, Some(0));
        rows.close(2, ROW);
        assert_eq!(rows.len(), 1, "the shorter copy is dropped");
        assert_eq!(prefill(&mut rows, 3, &[1, 2, 3, 4, 5]).cached, 4);
        assert_eq!(rows.stats().evictions(), 0);
    }

    #[test]
    fn resident_tokens_count_running_and_kept_rows() {
        let mut rows = CacheRows::new(BUDGET);
        prefill(&mut rows, 1, &[1, 2, 3]);
        prefill(&mut rows, 2, &[4, 5]);
        rows.close(1, ROW);
        rows.publish();
        assert_eq!(rows.stats().resident_tokens(), 5);
    }
}
