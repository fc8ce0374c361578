//! What a decoder's `config.json` and `generation_config.json` tell a component about generating with it.

use serde_json::Value;

/// The tokens that end a completion: `generation_config.json`'s `eos_token_id` (one id or a list), else
/// `config.json`'s.
pub fn eos_token_ids(config: &Value, generation_config: &Value) -> Option<Vec<u32>> {
    token_ids(&generation_config["eos_token_id"]).or_else(|| token_ids(&config["eos_token_id"]))
}

/// The most positions a sequence may hold (`max_position_embeddings`; 2048 where it is missing).
pub fn position_limit(config: &Value) -> u32 {
    config["max_position_embeddings"].as_u64().unwrap_or(2048) as u32
}

/// The size of each position's logits, where `config.json` gives it.
pub fn vocab_size(config: &Value) -> Option<u32> {
    config["vocab_size"].as_u64().map(|v| v as u32)
}

fn token_ids(value: &Value) -> Option<Vec<u32>> {
    match value {
        Value::Number(n) => Some(vec![n.as_u64()? as u32]),
        Value::Array(items) => items.iter().map(|v| v.as_u64().map(|n| n as u32)).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eos_comes_from_the_generation_config_first() {
        let config =
            json!({"eos_token_id": 2, "max_position_embeddings": 8192, "vocab_size": 49152});
        assert_eq!(
            eos_token_ids(&config, &json!({"eos_token_id": [2, 7]})),
            Some(vec![2, 7])
        );
        assert_eq!(eos_token_ids(&config, &Value::Null), Some(vec![2]));
        assert_eq!(
            eos_token_ids(&json!({}), &json!({"eos_token_id": "x"})),
            None
        );
        assert_eq!(position_limit(&config), 8192);
        assert_eq!(position_limit(&json!({})), 2048);
        assert_eq!(vocab_size(&config), Some(49152));
    }
}
