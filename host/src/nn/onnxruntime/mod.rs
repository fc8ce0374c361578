//! ONNX Runtime backend, through the `ort` crate with the runtime library loaded at start.
//!
//! A model directory in the Hugging Face Optimum layout holds a decoder whose inputs are `input_ids`,
//! `attention_mask`, `position_ids` and `past_key_values.{i}.key/value`, and whose outputs are `logits`
//! and `present.{i}.key/value`. The execution context feeds each `present.*` back as the matching
//! `past_key_values.*` on the next `compute`, so the guest only ever sends the new tokens. Models whose
//! `genai_config.json` declares `past_present_share_buffer` keep every sequence's cache in place in shared
//! buffers ([`shared_cache`]), and their contexts' steps are batched together ([`batcher`]).

mod batcher;
mod shared_cache;

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ort::ep::{CUDA, ExecutionProvider, ExecutionProviderDispatch, TensorRT};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::backend::{
    Backend, BackendError, BackendExecutionContext, BackendGraph, Device, LoadOptions, Tensor,
    WeightFormat,
};
use super::library::{WheelLibrary, version_of};
use crate::bindings::tensor::TensorType;
use batcher::Batcher;

/// Prefix of the cache inputs the context fills itself, and of the outputs it keeps.
const PAST_PREFIX: &str = "past_key_values.";
const PRESENT_PREFIX: &str = "present.";

pub struct OnnxRuntime {
    environment: ort::environment::Environment,
    /// From the library's file name (`libonnxruntime.so.1.31.1`); the build info does not always say.
    version: String,
}

impl OnnxRuntime {
    /// Loads the ONNX Runtime shared library (once per process) and creates its environment.
    pub fn new() -> wasmtime::Result<Self> {
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
        Ok(Self {
            environment,
            version,
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
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn load(
        &self,
        model_dir: &Path,
        options: &LoadOptions,
    ) -> Result<Arc<dyn BackendGraph>, BackendError> {
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
        let session = builder.commit_from_file(&path).map_err(load)?;
        let graph = OnnxGraph::new(session, shares_cache_buffers(model_dir))?;
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

/// Shape of one cache input, with the batch and past-length axes left free.
#[derive(Clone)]
struct CacheInput {
    name: String,
    /// The output the model returns this cache's next state in (`present.*`).
    present: String,
    ty: TensorElementType,
    /// Dimensions with -1 where the model leaves them symbolic.
    dims: Vec<i64>,
}

impl CacheInput {
    /// Key/value heads and head size: the axes a model fixes (`[batch, heads, positions, head_dim]`).
    fn heads_and_dim(&self) -> (usize, usize) {
        (self.dims[1] as usize, self.dims[3] as usize)
    }
}

enum OnnxGraph {
    /// Each context runs its own steps, one at a time: ONNX Runtime's `Run` is not thread safe on one
    /// session, and a model without shared cache buffers returns a fresh cache per step.
    Serial {
        session: Arc<Mutex<Session>>,
        caches: Arc<[CacheInput]>,
    },
    /// Contexts' steps go to the model's scheduler, which batches them.
    Batched(Batcher),
}

impl OnnxGraph {
    fn new(session: Session, shares_cache_buffers: bool) -> Result<Self, BackendError> {
        let mut caches = Vec::new();
        for input in session.inputs() {
            if !input.name().starts_with(PAST_PREFIX) {
                continue;
            }
            let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
                return Err(BackendError::Load(format!(
                    "cache input {} is not a tensor",
                    input.name()
                )));
            };
            let present = format!("{PRESENT_PREFIX}{}", &input.name()[PAST_PREFIX.len()..]);
            if !session
                .outputs()
                .iter()
                .any(|output| output.name() == present)
            {
                return Err(BackendError::Load(format!(
                    "the model has no output {present} for its input {}",
                    input.name()
                )));
            }
            caches.push(CacheInput {
                present,
                name: input.name().to_string(),
                ty: *ty,
                dims: shape.to_vec(),
            });
        }
        let caches: Arc<[CacheInput]> = caches.into();
        match shares_cache_buffers
            .then(|| batchable(&session, &caches))
            .flatten()
        {
            Some(chunked_prefill) => Ok(Self::Batched(Batcher::start(
                session,
                caches,
                chunked_prefill,
            )?)),
            None => Ok(Self::Serial {
                session: Arc::new(Mutex::new(session)),
                caches,
            }),
        }
    }
}

/// Whether the scheduler can batch this decoder: float caches with fixed head counts and sizes, the three
/// integer inputs it builds itself, and logits as the only other output. `Some(true)` when the logits
/// are the last position's only, so a prompt can run in chunks.
fn batchable(session: &Session, caches: &[CacheInput]) -> Option<bool> {
    let fixed_caches = !caches.is_empty()
        && caches.iter().all(|c| {
            c.ty == TensorElementType::Float32
                && c.dims.len() == 4
                && c.dims[1] > 0
                && c.dims[3] > 0
        });
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
            Self::Serial { session, caches } => Box::new(OnnxContext {
                session: session.clone(),
                caches: caches.clone(),
                past: None,
            }),
            Self::Batched(batcher) => Box::new(batcher.context()),
        })
    }
}

struct OnnxContext {
    session: Arc<Mutex<Session>>,
    caches: Arc<[CacheInput]>,
    /// The previous step's `present.*` values, in the order of `caches`; `None` before the first step.
    past: Option<Vec<DynValue>>,
}

impl OnnxContext {
    /// Zero-length caches for the first step of a sequence of `batch` rows.
    fn empty_caches(&self, batch: i64) -> Result<Vec<DynValue>, BackendError> {
        self.caches
            .iter()
            .map(|cache| {
                let dims: Vec<i64> = cache
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(axis, &d)| match axis {
                        0 => batch,
                        2 => 0,
                        _ => d.max(1),
                    })
                    .collect();
                match cache.ty {
                    TensorElementType::Float32 => {
                        OrtTensor::<f32>::from_array((dims, Vec::<f32>::new()))
                            .map(|t| t.into_dyn())
                    }
                    TensorElementType::Float16 => {
                        return Err(BackendError::Unsupported(format!(
                            "fp16 cache input {}",
                            cache.name
                        )));
                    }
                    other => {
                        return Err(BackendError::Unsupported(format!(
                            "cache input type {other:?}"
                        )));
                    }
                }
                .map_err(|e| BackendError::Runtime(e.to_string()))
            })
            .collect()
    }
}

