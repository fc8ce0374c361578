//! The model registry: every model the app declares, loaded once at start and shared by all requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::UNIX_EPOCH;

use wasmtime::error::Context;

use crate::bindings::text::ModelInfo;
use crate::metrics::Metrics;
use crate::nn::backend::{Backend, BackendGraph, Device, LoadOptions, WeightFormat};
use crate::nn::backends::{BackendKind, Backends};
use crate::text::TextModel;

/// A resident model: its graph in a backend, its tokenizer and what components are told about it.
pub struct Model {
    pub info: ModelInfo,
    pub backend: &'static str,
    pub device: Device,
    pub graph: Arc<dyn BackendGraph>,
    pub text: TextModel,
    /// Admission control for the model's execution contexts.
    pub slots: ContextSlots,
}

/// How many sequences one model serves at once, and how many may wait for a turn.
#[derive(Debug, Clone, Copy)]
pub struct ContextLimits {
    pub max_active: usize,
    pub max_queued: usize,
}

/// A bounded queue in front of a model: `max_active` execution contexts at a time, up to `max_queued`
/// requests waiting, and past that an immediate refusal the API turns into 503 with `Retry-After`.
pub struct ContextSlots {
    active: Arc<tokio::sync::Semaphore>,
    queued: std::sync::atomic::AtomicUsize,
    limits: ContextLimits,
}

/// The model's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("model is at capacity: {active} sequences running and {queued} waiting")]
pub struct AtCapacity {
    pub active: usize,
    pub queued: usize,
}

impl ContextSlots {
    fn new(limits: ContextLimits) -> Self {
        Self {
            active: Arc::new(tokio::sync::Semaphore::new(limits.max_active)),
            queued: Default::default(),
            limits,
        }
    }

    /// Waits for a turn, or refuses at once when the queue is full.
    pub async fn acquire(
        &self,
        on_queue: impl Fn(i64),
    ) -> Result<tokio::sync::OwnedSemaphorePermit, AtCapacity> {
        use std::sync::atomic::Ordering;
        if let Ok(permit) = self.active.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(AtCapacity {
                active: self.limits.max_active,
                queued,
            });
        }
        on_queue(1);
        // Leaves the queue however the wait ends, the waiter being dropped included.
        struct Leave<'a, F: Fn(i64)>(&'a std::sync::atomic::AtomicUsize, F);
        impl<F: Fn(i64)> Drop for Leave<'_, F> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                (self.1)(-1);
            }
        }
        let _leave = Leave(&self.queued, on_queue);
        Ok(self
            .active
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed"))
    }
}

impl Model {
    /// Loads a model directory in the Hugging Face Optimum layout.
    pub fn load(
        id: &str,
        dir: &Path,
        backend: &dyn Backend,
        options: &LoadOptions,
        limits: ContextLimits,
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
        let graph = backend.load(dir, options).with_context(|| {
            format!(
                "model {id:?} on {} ({})",
                backend.name(),
                options.device.as_str()
            )
        })?;
        let created = std::fs::metadata(dir.join("config.json"))
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
            backend: backend.name().to_string(),
            device: options.device.as_str().to_string(),
        };
        Ok(Self {
            info,
            backend: backend.name(),
            device: options.device,
            graph,
            text,
            slots: ContextSlots::new(limits),
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

/// Where and how one model runs: the command line's defaults, overridden per model in spin.toml.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub backend: BackendKind,
    pub device: Device,
    /// Intra-op threads; 0 lets the backend choose.
    pub threads: usize,
    pub format: Option<WeightFormat>,
}

/// A model's overrides in spin.toml (`[model.NAME]`, nnspin's extension); unset fields keep the defaults.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub backend: Option<BackendKind>,
    pub device: Option<Device>,
    pub threads: Option<usize>,
    pub format: Option<WeightFormat>,
}

impl ModelSettings {
    fn with(&self, overrides: Option<&ModelOverrides>) -> Self {
        let Some(o) = overrides else {
            return self.clone();
        };
        Self {
            backend: o.backend.unwrap_or(self.backend),
            device: o.device.unwrap_or(self.device),
            threads: o.threads.unwrap_or(self.threads),
            format: o.format.or(self.format),
        }
    }
}

/// How the registry places models.
pub struct Placement {
    pub defaults: ModelSettings,
    pub overrides: BTreeMap<String, ModelOverrides>,
    /// Load on the CPU, with a warning, a model whose GPU fails (only when the operator asks).
    pub cpu_fallback: bool,
}

/// The models of the app: those resident, and the means to load more on demand.
pub struct ModelRegistry {
    models_dir: PathBuf,
    backends: Backends,
    placement: Placement,
    limits: ContextLimits,
    metrics: Arc<Metrics>,
    resident: RwLock<BTreeMap<String, Arc<Model>>>,
    /// Held while a model loads, so concurrent requests for the same model load it once.
    loading: Mutex<()>,
}

impl ModelRegistry {
    pub fn new(
        models_dir: &Path,
        placement: Placement,
        limits: ContextLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            models_dir: models_dir.to_path_buf(),
            backends: Backends::default(),
            placement,
            limits,
            metrics,
            resident: RwLock::default(),
            loading: Mutex::default(),
        }
    }

