//! ONNX Runtime backend, through the `ort` crate with the runtime library loaded at start.
//!
//! It serves the decoder contract ([`decoder`](crate::backend::decoder)) in one of two ways. Models whose
//! `genai_config.json` declares `past_present_share_buffer` keep every sequence's cache in place in shared
//! buffers ([`shared_cache`]), and their contexts' steps are batched together ([`batcher`]); the others
//! run each context's steps on their own ([`serial`]). Encoders ([`encoder`](super::encoder)) batch the
//! passes of concurrent contexts ([`encoder_batcher`]).

mod accuracy;
mod batcher;
mod encoder_batcher;
mod serial;
mod shared_cache;
mod tensors;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ort::ep::{CUDA, ExecutionProvider, ExecutionProviderDispatch, TensorRT};
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::{TensorElementType, ValueType};

use super::decoder::{self, CacheInput, PAST_PREFIX, PRESENT_PREFIX};
use super::encoder;
use super::library::{WheelLibrary, version_of};
use super::prefix_cache::PrefixCacheStats;
use super::{
    Backend, BackendError, BackendExecutionContext, BackendGraph, BackendKind, Device, Engine,
    LoadOptions, LoadResult, Precision, WeightFormat,
};

/// `MatMulNBits`' `accuracy_level` for fast mode: activations quantized to int8 per block.
const INT8_ACTIVATIONS: u64 = 4;
use batcher::Batcher;
use encoder_batcher::EncoderBatcher;
use serial::SerialContext;

pub struct OnnxRuntime {
    environment: ort::environment::Environment,
}

impl OnnxRuntime {
    /// Loads the ONNX Runtime shared library (once per process) and creates its environment. The
    /// version comes from the library's file name (`libonnxruntime.so.1.31.1`): the build info does not
    /// always say.
    pub fn start() -> wasmtime::Result<Engine> {
        type Loaded = Result<(ort::environment::Environment, String), String>;
        static ENVIRONMENT: OnceLock<Loaded> = OnceLock::new();
        let (environment, version) = ENVIRONMENT
            .get_or_init(|| {
                let lib = LIBRARY.locate().map_err(|e| e.to_string())?;
                tracing::info!(library = %lib.display(), "loading ONNX Runtime");
                let version = version_of(&lib).unwrap_or_else(|| "unknown".into());
                ort::init_from(&lib)
                    .map_err(|e| format!("cannot load {}: {e}", lib.display()))?
                    .with_name("nnspin")
                    .build()
                    .map(|environment| (environment, version))
                    .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))
            })
            .clone()
            .map_err(wasmtime::Error::msg)?;
        Ok(Engine {
            kind: BackendKind::Onnxruntime,
            version,
            backend: Box::new(Self { environment }),
        })
    }
}

/// ONNX Runtime as the `onnxruntime` wheel ships it (`onnxruntime-gpu` adds the CUDA and TensorRT
/// providers).
const LIBRARY: WheelLibrary = WheelLibrary {
    env: "ORT_DYLIB_PATH",
    package_dir: "onnxruntime/capi",
    file_prefix: "libonnxruntime.so",
    hint: "pip install onnxruntime, or onnxruntime-gpu for CUDA, ships it in onnxruntime/capi/",
};

impl OnnxRuntime {
    /// The execution providers a device needs, each failing loudly rather than falling back to the CPU.
    fn execution_providers(
        &self,
        device: Device,
    ) -> Result<Vec<ExecutionProviderDispatch>, BackendError> {
        fn require<E: ExecutionProvider>(
            device: Device,
            package: &str,
        ) -> Result<(), BackendError> {
            match E::is_available() {
                Ok(true) => Ok(()),
                _ => Err(BackendError::Load(format!(
                    "device {} needs ONNX Runtime's {}, which the loaded library was not built with \
                     (install {package} and point ORT_DYLIB_PATH at its libonnxruntime.so)",
                    device.as_str(),
                    E::NAME
                ))),
            }
        }
        Ok(match device {
            Device::Cpu => Vec::new(),
            Device::Gpu => {
                require::<CUDA>(device, "onnxruntime-gpu")?;
                vec![CUDA::default().build().error_on_failure()]
            }
            Device::Tensorrt => {
                require::<TensorRT>(device, "onnxruntime-gpu with TensorRT")?;
                vec![TensorRT::default().build().error_on_failure()]
            }
        })
    }
}

impl Backend for OnnxRuntime {
    fn load(&self, model_dir: &Path, options: &LoadOptions) -> LoadResult {
        if options.format == Some(WeightFormat::OpenvinoIr) {
            return Err(BackendError::Load(
                "ONNX Runtime reads ONNX models only (format onnx); OpenVINO IR needs backend openvino"
                    .into(),
            ));
        }
        let path = model_dir.join(WeightFormat::Onnx.file_name());
        if !path.is_file() {
            return Err(BackendError::Load(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let load = |e: ort::Error| BackendError::Load(format!("{}: {e}", path.display()));
        let mut builder = Session::builder(&self.environment)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.into()))?
            // Spinning intra-op threads halve throughput when anything else shares the cores.
            .with_intra_op_spinning(false)
            .map_err(|e| load(e.into()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| load(e.into()))?;
        }
        let providers = self.execution_providers(options.device)?;
        if !providers.is_empty() {
            builder = builder.with_execution_providers(providers).map_err(|e| {
                BackendError::Load(format!(
                    "device {}: ONNX Runtime could not start its execution provider (is a GPU \
                         with its driver present?): {e}",
                    options.device.as_str()
                ))
            })?;
        }
        let session = match options.precision {
            Precision::Exact => builder.commit_from_file(&path).map_err(load)?,
            Precision::Fast => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
                let (fast, nodes) = accuracy::with_accuracy_level(&bytes, INT8_ACTIVATIONS)?;
                drop(bytes);
                tracing::info!(model = %model_dir.display(), nodes, "MatMulNBits with int8 activations");
                // From memory, external weight files are found in the model's directory only if told.
                builder
                    .with_config_entry(
                        "session.model_external_initializers_file_folder_path",
                        model_dir.to_string_lossy(),
                    )
                    .map_err(|e| load(e.into()))?
                    .commit_from_memory(&fast)
                    .map_err(load)?
            }
        };
        let fewest_batched_steps = match options.precision {
            Precision::Exact => batcher::FP32_FEWEST_BATCHED_STEPS,
            Precision::Fast => 1,
        };
        let graph = OnnxGraph::new(
            session,
            shares_cache_buffers(model_dir),
            options.prefix_cache_bytes,
            fewest_batched_steps,
        )?;
        tracing::debug!(
            model = %model_dir.display(),
            batched = matches!(graph, OnnxGraph::Batched(_)),
            "loaded"
        );
        Ok(Arc::new(graph))
    }
}

