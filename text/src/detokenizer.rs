//! Incremental detokenization: decodes a short window of recent tokens and emits only the text that is
//! complete, so multi-byte characters split across tokens never reach the client half-written.

use std::sync::Arc;

use super::TextModel;

pub struct Detokenizer {
    text: Arc<TextModel>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window whose text was already emitted up to `read`.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn new(text: Arc<TextModel>, skip_special_tokens: bool) -> Self {
        Self {
            text,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one token and returns the text it completes (empty while a character is still partial).
    pub fn push(&mut self, token: u32) -> String {
        self.ids.push(token);
        let skip = self.skip_special_tokens;
        let before = self.text.decode(&self.ids[self.prefix..self.read], skip);
        let after = self.text.decode(&self.ids[self.prefix..], skip);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let delta = after.get(before.len()..).unwrap_or_default().to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}
