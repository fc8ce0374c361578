//! The host's wasi-nn and text implementations, driven directly on the tiny random-weight model that
//! `tools/export_model.py --tiny` writes (the test script prepares it under `models/tiny-random`), on
//! both backends.
#![cfg(all(feature = "onnxruntime", feature = "openvino"))]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nnspin::backend::onnxruntime::OnnxRuntime;
use nnspin::backend::openvino::OpenVino;
use nnspin::backend::{BackendKind, Device, ElementType, Engine, LoadOptions, Precision, Tensor};
use nnspin::interfaces::bindings::errors::{ErrorCode, HostError};
use nnspin::interfaces::bindings::graph::{
    ExecutionTarget, GraphEncoding, Host as GraphHost, HostGraph,
};
use nnspin::interfaces::bindings::inference::HostGraphExecutionContext;
use nnspin::interfaces::bindings::tensor::{HostTensor, TensorType};
use nnspin::interfaces::bindings::text::{
    HostDetokenizer, HostTokenizer, Message, ModelTask, TextError,
};
use nnspin::interfaces::resources::{ExecutionContext, NnError};
use nnspin::interfaces::view::{LlmApp, LlmGrants, LlmView};
use nnspin::metrics::Metrics;
use nnspin::registry::admission::ContextLimits;
use nnspin::registry::{DEFAULT_PREFIX_CACHE_MIB, ModelRegistry, ModelSettings, Placement};
use wasmtime::component::{Resource, ResourceTable};

const MODEL: &str = "tiny-random";
/// all-MiniLM-L6-v2 as `tools/export_encoder.py` writes it (the test script prepares it too).
const ENCODER: &str = "all-minilm-l6-v2";

