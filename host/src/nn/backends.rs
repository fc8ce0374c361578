//! The inference engines of the process, each started on first use: a host whose models all run on
//! ONNX Runtime never loads OpenVINO, and the reverse.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::backend::Backend;

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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Onnxruntime => "onnxruntime",
            Self::Openvino => "openvino",
        }
    }
}

#[derive(Default)]
pub struct Backends {
    started: Mutex<BTreeMap<BackendKind, Arc<dyn Backend>>>,
}

impl Backends {
    /// The engine of that kind, started now if no model used it before.
    pub fn get(&self, kind: BackendKind) -> wasmtime::Result<Arc<dyn Backend>> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(backend) = started.get(&kind) {
            return Ok(backend.clone());
        }
        let backend = start(kind)?;
        started.insert(kind, backend.clone());
        Ok(backend)
    }

    /// The engines started so far, for version reports.
    pub fn started(&self) -> Vec<Arc<dyn Backend>> {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn start(kind: BackendKind) -> wasmtime::Result<Arc<dyn Backend>> {
    match kind {
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => Ok(Arc::new(super::onnxruntime::OnnxRuntime::new()?)),
        #[cfg(feature = "openvino")]
        BackendKind::Openvino => Ok(Arc::new(super::openvino::OpenVino::new()?)),
        #[allow(unreachable_patterns)]
        other => wasmtime::bail!(
            "this nnspin was built without the {} backend (cargo feature `{}`)",
            other.as_str(),
            other.as_str()
        ),
    }
}
