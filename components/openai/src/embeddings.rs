//! `POST /v1/embeddings`: OpenAI's request (`input` as a string, strings, token ids or lists of ids;
//! `encoding_format` float or base64; `dimensions`), answered by an embedding model's vectors. Inputs are
//! never cut: one beyond the model's length is a 400 naming the limit.

use base64::Engine as _;
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::model::Model;
use nnspin_guest::request::parse_body;
use nnspin_guest::{ApiError, embed, http};

use crate::errors;
use crate::request;

/// Most inputs one request may hold, as OpenAI's API allows.
pub const MAX_INPUTS: usize = 2048;

/// What to embed: texts, which the model's tokenizer frames, or token ids used as given.
#[derive(Debug, PartialEq)]
pub enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

/// A valid embeddings request, before its model is opened.
#[derive(Debug)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub inputs: Inputs,
    /// `encoding_format: "base64"`: each vector as the base64 of its little-endian fp32 bytes.
    pub base64: bool,
    pub dimensions: Option<u32>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).with_param(param)
}

impl EmbeddingsRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body: serde_json::Map<String, Value> = parse_body(body)?;
        let model = match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => return Err(invalid("model", "`model` must be a string")),
        };
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(f)) if f == "float" => false,
            Some(Value::String(f)) if f == "base64" => true,
            Some(_) => {
                return Err(invalid(
                    "encoding_format",
                    "`encoding_format` must be \"float\" or \"base64\"",
                ));
            }
        };
        let dimensions = match body.get("dimensions") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .filter(|&d| (1..=u64::from(u32::MAX)).contains(&d))
                    .ok_or_else(|| {
                        invalid("dimensions", "`dimensions` must be a positive integer")
                    })? as u32,
            ),
        };
        if body
            .get("user")
            .is_some_and(|u| !u.is_string() && !u.is_null())
        {
            return Err(invalid("user", "`user` must be a string"));
        }
        let inputs = match body.get("input") {
            Some(input) => parse_inputs(input)?,
            None => return Err(invalid("input", "`input` is required")),
        };
        Ok(Self {
            model,
            inputs,
            base64,
            dimensions,
        })
    }

    /// Each input's token ids, checked against the model: within its longest input and its vocabulary.
    pub fn tokens(&self, model: &Model) -> Result<Vec<Vec<u32>>, ApiError> {
        let tokens = match &self.inputs {
            Inputs::Texts(texts) => texts
                .iter()
                .map(|text| model.encode_framed(text))
                .collect::<Result<Vec<_>, _>>()?,
            Inputs::Tokens(ids) => ids.clone(),
        };
        let info = &model.info;
        for (i, ids) in tokens.iter().enumerate() {
            if ids.len() > info.context_length as usize {
                return Err(ApiError::context_length_exceeded(format!(
                    "input[{i}] has {} tokens; model {:?} takes at most {} tokens per input",
                    ids.len(),
                    info.id,
                    info.context_length
                ))
                .with_param("input"));
            }
            if let Some(&token) = ids.iter().find(|&&t| t >= info.vocab_size) {
                return Err(invalid(
                    "input",
                    format!(
                        "input[{i}] holds token {token}, beyond the vocabulary ({} tokens)",
                        info.vocab_size
                    ),
                ));
            }
        }
        Ok(tokens)
    }

    /// `dimensions` is accepted only as the model's own size: its vectors are not trained to be cut.
    pub fn check_dimensions(&self, model: &str, own: u32) -> Result<(), ApiError> {
        match self.dimensions {
            Some(asked) if asked != own => Err(invalid(
                "dimensions",
                format!(
                    "model {model:?} makes vectors of {own} dimensions and cannot shorten them: \
                     leave `dimensions` out or set it to {own}"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `input` in each of its four shapes.
fn parse_inputs(input: &Value) -> Result<Inputs, ApiError> {
    let shape = || {
        invalid(
            "input",
            "`input` must be a string, a list of strings, a list of token ids or a list of lists of \
             token ids",
        )
    };
    let text = |value: &Value, at: &str| match value.as_str() {
        Some("") => Err(invalid("input", format!("`{at}` must not be empty"))),
        Some(text) => Ok(text.to_string()),
        None => Err(shape()),
    };
    let ids = |value: &Value, at: &str| -> Result<Vec<u32>, ApiError> {
        let items = value.as_array().ok_or_else(shape)?;
        if items.is_empty() {
            return Err(invalid("input", format!("`{at}` must not be empty")));
        }
        items
            .iter()
            .map(|id| {
                id.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| invalid("input", format!("`{at}` must hold token ids")))
            })
            .collect()
    };
    let items = match input {
        Value::String(_) => return Ok(Inputs::Texts(vec![text(input, "input")?])),
        Value::Array(items) if items.is_empty() => {
            return Err(invalid("input", "`input` must not be empty"));
        }
        Value::Array(items) => items,
        _ => return Err(shape()),
    };
    // A flat list of ids is one input, checked against the model's length later.
    if items.len() > MAX_INPUTS && !items[0].is_number() {
        return Err(invalid(
            "input",
            format!(
                "`input` holds {} inputs; at most {MAX_INPUTS} are allowed",
                items.len()
            ),
        ));
    }
    match &items[0] {
        Value::String(_) => items
            .iter()
            .enumerate()
            .map(|(i, item)| text(item, &format!("input[{i}]")))
            .collect::<Result<_, _>>()
            .map(Inputs::Texts),
        Value::Number(_) => Ok(Inputs::Tokens(vec![ids(input, "input")?])),
        Value::Array(_) => items
            .iter()
            .enumerate()
            .map(|(i, item)| ids(item, &format!("input[{i}]")))
            .collect::<Result<_, _>>()
            .map(Inputs::Tokens),
        _ => Err(shape()),
    }
}

/// One vector as the response lists it.
fn encoded(vector: &[f32], base64: bool) -> Value {
    if base64 {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    }
}

pub fn embeddings(request: IncomingRequest, out: ResponseOutparam) {
    let result = http::read_body(request)
        .and_then(|body| EmbeddingsRequest::parse(&body))
        .and_then(|request| {
            let id = request::model_id(request.model.as_deref(), true)?;
            let (model, dimensions) = Model::open_encoder(&id)?;
            request.check_dimensions(&id, dimensions)?;
            let tokens = request.tokens(&model)?;
            let vectors = embed::embed(&model, &tokens, dimensions)?;
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(index, vector)| {
                    json!({"object": "embedding", "index": index,
                        "embedding": encoded(vector, request.base64)})
                })
                .collect();
            let prompt_tokens: usize = tokens.iter().map(Vec::len).sum();
            Ok(json!({
                "object": "list",
                "data": data,
                "model": model.info.id,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }))
        });
    match result {
        Ok(body) => http::send_json(out, 200, &body),
        Err(error) => errors::send(out, &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<EmbeddingsRequest, ApiError> {
        EmbeddingsRequest::parse(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn input_is_read_in_each_of_its_shapes() {
        let inputs = |input: Value| parse(json!({ "input": input })).unwrap().inputs;
        assert_eq!(inputs(json!("hi")), Inputs::Texts(vec!["hi".into()]));
        assert_eq!(
            inputs(json!(["a", "b"])),
            Inputs::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(inputs(json!([1, 2])), Inputs::Tokens(vec![vec![1, 2]]));
        assert_eq!(
            inputs(json!(vec![7; MAX_INPUTS + 1])),
            Inputs::Tokens(vec![vec![7; MAX_INPUTS + 1]])
        );
        assert_eq!(
            inputs(json!([[1], [2, 3]])),
            Inputs::Tokens(vec![vec![1], vec![2, 3]])
        );
        let request =
            parse(json!({"input": "x", "encoding_format": "base64", "dimensions": 384})).unwrap();
        assert!(request.base64);
        assert_eq!(request.dimensions, Some(384));
    }

    #[test]
    fn malformed_input_is_refused_naming_the_field() {
        for (body, param) in [
            (json!({}), "input"),
            (json!({"input": ""}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": ["a", ""]}), "input"),
            (json!({"input": ["a", 1]}), "input"),
            (json!({"input": [1, "a"]}), "input"),
            (json!({"input": [[1], []]}), "input"),
            (json!({"input": [-1]}), "input"),
            (json!({"input": [4294967296u64]}), "input"),
            (json!({"input": [1.5]}), "input"),
            (json!({"input": {"text": "a"}}), "input"),
            (json!({"input": vec!["a"; MAX_INPUTS + 1]}), "input"),
            (
                json!({"input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!({"input": "a", "dimensions": 0}), "dimensions"),
            (json!({"input": "a", "dimensions": "384"}), "dimensions"),
            (json!({"input": "a", "model": 3}), "model"),
            (json!({"input": "a", "user": 3}), "user"),
        ] {
            let error = parse(body.clone()).expect_err("refused");
            assert_eq!(crate::errors::status(error.kind), 400, "{body}");
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn dimensions_are_the_models_own_or_refused() {
        let request = parse(json!({"input": "a", "dimensions": 128})).unwrap();
        let error = request.check_dimensions("m", 384).unwrap_err();
        assert!(error.message.contains("384"), "{}", error.message);
        let request = parse(json!({"input": "a", "dimensions": 384})).unwrap();
        assert!(request.check_dimensions("m", 384).is_ok());
    }

    #[test]
    fn base64_is_the_little_endian_floats() {
        assert_eq!(encoded(&[1.0, -2.0], true), json!("AACAPwAAAMA="));
        assert_eq!(encoded(&[0.5], false), json!([0.5]));
    }
}
