//! The grammar of a structured output: one JSON value, or JSON values framed by fixed text, as a chat
//! template writes tool calls (Qwen's `<tool_call>\n{...}\n</tool_call>`, several joined by `\n`).
//!
//! The frame's text is matched byte by byte around a [`JsonGrammar`], so a token may cross from the
//! text into the value or out of it (`}\n` closes the value and begins `\n</tool_call>`): a value's end
//! is certain once its object closes, since nothing may follow a complete value.

use std::sync::Arc;

use crate::json_grammar::JsonGrammar;
use crate::json_schema::Schema;

/// The text a template writes around each value and between values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub open: Literal,
    pub close: Literal,
    /// Between values; `None` allows only one.
    pub separator: Option<Literal>,
    /// The most values one output may hold.
    pub max_values: usize,
}

/// Fixed text of a frame, and the tokens the tokenizer writes it as. A model trained on `<tool_call>`
/// as one token should write that token, not `<`, `tool`, `_call>`, which spell the same bytes and
/// which a grammar over bytes alone would let it pick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Literal {
    pub text: String,
    /// Where each of its tokens begins in `text`, and the token; empty when unknown.
    pub tokens: Vec<(usize, u32)>,
}

impl Literal {
    /// Text whose tokens are not known: any tokens spelling it are accepted.
    pub fn text(text: &str) -> Self {
        Self {
            text: text.to_string(),
            tokens: Vec::new(),
        }
    }

    /// `text` written as `tokens`, each of `token_len(token)` bytes; the tokens are dropped unless
    /// they spell the text exactly.
    pub fn tokenized(text: &str, tokens: &[u32], token_len: impl Fn(u32) -> usize) -> Self {
        let mut at = 0;
        let starts: Vec<(usize, u32)> = tokens
            .iter()
            .map(|&token| {
                let start = at;
                at += token_len(token);
                (start, token)
            })
            .collect();
        Self {
            text: text.to_string(),
            tokens: if at == text.len() { starts } else { Vec::new() },
        }
    }

    fn len(&self) -> usize {
        self.text.len()
    }

    fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

/// What a structured output must be: a JSON value matching `schema`, framed or bare.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub schema: Schema,
    pub framing: Option<Framing>,
}

impl From<Schema> for Grammar {
    fn from(schema: Schema) -> Self {
        Self {
            schema,
            framing: None,
        }
    }
}

/// Where a framed output stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// This many bytes of `open` matched.
    Open(usize),
    Value,
    Close(usize),
    /// After a value's `close`: the output may end, or a separator begin.
    Between,
    Separator(usize),
}

/// A [`Grammar`] being matched.
#[derive(Debug, Clone)]
pub struct FramedGrammar {
    /// A value not begun, the start of each next one.
    fresh: JsonGrammar,
    value: JsonGrammar,
    /// Shared by clones, which [`FramedGrammar::accepts`] makes for every token it checks.
    framing: Option<Arc<Framing>>,
    part: Part,
    /// Values begun.
    values: usize,
}

impl FramedGrammar {
    pub fn new(grammar: Grammar) -> Self {
        let fresh = JsonGrammar::new(grammar.schema);
        let mut this = Self {
            value: fresh.clone(),
            fresh,
            part: match grammar.framing {
                Some(_) => Part::Open(0),
                None => Part::Value,
            },
            framing: grammar.framing.map(Arc::new),
            values: 0,
        };
        this.settle();
        this
    }

    /// The first visible byte an output of this grammar begins with: how a call's opening is told
    /// from text.
    pub fn opening(&self) -> u8 {
        let open = self.framing.as_ref().map_or("", |f| f.open.text.as_str());
        open.bytes()
            .find(|b| !b.is_ascii_whitespace())
            .unwrap_or(b'{')
    }

