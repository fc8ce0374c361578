//! The inference engines, in the spirit of wasmtime's `crates/wasi-nn` backends: a [`Backend`] loads
//! graphs, a [`BackendGraph`] makes execution contexts, a [`BackendExecutionContext`] computes on named
//! tensors.
//!
//! Engines know tensors, devices and their own errors, nothing of the WIT interfaces, the model registry
//! or tokenizers: the wasi-nn glue (`interfaces::wasi_nn`) maps [`Tensor`]s and [`BackendError`]s onto
//! wasi-nn's types. Contexts are stateful: a decoder's KV cache stays inside its context between
//! `compute` calls ([`decoder`]), so no cache bytes ever cross the component boundary.

/// Continuous batching's contexts and round loop, shared by the engines that batch.
#[cfg(any(feature = "onnxruntime", feature = "openvino"))]
mod batching;
/// The paged caches' blocks and their prefix cache; only OpenVINO pages its caches.
#[cfg(feature = "openvino")]
mod cache_blocks;
pub mod decoder;
pub mod encoder;
pub mod engines;
/// Finds the engines' native libraries; only the engine backends use it.
#[cfg(any(feature = "onnxruntime", feature = "openvino"))]
mod library;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(feature = "openvino")]
pub mod openvino;
pub mod prefix_cache;

use std::path::Path;
use std::sync::Arc;

/// The element types a tensor may hold: wasi-nn's, so the glue maps them one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F16,
    Bf16,
    F32,
    F64,
    U8,
    I32,
    I64,
}

impl ElementType {
    /// Bytes of one element.
    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::U8 => 1,
        }
    }
}

/// A tensor as it crosses the wasi-nn boundary: dimensions, element type and little-endian bytes.
#[derive(Debug)]
pub struct Tensor {
    pub dims: Vec<u32>,
    pub ty: ElementType,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Number of elements the dimensions describe.
    pub fn element_count(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// A guest's tensor must hold exactly as many bytes as its dimensions and type say.
    pub fn check_size(&self) -> Result<(), BackendError> {
        if self.data.len() != self.element_count() * self.ty.size() {
            return Err(BackendError::InvalidArgument(format!(
                "tensor of dimensions {:?} holds {} bytes",
                self.dims,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// The values of an integer tensor (i64 or i32, widened), read in place: token ids, positions and
    /// masks are checked and used on every step, so they are not collected first.
    pub fn integers(&self, name: &str) -> Result<impl Iterator<Item = i64> + '_, BackendError> {
        self.check_size()?;
        let width = match self.ty {
            ElementType::I64 => 8,
            ElementType::I32 => 4,
            other => {
                return Err(BackendError::InvalidArgument(format!(
                    "{name} must be i64 or i32, not {other:?}"
                )));
            }
        };
        Ok(self.data.chunks_exact(width).map(|b| match b.len() {
            8 => i64::from_le_bytes(b.try_into().expect("8 bytes")),
            _ => i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))),
        }))
    }
}

/// The bytes of `values` as a wasi-nn tensor holds them (little-endian): one copy, no per-element work,
/// for the logits every decode step hands back.
#[cfg(target_endian = "little")]
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    // SAFETY: `f32` has no padding and every byte is a valid `u8`; on a little-endian host its memory is
    // already the byte order wasi-nn tensors use.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
        .to_vec()
}

/// Why a backend operation failed. The wasi-nn glue maps each kind onto one wasi-nn error code.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The inputs are wrong; nothing ran, so the context's state is intact.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("failed to load model: {0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Runtime(String),
}

impl BackendError {
    /// An engine's own error during inference, as one line.
    pub fn runtime(error: impl std::fmt::Display) -> Self {
        Self::Runtime(error.to_string())
    }
}

/// An inference engine nnspin can serve models from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime, from the `onnxruntime` wheel (`onnxruntime-gpu` for CUDA/TensorRT) or ORT_DYLIB_PATH.
    Onnxruntime,
    /// OpenVINO, from the `openvino` wheel or OPENVINO_LIB_PATH.
    Openvino,
}

