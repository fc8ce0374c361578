//! What the engines' continuous batching shares: execution contexts that hand their steps to one
//! scheduler thread per model, the validation of a step, and the loop that gathers the steps of running
//! streams into rounds. How a round becomes passes is each engine's [`Rounds`]: ONNX Runtime's rows of
//! shared buffers (`onnxruntime::batcher`), OpenVINO's blocks of PagedAttention (`openvino::paged_batcher`).
//! A context still sees only its own `compute` calls: the component interface does not change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use super::decoder;
use super::{BackendError, BackendExecutionContext, ElementType, NamedTensors, Tensor};

/// How long a round waits for the streams of the previous round to send their next token, as a share of
/// that round's pass. They come back after a few milliseconds (each component samples, detokenises and
/// writes its chunk, 8 of them on 2 cores: 5-7 ms); without the wait they split into alternating,
/// half-full rounds that each cost nearly a full pass (measured: 8 streams at 3 ms, 69 tok/s; waiting, 122).
/// A share of the pass bounds what one slow stream costs the others.
const GATHER_SHARE: u32 = 2;

/// The wait before the first round.
const FIRST_GATHER: Duration = Duration::from_millis(2);

pub(super) type Reply = SyncSender<Result<NamedTensors, BackendError>>;

pub(super) enum Request {
    Step {
        sequence: u64,
        step: Step,
        reply: Reply,
    },
    Close {
        sequence: u64,
    },
}

/// What a scheduler does with the steps it is sent; [`serve`] decides when.
pub(super) trait Rounds {
    fn accept(&mut self, request: Request);
    /// Whether no step waits.
    fn idle(&self) -> bool;
    /// Whether a single-token step waits.
    fn decodes_waiting(&self) -> bool;
    /// Whether a sequence of `last_round` is still open and has not sent its next step.
    fn awaits_any(&self, last_round: &[u64]) -> bool;
    /// Runs the waiting single-token steps and some prompt tokens; returns the sequences whose
    /// single-token steps it served.
    fn round(&mut self) -> Vec<u64>;
}

/// The scheduler thread's loop: take what arrived, wait a little for the streams of the last round, run a
/// round; until every context and the graph are gone.
pub(super) fn serve(mut scheduler: impl Rounds, requests: Receiver<Request>) {
    let mut last_round: Vec<u64> = Vec::new();
    let mut gather = FIRST_GATHER;
    loop {
        if scheduler.idle() {
            match requests.recv() {
                Ok(request) => scheduler.accept(request),
                Err(_) => return,
            }
        }
        while let Ok(request) = requests.try_recv() {
            scheduler.accept(request);
        }
        if scheduler.decodes_waiting() {
            let deadline = Instant::now() + gather;
            while scheduler.awaits_any(&last_round) {
                let left = deadline.saturating_duration_since(Instant::now());
                match requests.recv_timeout(left) {
                    Ok(request) => scheduler.accept(request),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let started = Instant::now();
        last_round = scheduler.round();
        if !last_round.is_empty() {
            gather = started.elapsed() / GATHER_SHARE;
        }
    }
}

/// Starts `scheduler` on its own thread and returns what makes its contexts.
pub(super) fn start(
    name: &str,
    scheduler: impl Rounds + Send + 'static,
) -> Result<Contexts, BackendError> {
    let (requests, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || serve(scheduler, receiver))
        .map_err(|e| BackendError::Load(format!("cannot start the batch scheduler: {e}")))?;
    Ok(Contexts {
        requests,
        sequences: AtomicU64::new(0),
    })
}

/// Makes the contexts of one scheduler, each a new sequence.
pub(super) struct Contexts {
    requests: Sender<Request>,
    sequences: AtomicU64,
}

impl Contexts {
    pub(super) fn context(&self) -> BatchedContext {
        BatchedContext {
            sequence: self.sequences.fetch_add(1, Ordering::Relaxed),
            requests: self.requests.clone(),
        }
    }
}

/// One sequence: its cache is the scheduler's, taken at its first step and given back when it is dropped.
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
        // The scheduler is gone only if it failed, and then there is nothing to give back.
        let _ = self.requests.send(Request::Close {
            sequence: self.sequence,
        });
    }
}

/// One `compute` of one sequence: its new tokens, their positions, and how many positions its
/// `attention_mask` covers (cached + new).
pub(super) struct Step {
    pub ids: Vec<i64>,
    pub positions: Vec<i64>,
    pub total: usize,
}

impl Step {
    /// Positions the sequence says are cached before this step.
    pub fn past(&self) -> usize {
        self.total - self.ids.len()
    }

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

/// The refusal of a step that does not continue where its sequence's cache ends.
pub(super) fn does_not_continue(past: usize, held: usize) -> BackendError {
    BackendError::InvalidArgument(format!(
        "attention_mask says {past} positions are cached, but this context holds {held}"
    ))
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

/// `pass` with a panic turned into the failure of that pass only: the scheduler serves every sequence of
/// the model, so it must outlive a bug in one pass.
pub(super) fn guarded<T>(
    pass: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(pass))
        .unwrap_or_else(|_| Err(BackendError::Runtime("the batched pass panicked".into())))
}

/// A step's outputs: its logits and, for a step at position 0, `cached_tokens` (`i64 [1]`), the prompt
/// tokens it found cached, which OpenAI's usage reports.
pub(super) fn outputs(logits: Tensor, cached: Option<usize>) -> NamedTensors {
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
