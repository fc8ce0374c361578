//! The blocks of a paged KV cache (OpenVINO's PagedAttention): which blocks each sequence holds, which
//! are free, and the prefix cache over full blocks, the way vLLM's automatic prefix caching keeps it.
//!
//! A block holds `block_size` consecutive positions of one sequence. Once a sequence has computed all of a
//! block's positions from tokens at their own positions (`0..`, as a prompt places them), the block is
//! registered under its tokens and the registered block before it. A new prompt starts from the longest
//! chain of registered blocks its tokens walk from position 0 (at most all but its last token, whose
//! logits are the step's answer), and shares those blocks without a copy: a full block is never written
//! again, since a sequence writes only past its length. Granularity is the block: the prompt's tokens past
//! its last cached block are computed. A registered block no sequence holds is kept for later prompts
//! while the kept blocks fit the budget; the least recently used go first, a finished sequence's tail
//! before its head, so a chain is never cut above blocks that stay. Allocation takes free blocks first,
//! then evicts kept ones. The bookkeeping knows nothing of the engine: the scheduler passes each
//! sequence's block list to it.

use std::collections::HashMap;
use std::sync::Arc;

use super::prefix_cache::PrefixCacheStats;

/// What a registered block is: the registered block before it (none for positions `0..block_size`) and
/// the tokens it was computed from.
type Key = (Option<i32>, Box<[i64]>);

#[derive(Default)]
struct Block {
    /// Sequences holding it.
    holders: u32,
    /// Its key, while it is registered.
    key: Option<Key>,
    /// When it was last used, on [`CacheBlocks`]' clock.
    used: u64,
}

struct Sequence {
    /// Its blocks, in position order.
    blocks: Vec<i32>,
    /// Positions cached.
    length: usize,
    /// The tokens of positions `0..length`, while they were all placed at their own positions (a guest
    /// may place tokens elsewhere, and then nothing it computes is shared).
    tokens: Option<Vec<i64>>,
}

/// The blocks of one model's paged caches.
pub struct CacheBlocks {
    block_size: usize,
    blocks: Vec<Block>,
    /// Blocks nobody holds and no key names.
    free: Vec<i32>,
    registered: HashMap<Key, i32>,
    /// Registered blocks nobody holds.
    kept: usize,
    /// How many kept blocks the budget allows; 0 switches prefix caching off (nothing is registered).
    room: usize,
    sequences: HashMap<u64, Sequence>,
    clock: u64,
    stats: Arc<PrefixCacheStats>,
}

