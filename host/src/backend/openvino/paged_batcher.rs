//! Continuous batching on OpenVINO's PagedAttention ([`PagedModel`]), the way OpenVINO GenAI's
//! continuous batching pipeline runs: every execution context of the model hands its steps to one
//! scheduler thread, and each round is one pass holding every waiting single-token step and, beside them,
//! prompt tokens up to a budget (several prompts in one pass, a long one in chunks). Each sequence holds a
//! list of cache blocks, so sequences of any lengths share a pass without padding; a prompt starts from
//! the full blocks of its prefix that earlier or running sequences computed, and a sequence's blocks go
//! back when its context is dropped ([`CacheBlocks`]). The contexts, the steps and the gathering of
//! rounds are [`batching`]'s.

use std::collections::VecDeque;
use std::sync::Arc;

use super::paged::{PagedModel, Pass};
use crate::backend::batching::{self, Contexts, Reply, Request, Rounds, Step, guarded, outputs};
use crate::backend::cache_blocks::CacheBlocks;
use crate::backend::prefix_cache::PrefixCacheStats;
use crate::backend::{
    BackendError, BackendExecutionContext, BackendGraph, ElementType, Tensor, f32_bytes,
};

/// Prompt tokens a pass takes beside running streams' steps: they wait at most this much prefill for
/// their next token.
const PREFILL_BESIDE_DECODES: usize = 128;

/// Prompt tokens a pass takes when no stream is decoding: prompts that arrive together run together.
const PREFILL_ALONE: usize = 1024;

/// The fewest blocks the caches grow to; they double from there.
const FIRST_BLOCKS: usize = 16;

/// A model served by a paged scheduler.
pub(super) struct PagedGraph {
    contexts: Contexts,
    stats: Arc<PrefixCacheStats>,
}

impl PagedGraph {
    /// Serves `model`; blocks no sequence holds may keep `prefix_cache_bytes` for later prompts.
    pub(super) fn start(model: PagedModel, prefix_cache_bytes: u64) -> Result<Self, BackendError> {
        tracing::info!(
            block_positions = model.block_size,
            block_bytes = model.block_bytes,
            "OpenVINO batches the model's contexts over PagedAttention"
        );
        let cache = CacheBlocks::new(
            model.block_size,
            model.block_bytes as u64,
            prefix_cache_bytes,
        );
        let stats = cache.stats().clone();
        let scheduler = Scheduler {
            model,
            cache,
            decodes: Vec::new(),
            prefills: VecDeque::new(),
            pass: Pass::default(),
            items: Vec::new(),
        };
        Ok(Self {
            contexts: batching::start("nnspin-paged", scheduler)?,
            stats,
        })
    }
}

impl BackendGraph for PagedGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        Ok(Box::new(self.contexts.context()))
    }

    fn prefix_cache(&self) -> Option<Arc<PrefixCacheStats>> {
        Some(self.stats.clone())
    }

    fn batches_contexts(&self) -> bool {
        true
    }

    fn sequences_per_context(&self) -> u32 {
        batching::SEQUENCES_PER_CONTEXT as u32
    }
}

/// A step waiting for its tokens to run.
struct Pending {
    sequence: u64,
    step: Step,
    reply: Reply,
    /// Tokens of the step already cached: found in the prefix cache, or run (a prompt runs in chunks).
    done: usize,
    /// For a step at position 0, how many of its tokens were found cached.
    cached: Option<usize>,
}

/// Which tokens of a pending step a pass runs.
struct Item {
    /// Whether the step waits in `prefills[index]` (else in `decodes[index]`).
    prefill: bool,
    index: usize,
    end: usize,
}

impl Item {
    /// The step this item runs tokens of.
    fn pending<'a>(&self, prefills: &'a VecDeque<Pending>, decodes: &'a [Pending]) -> &'a Pending {
        if self.prefill {
            &prefills[self.index]
        } else {
            &decodes[self.index]
        }
    }
}