/// Whether the model directory's `genai_config.json` (onnxruntime-genai's) says its decoder may read and
/// write its caches in one buffer.
fn shares_cache_buffers(model_dir: &Path) -> bool {
    std::fs::read(model_dir.join("genai_config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|config| config["search"]["past_present_share_buffer"].as_bool())
        .unwrap_or(false)
}

enum OnnxGraph {
    /// Each context runs its own steps ([`SerialContext`]).
    Serial {
        session: Arc<Mutex<Session>>,
        caches: Arc<[CacheInput]>,
    },
    /// Contexts' steps go to the model's scheduler, which batches them.
    Batched(Batcher),
    /// An encoder: contexts' passes go to the model's thread, which merges those that arrive together.
    Encoder(EncoderBatcher),
}

impl OnnxGraph {
    fn new(
        session: Session,
        shares_cache_buffers: bool,
        prefix_cache_bytes: u64,
        fewest_batched_steps: usize,
    ) -> Result<Self, BackendError> {
        let inputs = session.inputs().iter().map(|input| match input.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                (input.name(), tensors::element_type(*ty), shape.to_vec())
            }
            _ => (input.name(), None, Vec::new()),
        });
        let outputs = session.outputs();
        let input_types = session.inputs().iter().map(|input| match input.dtype() {
            ValueType::Tensor { ty, .. } => (input.name(), tensors::element_type(*ty)),
            _ => (input.name(), None),
        });
        let output_ranks = outputs.iter().map(|output| match output.dtype() {
            ValueType::Tensor { shape, .. } => shape.len(),
            _ => 0,
        });
        if encoder::follows_contract(input_types, output_ranks) {
            return Ok(Self::Encoder(EncoderBatcher::start(session)?));
        }
        let caches = decoder::cache_inputs(inputs, |present| {
            outputs.iter().any(|output| output.name() == present)
        })?;
        let caches: Arc<[CacheInput]> = caches.into();
        match shares_cache_buffers
            .then(|| batchable(&session, &caches))
            .flatten()
        {
            Some(chunked_prefill) => Ok(Self::Batched(Batcher::start(
                session,
                caches,
                chunked_prefill,
                prefix_cache_bytes,
                fewest_batched_steps,
            )?)),
            None => Ok(Self::Serial {
                session: Arc::new(Mutex::new(session)),
                caches,
            }),
        }
    }
}

/// Whether the scheduler can batch this decoder: caches with fixed head counts and sizes, the three
/// integer inputs it builds itself, and logits as the only other output. `Some(true)` when the logits
/// are the last position's only, so a prompt can run in chunks.
fn batchable(session: &Session, caches: &[CacheInput]) -> Option<bool> {
    let fixed_caches = !caches.is_empty() && caches.iter().all(|c| c.heads_and_dim().is_some());
    let inputs = session
        .inputs()
        .iter()
        .filter(|input| !input.name().starts_with(PAST_PREFIX))
        .map(|input| {
            let int64 = matches!(
                input.dtype(),
                ValueType::Tensor {
                    ty: TensorElementType::Int64,
                    ..
                }
            );
            (input.name(), int64)
        })
        .collect::<Vec<_>>();
    let known_inputs = inputs.len() == 3
        && inputs.iter().all(|(name, int64)| {
            *int64 && ["input_ids", "attention_mask", "position_ids"].contains(name)
        });
    let others: Vec<_> = session
        .outputs()
        .iter()
        .filter(|output| !output.name().starts_with(PRESENT_PREFIX))
        .collect();
    let [logits] = others.as_slice() else {
        return None;
    };
    let ValueType::Tensor { shape, .. } = logits.dtype() else {
        return None;
    };
    (fixed_caches && known_inputs && logits.name() == "logits")
        .then(|| shape.len() == 3 && shape[1] == 1)
}

impl BackendGraph for OnnxGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        Ok(match self {
            Self::Serial { session, caches } => {
                Box::new(SerialContext::new(session.clone(), caches.clone()))
            }
            Self::Batched(batcher) => Box::new(batcher.context()),
            Self::Encoder(batcher) => Box::new(batcher.context()),
        })
    }

    fn prefix_cache(&self) -> Option<Arc<PrefixCacheStats>> {
        match self {
            Self::Batched(batcher) => Some(batcher.prefix_cache()),
            Self::Serial { .. } | Self::Encoder(_) => None,
        }
    }

    fn batches_contexts(&self) -> bool {
        !matches!(self, Self::Serial { .. })
    }

    fn sequences_per_context(&self) -> u32 {
        match self {
            Self::Batched(_) => super::batching::SEQUENCES_PER_CONTEXT as u32,
            Self::Serial { .. } | Self::Encoder(_) => 1,
        }
    }
}
