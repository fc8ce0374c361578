//! The validation layer both APIs share: request bodies parsed into typed requests, ranges checked,
//! every failure an [`ApiError`] with the status clients expect.

use serde::de::DeserializeOwned;

use crate::ApiError;

/// 400 for malformed JSON, 422 (as FastAPI-based servers answer) for JSON of the wrong shape. An empty
/// body counts as `{}`. Unknown fields are ignored, as OpenAI and LocalLab do.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::unprocessable(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("invalid request: {e}")))
}

/// 400 naming `param` when `value` is outside `lo..=hi`.
pub fn check_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::bad_request(format!(
            "`{param}` must be between {lo} and {hi}, got {v}"
        ))
        .with_param(param)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        needed: u32,
    }

    #[test]
    fn statuses_follow_the_kind_of_mistake() {
        assert_eq!(parse_body::<Probe>(b"{oops").unwrap_err().status, 400);
        assert_eq!(parse_body::<Probe>(b"[1]").unwrap_err().status, 422);
        assert_eq!(parse_body::<Probe>(b"").unwrap_err().status, 422);
        assert_eq!(
            parse_body::<Probe>(br#"{"needed": "x"}"#)
                .unwrap_err()
                .status,
            422
        );
        assert!(parse_body::<Probe>(br#"{"needed": 1, "extra": true}"#).is_ok());
    }

    #[test]
    fn ranges_name_their_parameter() {
        assert!(check_range("top_p", Some(0.5), 0.0, 1.0).is_ok());
        assert!(check_range("top_p", None, 0.0, 1.0).is_ok());
        let e = check_range("top_p", Some(1.5), 0.0, 1.0).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("top_p")));
    }
}
