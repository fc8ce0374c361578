//! What the engines' continuous batching shares: execution contexts that hand their steps to one
//! scheduler thread per model, the validation of a step, and the loop that gathers the steps of running
//! streams into rounds. How a round becomes passes is each engine's [`Rounds`]: ONNX Runtime's rows of
//! shared buffers (`onnxruntime::batcher`), OpenVINO's blocks of PagedAttention (`openvino::paged_batcher`).
//! A context still sees only its own `compute` calls: the component interface does not change.

use std::sync::Arc;
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

/// Most sequences one context may carry as the rows of its steps: a request's choices (OpenAI's `n`,
/// 8 at most) decode as rows of one batch.
pub const SEQUENCES_PER_CONTEXT: usize = 8;

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
        sequences: Arc::default(),
    })
}

/// Makes the contexts of one scheduler.
pub(super) struct Contexts {
    requests: Sender<Request>,
    /// Numbers the scheduler's sequences, shared with the contexts (a fork starts one).
    sequences: Arc<AtomicU64>,
}

impl Contexts {
    pub(super) fn context(&self) -> BatchedContext {
        BatchedContext {
            rows: Vec::new(),
            sequences: self.sequences.clone(),
            requests: self.requests.clone(),
        }
    }
}

/// The sequences of one execution context, one per row of its steps, in the way of optimum-intel's
/// stateful decoders: a step of `[rows, tokens]` continues them row for row, or, with a `beam_idx`
/// input (`i64 [rows]`), row `j` continues the context's row `beam_idx[j]`, so that a row named twice
/// forks (one prompt's cache, several choices) and a row not named ends. A step at position 0 starts
/// every row anew. Each sequence's cache is the scheduler's, taken at its first step and given back
/// when its row ends or the context is dropped.
pub(super) struct BatchedContext {
    rows: Vec<Row>,
    sequences: Arc<AtomicU64>,
    requests: Sender<Request>,
}

/// One sequence of a context and the tokens its cache holds, which a fork replays as its prompt: the
/// scheduler finds them in its prefix cache, so a copy computes only what the cache does not share.
struct Row {
    sequence: u64,
    ids: Vec<i64>,
    positions: Vec<i64>,
}

impl BatchedContext {
    fn fresh_row(&self) -> Row {
        Row {
            sequence: self.sequences.fetch_add(1, Ordering::Relaxed),
            ids: Vec::new(),
            positions: Vec::new(),
        }
    }

    fn close(&self, sequence: u64) {
        // The scheduler is gone only if it failed, and then there is nothing to give back.
        let _ = self.requests.send(Request::Close { sequence });
    }

    /// Which of the context's rows each row of a step continues (`None`: a new sequence).
    fn sources(
        &self,
        rows: usize,
        restart: bool,
        beam: Option<Vec<usize>>,
    ) -> Result<Vec<Option<usize>>, BackendError> {
        let held = self.rows.len();
        if restart || held == 0 {
            // Every row starts anew, in the sequences the context already has (a first step that does
            // not start at position 0 is the scheduler's to refuse: its sequence holds nothing).
            return Ok((0..rows).map(|j| (j < held).then_some(j)).collect());
        }
        match beam {
            Some(beam) => match beam.iter().find(|&&i| i >= held) {
                Some(bad) => Err(BackendError::InvalidArgument(format!(
                    "beam_idx names row {bad}, but the context holds {held}"
                ))),
                None => Ok(beam.into_iter().map(Some).collect()),
            },
            None if rows == held => Ok((0..rows).map(Some).collect()),
            None => Err(BackendError::InvalidArgument(format!(
                "the step has {rows} rows but the context holds {held}: beam_idx names the row each \
                 continues"
            ))),
        }
    }

