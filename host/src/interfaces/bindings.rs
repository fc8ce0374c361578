//! Host bindings of the `nnspin:llm/host` world: `wasi:nn`, nnspin's `text`, `models` and `system`, and
//! Spin's `fermyon:spin/llm`.
//!
//! wasmtime-wasi-nn's host calls are synchronous, so a long `compute` would block a tokio worker; these
//! bindings are async and inference runs on the blocking pool. Resources map onto types of
//! [`resources`](super::resources), the engines and the text module, none of which imports these
//! bindings back.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "nnspin:llm/host",
    imports: { default: async | trappable },
    with: {
        "wasi:nn/graph.graph": super::resources::Graph,
        "wasi:nn/tensor.tensor": crate::backend::Tensor,
        "wasi:nn/inference.graph-execution-context": super::resources::ExecutionContext,
        "wasi:nn/errors.error": super::resources::NnError,
        "nnspin:llm/text.tokenizer": super::resources::TokenizerHandle,
        "nnspin:llm/text.detokenizer": nnspin_text::detokenizer::Detokenizer,
    },
});

pub use self::fermyon::spin::llm as spin_llm;
pub use self::nnspin::llm::{models, system, text};
pub use self::wasi::nn::{errors, graph, inference, tensor};