impl BackendKind {
    /// The name logs, model metadata and version reports use (and the cargo feature that builds it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Onnxruntime => "onnxruntime",
            Self::Openvino => "openvino",
        }
    }
}

/// Where a graph runs: wasi-nn's execution targets, with the GPU flavours the backends offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    Cpu,
    /// ONNX Runtime's CUDA execution provider, or OpenVINO's `GPU` device.
    Gpu,
    /// ONNX Runtime's TensorRT execution provider.
    Tensorrt,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Tensorrt => "tensorrt",
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" | "cuda" => Ok(Self::Gpu),
            "tensorrt" => Ok(Self::Tensorrt),
            "tpu" => Err("device tpu is not supported: no nnspin backend runs on TPUs".into()),
            other => Err(format!(
                "unknown device {other:?}: use cpu, gpu (cuda) or tensorrt"
            )),
        }
    }
}

/// How exactly a model computes. Both keep the weights as exported; they differ in the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 activations: the answers of the weights as they are.
    Exact,
    /// What each engine's own fast kernels compute: int8 activations for ONNX Runtime's `MatMulNBits`
    /// (`accuracy_level` 4), the OpenVINO CPU plugin's defaults (bf16 where the CPU has it, dynamic int8
    /// quantization of weight-compressed matmuls). `bench/quality.py` measures what it costs.
    Fast,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fast => "fast",
        }
    }
}

/// How a graph should be placed and run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Intra-op threads for one inference; 0 lets the backend choose.
    pub threads: usize,
    pub device: Device,
    pub precision: Precision,
    /// Which files to read; `None` lets the backend pick from what the directory holds.
    pub format: Option<WeightFormat>,
    /// Memory the KV caches of finished sequences may keep for later prompts ([`prefix_cache`]); 0
    /// switches prefix caching off.
    pub prefix_cache_bytes: u64,
}

/// The files a model directory serves a backend from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightFormat {
    /// `model.onnx` (the project's export, or any Optimum ONNX export).
    Onnx,
    /// `openvino_model.xml` + `.bin` (OpenVINO only; optimum-intel's stateful export included).
    OpenvinoIr,
}

impl WeightFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Onnx => "model.onnx",
            Self::OpenvinoIr => "openvino_model.xml",
        }
    }
}

/// Named tensors, as a step's inputs and outputs are.
pub type NamedTensors = Vec<(String, Tensor)>;

pub type LoadResult = Result<Arc<dyn BackendGraph>, BackendError>;

/// A started engine: which it is, the version of its library, and the backend that loads models on it.
pub struct Engine {
    pub kind: BackendKind,
    pub version: String,
    pub backend: Box<dyn Backend>,
}

/// An inference engine that can load models from a directory. Which engine it is and its version are
/// facts of the started [`Engine`], not of each backend's code.
pub trait Backend: Send + Sync {
    fn load(&self, model_dir: &Path, options: &LoadOptions) -> LoadResult;
}

/// A loaded model, shared by every instance and request.
pub trait BackendGraph: Send + Sync {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError>;

    /// The figures of the graph's prefix cache and KV buffers, where it keeps them in the host.
    fn prefix_cache(&self) -> Option<Arc<prefix_cache::PrefixCacheStats>> {
        None
    }

    /// Whether the contexts' steps run together in shared passes (a batch scheduler), so that many
    /// sequences at once cost little more than one; else each context computes alone.
    fn batches_contexts(&self) -> bool {
        false
    }

    /// How many sequences one execution context may carry as the rows of its steps, forking and
    /// ending them with `beam_idx` ([`decoder`]); 1 where a context holds one sequence.
    fn sequences_per_context(&self) -> u32 {
        1
    }
}

/// One sequence's inference state.
pub trait BackendExecutionContext: Send {
    /// Runs the model on the named inputs and returns the named outputs the guest may read.
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError>;
}
