//! Shared guest library of nnspin's components: models over `wasi:nn` and [`text`], the
//! generation loop, sampling and constraints, the error type every API maps to HTTP, and the HTTP
//! plumbing of a `wasi:http` handler.
//!
//! The API components (`openai`, `locallab`) keep only their own surface: routes, field names and
//! response shapes.

pub mod bindings {
    #[cfg(not(feature = "portable"))]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "nnspin:llm/llm",
        generate_all,
    });
    #[cfg(feature = "portable")]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "nnspin:llm/portable",
        generate_all,
    });
}

pub mod chat;
pub mod embed;
pub mod error;
pub mod framed_grammar;
pub mod generate;
pub mod http;
pub mod json_grammar;
pub mod json_schema;
pub mod model;
pub mod request;
pub mod stop;
pub mod structured;
pub mod text;
pub mod vocabulary;

pub use error::{ApiError, ErrorKind};
pub use nnspin_core::sampling;
