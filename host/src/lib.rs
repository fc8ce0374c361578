//! nnspin: serve a Spin-style app of WebAssembly components that run chat models through wasi-nn.
//!
//! Layers, from the outside in, each importing only those below it:
//! [`serve`] (HTTP, routing, one fresh instance per request, the host's own error responses) →
//! [`lifecycle`] and [`app`] (built once: engine, compiled components, routes, grants) →
//! [`instance`] (per-request store state) → [`interfaces`] (the host side of the `nnspin:llm/llm` world:
//! the wasi-nn glue and nnspin's interfaces) → [`registry`] (resident models, admission, placement) →
//! [`backend`] (the inference engines) and `nnspin_text` (tokenizers and chat templates, shared with the
//! portable components).

pub mod api_keys;
pub mod app;
pub mod backend;
pub(crate) mod component_cache;
pub(crate) mod instance;
pub mod interfaces;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub(crate) mod outbound;
pub(crate) mod rate_limit;
pub mod registry;
pub mod runtime_config;
pub mod serve;
pub mod trusted_proxies;

/// The wasmtime version this binary embeds.
pub const WASMTIME_VERSION: &str = env!("NNSPIN_WASMTIME_VERSION");
