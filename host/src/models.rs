//! The model registry: every model the app declares, loaded once at start and shared by all requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use wasmtime::error::Context;

use crate::bindings::text::ModelInfo;
use crate::nn::backend::{Backend, BackendGraph, LoadOptions};
use crate::text::TextModel;

/// A resident model: its graph in a backend, its tokenizer and what components are told about it.
pub struct Model {
    pub info: ModelInfo,
    pub backend: &'static str,
    pub graph: Arc<dyn BackendGraph>,
    pub text: TextModel,
}

impl Model {
    /// Loads a model directory in the Hugging Face Optimum layout.
    pub fn load(
        id: &str,
        dir: &Path,
        backend: &dyn Backend,
        options: &LoadOptions,
    ) -> wasmtime::Result<Self> {
        if !dir.is_dir() {
            wasmtime::bail!(
                "model {id:?}: directory {} does not exist (prepare it with tools/export_model.py)",
                dir.display()
            );
        }
        let config_path = dir.join("config.json");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path)
                .with_context(|| format!("model {id:?}: reading {}", config_path.display()))?,
        )
        .with_context(|| format!("model {id:?}: parsing {}", config_path.display()))?;
        let generation: serde_json::Value = std::fs::read(dir.join("generation_config.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let eos_token_ids = token_ids(&generation["eos_token_id"])
            .or_else(|| token_ids(&config["eos_token_id"]))
            .with_context(|| {
                format!("model {id:?}: no eos_token_id in generation_config.json or config.json")
            })?;
        let text =
            TextModel::load(dir).with_context(|| format!("model {id:?}: loading its tokenizer"))?;
        let graph = backend
            .load(dir, options)
            .with_context(|| format!("model {id:?}"))?;
        let created = std::fs::metadata(dir.join("model.onnx"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let info = ModelInfo {
            id: id.to_string(),
            context_length: config["max_position_embeddings"].as_u64().unwrap_or(2048) as u32,
            vocab_size: config["vocab_size"]
                .as_u64()
                .map_or_else(|| text.vocab_size(), |v| v as u32),
            eos_token_ids,
            created,
            owned_by: "nnspin".to_string(),
        };
        Ok(Self {
            info,
            backend: backend.name(),
            graph,
            text,
        })
    }
}

fn token_ids(value: &serde_json::Value) -> Option<Vec<u32>> {
    match value {
        serde_json::Value::Number(n) => Some(vec![n.as_u64()? as u32]),
        serde_json::Value::Array(items) => {
            items.iter().map(|v| v.as_u64().map(|n| n as u32)).collect()
        }
        _ => None,
    }
}

/// Every model of the app, by name.
#[derive(Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Arc<Model>>,
}

impl ModelRegistry {
    /// Loads each named model from `models_dir/<name>`, in parallel.
    pub fn load(
        models_dir: &Path,
        names: &[String],
        backend: &dyn Backend,
        options: &LoadOptions,
    ) -> wasmtime::Result<Self> {
        let loaded: Vec<wasmtime::Result<(String, Model)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let dir: PathBuf = models_dir.join(name);
                    scope.spawn(move || {
                        let started = std::time::Instant::now();
                        let model = Model::load(name, &dir, backend, options)?;
                        tracing::info!(model = %name, backend = model.backend, ms = started.elapsed().as_millis() as u64, "model loaded");
                        Ok((name.clone(), model))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("model loading thread panicked"))
                .collect()
        });
        let mut models = BTreeMap::new();
        for result in loaded {
            let (name, model) = result?;
            models.insert(name, Arc::new(model));
        }
        Ok(Self { models })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }
}

/// The models one component may use, as its instances see them.
#[derive(Clone)]
pub struct ModelAccess {
    registry: Arc<ModelRegistry>,
    allowed: Arc<[String]>,
}

impl ModelAccess {
    pub fn new(registry: Arc<ModelRegistry>, allowed: Arc<[String]>) -> Self {
        Self { registry, allowed }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        if !self.allowed.iter().any(|allowed| allowed == name) {
            return None;
        }
        self.registry.get(name).cloned()
    }

    pub fn list(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.allowed
            .iter()
            .filter_map(|name| self.registry.get(name))
    }
}
