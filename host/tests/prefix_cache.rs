//! The prefix caches of the batched paths, driven through the backend as the wasi-nn glue drives them: a
//! prompt whose prefix the model's caches hold gives the logits the whole prompt computed without the
//! cache gives, on the default model (the exact path). ONNX Runtime's rows reuse any prefix length, and
//! every one is checked; OpenVINO's PagedAttention blocks reuse whole blocks of 32 positions, checked
//! around each block's edges.
#![cfg(all(feature = "onnxruntime", feature = "openvino"))]

use std::path::PathBuf;
use std::sync::Arc;

use nnspin::backend::onnxruntime::OnnxRuntime;
use nnspin::backend::openvino::OpenVino;
use nnspin::backend::{
    BackendExecutionContext, BackendGraph, Device, ElementType, Engine, LoadOptions, Precision,
    Tensor,
};
use nnspin_text::TextModel;

/// An engine and the granularity of its prefix cache.
#[derive(Clone, Copy)]
struct Cache {
    start: fn() -> wasmtime::Result<Engine>,
    /// Positions reused come in multiples of this.
    granularity: usize,
}

const ROWS: Cache = Cache {
    start: OnnxRuntime::start,
    granularity: 1,
};

const BLOCKS: Cache = Cache {
    start: OpenVino::start,
    granularity: 32,
};

impl Cache {
    /// What a prompt of `length` tokens finds of a cached prefix `prefix` tokens long.
    fn reused(self, prefix: usize, length: usize) -> usize {
        prefix.min(length - 1) / self.granularity * self.granularity
    }
}

const MODEL: &str = "smollm2-135m-instruct";

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(MODEL)
}

fn load(cache: Cache, prefix_cache_bytes: u64) -> Arc<dyn BackendGraph> {
    let options = LoadOptions {
        threads: 0,
        device: Device::Cpu,
        precision: Precision::Exact,
        format: None,
        prefix_cache_bytes,
    };
    let engine = (cache.start)().unwrap();
    engine.backend.load(&model_dir(), &options).unwrap()
}