struct Scheduler {
    model: PagedModel,
    cache: CacheBlocks,
    decodes: Vec<Pending>,
    /// Prompts (steps of more than one token), first come first served.
    prefills: VecDeque<Pending>,
    /// The buffers of the next pass, reused.
    pass: Pass,
    items: Vec<Item>,
}

impl Rounds for Scheduler {
    fn accept(&mut self, request: Request) {
        match request {
            Request::Step {
                sequence,
                step,
                reply,
            } => {
                let past = step.past();
                let cached = if past == 0 {
                    // A sequence's first step, or a restart.
                    Some(self.cache.start(sequence, &step.ids, &step.positions))
                } else {
                    let held = self.cache.length(sequence).unwrap_or(0);
                    if held != past {
                        let _ = reply.send(Err(batching::does_not_continue(past, held)));
                        return;
                    }
                    None
                };
                let pending = Pending {
                    sequence,
                    step,
                    reply,
                    done: cached.unwrap_or(0),
                    cached,
                };
                if pending.step.ids.len() == 1 {
                    self.decodes.push(pending);
                } else {
                    self.prefills.push_back(pending);
                }
            }
            Request::Close { sequence } => {
                self.cache.close(sequence);
                if self.cache.unused() && self.cache.capacity() > FIRST_BLOCKS {
                    // Nothing runs or is kept: give the caches' memory back until the next request.
                    match self.model.release(FIRST_BLOCKS) {
                        Ok(()) => {
                            self.cache.reset(FIRST_BLOCKS);
                            self.publish_bytes();
                        }
                        Err(e) => tracing::warn!("cannot shrink the paged caches: {e}"),
                    }
                }
            }
        }
    }

    fn idle(&self) -> bool {
        self.decodes.is_empty() && self.prefills.is_empty()
    }

    fn decodes_waiting(&self) -> bool {
        !self.decodes.is_empty()
    }

    fn awaits_any(&self, last_round: &[u64]) -> bool {
        last_round.iter().any(|sequence| {
            self.cache.length(*sequence).is_some()
                && !self.decodes.iter().any(|p| p.sequence == *sequence)
                && !self.prefills.iter().any(|p| p.sequence == *sequence)
        })
    }

    /// One pass: every waiting single-token step, and prompt tokens up to the budget.
    fn round(&mut self) -> Vec<u64> {
        let served: Vec<u64> = self.decodes.iter().map(|p| p.sequence).collect();
        self.plan();
        if !self.items.is_empty() {
            let result = guarded(|| self.run());
            self.answer(result);
        }
        served
    }
}

impl Scheduler {
    /// Tells the metrics what the caches take.
    fn publish_bytes(&self) {
        self.cache
            .stats()
            .set_kv_bytes((self.cache.capacity() * self.model.block_bytes) as u64);
    }

