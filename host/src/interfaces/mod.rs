//! The host side of the `nnspin:llm/host` world that components import from: `wasi:nn` over the resident
//! models, nnspin's `text`, `models` and `system` interfaces, and Spin's `fermyon:spin/llm`. One file per
//! interface, each mapping the WIT calls onto the registry, the engines and the tokenizers; [`view`] is
//! what every host function sees of an instance.

pub mod bindings;
pub(crate) mod models;
pub mod resources;
pub(crate) mod spin_llm;
pub(crate) mod system;
pub(crate) mod text;
pub mod view;
pub(crate) mod wasi_nn;