    /// The context's rows for `steps`, each with the step the scheduler runs for it (a fork's replays
    /// the tokens of the row it copies). Rows no step continues are closed.
    fn continue_rows(&mut self, steps: Vec<Step>, sources: Vec<Option<usize>>) -> Vec<(Row, Step)> {
        let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        // Where each old row went among the new ones: the first row that continues it keeps it.
        let mut kept_at = vec![None; old.len()];
        let mut rows: Vec<(Row, Step)> = Vec::with_capacity(steps.len());
        for (j, (source, step)) in sources.into_iter().zip(steps).enumerate() {
            let row = match source.map(|i| (i, old[i].take())) {
                Some((i, Some(row))) => {
                    kept_at[i] = Some(j);
                    (row, step)
                }
                Some((i, None)) => {
                    let from: &Row = &rows[kept_at[i].expect("continued rows are kept")].0;
                    let replay = Step {
                        ids: [&from.ids[..], &step.ids].concat(),
                        positions: [&from.positions[..], &step.positions].concat(),
                        total: step.total,
                    };
                    (self.fresh_row(), replay)
                }
                None => (self.fresh_row(), step),
            };
            rows.push(row);
        }
        for row in old.into_iter().flatten() {
            self.close(row.sequence);
        }
        rows
    }
}

