//! A Spin AI app as Spin's documentation writes one: `spin_sdk::llm::infer_with_options` and
//! `spin_sdk::llm::generate_embeddings` behind two routes. Nothing in it knows nnspin; nnspin's host
//! implements `fermyon:spin/llm@2.0.0` over its resident models.
//!
//! `POST /infer` `{"model", "prompt", "max_tokens"?, "temperature"?, "repeat_penalty"?}` → `{"text",
//! "prompt_tokens", "generated_tokens"}`; `POST /embed` `{"model", "texts": [...]}` → `{"embeddings",
//! "prompt_tokens"}`. An error of the interface is a 400 (`invalid-input`, `model-not-supported`) or a 500
//! with its message.

use serde::Deserialize;
use serde_json::json;
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::llm::{self, InferencingModel, InferencingParams};

#[derive(Deserialize)]
struct Infer {
    model: String,
    prompt: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    repeat_penalty: Option<f32>,
}

#[derive(Deserialize)]
struct Embed {
    model: String,
    texts: Vec<String>,
}

fn reply(status: u16, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}

fn failed(error: llm::Error) -> Response {
    let status = match error {
        llm::Error::ModelNotSupported | llm::Error::InvalidInput(_) => 400,
        llm::Error::RuntimeError(_) => 500,
    };
    reply(status, json!({ "error": error.to_string() }))
}

fn infer(body: &[u8]) -> anyhow::Result<Response> {
    let request: Infer = serde_json::from_slice(body)?;
    let defaults = InferencingParams::default();
    let params = InferencingParams {
        max_tokens: request.max_tokens.unwrap_or(defaults.max_tokens),
        temperature: request.temperature.unwrap_or(defaults.temperature),
        repeat_penalty: request.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        ..defaults
    };
    let model = InferencingModel::Other(&request.model);
    Ok(
        match llm::infer_with_options(model, &request.prompt, params) {
            Ok(result) => reply(
                200,
                json!({
                    "text": result.text,
                    "prompt_tokens": result.usage.prompt_token_count,
                    "generated_tokens": result.usage.generated_token_count,
                }),
            ),
            Err(error) => failed(error),
        },
    )
}

fn embed(body: &[u8]) -> anyhow::Result<Response> {
    let request: Embed = serde_json::from_slice(body)?;
    let model = llm::EmbeddingModel::Other(&request.model);
    Ok(match llm::generate_embeddings(model, &request.texts) {
        Ok(result) => reply(
            200,
            json!({
                "embeddings": result.embeddings,
                "prompt_tokens": result.usage.prompt_token_count,
            }),
        ),
        Err(error) => failed(error),
    })
}

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    let result = match (request.method(), request.path()) {
        (Method::Post, "/infer") => infer(request.body()),
        (Method::Post, "/embed") => embed(request.body()),
        _ => return Ok(reply(404, json!({ "error": "POST /infer or /embed" }))),
    };
    Ok(result.unwrap_or_else(|e| reply(400, json!({ "error": e.to_string() }))))
}
