//! The bytes each token stands for, fetched from the host only by requests that need them
//! (structured output, logprobs).

use crate::text;

pub struct Vocabulary {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Vocabulary {
    pub fn new(bytes: Vec<u8>, ends: Vec<u32>) -> Self {
        Self { bytes, ends }
    }

    /// The token's bytes; empty for special tokens and ids beyond the vocabulary.
    pub fn token(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let Some(&end) = self.ends.get(id) else {
            return &[];
        };
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.bytes[start as usize..end as usize]
    }
}

impl From<text::Vocabulary> for Vocabulary {
    fn from(v: text::Vocabulary) -> Self {
        Self::new(v.bytes, v.ends)
    }
}
