//! Continuous batching on OpenVINO's PagedAttention ([`PagedModel`]), the way OpenVINO GenAI's
//! continuous batching pipeline runs: every execution context of the model hands its steps to one
//! scheduler thread, and each round is one pass holding every waiting single-token step and, beside them,
//! prompt tokens up to a budget (several prompts in one pass, a long one in chunks). Each sequence owns a
//! list of cache blocks, so sequences of any lengths share a pass without padding, and a sequence's
//! blocks go back to the free list when its context is dropped. The contexts, the steps and the gathering
//! of rounds are [`batching`]'s.

use std::collections::{HashMap, VecDeque};

use super::paged::{PagedModel, Pass};
use crate::backend::batching::{self, Contexts, Reply, Request, Rounds, Step, guarded, outputs};
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
}

impl PagedGraph {
    pub(super) fn start(model: PagedModel) -> Result<Self, BackendError> {
        tracing::info!(
            block_positions = model.block_size,
            block_bytes = model.block_bytes,
            "OpenVINO batches the model's contexts over PagedAttention"
        );
        let scheduler = Scheduler {
            model,
            sequences: HashMap::new(),
            free: Vec::new(),
            blocks: 0,
            decodes: Vec::new(),
            prefills: VecDeque::new(),
            pass: Pass::default(),
            items: Vec::new(),
        };
        Ok(Self {
            contexts: batching::start("nnspin-paged", scheduler)?,
        })
    }
}

impl BackendGraph for PagedGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        Ok(Box::new(self.contexts.context()))
    }
}

/// What the caches hold of one sequence.
#[derive(Default)]
struct Sequence {
    /// Its blocks, in position order.
    blocks: Vec<i32>,
    /// Positions cached.
    length: usize,
}

/// A step waiting for its tokens to run.
struct Pending {
    sequence: u64,
    step: Step,
    reply: Reply,
    /// Tokens of the step already run (a prompt runs in chunks).
    done: usize,
}

/// Which tokens of a pending step a pass runs.
struct Item {
    /// Whether the step waits in `prefills[index]` (else in `decodes[index]`).
    prefill: bool,
    index: usize,
    end: usize,
}

struct Scheduler {
    model: PagedModel,
    sequences: HashMap<u64, Sequence>,
    /// Blocks no sequence holds.
    free: Vec<i32>,
    /// Blocks the caches hold.
    blocks: usize,
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
                if past == 0 {
                    // A sequence's first step, or a restart.
                    self.close(sequence);
                    self.sequences.insert(sequence, Sequence::default());
                } else {
                    let held = self.sequences.get(&sequence).map_or(0, |s| s.length);
                    if held != past {
                        let _ = reply.send(Err(batching::does_not_continue(past, held)));
                        return;
                    }
                }
                let pending = Pending {
                    sequence,
                    step,
                    reply,
                    done: 0,
                };
                if pending.step.ids.len() == 1 {
                    self.decodes.push(pending);
                } else {
                    self.prefills.push_back(pending);
                }
            }
            Request::Close { sequence } => {
                self.close(sequence);
                if self.sequences.is_empty() && self.blocks > FIRST_BLOCKS {
                    // Nothing is running: give the caches' memory back until the next request.
                    match self.model.release(FIRST_BLOCKS) {
                        Ok(()) => self.reset_blocks(FIRST_BLOCKS),
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
            self.sequences.contains_key(sequence)
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
    /// Frees the blocks of `sequence`.
    fn close(&mut self, sequence: u64) {
        if let Some(closed) = self.sequences.remove(&sequence) {
            self.free.extend(closed.blocks);
        }
    }

    /// Every block free, `blocks` of them.
    fn reset_blocks(&mut self, blocks: usize) {
        self.blocks = blocks;
        self.free = (0..blocks as i32).rev().collect();
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
        if item.prefill {
            &self.prefills[item.index]
        } else {
            &self.decodes[item.index]
        }
    }

    /// Gives every sequence of the planned pass the blocks its new tokens need, growing the caches when
    /// the free blocks do not suffice.
    fn allocate(&mut self) -> Result<(), BackendError> {
        let block_size = self.model.block_size;
        let mut needed = 0;
        for item in &self.items {
            let p = self.pending(item);
            let sequence = &self.sequences[&p.sequence];
            let length = sequence.length + item.end - p.done;
            needed += length
                .div_ceil(block_size)
                .saturating_sub(sequence.blocks.len());
        }
        if needed > self.free.len() {
            let blocks = (self.blocks * 2)
                .max(self.blocks + needed - self.free.len())
                .max(FIRST_BLOCKS);
            self.model.reserve(blocks)?;
            self.free.extend((self.blocks as i32..blocks as i32).rev());
            self.blocks = blocks;
        }
        for i in 0..self.items.len() {
            let (sequence, length) = {
                let p = self.pending(&self.items[i]);
                let s = &self.sequences[&p.sequence];
                (p.sequence, s.length + self.items[i].end - p.done)
            };
            let sequence = self
                .sequences
                .get_mut(&sequence)
                .expect("accepted steps have sequences");
            while sequence.blocks.len() * block_size < length {
                sequence
                    .blocks
                    .push(self.free.pop().expect("reserved above"));
            }
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
            let sequence = &self.sequences[&p.sequence];
            pass.push(
                &p.step.ids[p.done..item.end],
                &p.step.positions[p.done..item.end],
                sequence.length,
                &sequence.blocks,
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
                if let Some(s) = self.sequences.get_mut(&sequence) {
                    s.length += item.end - done;
                }
                if complete {
                    let row = logits.next().expect("a row per completed step");
                    let _ = self.pending(&item).reply.send(Ok(outputs(row, None)));
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
        self.decodes.clear();
        // Items are in queue order, so the finished prompts leave from the back first.
        for i in finished_prefills.into_iter().rev() {
            self.prefills.remove(i);
        }
    }
}
