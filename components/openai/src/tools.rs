//! Tool calling, in one of two [`CallFormat`]s. A model whose chat template describes `tools` itself
//! (Qwen's) gets them through its template and writes calls in the template's own syntax (Qwen's
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, several one after another). For the
//! others, the functions are described in the system prompt and a call is written as
//! `{"name": ..., "arguments": {...}}` (several as a JSON array of them). Either way the call is held
//! by constrained decoding to the schema of the chosen function, and several calls are allowed unless
//! `parallel_tool_calls` is false. `tool_choice` decides whether the model may (`auto`), must
//! (`required`, a named function) or may not (`none`) call one. Under `auto` the first step compares
//! the probability of opening a call with that of answering in text ([`Structure::JsonOrText`]), and a
//! call the conversation has already answered is not made again ([`Call::repeats`]): the model answers
//! from its result instead.

use serde_json::{Map, Value, json};

use nnspin_guest::ApiError;
use nnspin_guest::chat::{AnsweredCall, canonical_json};
use nnspin_guest::framed_grammar::{Framing, Grammar, Literal};
use nnspin_guest::json_schema::Schema;
use nnspin_guest::model::Model;
use nnspin_guest::structured::Structure;

use crate::response::fresh_id;

/// Most calls one answer may make when calls run in parallel.
const MAX_PARALLEL_CALLS: usize = 8;

/// How a model is told about functions and writes its calls.
#[derive(Debug, Clone)]
pub enum CallFormat {
    /// nnspin's: the functions described in the system message, calls as bare JSON.
    Instructed,
    /// The chat template's own: `tools` rendered by the template, each call `open`, a JSON object with
    /// `name` and the arguments under `arguments_key`, then `close`; several joined by `separator`.
    Template {
        open: Literal,
        close: Literal,
        separator: Option<Literal>,
        arguments_key: String,
    },
}

impl CallFormat {
    /// The template's format where it has one.
    pub fn of(model: &Model) -> Self {
        match model.tool_call_syntax() {
            None => Self::Instructed,
            Some(syntax) => Self::Template {
                open: Literal::text(&syntax.open),
                close: Literal::text(&syntax.close),
                separator: syntax.separator.as_deref().map(Literal::text),
                arguments_key: syntax.arguments_key,
            },
        }
    }

    /// With the tokens `model`'s tokenizer writes the template's markers as, which calls are then
    /// written with (so `<tool_call>` is its one token).
    pub fn tokenized(self, model: &Model) -> Result<Self, ApiError> {
        let Self::Template {
            open,
            close,
            separator,
            arguments_key,
        } = self
        else {
            return Ok(self);
        };
        let vocabulary = model.vocabulary();
        let tokenized = |literal: Literal| -> Result<Literal, ApiError> {
            let tokens = model.encode(&literal.text)?;
            Ok(Literal::tokenized(&literal.text, &tokens, |t| {
                vocabulary.token(t).len()
            }))
        };
        Ok(Self::Template {
            open: tokenized(open)?,
            close: tokenized(close)?,
            separator: separator.map(tokenized).transpose()?,
            arguments_key,
        })
    }

    fn arguments_key(&self) -> &str {
        match self {
            Self::Instructed => "arguments",
            Self::Template { arguments_key, .. } => arguments_key,
        }
    }