fn tensor(values: Vec<i64>) -> Tensor {
    Tensor {
        dims: vec![1, values.len() as u32],
        ty: ElementType::I64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Runs `ids` after `past` cached positions; the logits and the `cached_tokens` output, if any.
fn step(
    context: &mut dyn BackendExecutionContext,
    ids: &[i64],
    past: usize,
) -> (Vec<f32>, Option<i64>) {
    let n = ids.len();
    let inputs = vec![
        ("input_ids".to_string(), tensor(ids.to_vec())),
        ("attention_mask".to_string(), tensor(vec![1; past + n])),
        (
            "position_ids".to_string(),
            tensor((past as i64..(past + n) as i64).collect()),
        ),
    ];
    let (mut logits, mut cached) = (Vec::new(), None);
    for (name, out) in context.compute(inputs).unwrap() {
        match name.as_str() {
            "logits" => {
                logits = out
                    .data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            }
            "cached_tokens" => cached = Some(i64::from_le_bytes(out.data[..8].try_into().unwrap())),
            other => panic!("unexpected output {other}"),
        }
    }
    (logits, cached)
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A prompt longer than one prefill chunk (128 tokens), with characters the tokenizer splits into
/// several byte tokens.
fn prompt() -> (Vec<i64>, Vec<usize>) {
    let text = TextModel::load(&model_dir()).unwrap();
    let sentence = "The crab 🦀 is the mascot of Rust, and 日本語 means the Japanese language. ";
    let ids = text.encode(&sentence.repeat(6), false).unwrap();
    // Prefixes whose text ends inside a character: decoding them leaves a replacement character.
    let inside: Vec<usize> = (1..ids.len())
        .filter(|&k| text.decode(&ids[..k], false).ends_with('\u{FFFD}'))
        .collect();
    (ids.into_iter().map(i64::from).collect(), inside)
}

#[test]
fn a_prompt_started_from_the_rows_gives_the_logits_of_computing_it_whole() {
    let (prompt, inside) = prompt();
    assert!(prompt.len() > 128, "{} tokens", prompt.len());
    assert!(!inside.is_empty(), "no character spans several tokens");
    // 64 MiB keeps about five finished rows of 256 positions: the later prompts evict each other.
    let cached = load(ROWS, 64 << 20);
    let prefixes: Vec<usize> = (1..=prompt.len()).collect();
    started_from_the_cache(ROWS, &cached, &prompt, &prefixes);
    let stats = cached.prefix_cache().unwrap();
    assert!(stats.evictions() > 0, "the budget held every row");
}

#[test]
fn a_prompt_started_from_the_blocks_gives_the_logits_of_computing_it_whole() {
    let (prompt, _) = prompt();
    let cached = load(BLOCKS, 64 << 20);
    // Around every block's edges, and the whole prompt.
    let mut prefixes: Vec<usize> = (32..prompt.len())
        .step_by(32)
        .flat_map(|edge| [edge - 1, edge, edge + 1])
        .collect();
    prefixes.extend([1, prompt.len()]);
    started_from_the_cache(BLOCKS, &cached, &prompt, &prefixes);
}

/// Computes `prompt` on `cached`, then each of its `prefixes` followed by a token it does not continue
/// with, on `cached` and on the same engine without a cache: the same logits, and the cache reports the
/// positions it reused.
fn started_from_the_cache(
    cache: Cache,
    cached: &Arc<dyn BackendGraph>,
    prompt: &[i64],
    prefixes: &[usize],
) {
    let plain = load(cache, 0);
    step(cached.init_execution_context().unwrap().as_mut(), prompt, 0);
    let mut expected = 0;
    for &k in prefixes {
        // The prompt's first k tokens, then one it does not continue with.
        let other = if prompt.get(k) == Some(&13) { 14 } else { 13 };
        let ids: Vec<i64> = prompt[..k].iter().copied().chain([other]).collect();
        let (with, hit) = step(cached.init_execution_context().unwrap().as_mut(), &ids, 0);
        let (without, none) = step(plain.init_execution_context().unwrap().as_mut(), &ids, 0);
        let reused = cache.reused(k, ids.len());
        assert_eq!(hit, Some(reused as i64), "prefix of {k}");
        expected += reused as u64;
        assert_eq!(none, Some(0));
        // A prompt computed in two parts (as chunked prefill runs one, and as the cache does) moves logits
        // of about 28 by up to 2.3e-4: fp32 sums in another order. Relative to the scale, within 1e-4.
        let scale = without.iter().fold(1f32, |m, v| m.max(v.abs()));
        let difference = max_difference(&with, &without) / scale;
        assert!(
            difference < 1e-4,
            "prefix of {k}: logits differ by {difference} of their scale"
        );
    }
    assert_eq!(cached.prefix_cache().unwrap().hit_tokens(), expected);
}

#[test]
fn a_sequence_decodes_on_from_a_cached_prefix_of_rows() {
    decodes_on_from_a_cached_prefix(ROWS);
}

#[test]
fn a_sequence_decodes_on_from_a_cached_prefix_of_blocks() {
    decodes_on_from_a_cached_prefix(BLOCKS);
}

fn decodes_on_from_a_cached_prefix(cache: Cache) {
    let (prompt, _) = prompt();
    let cached = load(cache, 256 << 20);
    let plain = load(cache, 0);
    let half = &prompt[..prompt.len() / 2];
    step(cached.init_execution_context().unwrap().as_mut(), half, 0);
    let run = |graph: &Arc<dyn BackendGraph>| {
        let mut context = graph.init_execution_context().unwrap();
        let (first, cached) = step(context.as_mut(), &prompt, 0);
        let mut logits = vec![first];
        for (i, token) in [13_i64, 42, 7].into_iter().enumerate() {
            logits.push(step(context.as_mut(), &[token], prompt.len() + i).0);
        }
        (logits, cached)
    };
    // A running sequence of the cached graph rides beside: its row is shared, not disturbed.
    let mut beside = cached.init_execution_context().unwrap();
    step(beside.as_mut(), &prompt, 0);
    let (with, hit) = run(&cached);
    let (without, _) = run(&plain);
    assert_eq!(
        hit,
        Some(cache.reused(prompt.len(), prompt.len()) as i64),
        "the running sequence holds it all"
    );
    for (a, b) in with.iter().zip(&without) {
        assert!(max_difference(a, b) < 1e-4);
    }
    let (again, _) = step(beside.as_mut(), &[13], prompt.len());
    assert!(max_difference(&again, &with[1]) < 1e-4);
}