    /// Chooses the next pass's tokens: every decode, then prompts in order, within the budget.
    fn plan(&mut self) {
        self.items.clear();
        for index in 0..self.decodes.len() {
            self.items.push(Item {
                prefill: false,
                index,
                end: 1,
            });
        }
        let mut budget = if self.decodes.is_empty() {
            PREFILL_ALONE
        } else {
            PREFILL_BESIDE_DECODES
        };
        for (index, p) in self.prefills.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let end = p.step.ids.len().min(p.done + budget);
            budget -= end - p.done;
            self.items.push(Item {
                prefill: true,
                index,
                end,
            });
        }
    }

    fn pending(&self, item: &Item) -> &Pending {
        item.pending(&self.prefills, &self.decodes)
    }

    /// The sequence of the planned `item` and the positions it holds once the pass has run.
    fn extent(&self, item: &Item) -> (u64, usize) {
        let p = self.pending(item);
        let held = self.cache.length(p.sequence).expect("accepted steps run");
        (p.sequence, held + item.end - p.done)
    }

    /// Gives every sequence of the planned pass the blocks its new tokens need, growing the caches when
    /// the free and kept blocks do not suffice.
    fn allocate(&mut self) -> Result<(), BackendError> {
        let needed: usize = self
            .items
            .iter()
            .map(|item| {
                let (sequence, length) = self.extent(item);
                self.cache.missing(sequence, length)
            })
            .sum();
        let available = self.cache.available();
        if needed > available {
            let capacity = self.cache.capacity();
            let blocks = (capacity * 2)
                .max(capacity + needed - available)
                .max(FIRST_BLOCKS);
            self.model.reserve(blocks)?;
            self.cache.grow(blocks);
            self.publish_bytes();
        }
        for i in 0..self.items.len() {
            let (sequence, length) = self.extent(&self.items[i]);
            self.cache.extend(sequence, length);
        }
        Ok(())
    }

    /// Runs the planned pass; the logits of the items that complete their steps, in item order.
    fn run(&mut self) -> Result<Vec<Tensor>, BackendError> {
        self.allocate()?;
        let mut pass = std::mem::take(&mut self.pass);
        pass.clear();
        for item in &self.items {
            let p = self.pending(item);
            pass.push(
                &p.step.ids[p.done..item.end],
                &p.step.positions[p.done..item.end],
                self.cache.length(p.sequence).expect("accepted steps run"),
                self.cache.blocks(p.sequence),
            );
            if item.end == p.step.ids.len() {
                pass.want_last();
            }
        }
        // A pass of prompt chunks that all continue still computes one row of logits, discarded.
        let discard = pass.logits_indices.is_empty();
        if discard {
            pass.want_last();
        }
        tracing::trace!(
            sequences = pass.sequences(),
            tokens = pass.ids.len(),
            "paged pass"
        );
        let vocabulary = self.model.vocabulary;
        let result = self.model.run(&pass).map(|logits| {
            logits
                .chunks_exact(vocabulary)
                .take(if discard {
                    0
                } else {
                    pass.logits_indices.len()
                })
                .map(|row| Tensor {
                    dims: vec![1, 1, vocabulary as u32],
                    ty: ElementType::F32,
                    data: f32_bytes(row),
                })
                .collect()
        });
        self.pass = pass;
        result
    }

    /// Advances the sequences of the pass and answers the steps it completed (or failed).
    fn answer(&mut self, result: Result<Vec<Tensor>, BackendError>) {
        let mut logits = match result {
            Ok(logits) => Some(logits.into_iter()),
            Err(e) => {
                // Every step of the pass fails; the sequences keep what they held before it.
                let message = e.to_string();
                for item in &self.items {
                    let p = self.pending(item);
                    let _ = p.reply.send(Err(BackendError::Runtime(message.clone())));
                }
                None
            }
        };
        let mut finished_prefills = Vec::new();
        for item in std::mem::take(&mut self.items) {
            let (sequence, done, total) = {
                let p = self.pending(&item);
                (p.sequence, p.done, p.step.ids.len())
            };
            let complete = item.end == total;
            if let Some(logits) = logits.as_mut() {
                // Read from the queues alone, so the cache can advance meanwhile.
                let p = item.pending(&self.prefills, &self.decodes);
                self.cache.advanced(
                    sequence,
                    &p.step.ids[done..item.end],
                    &p.step.positions[done..item.end],
                );
                if complete {
                    let row = logits.next().expect("a row per completed step");
                    let _ = p.reply.send(Ok(outputs(row, p.cached)));
                }
            }
            if item.prefill {
                if logits.is_some() && !complete {
                    self.prefills[item.index].done = item.end;
                } else {
                    finished_prefills.push(item.index);
                }
            }
        }
        self.cache.publish();
        self.decodes.clear();
        // Items are in queue order, so the finished prompts leave from the back first.
        for i in finished_prefills.into_iter().rev() {
            self.prefills.remove(i);
        }
    }
}
