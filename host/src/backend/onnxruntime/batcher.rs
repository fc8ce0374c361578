//! Continuous batching. Every execution context of a model whose caches live in shared buffers
//! ([`SharedCache`]) hands its steps to one scheduler thread, which owns the session. Each round it merges
//! the single-token steps of all sequences into one forward pass, one row per sequence, so the weights are
//! read once per step for every stream instead of once per stream; and it feeds a long prompt in chunks
//! between those passes, so a joining sequence does not stall the running ones. A prompt starts from the
//! longest prefix of it the model's rows already hold
//! ([`prefix_cache`](crate::backend::prefix_cache)), so only the rest is computed. The contexts, the
//! steps and the gathering of rounds are [`batching`]'s.

use std::collections::VecDeque;
use std::sync::Arc;

use ort::session::Session;
use ort::value::Tensor as OrtTensor;

use super::shared_cache::SharedCache;
use crate::backend::batching::{
    self, BatchedContext, Contexts, Reply, Request, Rounds, Step, guarded, outputs,
};
use crate::backend::decoder::CacheInput;
use crate::backend::prefix_cache::{CacheRows, PrefixCacheStats};
use crate::backend::{BackendError, ElementType, Tensor, f32_bytes};

/// Prompt tokens per prefill run when the model returns only the last position's logits (then the chunks
/// of a prompt give exactly the logits the whole prompt would). Running streams wait at most one chunk
/// for their next token.
const PREFILL_CHUNK: usize = 128;

/// With fp32 activations, the fewest single-token steps worth one batched pass; a round with fewer runs a
/// pass per step. ONNX Runtime's `MatMulNBits` dequantizes its weights on every call with more than one
/// row unless activations are int8, so two rows cost more than two single rows (`bench/batched_decode.py`
/// on the default model: one row 20.9 ms, two rows batched 56.7 ms against 43.1 for two single-row passes,
/// four rows 68.4 ms against 92.3).
pub(super) const FP32_FEWEST_BATCHED_STEPS: usize = 3;

/// The scheduler of one model, shared by its graph and every context it made.
pub(super) struct Batcher {
    contexts: Contexts,
    stats: Arc<PrefixCacheStats>,
}

impl Batcher {
    /// Starts the scheduler thread, which ends when the graph and all its contexts are gone. Finished
    /// sequences' caches may keep `prefix_cache_bytes` for later prompts when the prompts run in chunks
    /// (a prompt started from a cached prefix computes only its rest, and its logits must be the last
    /// position's alone).
    /// A round with fewer than `fewest_batched_steps` single-token steps runs one pass per step.
    pub(super) fn start(
        session: Session,
        caches: Arc<[CacheInput]>,
        chunked_prefill: bool,
        prefix_cache_bytes: u64,
        fewest_batched_steps: usize,
    ) -> Result<Self, BackendError> {
        let rows = CacheRows::new(if chunked_prefill {
            prefix_cache_bytes
        } else {
            0
        });
        let stats = rows.stats().clone();
        let scheduler = Scheduler {
            session,
            caches,
            cache: SharedCache::new(),
            rows,
            decodes: Vec::new(),
            prefills: VecDeque::new(),
            prefill_chunk: if chunked_prefill {
                PREFILL_CHUNK
            } else {
                usize::MAX
            },
            fewest_batched_steps,
        };
        Ok(Self {
            contexts: batching::start("nnspin-batcher", scheduler)?,
            stats,
        })
    }

    pub(super) fn prefix_cache(&self) -> Arc<PrefixCacheStats> {
        self.stats.clone()
    }

    pub(super) fn context(&self) -> BatchedContext {
        self.contexts.context()
    }
}

/// A step waiting for its run (a prefill: its next chunk).
struct Pending {
    sequence: u64,
    row: usize,
    step: Step,
    reply: Reply,
    /// Tokens of the step already cached: found in the prefix cache, or run (chunked prefill).
    done: usize,
    /// For a step at position 0, how many of its tokens were found cached.
    cached: Option<usize>,
}

struct Scheduler {
    session: Session,
    caches: Arc<[CacheInput]>,
    cache: SharedCache,
    rows: CacheRows,
    /// Single-token steps for the next batched pass.
    decodes: Vec<Pending>,
    /// Longer steps, run one chunk at a time, first come first served.
    prefills: VecDeque<Pending>,
    prefill_chunk: usize,
    fewest_batched_steps: usize,
}

