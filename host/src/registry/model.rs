//! A resident model: its graph in a backend, its tokenizer and chat template, its admission, and the
//! facts components are told about it.

use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use wasmtime::error::Context;

use super::admission::{Admission, ContextLimits};
use crate::backend::{BackendGraph, BackendKind, Device, Engine, LoadOptions, Precision};
use nnspin_text::{TextModel, facts};

/// What a model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A decoder: next-token logits, for chat and completions.
    Generation,
    /// A sentence encoder: one vector of `dimensions` per input.
    Embedding { dimensions: u32 },
}

/// What a component is told about a model to drive generation and describe it to clients.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// The name in spin.toml's `ai_models` and the models directory.
    pub id: String,
    pub task: Task,
    /// Most tokens (prompt and completion together) one sequence may hold; an embedding model's longest
    /// input.
    pub context_length: u32,
    /// Size of the logits vector the model produces for each position.
    pub vocab_size: u32,
    /// Tokens that end a completion (none for an embedding model).
    pub eos_token_ids: Vec<u32>,
    /// When the model files were written, in seconds since the Unix epoch.
    pub created: u64,
    pub owned_by: String,
}

pub struct Model {
    pub facts: ModelFacts,
    pub backend: BackendKind,
    pub device: Device,
    pub precision: Precision,
    pub graph: Arc<dyn BackendGraph>,
    /// Shared with the detokenizers of running requests, which may outlive the model's residency.
    pub text: Arc<TextModel>,
    pub admission: Admission,
}

impl Model {
    /// How many sequences one execution context may carry as the rows of its steps: what the engine's
    /// contexts carry, within the sequences the model admits at once.
    pub fn sequences_per_context(&self) -> u32 {
        let admitted = u32::try_from(self.admission.max_active()).unwrap_or(u32::MAX);
        self.graph.sequences_per_context().min(admitted)
    }

    /// Loads a model directory in the Hugging Face Optimum layout.
    pub fn load(
        id: &str,
        dir: &Path,
        engine: &Engine,
        options: &LoadOptions,
        limits: ContextLimits,
    ) -> wasmtime::Result<Self> {
        if !dir.is_dir() {
            wasmtime::bail!(
                "model {id:?}: directory {} does not exist (prepare it with tools/export_model.py)",
                dir.display()
            );
        }
        let config_path = dir.join("config.json");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path)
                .with_context(|| format!("model {id:?}: reading {}", config_path.display()))?,
        )
        .with_context(|| format!("model {id:?}: parsing {}", config_path.display()))?;
        let embedding = sentence_encoder(dir);
        let (task, eos_token_ids) = match &embedding {
            Some(encoder) => (
                Task::Embedding {
                    dimensions: encoder.dimensions,
                },
                Vec::new(),
            ),
            None => {
                let generation = read_json(&dir.join("generation_config.json"));
                let eos = facts::eos_token_ids(&config, &generation).with_context(|| {
                    format!(
                        "model {id:?}: no eos_token_id in generation_config.json or config.json"
                    )
                })?;
                (Task::Generation, eos)
            }
        };
        let position_limit = facts::position_limit(&config);
        let text =
            TextModel::load(dir).with_context(|| format!("model {id:?}: loading its tokenizer"))?;
        // Learned by rendering the template a few times: done here, not in the first request with tools.
        text.tool_call_syntax();
        let graph = engine.backend.load(dir, options).with_context(|| {
            format!(
                "model {id:?} on {} ({}, {})",
                engine.kind.as_str(),
                options.device.as_str(),
                options.precision.as_str()
            )
        })?;
        let created = std::fs::metadata(&config_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let facts = ModelFacts {
            id: id.to_string(),
            task,
            context_length: embedding
                .and_then(|encoder| encoder.max_input_tokens)
                .map_or(position_limit, |limit| limit.min(position_limit)),
            vocab_size: facts::vocab_size(&config).unwrap_or_else(|| text.vocab_size()),
            eos_token_ids,
            created,
            owned_by: "nnspin".to_string(),
        };
        let admission = Admission::new(limits, graph.batches_contexts());
        Ok(Self {
            facts,
            backend: engine.kind,
            device: options.device,
            precision: options.precision,
            graph,
            text: Arc::new(text),
            admission,
        })
    }
}

/// A sentence-transformers model directory (`modules.json` naming a Pooling module): an encoder whose
/// graph hands back pooled vectors (`sentence_embedding`, as this project's export and Optimum's write).
struct SentenceEncoder {
    dimensions: u32,
    /// `sentence_bert_config.json`'s `max_seq_length`: the inputs the model was trained on, which can be
    /// fewer than its position table holds.
    max_input_tokens: Option<u32>,
}

fn sentence_encoder(dir: &Path) -> Option<SentenceEncoder> {
    let modules = read_json(&dir.join("modules.json"));
    let pooling = modules.as_array()?.iter().find(|module| {
        module["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(".Pooling"))
    })?;
    let pooling = read_json(&dir.join(pooling["path"].as_str()?).join("config.json"));
    Some(SentenceEncoder {
        dimensions: pooling["word_embedding_dimension"].as_u64()? as u32,
        max_input_tokens: read_json(&dir.join("sentence_bert_config.json"))["max_seq_length"]
            .as_u64()
            .map(|n| n as u32),
    })
}

/// A JSON file's value; null where the file is missing or unreadable (every reader treats it as absent).
fn read_json(path: &Path) -> serde_json::Value {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}
