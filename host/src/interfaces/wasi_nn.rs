//! `wasi:nn@0.2.0-rc-2024-10-28` over the host's resident models, like wasmtime's
//! `crates/wasi-nn/src/wit.rs`: the WIT calls mapped onto the registry and the engines, token ids and
//! positions checked before any engine sees them, and every failure mapped to a wasi-nn error code in one
//! place ([`code`]).
//!
//! Graphs come only from `load-by-name`, which serves the models `spin.toml` lets the component use;
//! loading raw model bytes from a guest is refused, since models are loaded once per process, not per
//! request. `compute` runs on tokio's blocking pool so inference never stalls the HTTP workers.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Resource;

use super::bindings::errors::ErrorCode;
use super::bindings::graph::{ExecutionTarget, GraphBuilder, GraphEncoding};
use super::bindings::tensor::TensorType;
use super::bindings::{errors, graph, inference, tensor};
use super::resources::{ExecutionContext, Graph, NnError};
use super::view::LlmView;
use crate::backend::{BackendError, ElementType, Tensor, decoder};
use crate::metrics::Metrics;
use crate::registry::model::{Model, Task};

/// The wasi-nn error code a guest reads for each kind of failure.
fn code(error: &NnError) -> ErrorCode {
    match error {
        NnError::Backend(BackendError::InvalidArgument(_)) => ErrorCode::InvalidArgument,
        NnError::Backend(BackendError::Unsupported(_)) => ErrorCode::UnsupportedOperation,
        NnError::Backend(BackendError::Load(_) | BackendError::Runtime(_))
        | NnError::ContextFailed => ErrorCode::RuntimeError,
        NnError::LoadRefused => ErrorCode::Security,
        NnError::NotAvailable(_) => ErrorCode::NotFound,
        // wasi-nn has no "busy": a full queue is reported as `timeout`, which the components answer
        // with 503 and `Retry-After`.
        NnError::AtCapacity(_) => ErrorCode::Timeout,
    }
}

fn tensor_type(ty: ElementType) -> TensorType {
    match ty {
        ElementType::F16 => TensorType::Fp16,
        ElementType::Bf16 => TensorType::Bf16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
    }
}

fn element_type(ty: TensorType) -> ElementType {
    match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Bf16 => ElementType::Bf16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
    }
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl LlmView<'_> {
    fn fail<T>(&mut self, error: impl Into<NnError>) -> NnResult<T> {
        let error = error.into();
        tracing::debug!(code = ?code(&error), %error, "wasi-nn error");
        Ok(Err(self.table.push(error)?))
    }
}

impl graph::Host for LlmView<'_> {
    async fn load(
        &mut self,
        _builder: Vec<GraphBuilder>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        self.fail(NnError::LoadRefused)
    }

    async fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        match self.grants.model(&name) {
            Some(model) => Ok(Ok(self.table.push(Graph(model))?)),
            None => self.fail(NnError::NotAvailable(name)),
        }
    }
}

impl graph::HostGraph for LlmView<'_> {
    async fn init_execution_context(
        &mut self,
        graph: Resource<Graph>,
    ) -> NnResult<Resource<inference::GraphExecutionContext>> {
        let model = self.table.get(&graph)?.0.clone();
        let metrics = self.grants.registry().metrics().clone();
        match open_context(model, metrics).await {
            Ok(context) => Ok(Ok(self.table.push(context)?)),
            Err(e) => self.fail(e),
        }
    }

    async fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

/// Takes one of the model's slots (waiting in its queue, or refused when that is full) and opens an
/// engine context on it: every sequence a component runs, through wasi-nn or Spin's LLM interface.
pub(crate) async fn open_context(
    model: Arc<Model>,
    metrics: Arc<Metrics>,
) -> Result<ExecutionContext, NnError> {
    let id = &model.facts.id;
    let slot = match model
        .admission
        .admit(|delta| metrics.queue_changed(id, delta))
        .await
    {
        Ok(slot) => slot,
        Err(full) => {
            metrics.rejected(id);
            return Err(full.into());
        }
    };
    let backend = model.graph.init_execution_context()?;
    metrics.context_opened(id);
    Ok(ExecutionContext {
        backend: Some(backend),
        model,
        metrics,
        opened: Instant::now(),
        computes: 0,
        slot,
    })
}

impl inference::Host for LlmView<'_> {}

/// Most rows of full context length one pass may hold: an encoder's batch (rows × positions) is bounded
/// so that a guest cannot make one pass allocate without limit.
const MAX_FULL_ROWS_PER_PASS: u64 = 64;

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
            && let Some(&positions) = tensor.dims.last()
            && positions > context_length
        {
            return Err(BackendError::InvalidArgument(format!(
                "attention_mask covers {positions} positions, beyond the model's context of \
                 {context_length}"
            )));
        }
        if name == "input_ids"
            && tensor.element_count() as u64 > MAX_FULL_ROWS_PER_PASS * u64::from(context_length)
        {
            return Err(BackendError::InvalidArgument(format!(
                "input_ids holds {} tokens, more than one pass may ({MAX_FULL_ROWS_PER_PASS} rows of \
                 {context_length})",
                tensor.element_count()
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

impl inference::HostGraphExecutionContext for LlmView<'_> {
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
        let facts = &self.table.get(&context)?.model.facts;
        if let Err(e) = check_indices(&named, facts.vocab_size, facts.context_length) {
            return self.fail(e);
        }
        let state = self.table.get_mut(&context)?;
        if state.model.facts.task == Task::Generation {
            // A decoder's rows are sequences, each taking one of the model's turns.
            let rows = usize::try_from(decoder::rows(&named)).unwrap_or(1);
            state.model.admission.resize(&mut state.slot, rows).await;
        }
        let Some(mut backend) = state.backend.take() else {
            return self.fail(NnError::ContextFailed);
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
                // Token timings are a decoder's; an encoder's pass makes no tokens.
                let facts = &state.model.facts;
                if facts.task == Task::Generation {
                    if state.computes == 1 {
                        state.metrics.first_token(&facts.id, state.opened.elapsed());
                    } else {
                        state
                            .metrics
                            .decoded(&facts.id, new_tokens, started.elapsed());
                    }
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
                self.fail(e)
            }
            Err(e) => self.fail(e),
        }
    }

    async fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for LlmView<'_> {}

impl tensor::HostTensor for LlmView<'_> {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        Ok(self.table.push(Tensor {
            dims: dimensions,
            ty: element_type(ty),
            data,
        })?)
    }

    async fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dims.clone())
    }

    async fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(tensor_type(self.table.get(&tensor)?.ty))
    }

    async fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    async fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for LlmView<'_> {}

impl errors::HostError for LlmView<'_> {
    async fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(code(self.table.get(&error)?))
    }

    async fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.to_string())
    }

    async fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}
