//! Chat template inputs: messages of any role and content rendered by the default model's real
//! template (Jinja, `minijinja`), then tokenized. The input is NUL-separated messages, each a role byte
//! then its content (lossy UTF-8); the first byte's low bit asks for the generation prompt. Rendering
//! may refuse (templates raise exceptions), but must not panic, and every token must be inside the
//! vocabulary.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use nnspin_text::{Message, TextModel};

/// The converted default model (`tools/setup.sh` writes it); `NNSPIN_FUZZ_MODEL` names another.
static MODEL: LazyLock<TextModel> = LazyLock::new(|| {
    let dir = std::env::var("NNSPIN_FUZZ_MODEL").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/smollm2-135m-instruct"
        )
        .to_string()
    });
    TextModel::load(Path::new(&dir)).expect("the model's tokenizer files load")
});

const ROLES: [&str; 6] = ["system", "user", "assistant", "tool", "developer", ""];

fuzz_target!(|input: &[u8]| {
    let Some((&flags, input)) = input.split_first() else {
        return;
    };
    let contents: Vec<(&str, String)> = input
        .split(|&b| b == 0)
        .filter_map(|message| message.split_first())
        .map(|(&role, content)| {
            let role = ROLES[role as usize % ROLES.len()];
            (role, String::from_utf8_lossy(content).into_owned())
        })
        .collect();
    let messages: Vec<Message> = contents
        .iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    let Ok(prompt) = MODEL.apply_chat_template(&messages, flags & 1 == 1) else {
        return;
    };
    let tokens = MODEL
        .encode(&prompt, false)
        .expect("rendered prompts tokenize");
    // Counted once: `vocab_size` builds the tokenizer's whole vocabulary map.
    let vocab_size = MODEL.vocab_size();
    assert!(tokens.iter().all(|&t| t < vocab_size));
});
