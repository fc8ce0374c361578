//! `GET /system/info`: the host machine and process, the current model, versions.

use serde_json::{Value, json};

use nnspin_guest::bindings::nnspin::llm::{models, system};

use crate::models::model_json;

pub fn info() -> Value {
    let info = system::info();
    let current = models::current();
    json!({
        "host": { "name": info.host_name, "os": info.os, "arch": info.arch },
        "cpu": { "count": info.cpu_count },
        "memory": {
            "total_bytes": info.memory_total_bytes,
            "available_bytes": info.memory_available_bytes,
            "process_bytes": info.process_memory_bytes,
        },
        "backend": current.as_ref().map(|m| m.backend.clone()),
        "device": current.as_ref().map(|m| m.device.clone()),
        "precision": current.as_ref().map(|m| m.precision.clone()),
        "model": current.as_ref().map(model_json),
        "uptime_seconds": info.uptime_seconds,
        "versions": info.versions.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<_, _>>(),
    })
}
