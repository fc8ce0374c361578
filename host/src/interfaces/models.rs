//! `nnspin:llm/models`: which models a component may use, and loading or unloading them at run time
//! (LocalLab's `/models/*`). Changing residency needs `model_management = true` in spin.toml.

use std::sync::Arc;

use super::bindings::models::{self, ModelError, ModelStatus};
use super::text::model_info;
use super::view::LlmView;
use crate::registry::model::Model;

impl LlmView<'_> {
    fn status(&self, id: &str, model: Option<&Arc<Model>>) -> ModelStatus {
        let (backend, device, precision) = match model {
            Some(m) => (m.backend, m.device, m.precision),
            None => {
                let registry = self.grants.registry();
                let settings = registry.settings(id);
                let backend = registry.backend(id, &settings);
                (backend, settings.device, settings.precision)
            }
        };
        ModelStatus {
            id: id.to_string(),
            loaded: model.is_some(),
            current: self.grants.current().as_deref() == Some(id),
            info: model.map(|m| model_info(m)),
            backend: backend.as_str().to_string(),
            device: device.as_str().to_string(),
            precision: precision.as_str().to_string(),
        }
    }

    fn check_may_manage(&self) -> Result<(), ModelError> {
        if self.grants.may_manage {
            Ok(())
        } else {
            Err(ModelError::Denied(
                "this component may not load or unload models (model_management in spin.toml)"
                    .into(),
            ))
        }
    }

    fn check_known(&self, id: &str) -> Result<(), ModelError> {
        if !self.grants.may_use(id) {
            return Err(ModelError::NotFound(format!(
                "model {id:?} is not available to this component"
            )));
        }
        if self.grants.model(id).is_none() && !self.grants.registry().exists(id) {
            return Err(ModelError::NotFound(format!(
                "model {id:?} has no files in the models directory"
            )));
        }
        Ok(())
    }
}

impl models::Host for LlmView<'_> {
    async fn available(&mut self) -> wasmtime::Result<Vec<ModelStatus>> {
        Ok(self
            .grants
            .models()
            .iter()
            .map(|id| self.status(id, self.grants.model(id).as_ref()))
            .collect())
    }

    async fn current(&mut self) -> wasmtime::Result<Option<ModelStatus>> {
        let Some(id) = self.grants.current() else {
            return Ok(None);
        };
        Ok(self
            .grants
            .model(&id)
            .map(|model| self.status(&id, Some(&model))))
    }

    async fn load(&mut self, id: String) -> wasmtime::Result<Result<ModelStatus, ModelError>> {
        if let Err(e) = self.check_may_manage().and_then(|()| self.check_known(&id)) {
            return Ok(Err(e));
        }
        let registry = self.grants.registry().clone();
        let name = id.clone();
        // Loading reads and optimizes the model: seconds of blocking work, off the async workers.
        let loaded = tokio::task::spawn_blocking(move || registry.load(&name)).await?;
        Ok(match loaded {
            Ok(model) => {
                self.grants.set_current(Some(id.clone()));
                Ok(self.status(&id, Some(&model)))
            }
            Err(e) => Err(ModelError::Failed(format!("{e:#}"))),
        })
    }

    async fn unload(&mut self, id: String) -> wasmtime::Result<Result<(), ModelError>> {
        if let Err(e) = self.check_may_manage() {
            return Ok(Err(e));
        }
        if !self.grants.may_use(&id) || !self.grants.registry().unload(&id) {
            return Ok(Err(ModelError::NotFound(format!(
                "model {id:?} is not loaded"
            ))));
        }
        if self.grants.current().as_deref() == Some(id.as_str()) {
            self.grants.set_current(None);
        }
        Ok(Ok(()))
    }
}
