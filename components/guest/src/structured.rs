//! Structured output: each step, the logits of tokens the JSON grammar forbids are set to -inf, so
//! whatever the sampler picks keeps the output valid. Checking a token costs a walk over its few bytes,
//! so only the most likely tokens are checked unless none of them fits.

use crate::ApiError;
use crate::json_grammar::JsonGrammar;
use crate::json_schema::Schema;
use crate::vocabulary::Vocabulary;

/// What the output must be.
#[derive(Debug, Clone)]
pub enum Structure {
    /// A JSON value matching the schema.
    Json(Schema),
    /// Either free text, or (when the first token opens a JSON object) a JSON value matching the
    /// schema: how a model chooses between answering and calling a tool.
    JsonOrText(Schema),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first tokens decide between JSON and text.
    Deciding,
    Json,
    Text,
}

/// Tokens checked first each step; most steps find their answer among them.
const CANDIDATES: usize = 1024;

pub struct Constraint {
    grammar: JsonGrammar,
    mode: Mode,
    /// Reused across steps: token ids ordered by logit.
    order: Vec<u32>,
    allowed: Vec<(u32, f32)>,
}

impl Constraint {
    pub fn new(structure: Structure) -> Self {
        let (schema, mode) = match structure {
            Structure::Json(schema) => (schema, Mode::Json),
            Structure::JsonOrText(schema) => (schema, Mode::Deciding),
        };
        Self {
            grammar: JsonGrammar::new(schema),
            mode,
            order: Vec::new(),
            allowed: Vec::new(),
        }
    }

    /// The output so far is JSON held to the schema.
    pub fn is_json(&self) -> bool {
        self.mode == Mode::Json
    }

    /// The JSON value is complete; generation ends here.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Json && self.grammar.is_complete()
    }

    fn allows(&self, token: u32, bytes: &[u8], eos: &[u32]) -> bool {
        if eos.contains(&token) {
            return match self.mode {
                Mode::Json => self.grammar.can_end(),
                Mode::Deciding | Mode::Text => true,
            };
        }
        match self.mode {
            Mode::Json => self.grammar.accepts(bytes),
            Mode::Deciding => !opens_object(bytes) || self.grammar.accepts(bytes),
            Mode::Text => true,
        }
    }

    /// Sets the logits of forbidden tokens to -inf.
    pub fn mask(
        &mut self,
        row: &mut [f32],
        vocabulary: &Vocabulary,
        eos: &[u32],
    ) -> Result<(), ApiError> {
        if self.mode == Mode::Text {
            return Ok(());
        }
        self.order.clear();
        self.order.extend(0..row.len() as u32);
        let first = CANDIDATES.min(row.len());
        if first < row.len() {
            self.order.select_nth_unstable_by(first - 1, |&a, &b| {
                row[b as usize].total_cmp(&row[a as usize])
            });
        }
        self.allowed.clear();
        for window in [&self.order[..first], &self.order[first..]] {
            for &token in window {
                if self.allows(token, vocabulary.token(token), eos) {
                    self.allowed.push((token, row[token as usize]));
                }
            }
            if !self.allowed.is_empty() {
                break;
            }
        }
        if self.allowed.is_empty() {
            return Err(ApiError::internal(
                "no token of the vocabulary can continue the structured output",
            ));
        }
        row.fill(f32::NEG_INFINITY);
        for &(token, logit) in &self.allowed {
            row[token as usize] = logit;
        }
        Ok(())
    }

    /// Takes the chosen token into account.
    pub fn observe(&mut self, bytes: &[u8]) {
        match self.mode {
            Mode::Json => {
                self.grammar.advance(bytes);
            }
            Mode::Deciding if opens_object(bytes) && self.grammar.advance(bytes) => {
                self.mode = Mode::Json;
            }
            Mode::Deciding if bytes.iter().all(u8::is_ascii_whitespace) => {
                if !self.grammar.advance(bytes) {
                    self.mode = Mode::Text;
                }
            }
            Mode::Deciding | Mode::Text => self.mode = Mode::Text,
        }
    }
}

/// Whether a token begins (after whitespace) a JSON object.
fn opens_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vocabulary(tokens: &[&str]) -> Vocabulary {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for t in tokens {
            bytes.extend_from_slice(t.as_bytes());
            ends.push(bytes.len() as u32);
        }
        Vocabulary::new(bytes, ends)
    }

    #[test]
    fn masks_forbidden_tokens_and_ends_when_complete() {
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", "a", "\":", " 1", "}", "{"]);
        let eos = [0];
        let schema = Schema::compile(
            &json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
        )
        .unwrap();
        let mut constraint = Constraint::new(Structure::Json(schema));
        let mut row = vec![9.0, 8.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0];
        constraint.mask(&mut row, &vocab, &eos).unwrap();
        assert_eq!(
            row[0],
            f32::NEG_INFINITY,
            "no end before the value is complete"
        );
        assert_eq!(row[1], f32::NEG_INFINITY);
        assert_eq!((row[2], row[7]), (1.0, 2.0));
        for token in ["{\"", "a", "\":", " 1"] {
            constraint.observe(token.as_bytes());
        }
        assert!(!constraint.is_complete());
        constraint.observe(b"}");
        assert!(constraint.is_complete() && constraint.is_json());
    }

    #[test]
    fn json_or_text_follows_the_first_token() {
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", "{x"]);
        let schema = Schema::any_object();
        let mut text = Constraint::new(Structure::JsonOrText(schema.clone()));
        let mut row = vec![0.0; 4];
        text.mask(&mut row, &vocab, &[0]).unwrap();
        assert_eq!(row, [0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        text.observe(b"Hello");
        assert!(!text.is_json());
        let mut json = Constraint::new(Structure::JsonOrText(schema));
        json.observe(b"{\"");
        assert!(json.is_json());
    }
}
