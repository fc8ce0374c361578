//! What both APIs' validation layers share: request bodies parsed into typed requests, ranges checked,
//! every failure an [`ApiError`] of the kind it is.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::error::{ApiError, ErrorKind};

/// Malformed JSON, or JSON of the wrong shape, is refused as such. An empty body counts as `{}`. Unknown
/// fields are ignored, as OpenAI and LocalLab do.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::MalformedJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::wrong_shape(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::wrong_shape(format!("invalid request: {e}")))
}

/// An invalid value naming `param` when `value` is outside `lo..=hi`.
pub fn check_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid(format!(
            "`{param}` must be between {lo} and {hi}, got {v}"
        ))
        .with_param(param)),
        _ => Ok(()),
    }
}

/// Deserializes an optional count, seed or token id: a non-negative JSON integer, also written with a
/// zero fraction (`100.0`). JSON Schema counts `100.0` as an integer and Python servers (pydantic)
/// accept it, so clients that compute their settings as floats keep working.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    /// 2^64: the first float past `u64::MAX`.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..LIMIT).contains(f))
                .map(|f| f as u64)
        })
        .and_then(|whole| T::try_from(whole).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {number}")))
}

/// Deserializes an optional setting held as `f32` (temperature, top_p, penalties). A JSON number too
/// small for `f32` keeps its side of zero (`-1e-310` becomes the smallest negative `f32`, not `-0.0`), so a
/// negative value still fails a `>= 0` range check instead of passing as zero.
pub fn float<'de, D>(deserializer: D) -> Result<Option<f32>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<f64>::deserialize(deserializer)?.map(|v| {
        let narrowed = v as f32;
        if narrowed == 0.0 && v != 0.0 {
            f32::MIN_POSITIVE.copysign(v as f32)
        } else {
            narrowed
        }
    }))
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
    fn kinds_follow_the_mistake() {
        let kind = |body: &[u8]| parse_body::<Probe>(body).unwrap_err().kind;
        assert_eq!(kind(b"{oops"), ErrorKind::MalformedJson);
        assert_eq!(kind(b"[1]"), ErrorKind::WrongShape);
        assert_eq!(kind(b""), ErrorKind::WrongShape);
        assert_eq!(kind(br#"{"needed": "x"}"#), ErrorKind::WrongShape);
        assert!(parse_body::<Probe>(br#"{"needed": 1, "extra": true}"#).is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    struct Counts {
        #[serde(default, deserialize_with = "whole_number")]
        n: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Setting {
        #[serde(default, deserialize_with = "float")]
        t: Option<f32>,
    }

    #[test]
    fn numbers_too_small_for_f32_keep_their_sign() {
        let t = |body: &str| parse_body::<Setting>(body.as_bytes()).unwrap().t.unwrap();
        assert!(check_range("t", Some(t(r#"{"t": -2.2e-311}"#)), 0.0, 1.0).is_err());
        assert!(check_range("t", Some(t(r#"{"t": -0.0}"#)), 0.0, 1.0).is_ok());
        assert!(t(r#"{"t": 1e-310}"#) > 0.0);
        assert_eq!(t(r#"{"t": 0.5}"#), 0.5);
        assert!(check_range("t", Some(t(r#"{"t": 1e39}"#)), 0.0, 2.0).is_err());
    }

    #[test]
    fn counts_may_be_written_as_whole_floats() {
        let n = |body: &str| parse_body::<Counts>(body.as_bytes()).map(|c| c.n);
        assert_eq!(n(r#"{"n": 3}"#), Ok(Some(3)));
        assert_eq!(n(r#"{"n": 3.0}"#), Ok(Some(3)));
        assert_eq!(n(r#"{"n": null}"#), Ok(None));
        assert_eq!(n("{}"), Ok(None));
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 4294967296}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "3"}"#,
        ] {
            assert_eq!(n(bad).unwrap_err().kind, ErrorKind::WrongShape, "{bad}");
        }
    }

    #[test]
    fn ranges_name_their_parameter() {
        assert!(check_range("top_p", Some(0.5), 0.0, 1.0).is_ok());
        assert!(check_range("top_p", None, 0.0, 1.0).is_ok());
        let e = check_range("top_p", Some(1.5), 0.0, 1.0).unwrap_err();
        assert_eq!(
            (e.kind, e.param.as_deref()),
            (ErrorKind::InvalidValue, Some("top_p"))
        );
    }
}
