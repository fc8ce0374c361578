//! The boundary between wasi-nn and the inference engines, in the spirit of wasmtime's `crates/wasi-nn`:
//! a backend loads graphs, a graph makes execution contexts, a context computes on named tensors.
//!
//! Contexts are stateful: a decoder's KV cache stays inside its context between `compute` calls, so no
//! cache bytes ever cross the component boundary.

use std::path::Path;
use std::sync::Arc;

use crate::bindings::errors::ErrorCode;
use crate::bindings::tensor::TensorType;

/// A tensor as it crosses the wasi-nn boundary: dimensions, element type and little-endian bytes.
#[derive(Debug)]
pub struct Tensor {
    pub dims: Vec<u32>,
    pub ty: TensorType,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Number of elements the dimensions describe.
    pub fn element_count(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// A guest's tensor must hold exactly as many bytes as its dimensions and type say.
    pub fn check_size(&self) -> Result<(), BackendError> {
        if self.data.len() != self.element_count() * element_size(self.ty) {
            return Err(BackendError::InvalidArgument(format!(
                "tensor of dimensions {:?} holds {} bytes",
                self.dims,
                self.data.len()
            )));
        }
        Ok(())
    }
}

impl Tensor {
    /// The values of an integer tensor (i64 or i32, widened), read in place: token ids, positions and
    /// masks are checked and used on every step, so they are not collected first.
    pub fn integers(&self, name: &str) -> Result<impl Iterator<Item = i64> + '_, BackendError> {
        self.check_size()?;
        let width = match self.ty {
            TensorType::I64 => 8,
            TensorType::I32 => 4,
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

/// Size of one element of a wasi-nn tensor type.
pub fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
        TensorType::U8 => 1,
    }
}

/// Why a backend operation failed; each kind maps onto one wasi-nn error code.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
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
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Unsupported(_) => ErrorCode::UnsupportedOperation,
            Self::Load(_) | Self::Runtime(_) => ErrorCode::RuntimeError,
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

/// How a graph should be placed and run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Intra-op threads for one inference; 0 lets the backend choose.
    pub threads: usize,
    pub device: Device,
    /// Which files to read; `None` lets the backend pick from what the directory holds.
    pub format: Option<WeightFormat>,
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

/// An inference engine that can load models from a directory.
pub trait Backend: Send + Sync {
    /// Short name for logs and model metadata, such as `onnxruntime`.
    fn name(&self) -> &'static str;
    /// Version of the engine library in use.
    fn version(&self) -> String;
    fn load(
        &self,
        model_dir: &Path,
        options: &LoadOptions,
    ) -> Result<Arc<dyn BackendGraph>, BackendError>;
}

/// A loaded model, shared by every instance and request.
pub trait BackendGraph: Send + Sync {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError>;
}

/// One sequence's inference state.
pub trait BackendExecutionContext: Send {
    /// Runs the model on the named inputs and returns the named outputs the guest may read.
    fn compute(
        &mut self,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, BackendError>;
}
