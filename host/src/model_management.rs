//! `nnspin:llm/models`: which models a component may use, and loading or unloading them at run time
//! (LocalLab's `/models/*`). Changing residency needs `model_management = true` in spin.toml.

use std::sync::Arc;

use wasmtime::component::HasData;

use crate::bindings::models::{self, ModelError, ModelStatus};
use crate::models::{Model, ModelAccess};

/// What the model-management host functions see of an instance's state.
pub struct ManagementView<'a> {
    pub models: &'a ModelAccess,
}

/// Marker tying [`ManagementView`] to the generated `add_to_linker` function.
pub struct ModelManagement;

impl HasData for ModelManagement {
    type Data<'a> = ManagementView<'a>;
}

impl ManagementView<'_> {
    fn status(&self, id: &str, model: Option<&Arc<Model>>) -> ModelStatus {
        let (backend, device) = match model {
            Some(m) => (m.backend, m.device),
            None => {
                let settings = self.models.registry().settings(id);
                (settings.backend.as_str(), settings.device)
            }
        };
        ModelStatus {
            id: id.to_string(),
            loaded: model.is_some(),
            current: self.models.current().as_deref() == Some(id),
            info: model.map(|m| m.info.clone()),
            backend: backend.to_string(),
            device: device.as_str().to_string(),
        }
    }

    fn check_may_manage(&self) -> Result<(), ModelError> {
        if self.models.may_manage {
            Ok(())
        } else {
            Err(ModelError::Denied(
                "this component may not load or unload models (model_management in spin.toml)"
                    .into(),
            ))
        }
    }

    fn check_known(&self, id: &str) -> Result<(), ModelError> {
        if !self.models.is_allowed(id) {
            return Err(ModelError::NotFound(format!(
                "model {id:?} is not available to this component"
            )));
        }
        if self.models.get(id).is_none() && !self.models.registry().exists(id) {
            return Err(ModelError::NotFound(format!(
                "model {id:?} has no files in the models directory"
            )));
        }
        Ok(())
    }
}

impl models::Host for ManagementView<'_> {
    async fn available(&mut self) -> wasmtime::Result<Vec<ModelStatus>> {
        Ok(self
            .models
            .allowed()
            .iter()
            .map(|id| self.status(id, self.models.get(id).as_ref()))
            .collect())
    }

    async fn current(&mut self) -> wasmtime::Result<Option<ModelStatus>> {
        let Some(id) = self.models.current() else {
            return Ok(None);
        };
        Ok(self
            .models
            .get(&id)
            .map(|model| self.status(&id, Some(&model))))
    }

    async fn load(&mut self, id: String) -> wasmtime::Result<Result<ModelStatus, ModelError>> {
        if let Err(e) = self.check_may_manage().and_then(|()| self.check_known(&id)) {
            return Ok(Err(e));
        }
        let access = self.models.clone();
        let name = id.clone();
        // Loading reads and optimizes the model: seconds of blocking work, off the async workers.
        let loaded = tokio::task::spawn_blocking(move || access.registry().load(&name)).await?;
        Ok(match loaded {
            Ok(model) => {
                self.models.set_current(Some(id.clone()));
                Ok(self.status(&id, Some(&model)))
            }
            Err(e) => Err(ModelError::Failed(format!("{e:#}"))),
        })
    }

    async fn unload(&mut self, id: String) -> wasmtime::Result<Result<(), ModelError>> {
        if let Err(e) = self.check_may_manage() {
            return Ok(Err(e));
        }
        if !self.models.is_allowed(&id) || !self.models.registry().unload(&id) {
            return Ok(Err(ModelError::NotFound(format!(
                "model {id:?} is not loaded"
            ))));
        }
        if self.models.current().as_deref() == Some(id.as_str()) {
            self.models.set_current(None);
        }
        Ok(Ok(()))
    }
}