impl BackendExecutionContext for OnnxContext {
    fn compute(
        &mut self,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, BackendError> {
        let mut batch = 1;
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len() + self.caches.len());
        for (name, tensor) in inputs {
            if name.starts_with(PAST_PREFIX) {
                return Err(BackendError::InvalidArgument(format!(
                    "{name} is kept by the execution context; send only the new tokens"
                )));
            }
            if name == "input_ids" {
                batch = tensor.dims.first().copied().unwrap_or(1) as i64;
            }
            feed.push((Cow::Owned(name), to_ort(tensor)?.into()));
        }
        if self.past.is_none() {
            self.past = Some(self.empty_caches(batch)?);
        }
        let past = self.past.as_ref().expect("caches initialised above");
        // Per token: the cache names are borrowed, not copied, and found by name without allocating.
        for (cache, value) in self.caches.iter().zip(past) {
            feed.push((Cow::Borrowed(cache.name.as_str()), value.into()));
        }

        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut outputs = session
            .run(feed)
            .map_err(|e| BackendError::Runtime(e.to_string()))?;
        let mut present = Vec::with_capacity(self.caches.len());
        for cache in self.caches.iter() {
            let value = outputs.remove(&cache.present).ok_or_else(|| {
                BackendError::Runtime(format!("the model returned no {}", cache.present))
            })?;
            present.push(value);
        }
        let rest: Vec<(String, DynValue)> = outputs
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        drop(session);
        self.past = Some(present);
        rest.into_iter()
            .map(|(name, value)| Ok((name, from_ort(&value)?)))
            .collect()
    }
}

fn to_ort(tensor: Tensor) -> Result<DynValue, BackendError> {
    tensor.check_size()?;
    let dims: Vec<i64> = tensor.dims.iter().map(|&d| d as i64).collect();
    let bad = |e: ort::Error| BackendError::InvalidArgument(e.to_string());
    Ok(match tensor.ty {
        TensorType::I64 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, i64::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        TensorType::I32 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, i32::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        TensorType::Fp32 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, f32::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        TensorType::U8 => OrtTensor::from_array((dims, tensor.data))
            .map_err(bad)?
            .into_dyn(),
        other => {
            return Err(BackendError::Unsupported(format!(
                "input tensor type {other:?}"
            )));
        }
    })
}

fn le_values<const N: usize, T>(bytes: &[u8], convert: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| convert(c.try_into().expect("chunk of N bytes")))
        .collect()
}

fn from_ort(value: &DynValue) -> Result<Tensor, BackendError> {
    let runtime = |e: ort::Error| BackendError::Runtime(e.to_string());
    let ty = value
        .dtype()
        .tensor_type()
        .ok_or_else(|| BackendError::Unsupported("non-tensor output".into()))?;
    macro_rules! convert {
        ($t:ty, $wasi:expr) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(runtime)?;
            let mut bytes = Vec::with_capacity(data.len() * size_of::<$t>());
            for v in data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            (shape.iter().map(|&d| d as u32).collect(), $wasi, bytes)
        }};
    }
    let (dims, ty, data) = match ty {
        TensorElementType::Float32 => convert!(f32, TensorType::Fp32),
        TensorElementType::Int64 => convert!(i64, TensorType::I64),
        TensorElementType::Int32 => convert!(i32, TensorType::I32),
        TensorElementType::Uint8 => convert!(u8, TensorType::U8),
        other => {
            return Err(BackendError::Unsupported(format!(
                "output tensor type {other:?}"
            )));
        }
    };
    Ok(Tensor { dims, ty, data })
}
