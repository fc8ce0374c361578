//! The model registry: every model the app declares, made resident once and shared by every request;
//! others loaded and unloaded on demand (model management). Each model's admission is its own
//! ([`admission`]); where it runs comes from the command line and spin.toml's `[model.NAME]`.

pub mod admission;
pub mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::engines::Engines;
use crate::backend::{BackendKind, Device, Engine, LoadOptions, Precision, WeightFormat};
use crate::manifest::ModelOverrides;
use crate::metrics::Metrics;
use admission::ContextLimits;
use model::Model;

/// The prefix cache's default budget per model. A finished chat turn of the default model (SmolLM2-135M,
/// 45 KiB of fp32 keys and values per position) takes one row of the KV buffers, 46-92 MiB at 1-2K
/// positions: 1 GiB keeps the last 11-22 conversations, a small share of a 16-24 GiB machine.
pub const DEFAULT_PREFIX_CACHE_MIB: u64 = 1024;

/// Where and how one model runs: the command line's defaults, overridden per model in spin.toml.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// `None`: the backend that serves the model's files best ([`ModelRegistry::backend`]).
    pub backend: Option<BackendKind>,
    pub device: Device,
    pub precision: Precision,
    /// Intra-op threads; 0 lets the backend choose.
    pub threads: usize,
    pub format: Option<WeightFormat>,
    /// Memory finished sequences' KV caches may keep for later prompts, in MiB; 0: no prefix cache.
    pub prefix_cache_mib: u64,
}

impl ModelSettings {
    fn with(&self, overrides: Option<&ModelOverrides>) -> Self {
        let Some(o) = overrides else {
            return self.clone();
        };
        Self {
            backend: o.backend.or(self.backend),
            device: o.device.unwrap_or(self.device),
            precision: o.precision.unwrap_or(self.precision),
            threads: o.threads.unwrap_or(self.threads),
            format: o.format.or(self.format),
            prefix_cache_mib: o.prefix_cache_mib.unwrap_or(self.prefix_cache_mib),
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
    engines: Engines,
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
            engines: Engines::default(),
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

    /// The backend `name` runs on: the one its settings name, else OpenVINO on the CPU where the model's
    /// directory holds the stateful IR that OpenVINO batches on PagedAttention (the export writes it where
    /// its attention rewrite covers the model; exact mode computes what ONNX Runtime's does, faster: see
    /// README's Backends), else ONNX Runtime, whose batched path serves every export.
    pub fn backend(&self, name: &str, settings: &ModelSettings) -> BackendKind {
        if let Some(chosen) = settings.backend {
            return chosen;
        }
        let ir = self
            .models_dir
            .join(name)
            .join(WeightFormat::OpenvinoIr.file_name());
        let pages = settings.device == Device::Cpu
            && settings.format != Some(WeightFormat::Onnx)
            && crate::backend::engines::PAGED_ATTENTION
            && ir.is_file();
        if pages {
            BackendKind::Openvino
        } else {
            BackendKind::Onnxruntime
        }
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
        let engine = self.engines.get(self.backend(name, &settings))?;
        let mut options = LoadOptions {
            threads: settings.threads,
            device: settings.device,
            precision: settings.precision,
            format: settings.format,
            prefix_cache_bytes: settings.prefix_cache_mib << 20,
        };
        let loaded = Model::load(name, &dir, &engine, &options, self.limits);
        let model = Arc::new(match loaded {
            Err(e) if options.device != Device::Cpu && self.placement.cpu_fallback => {
                tracing::warn!(model = %name, "{e:#}; falling back to the CPU as --cpu-fallback allows");
                options.device = Device::Cpu;
                Model::load(name, &dir, &engine, &options, self.limits)?
            }
            other => other?,
        });
        self.metrics.model_loaded(name, started.elapsed());
        if let Some(stats) = model.graph.prefix_cache() {
            self.metrics.prefix_cache(name, stats);
        }
        tracing::info!(model = %name, backend = model.backend.as_str(), device = model.device.as_str(),
            precision = model.precision.as_str(),
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
    pub fn engines(&self) -> Vec<Arc<Engine>> {
        self.engines.started()
    }
}

/// Model names become directory names: no separators, no `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(models_dir: &Path, backend: Option<BackendKind>) -> ModelRegistry {
        let defaults = ModelSettings {
            backend,
            device: Device::Cpu,
            precision: Precision::Exact,
            threads: 0,
            format: None,
            prefix_cache_mib: 0,
        };
        let placement = Placement {
            defaults,
            overrides: BTreeMap::new(),
            cpu_fallback: false,
        };
        let limits = ContextLimits {
            max_active: Some(1),
            max_queued: 0,
        };
        ModelRegistry::new(models_dir, placement, limits, Arc::default())
    }

    #[test]
    fn a_model_runs_on_openvino_by_default_only_where_it_pages() {
        let dir = std::env::temp_dir().join(format!("nnspin-backend-{}", std::process::id()));
        for (name, files) in [
            ("paged", &["model.onnx", "openvino_model.xml"][..]),
            ("onnx", &["model.onnx"][..]),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            for file in files {
                std::fs::write(dir.join(name).join(file), "").unwrap();
            }
        }
        let auto = registry(&dir, None);
        let on_ir = if crate::backend::engines::PAGED_ATTENTION {
            BackendKind::Openvino
        } else {
            BackendKind::Onnxruntime
        };
        let defaults = auto.settings("paged");
        assert_eq!(auto.backend("paged", &defaults), on_ir);
        assert_eq!(auto.backend("onnx", &defaults), BackendKind::Onnxruntime);
        for (changed, why) in [
            (
                ModelSettings {
                    device: Device::Gpu,
                    ..defaults.clone()
                },
                "a GPU",
            ),
            (
                ModelSettings {
                    format: Some(WeightFormat::Onnx),
                    ..defaults.clone()
                },
                "model.onnx asked for",
            ),
        ] {
            assert_eq!(
                auto.backend("paged", &changed),
                BackendKind::Onnxruntime,
                "{why}"
            );
        }
        let chosen = registry(&dir, Some(BackendKind::Onnxruntime));
        assert_eq!(
            chosen.backend("paged", &chosen.settings("paged")),
            BackendKind::Onnxruntime,
            "the command line's choice"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