impl Rounds for Scheduler {
    fn idle(&self) -> bool {
        self.decodes.is_empty() && self.prefills.is_empty()
    }

    fn decodes_waiting(&self) -> bool {
        !self.decodes.is_empty()
    }

    fn awaits_any(&self, last_round: &[u64]) -> bool {
        last_round.iter().any(|&sequence| {
            self.rows.row_of(sequence).is_some_and(|row| {
                !self.decodes.iter().any(|p| p.row == row)
                    && !self.prefills.iter().any(|p| p.row == row)
            })
        })
    }

    fn accept(&mut self, request: Request) {
        match request {
            Request::Step {
                sequence,
                step,
                reply,
            } => {
                let past = step.past();
                let (row, cached) = if past == 0 {
                    // A sequence's first step, or a restart.
                    let (row, cached) = self.start(sequence, &step);
                    (row, Some(cached))
                } else {
                    let row = self.rows.row_of(sequence);
                    let held = row.map_or(0, |row| self.rows.length(row));
                    match row {
                        Some(row) if held == past => (row, None),
                        _ => {
                            let _ = reply.send(Err(batching::does_not_continue(past, held)));
                            return;
                        }
                    }
                };
                let pending = Pending {
                    sequence,
                    row,
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
                if self.rows.close(sequence, self.cache.row_bytes()) {
                    // Nothing is decoding or kept: give the buffers back until the next request.
                    self.cache = SharedCache::new();
                    self.rows.stats().set_kv_bytes(0);
                }
            }
        }
    }

    /// The decode round, then the next chunk of a waiting prompt.
    fn round(&mut self) -> Vec<u64> {
        let served = self.decode_round();
        self.prefill_round();
        served
    }
}

impl Scheduler {
    /// Every waiting single-token step, in one batched pass (or one pass each, when too few to gain from
    /// batching); returns the sequences it served.
    fn decode_round(&mut self) -> Vec<u64> {
        let decodes = std::mem::take(&mut self.decodes);
        let served = decodes.iter().map(|p| p.sequence).collect();
        if decodes.len() >= self.fewest_batched_steps {
            self.decode_pass(decodes);
        } else {
            for p in decodes {
                self.decode_pass(vec![p]);
            }
        }
        served
    }

    /// The next chunk of the oldest waiting prompt.
    fn prefill_round(&mut self) {
        let Some(p) = self.prefills.front() else {
            self.rows.publish();
            return;
        };
        let (row, start) = (p.row, p.done);
        let end = p
            .step
            .ids
            .len()
            .min(start.saturating_add(self.prefill_chunk));
        let ids = p.step.ids[start..end].to_vec();
        let positions = p.step.positions[start..end].to_vec();
        let total = self.rows.length(row) + ids.len();
        let result = guarded(|| self.run(row, ids, positions, &[total], &[0]));
        match result {
            Ok(mut logits) => {
                let p = self.prefills.front_mut().expect("still queued");
                self.rows
                    .advanced(row, &p.step.ids[start..end], &p.step.positions[start..end]);
                p.done = end;
                if end == p.step.ids.len() {
                    let p = self.prefills.pop_front().expect("still queued");
                    let logits = logits.pop().expect("one row");
                    let _ = p.reply.send(Ok(outputs(logits, p.cached)));
                }
            }
            Err(e) => {
                let p = self.prefills.pop_front().expect("still queued");
                let _ = p.reply.send(Err(e));
            }
        }
        self.rows.publish();
    }

    /// The row a step at position 0 runs in and how many of its tokens are cached there, their keys and
    /// values copied from another row if the prefix cache found them in one. A failed copy costs only
    /// the reuse: the step then computes all its tokens.
    fn start(&mut self, sequence: u64, step: &Step) -> (usize, usize) {
        let start = self.rows.start(sequence, &step.ids, &step.positions);
        let Some(from) = start.copy_from else {
            return (start.row, start.cached);
        };
        let copied = guarded(|| {
            self.reserve(start.cached)?;
            self.cache.copy_prefix(from, start.row, start.cached);
            Ok(())
        });
        match copied {
            Ok(()) => (start.row, start.cached),
            Err(e) => {
                tracing::warn!("cannot copy a cached prefix, computing it again: {e}");
                self.rows.copy_failed(&start);
                (start.row, 0)
            }
        }
    }