    /// What a call's text begins with, once whitespace is skipped: what a streamed answer that may be
    /// a call is held back on.
    pub fn opening(&self) -> &str {
        match self {
            Self::Template { open, .. } if !open.text.trim().is_empty() => open.text.trim_start(),
            _ => "{",
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// The tools a request offers and what it asks of the model.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The functions the model may call now (all of them, or the one `tool_choice` names).
    callable: Vec<Function>,
    /// The model must call one.
    required: bool,
    /// The model may make several calls in one answer (`parallel_tool_calls`, true unless false).
    parallel: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).with_param(param)
}

impl Tools {
    /// Reads `tools` and `tool_choice`; `None` when no function may be called.
    pub fn from_request(
        tools: Option<&Value>,
        tool_choice: Option<&Value>,
        parallel: bool,
    ) -> Result<Option<Self>, ApiError> {
        let functions = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tools)) => tools
                .iter()
                .enumerate()
                .map(|(i, tool)| function(i, tool))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("tools", "`tools` must be an array")),
        };
        let choice = match tool_choice {
            None | Some(Value::Null) => "auto",
            Some(Value::String(choice)) => match choice.as_str() {
                "auto" | "none" | "required" => choice.as_str(),
                other => {
                    return Err(invalid(
                        "tool_choice",
                        format!(
                            "`tool_choice` must be auto, none, required or a function, got {other:?}"
                        ),
                    ));
                }
            },
            Some(Value::Object(named)) => {
                let name = named
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            "tool_choice",
                            "`tool_choice` must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        )
                    })?;
                let Some(chosen) = functions.iter().find(|f| f.name == name) else {
                    return Err(invalid(
                        "tool_choice",
                        format!("`tool_choice` names {name:?}, which is not in `tools`"),
                    ));
                };
                return Ok(Some(Self {
                    callable: vec![chosen.clone()],
                    required: true,
                    parallel,
                }));
            }
            Some(_) => {
                return Err(invalid(
                    "tool_choice",
                    "`tool_choice` must be a string or an object",
                ));
            }
        };
        if choice == "required" && functions.is_empty() {
            return Err(invalid(
                "tool_choice",
                "`tool_choice` is required but `tools` is empty",
            ));
        }
        if choice == "none" || functions.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            callable: functions,
            required: choice == "required",
            parallel,
        }))
    }

    /// The model must call a function.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The functions as OpenAI's `tools` array, for a template that lists them itself.
    pub fn template_tools(&self) -> String {
        let tools: Vec<Value> = self
            .callable
            .iter()
            .map(|f| {
                let mut function = json!({"name": f.name});
                if let Some(description) = &f.description {
                    function["description"] = json!(description);
                }
                function["parameters"] = f.parameters.clone();
                json!({"type": "function", "function": function})
            })
            .collect();
        Value::Array(tools).to_string()
    }

    /// What the model is told about the functions, for the system message ([`CallFormat::Instructed`]).
    pub fn instructions(&self) -> String {
        let listing: Vec<String> = self
            .callable
            .iter()
            .map(|f| {
                json!({"name": f.name, "description": f.description, "parameters": f.parameters})
                    .to_string()
            })
            .collect();
        let instruction = if self.required {
            "Call one of them: reply with only a JSON object of the form"
        } else {
            "To call one, reply with only a JSON object of the form"
        };
        format!(
            "You can call these functions:\n{}\n{instruction} {{\"name\": <function name>, \"arguments\": <arguments object>}}.",
            listing.join("\n")
        )
    }

    /// The output's structure: a call of one of the callable functions in `format`, or (with `auto`)
    /// text instead; declined text, when `answer_apart` (the answer is written from a prompt of its own).
    pub fn structure(
        &self,
        format: &CallFormat,
        answer_apart: bool,
    ) -> Result<Structure, ApiError> {
        let mut definitions = Map::new();
        let calls: Vec<Value> = self
            .callable
            .iter()
            .map(|f| {
                // `$ref`s inside parameters point at their own `$defs`; gather them at the root.
                for key in ["$defs", "definitions"] {
                    if let Some(Value::Object(defs)) = f.parameters.get(key) {
                        let target = definitions
                            .entry(key)
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(target) = target {
                            target.extend(defs.clone());
                        }
                    }
                }
                let mut properties = Map::new();
                properties.insert("name".into(), json!({"const": f.name}));
                properties.insert(format.arguments_key().into(), f.parameters.clone());
                json!({
                    "type": "object",
                    "properties": properties,
                    "required": ["name", format.arguments_key()],
                })
            })
            .collect();
        let mut schema = match (format, self.parallel) {
            (CallFormat::Instructed, true) => json!({"anyOf": [
                {"anyOf": calls},
                {"type": "array", "items": {"anyOf": calls}, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS},
            ]}),
            _ => json!({ "anyOf": calls }),
        };
        if let Value::Object(root) = &mut schema {
            root.extend(definitions);
        }
        let schema = Schema::compile(&schema)
            .map_err(|e| invalid("tools", format!("a function's `parameters`: {e}")))?;
        let framing = match format {
            CallFormat::Instructed => None,
            CallFormat::Template {
                open,
                close,
                separator,
                ..
            } => Some(Framing {
                open: open.clone(),
                close: close.clone(),
                // Calls written back to back need an `open` to tell where the next one begins.
                separator: separator
                    .clone()
                    .filter(|s| self.parallel && !(s.text.is_empty() && open.text.is_empty())),
                max_values: MAX_PARALLEL_CALLS,
            }),
        };
        let grammar = Grammar { schema, framing };
        Ok(match (self.required, answer_apart) {
            (true, _) => Structure::Json(grammar),
            (false, true) => Structure::JsonOrDecline(grammar),
            (false, false) => Structure::JsonOrText(grammar),
        })
    }
}

