//! The app, built once per process: the engine, each component compiled and pre-instantiated, the
//! routes, and the resident models.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Component;
use wasmtime::error::Context;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::component_cache;
use crate::instance::{EPOCH_TICK, InstanceState, Sandbox, linker};
use crate::interfaces::view::{LlmApp, LlmGrants};
use crate::manifest::{FileMount, Manifest, Router};
use crate::metrics::Metrics;
use crate::outbound::OutboundPolicy;
use crate::rate_limit::RateLimiter;
use crate::registry::admission::ContextLimits;
use crate::registry::{ModelRegistry, ModelSettings, Placement};

/// Settings of the process, from the command line.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub manifest: PathBuf,
    pub models_dir: PathBuf,
    /// Where compiled components are cached; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
    /// Backend, device, threads and format of models spin.toml does not place otherwise.
    pub model_defaults: ModelSettings,
    /// Load a model on the CPU when its GPU fails, instead of refusing to start.
    pub cpu_fallback: bool,
    /// Most concurrent instances the pooling allocator reserves room for.
    pub max_instances: u32,
    /// Linear memory one instance may grow to.
    pub max_instance_memory: usize,
    /// Guest CPU time one request may use.
    pub max_instance_cpu: std::time::Duration,
    /// Sequences each model runs at once, and requests that may wait for one.
    pub context_limits: ContextLimits,
}

/// One component, ready to be instantiated per request.
pub struct ComponentRuntime {
    pub id: String,
    pub pre: ProxyPre<InstanceState>,
    pub sandbox: Sandbox,
    pub rate_limiter: Option<RateLimiter>,
}

pub struct App {
    pub engine: Engine,
    pub router: Router,
    pub components: Vec<ComponentRuntime>,
    pub metrics: Arc<Metrics>,
}

impl App {
    pub fn load(config: &AppConfig) -> wasmtime::Result<Self> {
        let manifest = Manifest::load(&config.manifest)?;
        let base = config.manifest.parent().unwrap_or(Path::new("."));
        let engine = engine(config)?;

        // Models and components are independent: load the models while Cranelift compiles.
        let placement = Placement {
            defaults: config.model_defaults.clone(),
            overrides: manifest.model.clone(),
            cpu_fallback: config.cpu_fallback,
        };
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(ModelRegistry::new(
            &config.models_dir,
            placement,
            config.context_limits,
            metrics.clone(),
        ));
        let (preloaded, compiled) = std::thread::scope(|scope| {
            let models = scope.spawn(|| registry.preload(&manifest.models()));
            let compiled: wasmtime::Result<Vec<(String, Component)>> = manifest
                .component
                .iter()
                .map(|(id, spec)| {
                    let path = base.join(&spec.source);
                    let started = std::time::Instant::now();
                    let (component, origin) = component_cache::load(&engine, &path, config.cache_dir.as_deref())
                        .with_context(|| format!("component {id:?}: loading {}", path.display()))?;
                    tracing::info!(component = %id, ?origin, ms = started.elapsed().as_millis() as u64, "component ready");
                    Ok((id.clone(), component))
                })
                .collect();
            (models.join().expect("model loading panicked"), compiled)
        });
        preloaded?;

        let llm = Arc::new(LlmApp {
            registry: registry.clone(),
            started: std::time::Instant::now(),
        });
        let linker = linker(&engine)?;
        let mut components = Vec::new();
        for (id, component) in compiled? {
            let spec = &manifest.component[&id];
            for model in &spec.ai_models {
                wasmtime::ensure!(
                    registry.get(model).is_some(),
                    "component {id:?}: model {model:?} did not load"
                );
            }
            let pre = ProxyPre::new(linker.instantiate_pre(&component).with_context(|| {
                format!("component {id:?} imports something nnspin does not provide")
            })?)
            .with_context(|| {
                format!("component {id:?} does not export wasi:http/incoming-handler")
            })?;
            let sandbox = Sandbox {
                llm: Arc::new(LlmGrants::new(
                    llm.clone(),
                    spec.ai_models.clone(),
                    spec.model_management,
                )),
                environment: spec
                    .environment
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                mounts: mounts(base, &spec.files)
                    .with_context(|| format!("component {id:?}: files"))?,
                outbound: OutboundPolicy::new(&spec.allowed_outbound_hosts).map_err(|e| {
                    wasmtime::format_err!("component {id:?}: allowed_outbound_hosts: {e}")
                })?,
                max_memory_bytes: config.max_instance_memory,
                cpu_budget_ticks: (config.max_instance_cpu.as_millis() / EPOCH_TICK.as_millis())
                    .max(1) as u64,
            };
            components.push(ComponentRuntime {
                id: id.clone(),
                pre,
                sandbox,
                rate_limiter: spec.rate_limit.map(RateLimiter::new),
            });
        }
        tracing::info!(app = %manifest.application.name, components = components.len(), "app loaded");
        Ok(Self {
            engine,
            router: Router::new(&manifest.trigger.http),
            components,
            metrics,
        })
    }

    pub fn component(&self, id: &str) -> Option<&ComponentRuntime> {
        self.components.iter().find(|c| c.id == id)
    }
}

fn engine(config: &AppConfig) -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(config.max_instances)
        .total_memories(config.max_instances)
        .total_tables(config.max_instances * 2)
        .total_core_instances(config.max_instances * 2)
        .max_memory_size(config.max_instance_memory);
    let mut wasm = Config::new();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
        .epoch_interruption(true);
    let engine = Engine::new(&wasm)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker");
}

/// The directories a component may read, checked to exist.
fn mounts(base: &Path, files: &[FileMount]) -> wasmtime::Result<Vec<(PathBuf, String)>> {
    files
        .iter()
        .map(|mount| {
            let (source, destination) = match mount {
                FileMount::Path(path) => (path.clone(), format!("/{}", path.display())),
                FileMount::Mapping {
                    source,
                    destination,
                } => (source.clone(), destination.clone()),
            };
            let host = base.join(&source);
            if !host.is_dir() {
                wasmtime::bail!("{} is not a directory of the app", host.display());
            }
            Ok((host, destination))
        })
        .collect()
}
