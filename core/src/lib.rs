//! Logic that both halves of nnspin run: the components' generation loop and embeddings over wasi-nn,
//! and the host's own implementation of Spin's `fermyon:spin/llm` interface. Pure computation, no I/O
//! and no bindings, so it builds for `wasm32-wasip2` and natively alike.

pub mod inputs;
pub mod passes;
pub mod sampling;
