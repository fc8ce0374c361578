//! Compiled components kept on disk, so a process restart (a scale-from-zero cold start) skips
//! Cranelift: wasmtime's serialized artifacts, keyed by the component's bytes and the engine's
//! compilation settings.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::error::Context;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Compiled,
    Cache,
}

/// Loads `wasm_path`, from `cache_dir` when it holds this component compiled for this engine.
pub(crate) fn load(
    engine: &Engine,
    wasm_path: &Path,
    cache_dir: Option<&Path>,
) -> wasmtime::Result<(Component, Origin)> {
    let wasm =
        std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let Some(cache_dir) = cache_dir else {
        return Ok((Component::new(engine, &wasm)?, Origin::Compiled));
    };
    let mut key = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut key);
    wasm.hash(&mut key);
    let stem = wasm_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("component");
    let cached = cache_dir.join(format!("{stem}-{:016x}.cwasm", key.finish()));

    if cached.is_file() {
        // SAFETY: the file is one this process family wrote with `precompile_component` for an engine
        // with the same compatibility hash (it is in the key); wasmtime still checks its header.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => return Ok((component, Origin::Cache)),
            Err(e) => {
                tracing::warn!(path = %cached.display(), "ignoring unusable cached component: {e}")
            }
        }
    }
    let compiled = engine.precompile_component(&wasm)?;
    // SAFETY: the bytes were produced just above by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    if let Err(e) = store(&cached, &compiled) {
        tracing::warn!(path = %cached.display(), "cannot cache the compiled component: {e}");
    }
    Ok((component, Origin::Compiled))
}

/// Writes atomically, so a concurrent start never reads half a file.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a directory");
    std::fs::create_dir_all(dir)?;
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}
