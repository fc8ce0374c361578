//! What a guest's resource handles stand for in the host. Kept apart from the bindings that name them,
//! so the two do not import each other.

use std::sync::Arc;
use std::time::Instant;

use crate::backend::{BackendError, BackendExecutionContext};
use crate::metrics::Metrics;
use crate::registry::admission::{AtCapacity, Slot};
use crate::registry::model::Model;

/// A loaded graph (`wasi:nn/graph.graph`).
pub struct Graph(pub Arc<Model>);

/// An opened tokenizer (`nnspin:llm/text.tokenizer`).
pub struct TokenizerHandle(pub Arc<Model>);

/// The inference state of a sequence, or of several as the rows of its steps
/// (`wasi:nn/inference.graph-execution-context`), holding a turn of its model's per sequence until dropped.
pub struct ExecutionContext {
    /// Taken out while a `compute` runs off-thread; `None` after a failure.
    pub backend: Option<Box<dyn BackendExecutionContext>>,
    pub model: Arc<Model>,
    pub metrics: Arc<Metrics>,
    pub opened: Instant,
    pub computes: u64,
    pub slot: Slot,
}

impl Drop for ExecutionContext {
    fn drop(&mut self) {
        self.metrics.context_closed(&self.model.facts.id);
    }
}

/// A failed wasi-nn call (`wasi:nn/errors.error`), as the guest holds it until it reads the code
/// ([`super::wasi_nn`] maps each kind to one) and the message.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("models are loaded by the host; use load-by-name with a model listed in spin.toml")]
    LoadRefused,
    #[error("model {0:?} is not available to this component")]
    NotAvailable(String),
    #[error(transparent)]
    AtCapacity(#[from] AtCapacity),
    #[error("the execution context failed earlier and cannot be reused")]
    ContextFailed,
}
