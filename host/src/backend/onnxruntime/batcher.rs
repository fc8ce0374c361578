//! Continuous batching. Every execution context of a model whose caches live in shared buffers
//! ([`SharedCache`]) hands its steps to one scheduler thread, which owns the session. Each round it merges
//! the single-token steps of all sequences into one forward pass, one row per sequence, so the weights are
//! read once per step for every stream instead of once per stream; and it feeds a long prompt in chunks
//! between those passes, so a joining sequence does not stall the running ones. A prompt starts from the
//! longest prefix of it the model's rows already hold
//! ([`prefix_cache`](crate::backend::prefix_cache)), so only the rest is computed.
//! A context still sees only its own `compute` calls: the component interface does not change.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::Tensor as OrtTensor;

use super::shared_cache::SharedCache;
use crate::backend::decoder::{self, CacheInput};
use crate::backend::prefix_cache::{CacheRows, PrefixCacheStats};
use crate::backend::{
    BackendError, BackendExecutionContext, ElementType, NamedTensors, Tensor, f32_bytes,
};

/// Prompt tokens per prefill run when the model returns only the last position's logits (then the chunks
/// of a prompt give exactly the logits the whole prompt would). Running streams wait at most one chunk
/// for their next token.
const PREFILL_CHUNK: usize = 128;

/// How long a round waits for the streams of the previous round to send their next token, as a share of
/// that round's pass. They come back after a few milliseconds (each component samples, detokenises and
/// writes its chunk, 8 of them on 2 cores: 5-7 ms); without the wait they split into alternating,
/// half-full rounds that each cost nearly a full pass (measured: 8 streams at 3 ms, 69 tok/s; waiting, 122).
/// A share of the pass bounds what one slow stream costs the others.
const GATHER_SHARE: u32 = 2;

/// The wait before the first round.
const FIRST_GATHER: Duration = Duration::from_millis(2);

/// With fp32 activations, the fewest single-token steps worth one batched pass; a round with fewer runs a
/// pass per step. ONNX Runtime's `MatMulNBits` dequantizes its weights on every call with more than one
/// row unless activations are int8, so two rows cost more than two single rows (`bench/batched_decode.py`
/// on the default model: one row 20.9 ms, two rows batched 56.7 ms against 43.1 for two single-row passes,
/// four rows 68.4 ms against 92.3).
pub(super) const FP32_FEWEST_BATCHED_STEPS: usize = 3;

type Reply = SyncSender<Result<NamedTensors, BackendError>>;

enum Request {
    Step {
        sequence: u64,
        step: Step,
        reply: Reply,
    },
    Close {
        sequence: u64,
    },
}

/// The scheduler of one model, shared by its graph and every context it made.
pub(super) struct Batcher {
    requests: Sender<Request>,
    sequences: AtomicU64,
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
        let (requests, receiver) = mpsc::channel();
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
        std::thread::Builder::new()
            .name("nnspin-batcher".into())
            .spawn(move || scheduler.serve(receiver))
            .map_err(|e| BackendError::Load(format!("cannot start the batch scheduler: {e}")))?;
        Ok(Self {
            requests,
            sequences: AtomicU64::new(0),
            stats,
        })
    }

    pub(super) fn prefix_cache(&self) -> Arc<PrefixCacheStats> {
        self.stats.clone()
    }

    pub(super) fn context(&self) -> BatchedContext {
        BatchedContext {
            sequence: self.sequences.fetch_add(1, Ordering::Relaxed),
            requests: self.requests.clone(),
        }
    }
}

/// One sequence: a row of the shared caches, taken at its first step and given back when it is dropped.
pub(super) struct BatchedContext {
    sequence: u64,
    requests: Sender<Request>,
}

