//! Host bindings of the `nnspin:llm/llm` world: `wasi:nn` plus nnspin's `text` interface.
//!
//! wasmtime-wasi-nn's host calls are synchronous, so a long `compute` would block a tokio worker; these
//! bindings are async and inference runs on the blocking pool.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "nnspin:llm/llm",
    imports: { default: async | trappable },
    with: {
        "wasi:nn/graph.graph": crate::nn::Graph,
        "wasi:nn/tensor.tensor": crate::nn::Tensor,
        "wasi:nn/inference.graph-execution-context": crate::nn::ExecutionContext,
        "wasi:nn/errors.error": crate::nn::NnError,
        "nnspin:llm/text.tokenizer": crate::text::TokenizerHandle,
        "nnspin:llm/text.detokenizer": crate::text::Detokenizer,
    },
});

pub use self::nnspin::llm::{models, system, text};
pub use self::wasi::nn::{errors, graph, inference, tensor};