fn function(index: usize, tool: &Value) -> Result<Function, ApiError> {
    let param = format!("tools[{index}]");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(
            &param,
            format!("`{param}.type` must be \"function\""),
        ));
    }
    let f = tool
        .get("function")
        .ok_or_else(|| invalid(&param, format!("`{param}.function` is required")))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            invalid(
                &param,
                format!("`{param}.function.name` must be 1-64 letters, digits, _ or -"),
            )
        })?;
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(invalid(
                &param,
                format!("`{param}.function.parameters` must be a JSON Schema object"),
            ));
        }
    };
    Schema::compile(&parameters)
        .map_err(|e| invalid(&param, format!("`{param}.function.parameters`: {e}")))?;
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            return Err(invalid(
                &param,
                format!("`{param}.function.description` must be a string"),
            ));
        }
    };
    Ok(Function {
        name: name.to_string(),
        description,
        parameters,
    })
}

/// A call the model wrote: the function's name and its arguments as a JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

impl Call {
    /// Reads a structured output as calls written in `format`: for [`CallFormat::Instructed`] one
    /// object or an array of them, for a template's syntax each framed by its markers; `None` if it is
    /// not a call (such as a cut-off output).
    pub fn parse(output: &str, format: &CallFormat) -> Option<Vec<Self>> {
        let key = format.arguments_key();
        let one = |value: &Value| {
            Some(Self {
                name: value.get("name")?.as_str()?.to_string(),
                arguments: value.get(key)?.to_string(),
            })
        };
        let CallFormat::Template {
            open,
            close,
            separator,
            ..
        } = format
        else {
            return match serde_json::from_str(output).ok()? {
                Value::Array(calls) if !calls.is_empty() => calls.iter().map(one).collect(),
                value => one(&value).map(|call| vec![call]),
            };
        };
        let mut calls = Vec::new();
        let mut rest = output.trim_start().strip_prefix(open.text.trim_start())?;
        loop {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            calls.push(one(&values.next()?.ok()?)?);
            rest = rest[values.byte_offset()..].strip_prefix(close.text.as_str())?;
            if rest.trim().is_empty() {
                return Some(calls);
            }
            rest = rest
                .strip_prefix(separator.as_ref()?.text.as_str())?
                .strip_prefix(open.text.as_str())?;
        }
    }

    /// The conversation has already made this call (same function, same arguments once canonical) and
    /// sent back its result: making it again would only loop an agent.
    pub fn repeats(&self, answered: &[AnsweredCall]) -> bool {
        let arguments = canonical_json(&self.arguments);
        answered
            .iter()
            .any(|a| a.name == self.name && a.arguments == arguments)
    }

