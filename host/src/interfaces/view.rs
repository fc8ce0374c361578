//! One view of the app's host interfaces, in the manner of Spin's factors: app-wide state built once
//! ([`LlmApp`]), each component's grants built once from spin.toml ([`LlmGrants`]), and per instance only
//! its resource table ([`LlmView`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasData, Linker, ResourceTable};

use super::bindings;
use crate::registry::ModelRegistry;
use crate::registry::model::Model;

/// App-wide: the resident models and when the process started serving.
pub struct LlmApp {
    pub registry: Arc<ModelRegistry>,
    pub started: Instant,
}

/// One component's grants: the models its instances may use (spin.toml's `ai_models`, in order),
/// whether they may change residency (`model_management`), and its current model, the one requests
/// naming none use (component-wide, since instances live for one request).
pub struct LlmGrants {
    pub app: Arc<LlmApp>,
    models: Vec<String>,
    pub may_manage: bool,
    current: Mutex<Option<String>>,
}

impl LlmGrants {
    pub fn new(app: Arc<LlmApp>, models: Vec<String>, may_manage: bool) -> Self {
        let current = models.first().cloned();
        Self {
            app,
            models,
            may_manage,
            current: Mutex::new(current),
        }
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.app.registry
    }

    pub fn may_use(&self, name: &str) -> bool {
        self.models.iter().any(|model| model == name)
    }

    /// The model if this component may use it and it is resident.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.may_use(name)
            .then(|| self.registry().get(name))
            .flatten()
    }

    /// The models this component may use, in manifest order.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The resident models this component may use, in manifest order.
    pub fn resident(&self) -> impl Iterator<Item = Arc<Model>> + '_ {
        self.models
            .iter()
            .filter_map(|name| self.registry().get(name))
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

/// What every host function of the world sees of an instance.
pub struct LlmView<'a> {
    pub table: &'a mut ResourceTable,
    pub grants: &'a LlmGrants,
}

/// Ties [`LlmView`] to the generated `add_to_linker` functions.
pub struct Llm;

impl HasData for Llm {
    type Data<'a> = LlmView<'a>;
}

/// Adds every interface of the world to `linker`, each seeing an instance through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> LlmView<'_>,
) -> wasmtime::Result<()> {
    bindings::tensor::add_to_linker::<_, Llm>(linker, view)?;
    bindings::graph::add_to_linker::<_, Llm>(linker, view)?;
    bindings::inference::add_to_linker::<_, Llm>(linker, view)?;
    bindings::errors::add_to_linker::<_, Llm>(linker, view)?;
    bindings::text::add_to_linker::<_, Llm>(linker, view)?;
    bindings::models::add_to_linker::<_, Llm>(linker, view)?;
    bindings::system::add_to_linker::<_, Llm>(linker, view)?;
    bindings::spin_llm::add_to_linker::<_, Llm>(linker, view)?;
    Ok(())
}