impl CacheBlocks {
    /// Blocks of `block_size` positions, each taking `block_bytes`; kept blocks may take `budget` bytes.
    pub fn new(block_size: usize, block_bytes: u64, budget: u64) -> Self {
        Self {
            block_size,
            blocks: Vec::new(),
            free: Vec::new(),
            registered: HashMap::new(),
            kept: 0,
            room: budget.checked_div(block_bytes).unwrap_or(0) as usize,
            sequences: HashMap::new(),
            clock: 0,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &Arc<PrefixCacheStats> {
        &self.stats
    }

    /// Blocks the caches hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be given to sequences: free ones, and kept ones (evicted when taken).
    pub fn available(&self) -> usize {
        self.free.len() + self.kept
    }

    /// Whether no sequence runs and nothing is kept, so the caches' contents may go.
    pub fn unused(&self) -> bool {
        self.sequences.is_empty() && self.kept == 0
    }

    /// The caches now hold `capacity` blocks, the new ones free.
    pub fn grow(&mut self, capacity: usize) {
        let old = self.blocks.len();
        self.blocks.resize_with(capacity.max(old), Block::default);
        self.free.extend((old as i32..capacity as i32).rev());
    }

    /// The caches were emptied to `capacity` blocks; only while [`unused`](Self::unused).
    pub fn reset(&mut self, capacity: usize) {
        debug_assert!(self.unused());
        self.blocks.clear();
        self.free.clear();
        self.registered.clear();
        self.grow(capacity);
    }

    /// Positions cached for `sequence`, if it runs.
    pub fn length(&self, sequence: u64) -> Option<usize> {
        self.sequences.get(&sequence).map(|s| s.length)
    }

    pub fn blocks(&self, sequence: u64) -> &[i32] {
        &self.sequences[&sequence].blocks
    }

    /// A step of `sequence` at position 0: its first, or a restart. The sequence starts from the longest
    /// chain of registered blocks `ids` walk when `positions` place them at `0..`; returns how many
    /// leading tokens are cached.
    pub fn start(&mut self, sequence: u64, ids: &[i64], positions: &[i64]) -> usize {
        self.close(sequence);
        let canonical = positions.iter().copied().eq(0..positions.len() as i64);
        let looked_up = self.room > 0 && canonical;
        let shared = if looked_up {
            self.chain(&ids[..ids.len().saturating_sub(1)])
        } else {
            Vec::new()
        };
        let cached = shared.len() * self.block_size;
        if looked_up {
            self.stats.record_lookup(ids.len(), cached);
        }
        let now = self.tick();
        for &block in &shared {
            let b = &mut self.blocks[block as usize];
            if b.holders == 0 {
                self.kept -= 1;
            }
            b.holders += 1;
            b.used = now;
        }
        self.sequences.insert(
            sequence,
            Sequence {
                blocks: shared,
                length: cached,
                tokens: canonical.then(|| ids[..cached].to_vec()),
            },
        );
        cached
    }

    /// Blocks `sequence` lacks to hold `length` positions.
    pub fn missing(&self, sequence: u64, length: usize) -> usize {
        length
            .div_ceil(self.block_size)
            .saturating_sub(self.sequences[&sequence].blocks.len())
    }

    /// Gives `sequence` the blocks it lacks to hold `length` positions: free ones first, then the least
    /// recently used kept ones. The caller checked [`available`](Self::available).
    pub fn extend(&mut self, sequence: u64, length: usize) {
        for _ in 0..self.missing(sequence, length) {
            let block = match self.free.pop() {
                Some(block) => block,
                None => self
                    .evict()
                    .expect("the caller checked the available blocks"),
            };
            self.blocks[block as usize].holders = 1;
            self.sequences
                .get_mut(&sequence)
                .expect("a running sequence")
                .blocks
                .push(block);
        }
    }

    /// A pass computed `ids` at `positions` for `sequence`, after its cached positions: the blocks it
    /// filled are registered, unless the same tokens already are.
    pub fn advanced(&mut self, sequence: u64, ids: &[i64], positions: &[i64]) {
        let Some(s) = self.sequences.get_mut(&sequence) else {
            return;
        };
        let before = s.length;
        s.length += ids.len();
        let in_place = positions.iter().copied().eq(before as i64..s.length as i64);
        match (&mut s.tokens, in_place) {
            (Some(tokens), true) => tokens.extend_from_slice(ids),
            (tokens, _) => *tokens = None,
        }
        if self.room == 0 {
            return;
        }
        let Some(tokens) = &s.tokens else { return };
        let size = self.block_size;
        for index in before / size..s.length / size {
            let parent = match index {
                0 => None,
                _ => Some(s.blocks[index - 1]),
            };
            // A chain is only found from its head: below an unregistered block nothing is reachable.
            if parent.is_some_and(|p| self.blocks[p as usize].key.is_none()) {
                return;
            }
            let block = s.blocks[index];
            let key: Key = (parent, tokens[index * size..(index + 1) * size].into());
            if !self.registered.contains_key(&key) {
                self.registered.insert(key.clone(), block);
                self.blocks[block as usize].key = Some(key);
            }
        }
    }

    /// `sequence` ended (or restarts): its registered blocks no other sequence holds are kept, its others
    /// freed, and kept blocks beyond the budget evicted.
    pub fn close(&mut self, sequence: u64) {
        let Some(s) = self.sequences.remove(&sequence) else {
            return;
        };
        // The tail is stamped first, so it is evicted before the head.
        for &block in s.blocks.iter().rev() {
            let now = self.tick();
            let b = &mut self.blocks[block as usize];
            b.holders -= 1;
            if b.holders == 0 {
                if b.key.is_some() {
                    b.used = now;
                    self.kept += 1;
                } else {
                    self.free.push(block);
                }
            }
        }
        while self.kept > self.room {
            let block = self.evict().expect("kept blocks remain");
            self.free.push(block);
        }
    }

    /// Publishes the tokens registered blocks hold (once per round, not per token).
    pub fn publish(&self) {
        self.stats
            .set_resident_tokens(self.registered.len() * self.block_size);
    }

    /// The registered blocks that hold `ids` from position 0, as far as whole blocks go.
    fn chain(&self, ids: &[i64]) -> Vec<i32> {
        let mut chain = Vec::new();
        let mut parent = None;
        for tokens in ids.chunks_exact(self.block_size) {
            let key: Key = (parent, tokens.into());
            match self.registered.get(&key) {
                Some(&block) => {
                    chain.push(block);
                    parent = Some(block);
                }
                None => break,
            }
        }
        chain
    }

    /// Unregisters the least recently used kept block and returns it, no longer kept.
    fn evict(&mut self) -> Option<i32> {
        let (index, block) = self
            .blocks
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| b.holders == 0 && b.key.is_some())
            .min_by_key(|(_, b)| b.used)?;
        let key = block.key.take().expect("filtered on its key");
        self.registered.remove(&key);
        self.kept -= 1;
        self.stats.record_eviction();
        Some(index as i32)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 4;
    const BLOCK_BYTES: u64 = 100;

    fn positions(range: std::ops::Range<usize>) -> Vec<i64> {
        range.map(|p| p as i64).collect()
    }

    /// Blocks of 4 positions, `room` of them kept at most, 64 in the caches.
    fn cache(room: u64) -> CacheBlocks {
        let mut cache = CacheBlocks::new(SIZE, BLOCK_BYTES, room * BLOCK_BYTES);
        cache.grow(64);
        cache
    }

    /// Runs a whole prompt for `sequence` as the scheduler does: start, blocks, compute the rest.
    fn prefill(cache: &mut CacheBlocks, sequence: u64, ids: &[i64]) -> usize {
        let cached = cache.start(sequence, ids, &positions(0..ids.len()));
        cache.extend(sequence, ids.len());
        cache.advanced(sequence, &ids[cached..], &positions(cached..ids.len()));
        cached
    }

    fn tokens(n: i64) -> Vec<i64> {
        (100..100 + n).collect()
    }

    #[test]
    fn a_new_prompt_shares_the_full_blocks_of_a_finished_one() {
        let mut cache = cache(8);
        assert_eq!(prefill(&mut cache, 1, &tokens(10)), 0);
        let first = cache.blocks(1).to_vec();
        cache.close(1);
        assert_eq!(
            cache.kept, 2,
            "two full blocks kept, the partial third freed"
        );
        assert_eq!(prefill(&mut cache, 2, &tokens(14)), 8);
        assert_eq!(cache.blocks(2)[..2], first[..2], "shared, not copied");
        assert_eq!(cache.stats().queried_tokens(), 24);
        assert_eq!(cache.stats().hit_tokens(), 8);
    }

    #[test]
    fn running_sequences_share_and_the_last_token_is_always_computed() {
        let mut cache = cache(8);
        prefill(&mut cache, 1, &tokens(8));
        assert_eq!(
            prefill(&mut cache, 2, &tokens(8)),
            4,
            "all but the last token"
        );
        assert_eq!(cache.blocks(1)[0], cache.blocks(2)[0]);
        assert_ne!(cache.blocks(1)[1], cache.blocks(2)[1]);
        cache.close(1);
        assert_eq!(cache.kept, 1, "its second block; the first is still held");
        cache.close(2);
        assert_eq!(cache.kept, 2);
    }

    #[test]
    fn a_chain_is_found_from_its_head_only() {
        let mut cache = cache(8);
        prefill(&mut cache, 1, &tokens(12));
        cache.close(1);
        let mut other = tokens(12);
        other[1] = 7;
        assert_eq!(
            prefill(&mut cache, 2, &other),
            0,
            "the same later blocks after another head"
        );
    }

    #[test]
    fn decoded_tokens_register_the_blocks_they_fill() {
        let mut cache = cache(8);
        prefill(&mut cache, 1, &tokens(3));
        for position in 3..9 {
            cache.extend(1, position + 1);
            cache.advanced(1, &[100 + position as i64], &[position as i64]);
        }
        cache.close(1);
        assert_eq!(prefill(&mut cache, 2, &tokens(12)), 8);
    }

    #[test]
    fn tokens_placed_elsewhere_are_neither_shared_nor_kept() {
        let mut cache = cache(8);
        let ids = tokens(8);
        let moved: Vec<i64> = (10..18).collect();
        assert_eq!(cache.start(1, &ids, &moved), 0);
        cache.extend(1, 8);
        cache.advanced(1, &ids, &moved);
        cache.close(1);
        assert_eq!(cache.kept, 0);
        assert_eq!(cache.free.len(), 64);
        assert_eq!(cache.stats().queried_tokens(), 0, "not a lookup");
    }

    #[test]
    fn kept_blocks_beyond_the_budget_go_least_recently_used_tail_first() {
        let mut cache = cache(3);
        prefill(&mut cache, 1, &tokens(8));
        cache.close(1);
        let other: Vec<i64> = (200..208).collect();
        prefill(&mut cache, 2, &other);
        cache.close(2);
        assert_eq!(cache.kept, 3);
        assert_eq!(cache.stats().evictions(), 1);
        assert_eq!(
            prefill(&mut cache, 3, &tokens(9)),
            4,
            "the first prompt lost its tail"
        );
        cache.close(3);
        assert_eq!(
            prefill(&mut cache, 4, &other),
            4,
            "and the second kept its head"
        );
    }

    #[test]
    fn allocation_evicts_kept_blocks_when_none_is_free() {
        let mut cache = CacheBlocks::new(SIZE, BLOCK_BYTES, 8 * BLOCK_BYTES);
        cache.grow(2);
        prefill(&mut cache, 1, &tokens(8));
        cache.close(1);
        assert_eq!(cache.available(), 2);
        let other: Vec<i64> = (200..208).collect();
        assert_eq!(prefill(&mut cache, 2, &other), 0);
        assert_eq!(cache.kept, 0);
        assert_eq!(cache.stats().evictions(), 2);
    }

    #[test]
    fn a_restart_finds_its_own_blocks() {
        let mut cache = cache(8);
        prefill(&mut cache, 1, &tokens(10));
        assert_eq!(prefill(&mut cache, 1, &tokens(10)), 8);
        assert_eq!(cache.sequences.len(), 1);
    }

    #[test]
    fn a_zero_budget_shares_and_keeps_nothing() {
        let mut cache = cache(0);
        prefill(&mut cache, 1, &tokens(8));
        assert_eq!(prefill(&mut cache, 2, &tokens(8)), 0);
        cache.close(1);
        cache.close(2);
        assert!(cache.unused());
        assert_eq!(cache.free.len(), 64);
        assert_eq!(cache.stats().queried_tokens(), 0);
    }

    #[test]
    fn the_same_blocks_computed_twice_are_registered_once() {
        let mut cache = cache(8);
        cache.start(1, &tokens(8), &positions(0..8));
        cache.start(2, &tokens(8), &positions(0..8));
        for sequence in [1, 2] {
            cache.extend(sequence, 8);
            cache.advanced(sequence, &tokens(8), &positions(0..8));
        }
        cache.publish();
        assert_eq!(cache.stats().resident_tokens(), 8);
        cache.close(1);
        cache.close(2);
        assert_eq!(cache.kept, 2);
        assert_eq!(cache.free.len(), 62);
    }
}
