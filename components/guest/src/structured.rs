//! Structured output: each step, the logits of tokens the grammar forbids are set to -inf, so whatever
//! the sampler picks keeps the output valid. Checking a token costs a walk over its few bytes, so only
//! the most likely tokens are checked unless none of them fits.

use crate::ApiError;
use crate::framed_grammar::{FramedGrammar, Grammar};
use crate::vocabulary::Vocabulary;

/// What the output must be.
#[derive(Debug, Clone)]
pub enum Structure {
    /// JSON matching the grammar's schema (framed as the grammar says: a template's tool calls).
    Json(Grammar),
    /// Either free text or the grammar's JSON: how a model that may call a tool chooses between
    /// answering and calling. The first step decides, by comparing the probability of the tokens that
    /// open what the grammar accepts with that of the tokens that begin text.
    JsonOrText(Grammar),
    /// The grammar's JSON, or nothing: decided as [`Structure::JsonOrText`] decides, but choosing text
    /// ends the output at once (it is declined), so that the answer can be written from another
    /// prompt.
    JsonOrDecline(Grammar),
    /// Free text that does not open with a JSON object: a model's answer when it may not call.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first step decides between JSON and text; `decline` ends the output rather than writing text.
    Deciding {
        decline: bool,
    },
    Json,
    /// Text was chosen where it is declined: nothing is generated.
    Declined,
    /// Text that has shown nothing visible yet, so it may not open an object.
    TextStart,
    Text,
}

/// How a [`Structure::JsonOrText`] output chose: the probability of the tokens that open a JSON value
/// (a call) and of those that begin text, at the first step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub json: f32,
    pub text: f32,
}

/// Tokens checked first each step; most steps find their answer among them.
const CANDIDATES: usize = 1024;

pub struct Constraint {
    /// `None` for [`Structure::Text`].
    grammar: Option<FramedGrammar>,
    /// The first visible byte text may not begin with: what opens the grammar's output.
    opening: u8,
    mode: Mode,
    decision: Option<Decision>,
    /// Reused across steps: token ids ordered by logit.
    order: Vec<u32>,
    allowed: Vec<(u32, f32)>,
}

