//! JSON as Python's `json.dumps` writes it, for the `tojson` filter of chat templates.
//!
//! Models were trained on prompts that Hugging Face's template engine rendered, and its `tojson` is
//! `json.dumps(value, ensure_ascii=False)`: `", "` between items, `": "` after keys, keys in the order
//! given. minijinja's own filter writes compact JSON with `<`, `>` and `&` escaped for HTML, a spelling
//! of the tools and calls the models never saw.

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde::Serialize;
use serde_json::ser::Formatter;

/// The `tojson` filter: `value | tojson` or `value | tojson(indent=2)`.
pub fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // Hugging Face's filter takes json.dumps' other options; `ensure_ascii` and `sort_keys` change the
    // output, the rest are read so a template using them still renders.
    let _: Option<Value> = kwargs.get("separators")?;
    if kwargs.get::<Option<bool>>("ensure_ascii")? == Some(true)
        || kwargs.get::<Option<bool>>("sort_keys")? == Some(true)
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: ensure_ascii and sort_keys are not supported",
        ));
    }
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(value) if value.is_none() => None,
        Some(value) => Some(" ".repeat(usize::try_from(value)?)),
    };
    let text = to_string(value, indent.as_deref())
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, "tojson").with_source(e))?;
    Ok(Value::from_safe_string(text))
}

/// Serializes `value` as `json.dumps(value, ensure_ascii=False, indent=indent)` does.
pub fn to_string(value: &impl Serialize, indent: Option<&str>) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let formatter = PythonFormatter {
        indent: indent.map(str::as_bytes),
        open: Vec::new(),
    };
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out, formatter,
    ))?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// `json.dumps`' separators: `", "` and `": "`, or with an indent a new line per item.
struct PythonFormatter<'a> {
    indent: Option<&'a [u8]>,
    /// For each array or object open: whether it has had an item (an empty one closes on its line).
    open: Vec<bool>,
}

impl PythonFormatter<'_> {
    fn begin<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.open.push(false);
        w.write_all(bracket)
    }

    fn end<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        if self.open.pop() == Some(true) {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if let Some(had_item) = self.open.last_mut() {
            *had_item = true;
        }
        if !first {
            w.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(w)
    }

    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(indent) = self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.open.len() {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }
}

impl Formatter for PythonFormatter<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_python_json_dumps_writes() {
        let value = json!({"b": [1, 2.5, "é<&>\"\n"], "a": {}, "c": [], "d": null, "e": true});
        // python3 -c 'import json; print(json.dumps({"b": [1, 2.5, "é<&>\"\n"], "a": {}, "c": [],
        //   "d": None, "e": True}, ensure_ascii=False))', and again with indent=2
        assert_eq!(
            to_string(&value, None).unwrap(),
            r#"{"b": [1, 2.5, "é<&>\"\n"], "a": {}, "c": [], "d": null, "e": true}"#
        );
        assert_eq!(
            to_string(&value, Some("  ")).unwrap(),
            "{\n  \"b\": [\n    1,\n    2.5,\n    \"é<&>\\\"\\n\"\n  ],\n  \"a\": {},\n  \"c\": [],\n  \"d\": null,\n  \"e\": true\n}"
        );
    }
}
