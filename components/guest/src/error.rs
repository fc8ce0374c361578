//! The one error type of the guests, mapped once to an HTTP status and a JSON body.
//!
//! The body carries both OpenAI's `error` object and a FastAPI-style `detail` string, so OpenAI SDKs and
//! clients of the seed APIs (which read `detail`) both find the message.

use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `error.type`, such as `invalid_request_error`.
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code, such as `model_not_found`.
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    pub retry_after: Option<u32>,
    /// The methods the path accepts, sent as `Allow` with a 405 (RFC 9110).
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            allow: None,
        }
    }

    /// 400: the request is not acceptable as sent (malformed JSON, out-of-range values).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 422: the JSON is well-formed but does not have the request's shape.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "invalid_request_error", message)
    }

    /// 400: prompt and completion do not fit the model's context; LocalLab reports it as 413.
    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        let mut e = Self::new(400, "invalid_request_error", message);
        e.param = Some("messages".into());
        e.code = Some("context_length_exceeded");
        e
    }

    /// 503: nothing can serve the request right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", message)
    }

    /// 503 with `Retry-After`: the model's queue is full; the request was not started.
    pub fn busy(message: impl Into<String>) -> Self {
        let mut e = Self::unavailable(message);
        e.retry_after = Some(1);
        e
    }

    /// 403: the request is understood but not permitted.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "permission_error", message)
    }

    /// 404 for a path.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found_error", message)
    }

    /// 404 for a model that is not served.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            404,
            "invalid_request_error",
            format!("The model `{model}` does not exist"),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 405 for a known path asked with a method it does not take; `allow` lists those it does.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            405,
            "invalid_request_error",
            format!("{method} is not allowed on {path} (use {allow})"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// 500: something failed inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code },
            "detail": self.message,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_error_and_detail() {
        let body = ApiError::model_not_found("gpt-9").body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["detail"], body["error"]["message"]);
    }
}