    /// Whether `bytes` may come next.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        match self.framing {
            None => self.value.accepts(bytes),
            Some(_) => !bytes.is_empty() && self.clone().advance(bytes),
        }
    }

    /// Consumes `bytes`; returns false (and may leave a partial state) if they may not come next.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        if self.framing.is_none() {
            return self.value.advance(bytes);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let taken = match self.part {
                // The value takes every byte up to its end at once.
                Part::Value => {
                    let end = self.value_end(rest);
                    match end {
                        Some(end) if self.value.advance(&rest[..end]) => end,
                        _ => return false,
                    }
                }
                _ => {
                    if !self.step(rest[0]) {
                        return false;
                    }
                    1
                }
            };
            rest = &rest[taken..];
            self.settle();
        }
        true
    }

    /// How many of `bytes` the value takes: up to where it would be complete, or all of them;
    /// `None` if they do not continue it.
    fn value_end(&self, bytes: &[u8]) -> Option<usize> {
        if self.value.accepts(bytes) {
            return Some(bytes.len());
        }
        let mut value = self.value.clone();
        for (i, b) in bytes.iter().enumerate() {
            if !value.advance(std::slice::from_ref(b)) {
                return None;
            }
            if value.is_complete() {
                return Some(i + 1);
            }
        }
        None
    }

    /// Matches one byte of the frame's text.
    fn step(&mut self, b: u8) -> bool {
        let framing = self.framing.as_ref().expect("only frames have text");
        let (text, at) = match self.part {
            Part::Open(at) => (framing.open.bytes(), at),
            Part::Close(at) => (framing.close.bytes(), at),
            Part::Separator(at) => (
                framing.separator.as_ref().map_or(&[][..], Literal::bytes),
                at,
            ),
            // Values written back to back begin with `open` (which a frame without either lacks).
            Part::Between => match &framing.separator {
                Some(separator) if self.values < framing.max_values => {
                    let (part, text) = match separator.text.is_empty() {
                        true => (Part::Open(0), framing.open.bytes()),
                        false => (Part::Separator(0), separator.bytes()),
                    };
                    self.part = part;
                    (text, 0)
                }
                _ => return false,
            },
            Part::Value => unreachable!("values are matched by their grammar"),
        };
        if text.get(at) != Some(&b) {
            return false;
        }
        self.part = match self.part {
            Part::Open(_) => Part::Open(at + 1),
            Part::Close(_) => Part::Close(at + 1),
            _ => Part::Separator(at + 1),
        };
        true
    }

    /// Moves past text matched whole and a value complete.
    fn settle(&mut self) {
        let Some(framing) = &self.framing else {
            return;
        };
        loop {
            self.part = match self.part {
                Part::Open(at) if at == framing.open.len() => {
                    self.value = self.fresh.clone();
                    self.values += 1;
                    Part::Value
                }
                Part::Value if self.value.is_complete() => Part::Close(0),
                Part::Close(at) if at == framing.close.len() => Part::Between,
                Part::Separator(at) if at == framing.separator.as_ref().map_or(0, Literal::len) => {
                    Part::Open(0)
                }
                _ => return,
            };
        }
    }

    /// The token the frame's text is written with here, when the output is inside that text at one of
    /// its tokens' starts.
    pub fn literal_token(&self) -> Option<u32> {
        let framing = self.framing.as_ref()?;
        let (literal, at) = match self.part {
            Part::Open(at) => (&framing.open, at),
            Part::Close(at) => (&framing.close, at),
            Part::Separator(at) => (framing.separator.as_ref()?, at),
            Part::Value | Part::Between => return None,
        };
        literal
            .tokens
            .iter()
            .find(|&&(start, _)| start == at)
            .map(|&(_, token)| token)
    }

    /// Nothing more may follow: generation ends here.
    pub fn is_complete(&self) -> bool {
        match &self.framing {
            None => self.value.is_complete(),
            Some(framing) => {
                self.part == Part::Between
                    && (framing.separator.is_none() || self.values >= framing.max_values)
            }
        }
    }

    /// The output may end here.
    pub fn can_end(&self) -> bool {
        match self.framing {
            None => self.value.can_end(),
            Some(_) => self.part == Part::Between,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn calls(separator: Option<&str>) -> FramedGrammar {
        let schema = Schema::compile(&json!({"type": "object",
            "properties": {"name": {"const": "f"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"]}))
        .unwrap();
        FramedGrammar::new(Grammar {
            schema,
            framing: Some(Framing {
                open: Literal::tokenized("<tool_call>\n", &[7, 1], |t| if t == 7 { 11 } else { 1 }),
                close: Literal::text("\n</tool_call>"),
                separator: separator.map(Literal::text),
                max_values: 2,
            }),
        })
    }

    #[test]
    fn tokens_that_do_not_spell_a_literal_are_dropped() {
        let literal = Literal::tokenized("<tool_call>", &[7, 1], |_| 1);
        assert!(literal.tokens.is_empty());
    }

    const CALL: &str = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";

    #[test]
    fn tokens_may_cross_the_frame_and_the_value() {
        let mut grammar = calls(Some("\n"));
        assert_eq!(grammar.opening(), b'<');
        assert_eq!(
            grammar.literal_token(),
            Some(7),
            "`<tool_call>` is one token"
        );
        assert!(grammar.accepts(b"<tool") && !grammar.accepts(b"{") && !grammar.accepts(b"Hi"));
        assert!(!grammar.can_end());
        for token in [
            "<tool_call>",
            "\n{\"name\"",
            ": \"f\", \"arguments\": {",
            "}}\n</",
            "tool_call>",
        ] {
            assert!(grammar.advance(token.as_bytes()), "{token:?}");
            if token == "<tool_call>" {
                assert_eq!(grammar.literal_token(), Some(1), "then `\\n`");
            }
        }
        assert!(
            grammar.can_end() && !grammar.is_complete(),
            "a second call may follow"
        );
        assert!(!grammar.accepts(b"<tool_call>"), "only after the separator");
        assert!(grammar.advance(format!("\n{CALL}").as_bytes()));
        assert!(grammar.is_complete(), "at most two");
        assert!(!grammar.accepts(b"\n"));
    }

    #[test]
    fn without_a_separator_one_value_completes_the_output() {
        let mut grammar = calls(None);
        assert!(
            !grammar.accepts(b"<tool_call>\n{\"name\": \"g\""),
            "held to the schema"
        );
        assert!(grammar.advance(CALL.as_bytes()));
        assert!(grammar.is_complete() && grammar.can_end());
    }

    #[test]
    fn a_bare_value_is_a_json_grammar() {
        let grammar = FramedGrammar::new(Schema::any_object().into());
        assert_eq!(grammar.opening(), b'{');
        assert!(grammar.accepts(b"{\"a\"") && !grammar.accepts(b"<"));
    }
}