fn models_dir() -> PathBuf {
    std::env::var_os("NNSPIN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// A component's grants over a registry of its own, with the tiny model loaded: each test admits its
/// contexts apart from the others, however many they hold at once.
fn grants_on(backend: BackendKind, precision: Precision) -> Arc<LlmGrants> {
    grants_of(MODEL, backend, precision)
}

/// The same, for one model.
fn grants_of(model: &str, backend: BackendKind, precision: Precision) -> Arc<LlmGrants> {
    let limits = ContextLimits {
        max_active: Some(8),
        max_queued: 0,
    };
    let placement = Placement {
        defaults: ModelSettings {
            backend: Some(backend),
            device: Device::Cpu,
            precision,
            threads: 1,
            format: None,
            prefix_cache_mib: DEFAULT_PREFIX_CACHE_MIB,
        },
        overrides: Default::default(),
        cpu_fallback: false,
    };
    let metrics = Arc::new(Metrics::default());
    let registry = ModelRegistry::new(&models_dir(), placement, limits, metrics);
    registry
        .preload(&[model.to_string()])
        .unwrap_or_else(|e| panic!("{model} loads (tools/setup.sh exports it): {e:#}"));
    let app = Arc::new(LlmApp {
        registry: Arc::new(registry),
        started: Instant::now(),
    });
    Arc::new(LlmGrants::new(app, vec![model.to_string()], false))
}

/// A component's grants and a resource table, as one instance has them.
struct Fixture {
    grants: Arc<LlmGrants>,
    table: ResourceTable,
}

/// Both backends serve the same model directory; behaviour tests run on each.
const BACKENDS: [BackendKind; 2] = [BackendKind::Onnxruntime, BackendKind::Openvino];

impl Fixture {
    fn new() -> Self {
        Self::on(BackendKind::Onnxruntime)
    }

    fn on(backend: BackendKind) -> Self {
        Self::with(backend, Precision::Exact)
    }

    fn with(backend: BackendKind, precision: Precision) -> Self {
        Self {
            grants: grants_on(backend, precision),
            table: ResourceTable::new(),
        }
    }

    /// A second instance of the same component, over the same resident model.
    fn beside(&self) -> Self {
        Self {
            grants: self.grants.clone(),
            table: ResourceTable::new(),
        }
    }

    fn view(&mut self) -> LlmView<'_> {
        LlmView {
            table: &mut self.table,
            grants: &self.grants,
        }
    }
}

async fn code(nn: &mut LlmView<'_>, error: Resource<NnError>) -> ErrorCode {
    HostError::code(nn, error).await.unwrap()
}

fn i64_bytes(values: impl IntoIterator<Item = i64>) -> Vec<u8> {
    values.into_iter().flat_map(i64::to_le_bytes).collect()
}

async fn tensor(nn: &mut LlmView<'_>, dims: Vec<u32>, data: Vec<u8>) -> Resource<Tensor> {
    HostTensor::new(nn, dims, TensorType::I64, data)
        .await
        .unwrap()
}

async fn context(nn: &mut LlmView<'_>) -> Resource<ExecutionContext> {
    let graph = GraphHost::load_by_name(nn, MODEL.into())
        .await
        .unwrap()
        .expect("tiny model is allowed");
    HostGraph::init_execution_context(nn, graph)
        .await
        .unwrap()
        .expect("context")
}

/// Runs `tokens` after `past` cached positions; returns the names of the outputs and the logits.
async fn step(
    nn: &mut LlmView<'_>,
    ctx: &Resource<ExecutionContext>,
    tokens: &[i64],
    past: usize,
) -> Result<(Vec<String>, Vec<f32>), (ErrorCode, String)> {
    let (names, mut rows) = step_rows(nn, ctx, &[tokens], past, None).await?;
    Ok((names, rows.remove(0)))
}

/// Runs a step of several rows of one context, each row's tokens after `past` cached positions, `beam`
/// naming the context's row each continues; returns the names of the outputs and each row's logits.
async fn step_rows(
    nn: &mut LlmView<'_>,
    ctx: &Resource<ExecutionContext>,
    rows: &[&[i64]],
    past: usize,
    beam: Option<&[i64]>,
) -> Result<(Vec<String>, Vec<Vec<f32>>), (ErrorCode, String)> {
    let (r, n) = (rows.len() as u32, rows[0].len() as u32);
    let mut inputs = vec![
        (
            "input_ids".to_string(),
            tensor(nn, vec![r, n], i64_bytes(rows.concat())).await,
        ),
        (
            "attention_mask".to_string(),
            tensor(
                nn,
                vec![r, past as u32 + n],
                i64_bytes(vec![1; rows.len() * (past + n as usize)]),
            )
            .await,
        ),
        (
            "position_ids".to_string(),
            tensor(
                nn,
                vec![r, n],
                i64_bytes(
                    rows.iter()
                        .flat_map(|_| (past as i64)..(past as i64 + n as i64)),
                ),
            )
            .await,
        ),
    ];
    if let Some(beam) = beam {
        let beam = tensor(nn, vec![beam.len() as u32], i64_bytes(beam.to_vec())).await;
        inputs.push(("beam_idx".to_string(), beam));
    }
    let ctx = Resource::new_borrow(ctx.rep());
    match HostGraphExecutionContext::compute(nn, ctx, inputs)
        .await
        .unwrap()
    {
        Ok(outputs) => {
            let names = outputs.iter().map(|(name, _)| name.clone()).collect();
            let (_, logits) = outputs
                .into_iter()
                .find(|(name, _)| name == "logits")
                .expect("logits output");
            let logits = nn.table.get(&logits).unwrap();
            assert_eq!(logits.ty, ElementType::F32);
            assert_eq!(
                logits.dims,
                vec![r, 1, 49152],
                "logits for each row's last position only"
            );
            let values: Vec<f32> = logits
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Ok((names, values.chunks(49152).map(<[f32]>::to_vec).collect()))
        }
        Err(error) => {
            let code = HostError::code(nn, Resource::new_borrow(error.rep()))
                .await
                .unwrap();
            let message = HostError::data(nn, error).await.unwrap();
            Err((code, message))
        }
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_model_is_wasi_nn_not_found() {
    let mut fixture = Fixture::new();
    let mut nn = fixture.view();
    let error = GraphHost::load_by_name(&mut nn, "no-such-model".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&mut nn, error).await, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_raw_model_bytes_is_refused() {
    let mut fixture = Fixture::new();
    let mut nn = fixture.view();
    let error = GraphHost::load(
        &mut nn,
        vec![vec![0; 16]],
        GraphEncoding::Onnx,
        ExecutionTarget::Cpu,
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(code(&mut nn, error).await, ErrorCode::Security);
}

#[tokio::test(flavor = "multi_thread")]
async fn named_outputs_exclude_the_kv_cache() {
    for backend in BACKENDS {
        named_outputs_exclude_the_kv_cache_on(backend).await;
    }
}

async fn named_outputs_exclude_the_kv_cache_on(backend: BackendKind) {
    let mut fixture = Fixture::on(backend);
    let mut nn = fixture.view();
    let ctx = context(&mut nn).await;
    let (names, logits) = step(&mut nn, &ctx, &[1, 2, 3], 0).await.unwrap();
    // A prompt's step on a batched path (ONNX Runtime's rows, OpenVINO's PagedAttention) also says how
    // much of it the prefix cache held.
    assert_eq!(
        names,
        ["logits", "cached_tokens"],
        "present.* stays in the host on {}",
        backend.as_str()
    );
    assert!(logits.iter().all(|l| l.is_finite()));
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_cache_is_kept_across_compute_calls() {
    for backend in BACKENDS {
        kv_cache_is_kept_on(backend).await;
    }
}

async fn kv_cache_is_kept_on(backend: BackendKind) {
    let mut fixture = Fixture::on(backend);
    let mut nn = fixture.view();
    let tokens = [1, 9906, 11, 1265, 30];

    let whole = context(&mut nn).await;
    let (_, all_at_once) = step(&mut nn, &whole, &tokens, 0).await.unwrap();

    let incremental = context(&mut nn).await;
    step(&mut nn, &incremental, &tokens[..3], 0).await.unwrap();
    step(&mut nn, &incremental, &tokens[3..4], 3).await.unwrap();
    let (_, stepwise) = step(&mut nn, &incremental, &tokens[4..], 4).await.unwrap();
    assert!(
        max_difference(&all_at_once, &stepwise) < 1e-3,
        "{backend:?}: {}",
        max_difference(&all_at_once, &stepwise)
    );

    // Without the cached prefix the same last token gives other logits: the state is what matters.
    let fresh = context(&mut nn).await;
    let (_, alone) = step(&mut nn, &fresh, &tokens[4..], 0).await.unwrap();
    assert!(max_difference(&all_at_once, &alone) > 1e-2);
}

/// The tiny model's `genai_config.json` declares shared cache buffers, so ONNX Runtime keeps its caches
/// in place and batches its contexts: a context can start a sequence over, a step must continue where
/// its cache ends, and a long prompt (run in chunks) gives the logits the same tokens give step by step.
#[tokio::test(flavor = "multi_thread")]
async fn in_place_caches_restart_and_refuse_a_step_that_does_not_continue() {
    let mut fixture = Fixture::on(BackendKind::Onnxruntime);
    let mut nn = fixture.view();
    let tokens = [1, 9906, 11, 1265, 30];
    let first = context(&mut nn).await;
    let (_, expected) = step(&mut nn, &first, &tokens[..2], 0).await.unwrap();

    let second = context(&mut nn).await;
    step(&mut nn, &second, &tokens, 0).await.unwrap();
    let (code, message) = step(&mut nn, &second, &tokens[..1], 9).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("holds 5"), "{message}");
    // Position 0 starts over: the earlier sequence leaves no trace.
    let (_, restarted) = step(&mut nn, &second, &tokens[..2], 0).await.unwrap();
    assert!(max_difference(&expected, &restarted) < 1e-5);

    // A continuation that outgrows the first buffers (256 positions) keeps its prefix.
    let long: Vec<i64> = (0..300).map(|i| 100 + i).collect();
    let (_, at_once) = step(&mut nn, &first, &long, 0).await.unwrap();
    step(&mut nn, &second, &long[..250], 0).await.unwrap();
    step(&mut nn, &second, &long[250..299], 250).await.unwrap();
    let (_, stepwise) = step(&mut nn, &second, &long[299..], 299).await.unwrap();
    assert!(max_difference(&at_once, &stepwise) < 1e-3);
}

/// Greedy decoding: the prompt, then `steps` tokens each chosen by the previous logits; every step's logits.
async fn greedy(
    nn: &mut LlmView<'_>,
    ctx: &Resource<ExecutionContext>,
    prompt: &[i64],
    steps: usize,
) -> Vec<Vec<f32>> {
    let mut logits = vec![step(nn, ctx, prompt, 0).await.unwrap().1];
    for past in prompt.len()..prompt.len() + steps {
        let last = logits.last().expect("prompt logits");
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .expect("a vocabulary") as i64;
        logits.push(step(nn, ctx, &[next], past).await.unwrap().1);
    }
    logits
}

/// Three sequences of different lengths decoding at the same time share batched passes (a row each; two
/// would run a pass each in exact mode) and get, step by step, the logits each gets alone.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_contexts_compute_what_each_computes_alone() {
    let mut first = Fixture::on(BackendKind::Onnxruntime);
    let (mut second, mut third) = (first.beside(), first.beside());
    let (mut nn_a, mut nn_b, mut nn_c) = (first.view(), second.view(), third.view());
    let (a, b, c) = (
        context(&mut nn_a).await,
        context(&mut nn_b).await,
        context(&mut nn_c).await,
    );
    let prompts: [&[i64]; 3] = [
        &[1, 9906, 11, 1265, 30, 2683, 253, 5356, 30],
        &[1, 4093, 198],
        &[1, 504, 3575, 282, 4649, 314],
    ];
    let mut alone = Vec::new();
    for prompt in prompts {
        alone.push(greedy(&mut nn_a, &a, prompt, 6).await);
    }
    for _ in 0..3 {
        let together = tokio::join!(
            greedy(&mut nn_a, &a, prompts[0], 6),
            greedy(&mut nn_b, &b, prompts[1], 6),
            greedy(&mut nn_c, &c, prompts[2], 6)
        );
        for (expected, actual) in alone.iter().zip([together.0, together.1, together.2]) {
            for (e, a) in expected.iter().zip(&actual) {
                assert!(max_difference(e, a) < 1e-3, "{}", max_difference(e, a));
            }
        }
    }
}

/// The tiny model's directory holds the stateful IR `tools/export_model.py` writes, so OpenVINO serves it
/// as PagedAttention with all its contexts batched into shared passes: eight sequences of different lengths,
/// prefilling and decoding at once, get step by step the logits each gets alone.
#[tokio::test(flavor = "multi_thread")]
async fn openvino_batches_eight_concurrent_contexts_as_each_computes_alone() {
    let base = Fixture::on(BackendKind::Openvino);
    let prompts: Vec<Vec<i64>> = (0..8)
        .map(|i| {
            (0..3 + 7 * i)
                .map(|t| 1 + (t * 37 + i * 101) % 4000)
                .collect()
        })
        .collect();
    let mut alone = Vec::new();
    {
        let mut fixture = base.beside();
        let mut nn = fixture.view();
        let ctx = context(&mut nn).await;
        for prompt in &prompts {
            alone.push(greedy(&mut nn, &ctx, prompt, 8).await);
        }
    }
    for _ in 0..2 {
        let mut runs = tokio::task::JoinSet::new();
        for (i, prompt) in prompts.iter().cloned().enumerate() {
            let mut fixture = base.beside();
            runs.spawn(async move {
                let mut nn = fixture.view();
                let ctx = context(&mut nn).await;
                (i, greedy(&mut nn, &ctx, &prompt, 8).await)
            });
        }
        while let Some(run) = runs.join_next().await {
            let (i, together) = run.unwrap();
            assert_eq!(together.len(), alone[i].len());
            for (e, a) in alone[i].iter().zip(&together) {
                assert!(
                    max_difference(e, a) < 1e-3,
                    "sequence {i}: {}",
                    max_difference(e, a)
                );
            }
        }
    }
}

/// A context of a batching model carries several sequences as the rows of its steps (a request's
/// choices): after a prompt of 40 tokens (a full block of 32 and a partial one on PagedAttention), three
/// rows fork from it and then one of them ends; each row gets, step by step, the logits its tokens get
/// alone in a context of their own. A `beam_idx` naming a row the context does not hold is refused and
/// leaves the context as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_context_forks_rows_that_decode_as_sequences_of_their_own() {
    for backend in BACKENDS {
        forks_rows_on(backend).await;
    }
}

async fn forks_rows_on(backend: BackendKind) {
    let mut fixture = Fixture::on(backend);
    let mut nn = fixture.view();
    let prompt: Vec<i64> = (0..40).map(|t| 1 + (t * 53) % 3000).collect();
    let alone = |tokens: &[i64]| [&prompt[..], tokens].concat();
    let ctx = context(&mut nn).await;
    step(&mut nn, &ctx, &prompt, 0).await.unwrap();
    let past = prompt.len();
    let forked = step_rows(&mut nn, &ctx, &[&[7], &[8], &[9]], past, Some(&[0, 0, 0]))
        .await
        .unwrap()
        .1;
    let (code, message) = step_rows(&mut nn, &ctx, &[&[1]], past + 1, Some(&[3]))
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    // Row 1 ends; rows 0 and 2 go on, now as rows 0 and 1.
    let continued = step_rows(&mut nn, &ctx, &[&[10], &[11]], past + 1, Some(&[0, 2]))
        .await
        .unwrap()
        .1;
    let last = step_rows(&mut nn, &ctx, &[&[12], &[13]], past + 2, None)
        .await
        .unwrap()
        .1;
    let expected = [
        (alone(&[7]), &forked[0]),
        (alone(&[8]), &forked[1]),
        (alone(&[9]), &forked[2]),
        (alone(&[7, 10]), &continued[0]),
        (alone(&[9, 11]), &continued[1]),
        (alone(&[7, 10, 12]), &last[0]),
        (alone(&[9, 11, 13]), &last[1]),
    ];
    for (tokens, row) in expected {
        let own = context(&mut nn).await;
        let logits = step(&mut nn, &own, &tokens, 0).await.unwrap().1;
        // Each context holds a turn of the model's 8 per row; the forked one holds two.
        HostGraphExecutionContext::drop(&mut nn, own).await.unwrap();
        let difference = max_difference(&logits, row);
        assert!(
            difference < 1e-3,
            "{backend:?}, {} tokens: {difference}",
            tokens.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_inputs_from_the_guest_are_refused_and_the_context_survives() {
    for backend in BACKENDS {
        cache_inputs_are_refused_on(backend).await;
    }
}

async fn cache_inputs_are_refused_on(backend: BackendKind) {
    let mut fixture = Fixture::on(backend);
    let mut nn = fixture.view();
    let ctx = context(&mut nn).await;
    let bogus = tensor(&mut nn, vec![1], i64_bytes([0])).await;
    let borrowed = Resource::new_borrow(ctx.rep());
    let error = HostGraphExecutionContext::compute(
        &mut nn,
        borrowed,
        vec![("past_key_values.0.key".into(), bogus)],
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(code(&mut nn, error).await, ErrorCode::InvalidArgument);
    step(&mut nn, &ctx, &[1, 2], 0)
        .await
        .expect("the context still computes");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tensors_are_invalid_arguments() {
    let mut fixture = Fixture::new();
    let mut nn = fixture.view();
    let ctx = context(&mut nn).await;
    // Dimensions say 3 elements, the data holds 2.
    let short = tensor(&mut nn, vec![1, 3], i64_bytes([1, 2])).await;
    let borrowed = Resource::new_borrow(ctx.rep());
    let error =
        HostGraphExecutionContext::compute(&mut nn, borrowed, vec![("input_ids".into(), short)])
            .await
            .unwrap()
            .unwrap_err();
    assert_eq!(code(&mut nn, error).await, ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_ids_and_positions_outside_the_model_are_refused_before_inference() {
    for backend in BACKENDS {
        let mut fixture = Fixture::on(backend);
        let mut nn = fixture.view();
        let ctx = context(&mut nn).await;
        for (tokens, past) in [
            (&[1, 1_000_000_000][..], 0),
            (&[1, -3][..], 0),
            (&[1][..], 1 << 20),
        ] {
            let (code, message) = step(&mut nn, &ctx, tokens, past).await.unwrap_err();
            assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
            assert!(
                message.contains("outside 0..") || message.contains("beyond the model's context"),
                "{message}"
            );
        }
        // Nothing ran: the context still computes.
        step(&mut nn, &ctx, &[1, 2], 0).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_interface_templates_encodes_and_streams_utf8_whole() {
    let mut fixture = Fixture::new();
    let mut text = fixture.view();
    assert!(matches!(
        HostTokenizer::open(&mut text, "no-such-model".into())
            .await
            .unwrap(),
        Err(TextError::NotFound(_))
    ));
    let tok = HostTokenizer::open(&mut text, MODEL.into())
        .await
        .unwrap()
        .unwrap();
    let borrow = |r: &Resource<_>| Resource::new_borrow(r.rep());

    let info = HostTokenizer::info(&mut text, borrow(&tok)).await.unwrap();
    assert_eq!(info.vocab_size, 49152);
    assert!(info.eos_token_ids.contains(&2), "<|im_end|> ends a turn");

    let messages = vec![Message {
        role: "user".into(),
        content: "Hello".into(),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }];
    let prompt = HostTokenizer::apply_chat_template(&mut text, borrow(&tok), messages, None, true)
        .await
        .unwrap()
        .unwrap();
    assert!(
        prompt.contains("<|im_start|>user\nHello<|im_end|>\n"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    let syntax = HostTokenizer::tool_call_syntax(&mut text, borrow(&tok)).await;
    assert!(
        syntax.unwrap().is_none(),
        "SmolLM2's template ignores tools"
    );
    let ids = HostTokenizer::encode(&mut text, borrow(&tok), prompt, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids[0], 1, "special tokens in the text are recognised");

    let sentence = "Déjà vu: 42 🦀 naïve";
    let ids = HostTokenizer::encode(&mut text, borrow(&tok), sentence.into(), false)
        .await
        .unwrap()
        .unwrap();
    let detok = HostTokenizer::detokenizer(&mut text, borrow(&tok), true)
        .await
        .unwrap();
    let mut streamed = String::new();
    for id in ids {
        let piece = HostDetokenizer::push(&mut text, Resource::new_borrow(detok.rep()), id)
            .await
            .unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "a split character leaked: {piece:?}"
        );
        streamed.push_str(&piece);
    }
    assert_eq!(streamed, sentence);
}

#[tokio::test(flavor = "multi_thread")]
async fn vocabulary_bytes_reassemble_encoded_text() {
    let mut fixture = Fixture::new();
    let mut text = fixture.view();
    let tok = HostTokenizer::open(&mut text, MODEL.into())
        .await
        .unwrap()
        .unwrap();
    let vocabulary = HostTokenizer::vocabulary(&mut text, Resource::new_borrow(tok.rep()))
        .await
        .unwrap();
    assert_eq!(vocabulary.ends.len(), 49152);
    let token = |id: u32| {
        let start = match id {
            0 => 0,
            _ => vocabulary.ends[id as usize - 1] as usize,
        };
        &vocabulary.bytes[start..vocabulary.ends[id as usize] as usize]
    };
    assert!(token(2).is_empty(), "special tokens have no bytes");
    let sentence = "Déjà vu: {\"answer\": 42} 🦀\n\tnaïve";
    let ids = HostTokenizer::encode(
        &mut text,
        Resource::new_borrow(tok.rep()),
        sentence.into(),
        false,
    )
    .await
    .unwrap()
    .unwrap();
    let joined: Vec<u8> = ids.iter().flat_map(|&id| token(id).to_vec()).collect();
    assert_eq!(String::from_utf8(joined).unwrap(), sentence);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_backends_compute_the_same_logits() {
    let tokens = [1, 9906, 11, 1265, 30];
    let mut logits = Vec::new();
    for backend in BACKENDS {
        let mut fixture = Fixture::on(backend);
        let mut nn = fixture.view();
        let ctx = context(&mut nn).await;
        step(&mut nn, &ctx, &tokens[..4], 0).await.unwrap();
        logits.push(step(&mut nn, &ctx, &tokens[4..], 4).await.unwrap().1);
    }
    let difference = max_difference(&logits[0], &logits[1]);
    assert!(difference < 1e-3, "{difference}");
}

/// Fast mode computes with the engines' fast kernels: logits near the exact ones and, on ONNX Runtime
/// (int8 activations in every `MatMulNBits`), not equal to them, so the mode took effect. (OpenVINO's
/// plugin defaults compute exactly as exact mode where the CPU has no bf16.)
#[tokio::test(flavor = "multi_thread")]
async fn fast_mode_stays_near_exact() {
    let tokens = [1, 9906, 11, 1265, 30];
    for backend in BACKENDS {
        let mut logits = Vec::new();
        for precision in [Precision::Exact, Precision::Fast] {
            let mut fixture = Fixture::with(backend, precision);
            let mut nn = fixture.view();
            let ctx = context(&mut nn).await;
            logits.push(step(&mut nn, &ctx, &tokens, 0).await.unwrap().1);
        }
        let scale = logits[0].iter().fold(0.0f32, |m, l| m.max(l.abs()));
        let difference = max_difference(&logits[0], &logits[1]);
        println!("{backend:?}: fast differs from exact by {difference} (logits up to {scale})");
        assert!(
            difference < 0.05 * scale,
            "{backend:?}: {difference} of {scale}"
        );
        if backend == BackendKind::Onnxruntime {
            assert!(
                difference > 1e-4,
                "int8 activations change the logits: {difference}"
            );
        }
    }
}

fn load_error(engine: &Engine, device: Device) -> String {
    let options = LoadOptions {
        threads: 1,
        device,
        precision: Precision::Exact,
        format: None,
        prefix_cache_bytes: 0,
    };
    match engine.backend.load(&models_dir().join(MODEL), &options) {
        Ok(_) => panic!(
            "{} loaded on {device:?}, which this machine lacks",
            engine.kind.as_str()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gpu_devices_without_a_gpu_fail_with_a_clear_message() {
    let onnxruntime = OnnxRuntime::start().unwrap();
    for device in [Device::Gpu, Device::Tensorrt] {
        let message = load_error(&onnxruntime, device);
        assert!(
            message.contains("ExecutionProvider") && message.contains(device.as_str()),
            "{message}"
        );
    }
    let openvino = OpenVino::start().unwrap();
    let message = load_error(&openvino, Device::Gpu);
    assert!(message.contains("no GPU device"), "{message}");
    assert!(load_error(&openvino, Device::Tensorrt).contains("tensorrt"));
    let refused = "tpu".parse::<Device>().unwrap_err();
    assert!(refused.contains("not supported"), "{refused}");
}

/// Runs `steps` (token chunks) through one context of the graph in `dir`, calling the engine directly;
/// returns the last step's logits.
fn direct_logits(engine: &Engine, dir: &std::path::Path, steps: &[&[i64]]) -> Vec<f32> {
    let options = LoadOptions {
        threads: 1,
        device: Device::Cpu,
        precision: Precision::Exact,
        format: None,
        prefix_cache_bytes: 0,
    };
    let graph = engine.backend.load(dir, &options).unwrap();
    let mut context = graph.init_execution_context().unwrap();
    let mut past = 0;
    let mut logits = Vec::new();
    for tokens in steps {
        let n = tokens.len();
        let tensor = |values: Vec<i64>| Tensor {
            dims: vec![1, values.len() as u32],
            ty: ElementType::I64,
            data: i64_bytes(values),
        };
        let inputs = vec![
            ("input_ids".to_string(), tensor(tokens.to_vec())),
            ("attention_mask".to_string(), tensor(vec![1; past + n])),
            (
                "position_ids".to_string(),
                tensor((past as i64..(past + n) as i64).collect()),
            ),
        ];
        let outputs = context.compute(inputs).unwrap();
        let (_, out) = outputs
            .into_iter()
            .find(|(name, _)| name == "logits")
            .unwrap();
        logits = out
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        past += n;
    }
    logits
}

#[test]
fn a_stateful_openvino_ir_keeps_its_cache_in_the_request_state() {
    // An IR shaped like optimum-intel's (state instead of past/present, a `beam_idx` input), written by
    // host/tests/fixtures/stateful_ir.py (tests/run.sh runs it).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-fixtures/stateful-ir");
    let openvino = OpenVino::start().unwrap();
    let stepwise = direct_logits(&openvino, &dir, &[&[1, 2, 3], &[4]]);
    let whole = direct_logits(&openvino, &dir, &[&[1, 2, 3, 4]]);
    assert!(max_difference(&stepwise, &whole) < 1e-4);
    let alone = direct_logits(&openvino, &dir, &[&[4]]);
    assert!(
        max_difference(&stepwise, &alone) > 1e-2,
        "a fresh context starts from an empty state"
    );
}

/// Runs the encoder on padded rows; the vectors, or the wasi-nn error.
async fn encode_rows(
    nn: &mut LlmView<'_>,
    rows: &[&[i64]],
) -> Result<Vec<Vec<f32>>, (ErrorCode, String)> {
    let width = rows.iter().map(|r| r.len()).max().unwrap();
    let ids = rows
        .iter()
        .flat_map(|r| (0..width).map(|i| r.get(i).copied().unwrap_or(0)));
    let mask = rows
        .iter()
        .flat_map(|r| (0..width).map(|i| i64::from(i < r.len())));
    let dims = vec![rows.len() as u32, width as u32];
    let inputs = vec![
        (
            "input_ids".to_string(),
            tensor(nn, dims.clone(), i64_bytes(ids.collect::<Vec<_>>())).await,
        ),
        (
            "attention_mask".to_string(),
            tensor(nn, dims, i64_bytes(mask.collect::<Vec<_>>())).await,
        ),
    ];
    let graph = GraphHost::load_by_name(nn, ENCODER.into())
        .await
        .unwrap()
        .unwrap();
    let ctx = HostGraph::init_execution_context(nn, graph)
        .await
        .unwrap()
        .unwrap();
    match HostGraphExecutionContext::compute(nn, ctx, inputs)
        .await
        .unwrap()
    {
        Ok(outputs) => {
            let names: Vec<_> = outputs.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names, ["sentence_embedding"], "only the vectors come back");
            let vectors = nn.table.get(&outputs[0].1).unwrap();
            assert_eq!(vectors.dims, vec![rows.len() as u32, 384]);
            Ok(vectors
                .data
                .chunks_exact(4 * 384)
                .map(|row| {
                    row.chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect()
                })
                .collect())
        }
        Err(error) => {
            let code = code(nn, Resource::new_borrow(error.rep())).await;
            Err((code, HostError::data(nn, error).await.unwrap()))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encoder_serves_vectors_on_both_backends() {
    // [CLS] a man is eating food . [SEP], and a shorter row padded beside it.
    let long: &[i64] = &[101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
    let short: &[i64] = &[101, 7592, 102];
    let mut by_backend = Vec::new();
    for backend in BACKENDS {
        let mut fixture = Fixture {
            grants: grants_of(ENCODER, backend, Precision::Exact),
            table: ResourceTable::new(),
        };
        let mut nn = fixture.view();
        let tok = HostTokenizer::open(&mut nn, ENCODER.into())
            .await
            .unwrap()
            .unwrap();
        let info = HostTokenizer::info(&mut nn, Resource::new_borrow(tok.rep()))
            .await
            .unwrap();
        assert!(matches!(info.task, ModelTask::Embedding(384)));
        assert_eq!(
            info.context_length, 256,
            "sentence-transformers' max_seq_length"
        );
        let framed = HostTokenizer::encode(
            &mut nn,
            Resource::new_borrow(tok.rep()),
            "A man is eating food.".into(),
            true,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(framed, long.iter().map(|&t| t as u32).collect::<Vec<_>>());
        let messages = vec![Message {
            role: "user".into(),
            content: "hi".into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }];
        let no_template = HostTokenizer::apply_chat_template(&mut nn, tok, messages, None, true)
            .await
            .unwrap();
        assert!(
            matches!(no_template, Err(TextError::InvalidInput(m)) if m.contains("no chat template"))
        );

        let batch = encode_rows(&mut nn, &[long, short]).await.unwrap();
        let alone = encode_rows(&mut nn, &[short]).await.unwrap();
        assert!(
            max_difference(&batch[1], &alone[0]) < 1e-5,
            "padding changes nothing"
        );
        let norm: f32 = batch[0].iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4, "normalised");
        let too_many = vec![short; 64 * 256 / 3 + 1];
        let refused = encode_rows(&mut nn, &too_many).await.unwrap_err();
        assert_eq!(refused.0, ErrorCode::InvalidArgument, "{}", refused.1);
        by_backend.push(batch);
    }
    for (a, b) in by_backend[0].iter().zip(&by_backend[1]) {
        assert!(max_difference(a, b) < 1e-4);
    }
}
