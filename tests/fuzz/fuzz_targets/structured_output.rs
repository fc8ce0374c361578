//! `response_format` schemas and the grammar built from them. The input is a JSON Schema, a NUL byte,
//! then model output fed in pieces of 1 to 4 bytes (as tokens arrive). Compiling must not panic, and
//! whatever the grammar lets the output end on must be valid JSON: that is the promise structured
//! output makes to clients.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin_guest::json_grammar::JsonGrammar;
use nnspin_guest::json_schema::Schema;

fuzz_target!(|input: &[u8]| {
    let (schema, output) = match input.iter().position(|&b| b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(schema) else {
        return;
    };
    let Ok(schema) = Schema::compile(&schema) else {
        return;
    };
    let mut grammar = JsonGrammar::new(schema);
    let mut consumed = 0;
    let mut sizes = [1, 3, 2, 4].iter().cycle();
    while consumed < output.len() {
        let piece = &output[consumed..output.len().min(consumed + sizes.next().unwrap())];
        assert_eq!(grammar.accepts(piece), grammar.clone().advance(piece));
        if !grammar.advance(piece) {
            return;
        }
        consumed += piece.len();
        if grammar.is_complete() {
            assert!(grammar.can_end());
        }
    }
    if grammar.can_end() {
        let text = &output[..consumed];
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(text) {
            panic!(
                "the grammar ended on invalid JSON {:?}: {e}",
                String::from_utf8_lossy(text)
            );
        }
    }
});
