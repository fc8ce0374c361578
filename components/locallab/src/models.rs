//! `/models/*`: which models this component may use, and loading or unloading them (with the
//! `model_management` grant).

use serde_json::{Value, json};

use nnspin_guest::ApiError;
use nnspin_guest::bindings::nnspin::llm::models::{self, ModelError, ModelStatus};

use crate::request::ModelRequest;

pub fn model_json(status: &ModelStatus) -> Value {
    let task = status.info.as_ref().map(nnspin_guest::model::task);
    json!({
        "id": status.id,
        "model_id": status.id,
        "name": status.id,
        "loaded": status.loaded,
        "current": status.current,
        "task": task.map(|(task, _)| task),
        "dimensions": task.and_then(|(_, dimensions)| dimensions),
        "context_length": status.info.as_ref().map(|i| i.context_length),
        "vocab_size": status.info.as_ref().map(|i| i.vocab_size),
        "backend": status.backend,
        "device": status.device,
        "precision": status.precision,
    })
}

fn model_error(error: ModelError) -> ApiError {
    match error {
        ModelError::NotFound(message) => ApiError::not_found(message),
        ModelError::Denied(message) => ApiError::forbidden(message),
        ModelError::Failed(message) => ApiError::internal(message),
    }
}

pub fn available() -> Value {
    json!({ "models": models::available().iter().map(model_json).collect::<Vec<_>>() })
}

pub fn current() -> Value {
    match models::current() {
        Some(status) => model_json(&status),
        None => json!({ "model_id": null, "loaded": false }),
    }
}

pub fn load(body: &[u8]) -> Result<Value, ApiError> {
    let id = ModelRequest::parse(body)?
        .model_id()
        .ok_or_else(|| ApiError::wrong_shape("`model_id` is required").with_param("model_id"))?;
    let status = models::load(&id).map_err(model_error)?;
    Ok(json!({ "status": "success", "model_id": id, "model": model_json(&status) }))
}

pub fn unload(body: &[u8]) -> Result<Value, ApiError> {
    let id = match ModelRequest::parse(body)?.model_id() {
        Some(id) => id,
        None => models::current()
            .map(|s| s.id)
            .ok_or_else(|| ApiError::invalid("no model is loaded"))?,
    };
    models::unload(&id).map_err(model_error)?;
    Ok(json!({ "status": "Model unloaded successfully", "model_id": id }))
}
