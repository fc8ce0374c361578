//! The bytes each token stands for, which constrained decoding (checking a token against a grammar) and
//! logprobs (showing each token) need. Built once per model, on first use.

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

/// Every token's bytes, concatenated, and the end offset of each token in `bytes`; special tokens
/// (such as `<|im_end|>`) have none, since they are control signals rather than text.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    pub bytes: Vec<u8>,
    pub ends: Vec<u32>,
}

impl Vocabulary {
    pub fn of(tokenizer: &Tokenizer) -> Self {
        let added = tokenizer.get_added_tokens_decoder();
        let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let unicode_to_byte = byte_level.then(unicode_to_byte);
        let size = tokenizer.get_vocab_size(true) as u32;
        let mut vocabulary = Self {
            bytes: Vec::with_capacity(size as usize * 8),
            ends: Vec::with_capacity(size as usize),
        };
        for id in 0..size {
            match (added.get(&id), tokenizer.id_to_token(id)) {
                (Some(token), _) if token.special => {}
                (Some(token), _) => vocabulary.bytes.extend_from_slice(token.content.as_bytes()),
                (None, Some(piece)) => match &unicode_to_byte {
                    Some(map) => vocabulary.bytes.extend(piece.chars().map(map)),
                    None => push_sentencepiece(&mut vocabulary.bytes, &piece),
                },
                (None, None) => {}
            }
            vocabulary.ends.push(vocabulary.bytes.len() as u32);
        }
        vocabulary
    }
}

/// Byte-level BPE (GPT-2, Llama 3, SmolLM) writes each byte as a printable character: the bytes that are
/// printable Latin-1 stand for themselves, the others are shifted to 256 and up in order.
fn unicode_to_byte() -> impl Fn(char) -> u8 {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = [0u8; 512];
    let mut shifted = 256;
    for b in 0..=255u8 {
        if printable(b) {
            table[b as usize] = b;
        } else {
            table[shifted] = b;
            shifted += 1;
        }
    }
    move |c| table.get(c as usize).copied().unwrap_or(b'?')
}

/// SentencePiece vocabularies write a space as `▁` and raw bytes as `<0xHH>`.
fn push_sentencepiece(bytes: &mut Vec<u8>, piece: &str) {
    let hex = piece
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok());
    match hex {
        Some(byte) => bytes.push(byte),
        None => bytes.extend_from_slice(piece.replace('\u{2581}', " ").as_bytes()),
    }
}