impl Constraint {
    pub fn new(structure: Structure) -> Self {
        let (grammar, mode) = match structure {
            Structure::Json(grammar) => (Some(FramedGrammar::new(grammar)), Mode::Json),
            Structure::JsonOrText(grammar) => (
                Some(FramedGrammar::new(grammar)),
                Mode::Deciding { decline: false },
            ),
            Structure::JsonOrDecline(grammar) => (
                Some(FramedGrammar::new(grammar)),
                Mode::Deciding { decline: true },
            ),
            Structure::Text => (None, Mode::TextStart),
        };
        Self {
            opening: grammar.as_ref().map_or(b'{', FramedGrammar::opening),
            grammar,
            mode,
            decision: None,
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
        self.mode == Mode::Json
            && self
                .grammar
                .as_ref()
                .is_some_and(FramedGrammar::is_complete)
    }

    /// Text was chosen where it is declined: the output ends before its first token.
    pub fn is_declined(&self) -> bool {
        self.mode == Mode::Declined
    }

    /// How the first step chose between JSON and text, once it has.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// Sets the logits of forbidden tokens to -inf.
    pub fn mask(
        &mut self,
        row: &mut [f32],
        vocabulary: &Vocabulary,
        eos: &[u32],
    ) -> Result<(), ApiError> {
        match self.mode {
            Mode::Text | Mode::Declined => Ok(()),
            Mode::TextStart => {
                for (token, logit) in row.iter_mut().enumerate() {
                    if first_visible(vocabulary.token(token as u32)) == Some(self.opening) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
                Ok(())
            }
            Mode::Deciding { decline } => {
                self.decide(row, vocabulary, eos, decline);
                self.mask(row, vocabulary, eos)
            }
            Mode::Json => self.mask_json(row, vocabulary, eos),
        }
    }

    /// Compares the probability of opening what the grammar accepts with that of beginning text, and
    /// takes the likelier side. Tokens of whitespace only lean to neither.
    fn decide(&mut self, row: &[f32], vocabulary: &Vocabulary, eos: &[u32], decline: bool) {
        let grammar = self.grammar.as_ref().expect("deciding needs a schema");
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut json, mut text) = (0.0f32, 0.0f32);
        for (token, &logit) in row.iter().enumerate() {
            let bytes = vocabulary.token(token as u32);
            let weight = (logit - max).exp();
            match first_visible(bytes) {
                _ if eos.contains(&(token as u32)) => text += weight,
                Some(_) if grammar.accepts(bytes) => json += weight,
                // A malformed opening (`{x`) is neither a call nor text.
                Some(b) if b == self.opening => {}
                Some(_) => text += weight,
                None if bytes.is_empty() => text += weight,
                None => {}
            }
        }
        let total = (json + text).max(f32::MIN_POSITIVE);
        self.decision = Some(Decision {
            json: json / total,
            text: text / total,
        });
        self.mode = match (json > text, decline) {
            (true, _) => Mode::Json,
            (false, true) => Mode::Declined,
            (false, false) => Mode::TextStart,
        };
    }

    fn mask_json(
        &mut self,
        row: &mut [f32],
        vocabulary: &Vocabulary,
        eos: &[u32],
    ) -> Result<(), ApiError> {
        let grammar = self.grammar.as_ref().expect("JSON needs a schema");
        // Inside a frame's text, the token the tokenizer writes it with.
        if let Some(token) = grammar
            .literal_token()
            .filter(|&t| (t as usize) < row.len() && grammar.accepts(vocabulary.token(t)))
        {
            let logit = row[token as usize];
            row.fill(f32::NEG_INFINITY);
            row[token as usize] = logit;
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
                let allowed = match eos.contains(&token) {
                    true => grammar.can_end(),
                    false => grammar.accepts(vocabulary.token(token)),
                };
                if allowed {
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
                if let Some(grammar) = &mut self.grammar {
                    grammar.advance(bytes);
                }
            }
            Mode::TextStart if first_visible(bytes).is_some() => self.mode = Mode::Text,
            Mode::Deciding { .. } | Mode::Declined | Mode::TextStart | Mode::Text => {}
        }
    }
}

/// The first byte of a token that is not whitespace.
fn first_visible(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_schema::Schema;
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
        let mut constraint = Constraint::new(Structure::Json(schema.into()));
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
    fn json_or_text_takes_the_likelier_side() {
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", "{x", " ", "[1"]);
        let schema = Schema::any_object();
        // Text is likelier than a call: objects may not open, and text goes on freely.
        let mut text = Constraint::new(Structure::JsonOrText(schema.clone().into()));
        let mut row = vec![0.0, 2.0, 1.5, 3.0, 5.0, 1.0];
        text.mask(&mut row, &vocab, &[0]).unwrap();
        let decision = text.decision().unwrap();
        assert!(decision.text > decision.json, "{decision:?}");
        assert_eq!(row[2], f32::NEG_INFINITY, "no call once text was chosen");
        assert_eq!(row[3], f32::NEG_INFINITY);
        assert_eq!((row[1], row[4], row[5]), (2.0, 5.0, 1.0));
        text.observe(b"Hello");
        assert!(!text.is_json());
        // The likeliest single token begins text, but the tokens that open a call are likelier
        // together: the call is chosen, as one sampled token would not have chosen it.
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", "{ \"", " "]);
        let mut json = Constraint::new(Structure::JsonOrText(schema.into()));
        let mut row = vec![-10.0, 2.0, 1.6, 1.6, 0.0];
        json.mask(&mut row, &vocab, &[0]).unwrap();
        assert!(json.decision().unwrap().json > 0.5 && json.is_json());
        assert_eq!(
            (row[1], row[2]),
            (f32::NEG_INFINITY, 1.6),
            "only the value may begin"
        );
        json.observe(b"{\"");
        assert!(json.is_json() && !json.is_complete());
    }

    #[test]
    fn declining_text_ends_the_output_and_a_call_goes_on() {
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", " "]);
        let mut declined = Constraint::new(Structure::JsonOrDecline(Schema::any_object().into()));
        let mut row = vec![0.0, 3.0, 1.0, 0.0];
        declined.mask(&mut row, &vocab, &[0]).unwrap();
        assert!(declined.is_declined() && !declined.is_json());
        let mut calling = Constraint::new(Structure::JsonOrDecline(Schema::any_object().into()));
        let mut row = vec![0.0, 1.0, 3.0, 0.0];
        calling.mask(&mut row, &vocab, &[0]).unwrap();
        assert!(calling.is_json() && !calling.is_declined());
        assert_eq!(row[1], f32::NEG_INFINITY);
    }

    #[test]
    fn text_only_may_not_open_with_an_object() {
        let vocab = vocabulary(&["<eos>", "Hello", "{\"", " ", " {"]);
        let mut answer = Constraint::new(Structure::Text);
        let mut row = vec![0.0; 5];
        answer.mask(&mut row, &vocab, &[0]).unwrap();
        assert_eq!(row, [0.0, 0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
        answer.observe(b" ");
        let mut row = vec![0.0; 5];
        answer.mask(&mut row, &vocab, &[0]).unwrap();
        assert_eq!(
            row[4],
            f32::NEG_INFINITY,
            "whitespace first does not lift the rule"
        );
        answer.observe(b"Hello");
        let mut row = vec![0.0; 5];
        answer.mask(&mut row, &vocab, &[0]).unwrap();
        assert_eq!(row, [0.0; 5], "braces are fine inside text");
    }
}
