//! A component that misbehaves on request, so tests can show the host contains it: it traps, loops
//! forever, exhausts its memory, tries to reach files, sockets and hosts it was not granted, and makes
//! the inference engine fail mid-generation.

use std::io::Read;

use nnspin_guest::ErrorKind;
use nnspin_guest::bindings::wasi::nn::graph;
use nnspin_guest::bindings::wasi::nn::tensor::{Tensor, TensorType};
use nnspin_guest::http::{self, RequestHead};
use nnspin_guest::model::nn_error;
use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme};

struct Faults;

wasip2::http::proxy::export!(Faults);

impl wasip2::exports::http::incoming_handler::Guest for Faults {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = RequestHead::of(&request);
        match head.route_path.as_str() {
            "/ok" => http::send_json(out, 200, &json!({ "ok": true })),
            "/trap" => panic!("this handler traps on purpose"),
            "/loop" => {
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "/memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/read-file" => {
                let path = head
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("path="))
                    .unwrap_or("/etc/passwd")
                    .to_string();
                let result = std::fs::File::open(&path).and_then(|mut f| {
                    let mut text = String::new();
                    f.read_to_string(&mut text).map(|_| text)
                });
                let contents = result.as_ref().ok().cloned();
                let mut report = attempt(result.map(|_| ()));
                report["contents"] = json!(contents);
                http::send_json(out, 200, &report);
            }
            "/socket" => {
                let port = query_port(&head.query);
                let result = std::net::TcpStream::connect(("127.0.0.1", port)).map(drop);
                http::send_json(out, 200, &attempt(result));
            }
            "/outbound-http" => {
                let port = query_port(&head.query);
                http::send_json(out, 200, &attempt(outbound(port)));
            }
            "/compute-error" => match compute_error() {
                Ok(()) => http::send_json(out, 200, &json!({ "computed": true })),
                Err(error) => http::send_error(out, status(error.kind), &error),
            },
            _ => http::send_json(out, 404, &json!({ "detail": "no such fault" })),
        }
    }
}

/// Makes the inference engine fail inside `compute`: an attention mask longer than the sequence passes
/// the host's checks (it indexes nothing) but ONNX Runtime's attention kernel rejects it.
fn compute_error() -> Result<(), nnspin_guest::ApiError> {
    let graph = graph::load_by_name("tiny-random").map_err(|e| nn_error(&e))?;
    let context = graph.init_execution_context().map_err(|e| nn_error(&e))?;
    let i64s =
        |values: &[i64]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let inputs = vec![
        (
            "input_ids".to_string(),
            Tensor::new(&[1, 2], TensorType::I64, &i64s(&[1, 2])),
        ),
        (
            "attention_mask".to_string(),
            Tensor::new(&[1, 5], TensorType::I64, &i64s(&[1; 5])),
        ),
        (
            "position_ids".to_string(),
            Tensor::new(&[1, 2], TensorType::I64, &i64s(&[0, 1])),
        ),
    ];
    context.compute(inputs).map(drop).map_err(|e| nn_error(&e))
}

/// The statuses of the failures this component makes: the host's refusal of a faulty step, or the
/// engine's failure.
fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidValue => 400,
        ErrorKind::Busy => 503,
        _ => 500,
    }
}

fn query_port(query: &str) -> u16 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("port=")?.parse().ok())
        .unwrap_or(80)
}

fn attempt<E: std::fmt::Debug>(result: Result<(), E>) -> serde_json::Value {
    match result {
        Ok(()) => json!({ "allowed": true }),
        Err(e) => json!({ "allowed": false, "error": format!("{e:?}") }),
    }
}

fn outbound(port: u16) -> Result<(), String> {
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "scheme")?;
    request
        .set_authority(Some(&format!("127.0.0.1:{port}")))
        .map_err(|()| "authority")?;
    request
        .set_path_with_query(Some("/health"))
        .map_err(|()| "path")?;
    let response = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(_))) => Ok(()),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        other => Err(format!("{other:?}")),
    }
}