    /// Makes the buffers hold every row with room for `width` positions.
    fn reserve(&mut self, width: usize) -> Result<(), BackendError> {
        let lengths = self.rows.lengths();
        if self
            .cache
            .reserve(&self.caches, self.rows.len(), width, &lengths)?
        {
            self.rows.stats().set_kv_bytes(self.cache.bytes());
        }
        Ok(())
    }

    /// One pass over `decodes` (not empty), one row for each row of the shared caches they span.
    fn decode_pass(&mut self, decodes: Vec<Pending>) {
        let first = decodes.iter().map(|p| p.row).min().expect("not empty");
        let last = decodes.iter().map(|p| p.row).max().expect("not empty");
        let count = last - first + 1;
        // Rows in the range without a step of their own ride along on a dummy token written one past their
        // cached positions, where their next step writes anyway.
        let mut ids = vec![0; count];
        let mut positions: Vec<i64> = (first..=last)
            .map(|row| self.rows.length(row) as i64)
            .collect();
        let mut totals: Vec<usize> = (first..=last)
            .map(|row| self.rows.length(row) + 1)
            .collect();
        for p in &decodes {
            let i = p.row - first;
            ids[i] = p.step.ids[0];
            positions[i] = p.step.positions[0];
            totals[i] = p.step.total;
        }
        let wanted: Vec<usize> = decodes.iter().map(|p| p.row - first).collect();
        let result = guarded(|| self.run(first, ids, positions, &totals, &wanted));
        tracing::trace!(rows = count, steps = wanted.len(), "decode pass");
        match result {
            Ok(logits) => {
                for (p, logits) in decodes.into_iter().zip(logits) {
                    self.rows.advanced(p.row, &p.step.ids, &p.step.positions);
                    let _ = p.reply.send(Ok(outputs(logits, p.cached)));
                }
            }
            Err(e) => {
                for p in decodes {
                    let _ = p.reply.send(Err(BackendError::Runtime(e.to_string())));
                }
            }
        }
    }

    /// Runs `ids` (the same number per row) over rows `first..first + totals.len()`, row `i` attending to
    /// its first `totals[i]` positions, and returns the logits of the rows in `wanted`.
    fn run(
        &mut self,
        first: usize,
        ids: Vec<i64>,
        positions: Vec<i64>,
        totals: &[usize],
        wanted: &[usize],
    ) -> Result<Vec<Tensor>, BackendError> {
        let count = totals.len();
        let new = ids.len() / count;
        let width = totals.iter().copied().max().unwrap_or(0);
        let mut mask = vec![0_i64; count * width];
        for (row, &total) in totals.iter().enumerate() {
            mask[row * width..row * width + total].fill(1);
        }
        self.reserve(width)?;
        let binding = self
            .cache
            .binding(&self.session, &self.caches, first, count)?;
        let invalid = |e: ort::Error| BackendError::InvalidArgument(e.to_string());
        binding
            .bind_input(
                "input_ids",
                &OrtTensor::from_array(([count, new], ids)).map_err(invalid)?,
            )
            .map_err(invalid)?;
        binding
            .bind_input(
                "position_ids",
                &OrtTensor::from_array(([count, new], positions)).map_err(invalid)?,
            )
            .map_err(invalid)?;
        binding
            .bind_input(
                "attention_mask",
                &OrtTensor::from_array(([count, width], mask)).map_err(invalid)?,
            )
            .map_err(invalid)?;
        let outputs = self
            .session
            .run_binding(binding)
            .map_err(BackendError::runtime)?;
        let (shape, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(BackendError::runtime)?;
        let per_row = logits.len() / count;
        let dims: Vec<u32> = std::iter::once(1)
            .chain(shape.iter().skip(1).map(|&d| d as u32))
            .collect();
        Ok(wanted
            .iter()
            .map(|&row| Tensor {
                dims: dims.clone(),
                ty: ElementType::F32,
                data: f32_bytes(&logits[row * per_row..(row + 1) * per_row]),
            })
            .collect())
    }
}
