//! The LocalLab API as a WASI component: `/generate`, `/generate/batch`, `/chat`, `/models/*`,
//! `/system/info` and `/health`, over the shared generation loop of `nnspin-guest`.

// Natively nothing calls the handler; the wasm build keeps every lint.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

// Public (with an rlib beside the component) so `tests/fuzz` can drive the validation layer natively.
pub mod errors;
mod generation;
mod models;
pub mod request;
mod system;

use serde_json::json;

use nnspin_guest::ApiError;
use nnspin_guest::http::{self, RequestHead};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct LocalLab;

// Exported in the wasm build only: natively (unit tests, `tests/fuzz`) the crate is a library of its
// validation layer, and `wasi:http/…` export names are not valid native symbols.
#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(LocalLab);

impl wasip2::exports::http::incoming_handler::Guest for LocalLab {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = RequestHead::of(&request);
        let answered = match (head.method.as_str(), head.route_path.trim_end_matches('/')) {
            ("GET", "/health") => Ok(json!({ "status": "healthy" })),
            ("GET", "/openapi.json") => Ok(http::openapi_document(OPENAPI, head.mount())),
            ("GET", "/system/info") => Ok(system::info()),
            ("GET", "/models/available") => Ok(models::available()),
            ("GET", "/models/current") => Ok(models::current()),
            ("POST", "/models/load") => {
                http::read_body(request).and_then(|body| models::load(&body))
            }
            ("POST", "/models/unload") => {
                http::read_body(request).and_then(|body| models::unload(&body))
            }
            ("POST", "/generate") => return generation::generate(request, out),
            ("POST", "/generate/batch") => return generation::batch(request, out),
            ("POST", "/chat") => return generation::chat(request, &head, out),
            (
                _,
                "/health" | "/openapi.json" | "/system/info" | "/models/available"
                | "/models/current",
            ) => Err(ApiError::method_not_allowed(
                &head.method,
                &head.path,
                "GET",
            )),
            (_, "/models/load" | "/models/unload" | "/generate" | "/generate/batch" | "/chat") => {
                Err(ApiError::method_not_allowed(
                    &head.method,
                    &head.path,
                    "POST",
                ))
            }
            _ => Err(ApiError::not_found(format!(
                "no route for {} {}",
                head.method, head.path
            ))),
        };
        match answered {
            Ok(value) => http::send_json(out, 200, &value),
            Err(error) => errors::send(out, &error),
        }
    }
}

/// The OpenAPI 3.1 description of this API (paths relative to the mount), served at `/openapi.json`.
const OPENAPI: &str = include_str!("../openapi.json");
