//! Where a model's chat template comes from, as transformers looks for it: `chat_template.jinja` beside the
//! tokenizer first, then `tokenizer_config.json`'s `chat_template`, a string or a list of named templates.

use std::path::PathBuf;

use nnspin_text::{Message, TextModel};

const TOKENIZER: &str = r#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}"#;

fn rendered(model: &TextModel) -> String {
    let question = [Message {
        role: "user".into(),
        content: "hi".into(),
        ..Message::default()
    }];
    model.apply_chat_template(&question, None, true).unwrap()
}

/// A model directory of its own under the system's temporary directory, named after the test.
fn write_dir(test: &str, config: serde_json::Value, template_file: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnspin-text-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    if let Some(template) = template_file {
        std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    }
    dir
}

#[test]
fn chat_template_jinja_is_read_and_comes_first() {
    let config = serde_json::json!({"chat_template": "config: {{ messages[0].content }}"});
    let dir = write_dir(
        "file",
        config.clone(),
        Some("file: {{ messages[0].content }}"),
    );
    assert_eq!(rendered(&TextModel::load(&dir).unwrap()), "file: hi");
    let dir = write_dir("config", config, None);
    assert_eq!(rendered(&TextModel::load(&dir).unwrap()), "config: hi");
}

#[test]
fn a_list_of_named_templates_gives_the_default_one() {
    let config = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "tools: {{ messages[0].content }}"},
        {"name": "default", "template": "default: {{ messages[0].content }}"},
    ]});
    let dir = write_dir("named", config, None);
    assert_eq!(rendered(&TextModel::load(&dir).unwrap()), "default: hi");
}

#[test]
fn a_broken_template_file_is_a_load_error_naming_the_template() {
    let dir = write_dir("broken", serde_json::json!({}), Some("{% if %}"));
    let error = TextModel::load(&dir).err().unwrap().to_string();
    assert!(error.contains("chat template"), "{error}");
}
