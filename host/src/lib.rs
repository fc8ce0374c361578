//! nnspin: serve a Spin-style app of WebAssembly components that run chat models through wasi-nn.
//!
//! Layers, from the outside in: [`serve`] (HTTP, routing, one fresh instance per request),
//! [`app`] (built once: engine, compiled components, routes, models), [`instance`] (per-request store
//! state), [`nn`] (wasi-nn over resident models and its backends) and [`text`] (tokenizers and chat
//! templates behind `nnspin:llm/text`).

pub mod api_keys;
pub mod app;
pub mod bindings;
pub mod client_body;
pub mod component_cache;
pub mod instance;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub mod model_management;
pub mod models;
pub mod nn;
pub mod outbound;
pub mod rate_limit;
pub mod serve;
pub mod system;
pub mod text;
pub mod vocabulary;

/// The wasmtime version this binary embeds.
pub const WASMTIME_VERSION: &str = env!("NNSPIN_WASMTIME_VERSION");
