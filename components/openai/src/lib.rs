//! The OpenAI API as a WASI component: `/v1/models`, `/v1/chat/completions`, `/v1/responses` and the
//! legacy `/v1/completions` (all with SSE streaming), `/v1/embeddings`, `/tokenize` and `/detokenize` (vLLM's), and
//! `/health`, over the shared generation loop of `nnspin-guest`.

// Natively nothing calls the handler; the wasm build keeps every lint.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod chat;
mod choices;
mod completions;
pub mod embeddings;
// Public (with an rlib beside the component) so `tests/fuzz` can drive the validation layer natively.
pub mod errors;
pub mod request;
mod response;
pub mod responses;
mod tokenize;
mod tools;

use nnspin_guest::ApiError;
use nnspin_guest::http::{self, RequestHead};
use nnspin_guest::model;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct OpenAi;

// Exported in the wasm build only: natively (unit tests, `tests/fuzz`) the crate is a library of its
// validation layer, and `wasi:http/…` export names are not valid native symbols.
#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(OpenAi);

impl wasip2::exports::http::incoming_handler::Guest for OpenAi {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = RequestHead::of(&request);
        match (head.method.as_str(), head.path.trim_end_matches('/')) {
            ("GET", "/health") => http::send_json(out, 200, &serde_json::json!({ "ok": true })),
            // Paths in the document are whole paths: this component routes on them.
            ("GET", "/openapi.json") => {
                http::send_json(out, 200, &http::openapi_document(OPENAPI, "/"))
            }
            ("GET", "/v1/models") => list_models(out),
            ("GET", path) if path.starts_with(MODEL_PREFIX) => {
                get_model(&path[MODEL_PREFIX.len()..], out)
            }
            ("POST", "/v1/chat/completions") => chat::chat_completions(request, out),
            ("POST", "/v1/completions") => completions::completions(request, out),
            ("POST", "/v1/responses") => responses::responses(request, out),
            ("POST", "/v1/embeddings") => embeddings::embeddings(request, out),
            ("POST", "/tokenize") => tokenize::tokenize(request, out),
            ("POST", "/detokenize") => tokenize::detokenize(request, out),
            (_, path)
                if matches!(path, "/health" | "/openapi.json" | "/v1/models")
                    || path.starts_with(MODEL_PREFIX) =>
            {
                errors::send(
                    out,
                    &ApiError::method_not_allowed(&head.method, &head.path, "GET"),
                )
            }
            (
                _,
                "/v1/chat/completions"
                | "/v1/completions"
                | "/v1/responses"
                | "/v1/embeddings"
                | "/tokenize"
                | "/detokenize",
            ) => errors::send(
                out,
                &ApiError::method_not_allowed(&head.method, &head.path, "POST"),
            ),
            _ => errors::send(
                out,
                &ApiError::not_found(format!("no route for {} {}", head.method, head.path)),
            ),
        }
    }
}

/// The OpenAPI 3.1 description of this API, served at `/openapi.json`.
const OPENAPI: &str = include_str!("../openapi.json");

const MODEL_PREFIX: &str = "/v1/models/";

fn list_models(out: ResponseOutparam) {
    let data: Vec<_> = model::models().iter().map(response::model_object).collect();
    http::send_json(
        out,
        200,
        &serde_json::json!({ "object": "list", "data": data }),
    );
}

fn get_model(id: &str, out: ResponseOutparam) {
    match model::models().iter().find(|m| m.id == id) {
        Some(model) => http::send_json(out, 200, &response::model_object(model)),
        None => errors::send(out, &ApiError::model_not_found(id)),
    }
}
