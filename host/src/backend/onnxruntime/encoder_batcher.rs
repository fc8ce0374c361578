//! Batching for encoders ([`encoder`](crate::backend::encoder)): every context of the model hands its
//! passes to one thread, which owns the session. While a pass runs, the passes that arrive queue up; the
//! next run takes all of them (within [`MAX_POSITIONS`]) as one, so concurrent embedding requests share a
//! forward pass instead of taking turns on the model.

use std::borrow::Cow;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use ort::session::{Session, SessionInputValue};

use super::tensors::{from_ort, to_ort};
use crate::backend::encoder::{self, Pass};
use crate::backend::{BackendError, BackendExecutionContext, NamedTensors};

/// Positions (rows × padded width) one merged run may hold; a single pass larger than that runs alone.
const MAX_POSITIONS: usize = 8192;

type Reply = SyncSender<Result<NamedTensors, BackendError>>;

struct Job {
    pass: Pass,
    reply: Reply,
}

/// The batching thread of one model, shared by its graph and every context it made.
pub(super) struct EncoderBatcher {
    jobs: Sender<Job>,
}

impl EncoderBatcher {
    /// Starts the thread, which ends when the graph and all its contexts are gone.
    pub(super) fn start(session: Session) -> Result<Self, BackendError> {
        let (jobs, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("nnspin-encoder".into())
            .spawn(move || run(session, receiver))
            .map_err(|e| BackendError::Load(format!("cannot start the encoder thread: {e}")))?;
        Ok(Self { jobs })
    }

    pub(super) fn context(&self) -> EncoderContext {
        EncoderContext {
            jobs: self.jobs.clone(),
        }
    }
}

pub(super) struct EncoderContext {
    jobs: Sender<Job>,
}

impl BackendExecutionContext for EncoderContext {
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
        let pass = Pass::of(inputs)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || BackendError::Runtime("the model's encoder thread has stopped".into());
        self.jobs.send(Job { pass, reply }).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

fn run(mut session: Session, jobs: Receiver<Job>) {
    let mut carried: Option<Job> = None;
    while let Some(first) = carried.take().or_else(|| jobs.recv().ok()) {
        let mut positions = first.pass.positions();
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            if positions + job.pass.positions() > MAX_POSITIONS {
                carried = Some(job);
                break;
            }
            positions += job.pass.positions();
            batch.push(job);
        }
        let (passes, replies): (Vec<Pass>, Vec<Reply>) =
            batch.into_iter().map(|job| (job.pass, job.reply)).unzip();
        let rows: Vec<usize> = passes.iter().map(|p| p.rows).collect();
        tracing::trace!(passes = passes.len(), positions, "encoder run");
        match infer(&mut session, encoder::merge(&passes))
            .and_then(|outputs| encoder::split(outputs, &rows))
        {
            Ok(split) => {
                for (reply, outputs) in replies.iter().zip(split) {
                    // A context that went away no longer waits for its answer.
                    let _ = reply.send(Ok(outputs));
                }
            }
            Err(e) => {
                for reply in &replies {
                    let _ = reply.send(Err(BackendError::Runtime(e.to_string())));
                }
            }
        }
    }
}

fn infer(session: &mut Session, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
    let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        feed.push((Cow::Owned(name), to_ort(tensor)?.into()));
    }
    let outputs = session.run(feed).map_err(BackendError::runtime)?;
    outputs
        .into_iter()
        .map(|(name, value)| Ok((name.to_string(), from_ort(&value)?)))
        .collect()
}
