//! The host side of the `nnspin:llm/llm` world that components import: `wasi:nn` over the resident
//! models, and nnspin's `text`, `models` and `system` interfaces. One file per interface, each mapping
//! the WIT calls onto the registry, the engines and the tokenizers; [`view`] is what every host function
//! sees of an instance.

pub mod bindings;
pub(crate) mod models;
pub mod resources;
pub(crate) mod system;
pub(crate) mod text;
pub mod view;
pub(crate) mod wasi_nn;