    /// Loads each named model from `models_dir/<name>`, in parallel (at start, before serving).
    pub fn preload(&self, names: &[String]) -> wasmtime::Result<()> {
        let loaded: Vec<wasmtime::Result<Arc<Model>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| scope.spawn(move || self.load(name)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("model loading thread panicked"))
                .collect()
        });
        loaded.into_iter().try_for_each(|result| result.map(drop))
    }

    /// The model if it is resident.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.resident
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether `models_dir/<name>` holds a model that [`Self::load`] could load.
    pub fn exists(&self, name: &str) -> bool {
        is_plain_name(name) && self.models_dir.join(name).join("config.json").is_file()
    }

    /// Where and how a model runs (or would run, once loaded).
    pub fn settings(&self, name: &str) -> ModelSettings {
        self.placement
            .defaults
            .with(self.placement.overrides.get(name))
    }

    /// Makes a model resident, loading it unless it already is (blocking: call off the async workers).
    pub fn load(&self, name: &str) -> wasmtime::Result<Arc<Model>> {
        if let Some(model) = self.get(name) {
            return Ok(model);
        }
        if !is_plain_name(name) {
            wasmtime::bail!("model name {name:?} is not a plain directory name");
        }
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = self.get(name) {
            return Ok(model);
        }
        let started = std::time::Instant::now();
        let dir = self.models_dir.join(name);
        let settings = self.settings(name);
        let backend = self.backends.get(settings.backend)?;
        let mut options = LoadOptions {
            threads: settings.threads,
            device: settings.device,
            format: settings.format,
        };
        let loaded = Model::load(name, &dir, backend.as_ref(), &options, self.limits);
        let model = Arc::new(match loaded {
            Err(e) if options.device != Device::Cpu && self.placement.cpu_fallback => {
                tracing::warn!(model = %name, "{e:#}; falling back to the CPU as --cpu-fallback allows");
                options.device = Device::Cpu;
                Model::load(name, &dir, backend.as_ref(), &options, self.limits)?
            }
            other => other?,
        });
        self.metrics.model_loaded(name, started.elapsed());
        tracing::info!(model = %name, backend = model.backend, device = model.device.as_str(),
            ms = started.elapsed().as_millis() as u64, "model loaded");
        self.resident
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), model.clone());
        Ok(model)
    }

    /// Drops the registry's hold on a model; requests still using it keep it alive until they end.
    pub fn unload(&self, name: &str) -> bool {
        let removed = self
            .resident
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some();
        if removed {
            tracing::info!(model = %name, "model unloaded");
        }
        removed
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The inference engines started so far.
    pub fn backends(&self) -> Vec<Arc<dyn Backend>> {
        self.backends.started()
    }
}

/// Model names become directory names: no separators, no `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The models one component may use, as its instances see them, and the component's current model.
#[derive(Clone)]
pub struct ModelAccess {
    registry: Arc<ModelRegistry>,
    allowed: Arc<[String]>,
    /// Whether the component may load and unload models.
    pub may_manage: bool,
    /// The model requests without an explicit model use; app-wide state, since instances are per request.
    current: Arc<Mutex<Option<String>>>,
}

impl ModelAccess {
    pub fn new(registry: Arc<ModelRegistry>, allowed: Arc<[String]>, may_manage: bool) -> Self {
        let current = allowed.first().cloned();
        Self {
            registry,
            allowed,
            may_manage,
            current: Arc::new(Mutex::new(current)),
        }
    }

    pub fn is_allowed(&self, name: &str) -> bool {
        self.allowed.iter().any(|allowed| allowed == name)
    }

    /// The model if this component may use it and it is resident.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        if !self.is_allowed(name) {
            return None;
        }
        self.registry.get(name)
    }

    /// The resident models this component may use, in manifest order.
    pub fn resident(&self) -> impl Iterator<Item = Arc<Model>> + '_ {
        self.allowed
            .iter()
            .filter_map(|name| self.registry.get(name))
    }

    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
    }

    pub fn current(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_current(&self, name: Option<String>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }
}