impl BackendExecutionContext for BatchedContext {
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
        let step = Step::parse(inputs)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let stopped = || BackendError::Runtime("the model's batch scheduler stopped".into());
        self.requests
            .send(Request::Step {
                sequence: self.sequence,
                step,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

impl Drop for BatchedContext {
    fn drop(&mut self) {
        // The scheduler is gone only if it failed, and then there is no row to give back.
        let _ = self.requests.send(Request::Close {
            sequence: self.sequence,
        });
    }
}

/// One `compute` of one sequence: its new tokens, their positions, and how many positions its
/// `attention_mask` covers (cached + new).
struct Step {
    ids: Vec<i64>,
    positions: Vec<i64>,
    total: usize,
}

impl Step {
    fn parse(inputs: NamedTensors) -> Result<Self, BackendError> {
        decoder::check_guest_inputs(&inputs)?;
        let (mut ids, mut mask, mut positions) = (None, None, None);
        for (name, tensor) in inputs {
            let slot = match name.as_str() {
                "input_ids" => &mut ids,
                "attention_mask" => &mut mask,
                "position_ids" => &mut positions,
                _ => {
                    return Err(BackendError::InvalidArgument(format!(
                        "the model has no input {name}"
                    )));
                }
            };
            check_one_row(&name, &tensor)?;
            *slot = Some((name, tensor));
        }
        let missing = |name: &str| BackendError::InvalidArgument(format!("{name} is missing"));
        let (ids_name, ids) = ids.ok_or_else(|| missing("input_ids"))?;
        let (mask_name, mask) = mask.ok_or_else(|| missing("attention_mask"))?;
        let (positions_name, positions) = positions.ok_or_else(|| missing("position_ids"))?;
        let ids: Vec<i64> = ids.integers(&ids_name)?.collect();
        let positions: Vec<i64> = positions.integers(&positions_name)?.collect();
        if ids.is_empty() || positions.len() != ids.len() {
            return Err(BackendError::InvalidArgument(format!(
                "input_ids and position_ids must hold the same, non-zero number of tokens ({} and {})",
                ids.len(),
                positions.len()
            )));
        }
        let total = mask.element_count();
        if total < ids.len() {
            return Err(BackendError::InvalidArgument(format!(
                "attention_mask covers {total} positions, fewer than the {} new tokens",
                ids.len()
            )));
        }
        if mask.integers(&mask_name)?.any(|m| m != 1) {
            return Err(BackendError::InvalidArgument(
                "attention_mask must be all ones: a context holds one unpadded sequence".into(),
            ));
        }
        Ok(Self {
            total,
            ids,
            positions,
        })
    }
}

/// `pass` with a panic turned into the failure of that pass only: the scheduler serves every sequence of
/// the model, so it must outlive a bug in one pass.
fn guarded<T>(pass: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(pass))
        .unwrap_or_else(|_| Err(BackendError::Runtime("the batched pass panicked".into())))
}

/// A context holds one sequence: its inputs are `[1, n]`.
fn check_one_row(name: &str, tensor: &Tensor) -> Result<(), BackendError> {
    match tensor.dims.as_slice() {
        [1, _] => Ok(()),
        [rows, _] => Err(BackendError::Unsupported(format!(
            "{name} has {rows} rows: this model batches its execution contexts together, one \
             sequence each; open a context per sequence"
        ))),
        dims => Err(BackendError::InvalidArgument(format!(
            "{name} must be [1, length], not {dims:?}"
        ))),
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

/// A step's outputs: its logits and, for a step at position 0, `cached_tokens` (`i64 [1]`), the prompt
/// tokens it found cached, which OpenAI's usage reports.
fn outputs(logits: Tensor, cached: Option<usize>) -> NamedTensors {
    let mut outputs = vec![("logits".to_string(), logits)];
    if let Some(cached) = cached {
        outputs.push((
            "cached_tokens".to_string(),
            Tensor {
                dims: vec![1],
                ty: ElementType::I64,
                data: (cached as i64).to_le_bytes().to_vec(),
            },
        ));
    }
    outputs
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

impl Scheduler {
    fn serve(mut self, requests: Receiver<Request>) {
        let mut last_round: Vec<u64> = Vec::new();
        let mut gather = FIRST_GATHER;
        loop {
            if self.decodes.is_empty() && self.prefills.is_empty() {
                match requests.recv() {
                    Ok(request) => self.accept(request),
                    Err(_) => return,
                }
            }
            while let Ok(request) = requests.try_recv() {
                self.accept(request);
            }
            if !self.decodes.is_empty() {
                let deadline = Instant::now() + gather;
                while self.awaits_any(&last_round) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match requests.recv_timeout(left) {
                        Ok(request) => self.accept(request),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            let started = Instant::now();
            last_round = self.decode_round();
            if !last_round.is_empty() {
                gather = started.elapsed() / GATHER_SHARE;
            }
            self.prefill_round();
            self.rows.publish();
        }
    }

    /// Whether a sequence of the last round is still open and has not sent its next step.
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
                let past = step.total - step.ids.len();
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
                            let _ = reply.send(Err(BackendError::InvalidArgument(format!(
                                "attention_mask says {past} positions are cached, but this \
                                 context holds {held}"
                            ))));
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

    /// The next chunk of the oldest waiting prompt.
    fn prefill_round(&mut self) {
        let Some(p) = self.prefills.front() else {
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