    /// OpenAI's `tool_calls` entry, with a fresh id.
    pub fn to_json(&self) -> Value {
        json!({
            "id": fresh_id("call_"),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::status;

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn tool_choice_is_validated() {
        let t = tools();
        assert!(Tools::from_request(Some(&t), None, true).unwrap().is_some());
        assert!(
            Tools::from_request(Some(&t), Some(&json!("none")), true)
                .unwrap()
                .is_none()
        );
        for (tools, choice) in [
            (
                t.clone(),
                json!({"type": "function", "function": {"name": "nope"}}),
            ),
            (t.clone(), json!("sometimes")),
            (json!([]), json!("required")),
            (
                json!([{"type": "function", "function": {"name": "bad name"}}]),
                json!("auto"),
            ),
            (json!({"not": "a list"}), json!("auto")),
            (
                json!([{"type": "function", "function": {"name": "f", "description": -1}}]),
                json!("auto"),
            ),
        ] {
            let e = Tools::from_request(Some(&tools), Some(&choice), true).unwrap_err();
            assert_eq!(status(e.kind), 400, "{tools} {choice}");
        }
    }

    #[test]
    fn described_to_the_model_and_parsed_back() {
        let tools = Tools::from_request(Some(&tools()), Some(&json!("required")), false)
            .unwrap()
            .unwrap();
        assert!(tools.instructions().contains("get_weather"));
        assert!(matches!(
            tools.structure(&CallFormat::Instructed, false).unwrap(),
            Structure::Json(_)
        ));
        let calls = Call::parse(
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            &INSTRUCTED,
        )
        .unwrap();
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        assert!(Call::parse(r#"{"name": "get_weather", "argu"#, &INSTRUCTED).is_none());
        let calls = Call::parse(
            r#"[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]"#,
            &INSTRUCTED,
        )
        .unwrap();
        let names: Vec<_> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(
            Call::parse("[]", &INSTRUCTED).is_none()
                && Call::parse(r#"[{"name": "a"}]"#, &INSTRUCTED).is_none()
        );
    }

    #[test]
    fn parallel_calls_are_arrays_only_when_allowed() {
        let array = br#"[{"name": "get_weather", "arguments": {"city": "Paris"}}]"#;
        for (parallel, accepted) in [(true, true), (false, false)] {
            assert_eq!(
                fits(parallel, &INSTRUCTED, array),
                accepted,
                "parallel_tool_calls {parallel}"
            );
        }
    }

    const INSTRUCTED: CallFormat = CallFormat::Instructed;

    /// Qwen's syntax, as nnspin-text learns it from the Qwen2.5 and Qwen3 templates.
    fn qwen() -> CallFormat {
        CallFormat::Template {
            open: Literal::text("<tool_call>\n"),
            close: Literal::text("\n</tool_call>"),
            separator: Some(Literal::text("\n")),
            arguments_key: "arguments".into(),
        }
    }

    /// Whether `output` is a whole call of the weather tool under `auto`, as `format` writes calls.
    fn fits(parallel: bool, format: &CallFormat, output: &[u8]) -> bool {
        use nnspin_guest::framed_grammar::FramedGrammar;
        let tools = Tools::from_request(Some(&tools()), None, parallel)
            .unwrap()
            .unwrap();
        let Structure::JsonOrText(grammar) = tools.structure(format, false).unwrap() else {
            panic!("auto lets the model answer in text");
        };
        let mut grammar = FramedGrammar::new(grammar);
        grammar.advance(output) && grammar.can_end()
    }

    #[test]
    fn a_template_syntax_frames_each_call_and_is_parsed_back() {
        let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let two = format!("{one}\n{}", one.replace("Paris", "Tokyo"));
        assert!(fits(true, &qwen(), one.as_bytes()) && fits(true, &qwen(), two.as_bytes()));
        assert!(
            !fits(false, &qwen(), two.as_bytes()),
            "one call when not parallel"
        );
        assert!(!fits(
            true,
            &qwen(),
            br#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#
        ));
        assert!(!fits(
            true,
            &qwen(),
            one.replace("get_weather", "get_time").as_bytes()
        ));

        let calls = Call::parse(&two, &qwen()).unwrap();
        let cities: Vec<_> = calls.iter().map(|c| c.arguments.as_str()).collect();
        assert_eq!(cities, [r#"{"city":"Paris"}"#, r#"{"city":"Tokyo"}"#]);
        assert!(calls.iter().all(|c| c.name == "get_weather"));
        assert!(
            Call::parse(&one[..one.len() - 3], &qwen()).is_none(),
            "cut off"
        );
        assert!(Call::parse("The weather is fine.", &qwen()).is_none());
        assert_eq!(qwen().opening(), "<tool_call>\n");
        assert_eq!(INSTRUCTED.opening(), "{");
    }

    #[test]
    fn a_template_lists_the_callable_functions_as_openai_tools() {
        let offered = Tools::from_request(
            Some(&tools()),
            Some(&json!({"type": "function", "function": {"name": "get_weather"}})),
            true,
        )
        .unwrap()
        .unwrap();
        let listed: Value = serde_json::from_str(&offered.template_tools()).unwrap();
        assert_eq!(listed, tools(), "as the client sent them");
    }

    fn answered(name: &str, arguments: &str) -> AnsweredCall {
        AnsweredCall {
            name: name.into(),
            arguments: canonical_json(arguments),
            result: "{\"temp_c\": 21}".into(),
        }
    }

    #[test]
    fn a_call_already_answered_is_a_repeat_however_it_is_written() {
        let done = [answered(
            "get_weather",
            r#"{"city": "Tokyo", "unit": "celsius"}"#,
        )];
        let call = |name: &str, arguments: &str| Call {
            name: name.into(),
            arguments: arguments.into(),
        };
        assert!(call("get_weather", r#"{"unit":"celsius","city":"Tokyo"}"#).repeats(&done));
        assert!(
            call(
                "get_weather",
                "{ \"city\" : \"Tokyo\",\n \"unit\": \"celsius\" }"
            )
            .repeats(&done)
        );
        assert!(!call("get_weather", r#"{"city":"Paris","unit":"celsius"}"#).repeats(&done));
        assert!(!call("get_weather", r#"{"city":"Tokyo"}"#).repeats(&done));
        assert!(!call("get_time", r#"{"city":"Tokyo","unit":"celsius"}"#).repeats(&done));
        assert!(!call("get_weather", r#"{"city":"Tokyo","unit":"celsius"}"#).repeats(&[]));
    }
}