impl BackendExecutionContext for BatchedContext {
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
        let (steps, beam) = Step::parse_rows(inputs)?;
        let restart = steps[0].past() == 0;
        let sources = self.sources(steps.len(), restart, beam)?;
        let stopped = || BackendError::Runtime("the model's batch scheduler stopped".into());
        let mut answers = Vec::with_capacity(steps.len());
        for (mut row, step) in self.continue_rows(steps, sources) {
            let (reply, answer) = mpsc::sync_channel(1);
            // The row's tokens once the step has run (a fork's replay starts at 0); a failed step
            // takes its own back off.
            if step.past() == 0 {
                row.ids.clear();
                row.positions.clear();
            }
            let before = row.ids.len();
            row.ids.extend_from_slice(&step.ids);
            row.positions.extend_from_slice(&step.positions);
            let sent = self.requests.send(Request::Step {
                sequence: row.sequence,
                step,
                reply,
            });
            self.rows.push(row);
            sent.map_err(|_| stopped())?;
            answers.push((answer, before));
        }
        // Every row's answer is awaited, so none is still running when a failure is reported; a failed
        // row keeps what it held, and the guest's next step says where it continues.
        let mut outputs: Vec<NamedTensors> = Vec::with_capacity(answers.len());
        let mut failure = None;
        for (row, (answer, before)) in self.rows.iter_mut().zip(answers) {
            match answer.recv().map_err(|_| stopped()).and_then(|r| r) {
                Ok(output) => outputs.push(output),
                Err(e) => {
                    row.ids.truncate(before);
                    row.positions.truncate(before);
                    failure = failure.or(Some(e));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(stack_rows(outputs, restart)),
        }
    }
}

impl Drop for BatchedContext {
    fn drop(&mut self) {
        for row in &self.rows {
            self.close(row.sequence);
        }
    }
}

/// The outputs of a step's rows as one step's: `logits` stacked along the rows, and for a step at
/// position 0 each row's `cached_tokens`. A forked row's replay is not a prompt of the guest's, so what
/// it found cached is not reported.
fn stack_rows(mut rows: Vec<NamedTensors>, restart: bool) -> NamedTensors {
    if rows.len() == 1 {
        return rows.pop().expect("one row");
    }
    let mut logits: Option<Tensor> = None;
    let mut cached = Vec::new();
    for row in rows {
        for (name, tensor) in row {
            match (name.as_str(), logits.as_mut()) {
                ("logits", None) => logits = Some(tensor),
                ("logits", Some(stacked)) => {
                    stacked.dims[0] += tensor.dims[0];
                    stacked.data.extend_from_slice(&tensor.data);
                }
                ("cached_tokens", _) if restart => cached.extend_from_slice(&tensor.data),
                _ => {}
            }
        }
    }
    let mut outputs = vec![("logits".to_string(), logits.expect("every row has logits"))];
    if restart {
        outputs.push((
            "cached_tokens".to_string(),
            Tensor {
                dims: vec![(cached.len() / 8) as u32],
                ty: ElementType::I64,
                data: cached,
            },
        ));
    }
    outputs
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

    /// A context's step: one [`Step`] per row (`input_ids` and `position_ids` `[rows, tokens]`,
    /// `attention_mask` `[rows, cached + tokens]`, all rows alike in length), and `beam_idx` if given.
    fn parse_rows(inputs: NamedTensors) -> Result<(Vec<Self>, Option<Vec<usize>>), BackendError> {
        decoder::check_cache_inputs(&inputs)?;
        let (mut ids, mut mask, mut positions, mut beam) = (None, None, None, None);
        for (name, tensor) in inputs {
            let slot = match name.as_str() {
                "input_ids" => &mut ids,
                "attention_mask" => &mut mask,
                "position_ids" => &mut positions,
                decoder::BEAM_IDX => &mut beam,
                _ => {
                    return Err(BackendError::InvalidArgument(format!(
                        "the model has no input {name}"
                    )));
                }
            };
            *slot = Some((name, tensor));
        }
        let missing = |name: &str| BackendError::InvalidArgument(format!("{name} is missing"));
        let (ids_name, ids) = ids.ok_or_else(|| missing("input_ids"))?;
        let (mask_name, mask) = mask.ok_or_else(|| missing("attention_mask"))?;
        let (positions_name, positions) = positions.ok_or_else(|| missing("position_ids"))?;
        let (rows, tokens) = matrix(&ids_name, &ids)?;
        let (mask_rows, total) = matrix(&mask_name, &mask)?;
        if matrix(&positions_name, &positions)? != (rows, tokens) || mask_rows != rows {
            return Err(BackendError::InvalidArgument(format!(
                "input_ids {:?}, position_ids {:?} and attention_mask {:?} must have the same rows, \
                 and input_ids and position_ids the same tokens",
                ids.dims, positions.dims, mask.dims
            )));
        }
        if rows == 0 || rows > SEQUENCES_PER_CONTEXT || tokens == 0 {
            return Err(BackendError::InvalidArgument(format!(
                "a step holds 1 to {SEQUENCES_PER_CONTEXT} rows of at least one token, not {:?}",
                ids.dims
            )));
        }
        if total < tokens {
            return Err(BackendError::InvalidArgument(format!(
                "attention_mask covers {total} positions, fewer than the {tokens} new tokens"
            )));
        }
        if mask.integers(&mask_name)?.any(|m| m != 1) {
            return Err(BackendError::InvalidArgument(
                "attention_mask must be all ones: a row holds one unpadded sequence".into(),
            ));
        }
        let beam = match beam {
            Some((name, tensor)) => {
                let beam: Vec<i64> = tensor.integers(&name)?.collect();
                if beam.len() != rows || beam.iter().any(|&i| i < 0) {
                    return Err(BackendError::InvalidArgument(format!(
                        "beam_idx must name a row of the context for each of the step's {rows} rows"
                    )));
                }
                Some(beam.into_iter().map(|i| i as usize).collect())
            }
            None => None,
        };
        let ids: Vec<i64> = ids.integers(&ids_name)?.collect();
        let positions: Vec<i64> = positions.integers(&positions_name)?.collect();
        let steps = ids
            .chunks_exact(tokens)
            .zip(positions.chunks_exact(tokens))
            .map(|(ids, positions)| Self {
                ids: ids.to_vec(),
                positions: positions.to_vec(),
                total,
            })
            .collect();
        Ok((steps, beam))
    }
}

/// The refusal of a step that does not continue where its sequence's cache ends.
pub(super) fn does_not_continue(past: usize, held: usize) -> BackendError {
    BackendError::InvalidArgument(format!(
        "attention_mask says {past} positions are cached, but this context holds {held}"
    ))
}

/// The `[rows, columns]` of a step's 2-D input.
fn matrix(name: &str, tensor: &Tensor) -> Result<(usize, usize), BackendError> {
    match tensor.dims.as_slice() {
        &[rows, columns] => Ok((rows as usize, columns as usize)),
        dims => Err(BackendError::InvalidArgument(format!(
            "{name} must be [rows, length], not {dims:?}"
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
