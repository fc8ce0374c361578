//! `wasi:nn@0.2.0-rc-2024-10-28` over the host's resident models.
//!
//! Graphs come only from `load-by-name`, which serves the models `spin.toml` lets the component use;
//! loading raw model bytes from a guest is refused, since models are loaded once per process, not per
//! request. `compute` runs on tokio's blocking pool so inference never stalls the HTTP workers.

pub mod backend;
pub mod backends;
/// Finds the engines' native libraries; only the engine backends use it.
#[cfg(any(feature = "onnxruntime", feature = "openvino"))]
mod library;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(feature = "openvino")]
pub mod openvino;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::bindings::errors::ErrorCode;
use crate::bindings::graph::{ExecutionTarget, GraphBuilder, GraphEncoding};
use crate::bindings::tensor::TensorType;
use crate::bindings::{errors, graph, inference, tensor};
use crate::metrics::Metrics;
use crate::models::{Model, ModelAccess};
pub use backend::Tensor;
use backend::{BackendError, BackendExecutionContext};

/// A loaded graph, as a guest holds it.
pub struct Graph(Arc<Model>);

/// One sequence's inference state, holding one of its model's context slots until dropped.
pub struct ExecutionContext {
    /// Taken out while a `compute` runs off-thread; `None` after a failure.
    backend: Option<Box<dyn BackendExecutionContext>>,
    model: Arc<Model>,
    metrics: Arc<Metrics>,
    opened: Instant,
    computes: u64,
    _slot: OwnedSemaphorePermit,
}

impl Drop for ExecutionContext {
    fn drop(&mut self) {
        self.metrics.context_closed(&self.model.info.id);
    }
}

/// A wasi-nn error resource.
#[derive(Debug)]
pub struct NnError {
    code: ErrorCode,
    message: String,
}

impl From<BackendError> for NnError {
    fn from(e: BackendError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// What the wasi-nn host functions see of an instance's state.
pub struct NnView<'a> {
    pub table: &'a mut ResourceTable,
    pub models: &'a ModelAccess,
}

/// Marker tying [`NnView`] to the generated `add_to_linker` functions.
pub struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn fail<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> NnResult<T> {
        let message = message.into();
        tracing::debug!(?code, %message, "wasi-nn error");
        Ok(Err(self.table.push(NnError { code, message })?))
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        _builder: Vec<GraphBuilder>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        self.fail(
            ErrorCode::Security,
            "models are loaded by the host; use load-by-name with a model listed in spin.toml",
        )
    }

    async fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        match self.models.get(&name) {
            Some(model) => Ok(Ok(self.table.push(Graph(model))?)),
            None => self.fail(
                ErrorCode::NotFound,
                format!("model {name:?} is not available to this component"),
            ),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(
        &mut self,
        graph: Resource<Graph>,
    ) -> NnResult<Resource<inference::GraphExecutionContext>> {
        let model = self.table.get(&graph)?.0.clone();
        let metrics = self.models.registry().metrics().clone();
        let id = model.info.id.clone();
        // wasi-nn has no "busy" code: a full queue is reported as `timeout`, which the components
        // answer with 503 and `Retry-After`.
        let slot = match model
            .slots
            .acquire(|delta| metrics.queue_changed(&id, delta))
            .await
        {
            Ok(slot) => slot,
            Err(full) => {
                metrics.rejected(&id);
                return self.fail(ErrorCode::Timeout, full.to_string());
            }
        };
        match model.graph.init_execution_context() {
            Ok(backend) => {
                metrics.context_opened(&id);
                let context = ExecutionContext {
                    backend: Some(backend),
                    model,
                    metrics,
                    opened: Instant::now(),
                    computes: 0,
                    _slot: slot,
                };
                Ok(Ok(self.table.push(context)?))
            }
            Err(e) => self.fail(e.code(), e.to_string()),
        }
    }

    async fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

/// Token ids and positions index tables inside the engines, and some kernels do not check their bounds
/// (ONNX Runtime's `GatherBlockQuantized` reads past its table for an id beyond the vocabulary): a
/// component must not be able to make the host read memory it does not own, so they are checked here,
/// with the length of the attention mask.
fn check_indices(
    inputs: &[(String, Tensor)],
    vocab_size: u32,
    context_length: u32,
) -> Result<(), BackendError> {
    for (name, tensor) in inputs {
        // Engines size their caches by the mask: a mask beyond the context would make the host allocate
        // whatever a guest asks for.
        if name == "attention_mask"
            && tensor
                .dims
                .last()
                .is_some_and(|&positions| positions > context_length)
        {
            return Err(BackendError::InvalidArgument(format!(
                "attention_mask covers {} positions, beyond the model's context of {context_length}",
                tensor.dims.last().copied().unwrap_or_default()
            )));
        }
        let limit = match name.as_str() {
            "input_ids" => vocab_size,
            "position_ids" => context_length,
            _ => continue,
        };
        let bad = tensor
            .integers(name)?
            .find(|&v| !(0..i64::from(limit)).contains(&v));
        if let Some(value) = bad {
            return Err(BackendError::InvalidArgument(format!(
                "{name} holds {value}, outside 0..{limit}"
            )));
        }
    }
    Ok(())
}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<inference::NamedTensor>,
    ) -> NnResult<Vec<inference::NamedTensor>> {
        let mut named = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            // The guest hands its input tensors over (`own<tensor>`): move them out, no copy.
            named.push((name, self.table.delete(tensor)?));
        }
        let new_tokens = named
            .iter()
            .find(|(name, _)| name == "input_ids")
            .map_or(0, |(_, t)| t.element_count() as u64);
        let info = &self.table.get(&context)?.model.info;
        if let Err(e) = check_indices(&named, info.vocab_size, info.context_length) {
            return self.fail(e.code(), e.to_string());
        }
        let Some(mut backend) = self.table.get_mut(&context)?.backend.take() else {
            return self.fail(
                ErrorCode::RuntimeError,
                "the execution context failed earlier and cannot be reused",
            );
        };
        let started = Instant::now();
        let (backend, result) = tokio::task::spawn_blocking(move || {
            let result = backend.compute(named);
            (backend, result)
        })
        .await?;
        let state = self.table.get_mut(&context)?;
        match result {
            Ok(outputs) => {
                state.backend = Some(backend);
                state.computes += 1;
                let id = &state.model.info.id;
                if state.computes == 1 {
                    state.metrics.first_token(id, state.opened.elapsed());
                } else {
                    state.metrics.decoded(id, new_tokens, started.elapsed());
                }
                let mut named = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    named.push((name, self.table.push(tensor)?));
                }
                Ok(Ok(named))
            }
            Err(e @ BackendError::InvalidArgument(_)) => {
                // Nothing ran, so the context's state is intact.
                state.backend = Some(backend);
                self.fail(e.code(), e.to_string())
            }
            Err(e) => self.fail(e.code(), e.to_string()),
        }
    }

    async fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        Ok(self.table.push(Tensor {
            dims: dimensions,
            ty,
            data,
        })?)
    }

    async fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dims.clone())
    }

    async fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    async fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    async fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    async fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    async fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}
