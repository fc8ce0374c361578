//! The inference engines of the process, each started on first use: a host whose models all run on
//! ONNX Runtime never loads OpenVINO, and the reverse.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{BackendKind, Engine};

/// Whether this host carries OpenVINO's PagedAttention library (built against the `openvino` wheel), with
/// which OpenVINO batches a stateful IR's contexts.
pub const PAGED_ATTENTION: bool = cfg!(all(feature = "openvino", openvino_paged));

#[derive(Default)]
pub struct Engines {
    started: Mutex<BTreeMap<BackendKind, Arc<Engine>>>,
}

impl Engines {
    /// The engine of that kind, started now if no model used it before.
    pub fn get(&self, kind: BackendKind) -> wasmtime::Result<Arc<Engine>> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = started.get(&kind) {
            return Ok(engine.clone());
        }
        let engine = Arc::new(start(kind)?);
        started.insert(kind, engine.clone());
        Ok(engine)
    }

    /// The engines started so far, for version reports.
    pub fn started(&self) -> Vec<Arc<Engine>> {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn start(kind: BackendKind) -> wasmtime::Result<Engine> {
    match kind {
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => super::onnxruntime::OnnxRuntime::start(),
        #[cfg(feature = "openvino")]
        BackendKind::Openvino => super::openvino::OpenVino::start(),
        #[allow(unreachable_patterns)]
        other => wasmtime::bail!(
            "this nnspin was built without the {} backend (cargo feature `{}`)",
            other.as_str(),
            other.as_str()
        ),
    }
}
