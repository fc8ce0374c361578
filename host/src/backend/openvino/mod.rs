//! OpenVINO backend, through the `openvino` crate with the runtime library loaded at start (the
//! `openvino` wheel ships `libopenvino_c.so.<version>`, the CPU and GPU plugins and the ONNX frontend).
//!
//! It reads the same model directory as ONNX Runtime (`model.onnx`, contrib operators included), or an
//! OpenVINO IR (`openvino_model.xml` + `.bin`). Two KV-cache styles of the decoder contract
//! ([`decoder`]) are served:
//! - explicit `past_key_values.*` inputs and `present.*` outputs (the Optimum ONNX layout): the context
//!   hands each `present.*` tensor back as the next step's input, by reference (OpenVINO allocates fresh
//!   outputs for every inference of a dynamic-shaped model, so nothing is copied or overwritten);
//! - a stateful IR (optimum-intel's export, cache held in the infer request's internal state, with a
//!   `beam_idx` input): on CPU it is transformed to PagedAttention and all its contexts are batched into
//!   shared passes ([`paged_batcher`], what OpenVINO GenAI's continuous batching runs); where that
//!   transformation finds no attention to page (or on GPU), each context owns its infer request, so its
//!   state is its sequence's cache.
//!
//! `tools/export_model.py` writes both files: `model.onnx` for ONNX Runtime, `openvino_model.xml` (the
//! stateful form) for this backend, which prefers the IR where a directory holds one.
//!
//! In exact mode CPU inference runs with fp32 activations and no dynamic quantization, so answers match
//! ONNX Runtime's and the fp32 model's; fast mode leaves the CPU plugin its defaults (bf16 inference
//! where the CPU has it, dynamic int8 quantization of weight-compressed matmuls), except that the paged
//! path keeps its KV cache in the precision it computes in rather than u8 (see `load_paged`).
//!
//! OpenVINO's model cache (`CACHE_DIR`) is not used: with OpenVINO 2026.4 a model imported from its
//! cached blob returns NaN logits for these ONNX exports, so each start compiles (about 2.4 s for the
//! default model).

mod paged;
mod paged_batcher;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use openvino::{
    CompiledModel, Core, DeviceType, ElementType as OvType, InferRequest, PropertyKey,
    RwPropertyKey, Shape,
};

use self::paged::PagedModel;
use self::paged_batcher::PagedGraph;
use super::decoder::{self, BEAM_IDX, CacheInput};
use super::library::{WheelLibrary, version_of};
use super::{
    Backend, BackendError, BackendExecutionContext, BackendGraph, BackendKind, Device, ElementType,
    Engine, LoadOptions, LoadResult, NamedTensors, Precision, Tensor, WeightFormat,
};

const LIBRARY: WheelLibrary = WheelLibrary {
    env: "OPENVINO_LIB_PATH",
    package_dir: "openvino/libs",
    file_prefix: "libopenvino_c.so",
    hint: "pip install openvino ships it in openvino/libs/",
};

pub struct OpenVino {
    core: Mutex<Core>,
    /// Each device's values of the properties exact mode changes, read before any load changed them.
    defaults: Mutex<Vec<(String, Properties)>>,
}

type Properties = Vec<(RwPropertyKey, String)>;

/// The properties exact mode sets and fast mode leaves at the plugin's defaults.
const DYNAMIC_QUANTIZATION: &str = "DYNAMIC_QUANTIZATION_GROUP_SIZE";
const INFERENCE_PRECISION: &str = "INFERENCE_PRECISION_HINT";
const KV_CACHE_PRECISION: &str = "KV_CACHE_PRECISION";
const PERFORMANCE_HINT: &str = "PERFORMANCE_HINT";
const INFERENCE_NUM_THREADS: &str = "INFERENCE_NUM_THREADS";

fn precision_key(name: &'static str) -> RwPropertyKey {
    RwPropertyKey::Other(name.into())
}

impl OpenVino {
    /// The plugin's own values of the precision properties on `device`.
    fn plugin_defaults(
        &self,
        core: &mut Core,
        device: &DeviceType,
        described: &str,
    ) -> Result<Properties, BackendError> {
        let mut defaults = self.defaults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, values)) = defaults.iter().find(|(d, _)| d == device.as_ref()) {
            return Ok(values.clone());
        }
        let mut values = Vec::new();
        for name in [DYNAMIC_QUANTIZATION, INFERENCE_PRECISION] {
            let value = core
                .get_property(device, &PropertyKey::Other(name.into()))
                .map_err(load_error(described))?;
            values.push((precision_key(name), value));
        }
        defaults.push((device.as_ref().to_string(), values.clone()));
        Ok(values)
    }
}

impl OpenVino {
    /// Loads the OpenVINO C library (once per process) and creates a core.
    pub fn start() -> wasmtime::Result<Engine> {
        static LOADED: OnceLock<Result<String, String>> = OnceLock::new();
        let version = LOADED
            .get_or_init(|| {
                let lib = LIBRARY.locate().map_err(|e| e.to_string())?;
                tracing::info!(library = %lib.display(), "loading OpenVINO");
                openvino_sys::library::load_from(&lib)
                    .map_err(|e| format!("cannot load {}: {e}", lib.display()))?;
                // `2026.4.1-22982-…` is more telling than the library's `.so.2641`.
                let build = openvino::version().build_number;
                Ok(build
                    .split('-')
                    .next()
                    .map(str::to_string)
                    .or_else(|| version_of(&lib))
                    .unwrap_or(build))
            })
            .clone()
            .map_err(wasmtime::Error::msg)?;
        let core = Core::new().map_err(|e| wasmtime::format_err!("cannot start OpenVINO: {e}"))?;
        Ok(Engine {
            kind: BackendKind::Openvino,
            version,
            backend: Box::new(Self {
                core: Mutex::new(core),
                defaults: Mutex::default(),
            }),
        })
    }
}

/// OpenVINO's messages span lines (nested exceptions); a load error is reported as one line.
fn load_error(context: &str) -> impl Fn(openvino::InferenceError) -> BackendError + '_ {
    move |e| {
        let message = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        BackendError::Load(format!("{context}: {message}"))
    }
}

impl Backend for OpenVino {
    fn load(&self, model_dir: &Path, options: &LoadOptions) -> LoadResult {
        let device = match options.device {
            Device::Cpu => DeviceType::CPU,
            Device::Gpu => DeviceType::GPU,
            Device::Tensorrt => {
                return Err(BackendError::Load(
                    "device tensorrt is an ONNX Runtime execution provider; OpenVINO offers cpu and gpu"
                        .into(),
                ));
            }
        };
        let ir = model_dir.join(WeightFormat::OpenvinoIr.file_name());
        let format = options.format.unwrap_or(if ir.is_file() {
            WeightFormat::OpenvinoIr
        } else {
            WeightFormat::Onnx
        });
        let model_path = model_dir.join(format.file_name());
        let weights_path = match format {
            WeightFormat::OpenvinoIr => model_path.with_extension("bin"),
            WeightFormat::Onnx => Default::default(),
        };
        if !model_path.is_file() {
            return Err(BackendError::Load(format!(
                "{} does not exist",
                model_path.display()
            )));
        }
        let described = model_path.display().to_string();
        if format == WeightFormat::OpenvinoIr && device == DeviceType::CPU {
            let defaults = {
                let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
                self.plugin_defaults(&mut core, &device, &described)?
            };
            match load_paged(&model_path, options, &defaults) {
                Ok(graph) => return Ok(Arc::new(graph)),
                Err(e) => tracing::info!(
                    model = %described,
                    "OpenVINO runs each execution context on its own infer request: {e}"
                ),
            }
        }
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let available = core.available_devices().map_err(load_error(&described))?;
        if !available.contains(&device) {
            let names: Vec<&str> = available.iter().map(|d| d.as_ref()).collect();
            return Err(BackendError::Load(format!(
                "device {}: OpenVINO found no {} device (available: {})",
                options.device.as_str(),
                device.as_ref(),
                names.join(", ")
            )));
        }
        // Properties are the core's, per device, and outlive this load: each mode sets all of its own.
        let plugin_defaults = self.plugin_defaults(&mut core, &device, &described)?;
        let mut properties: Properties = match options.precision {
            Precision::Exact => vec![
                (precision_key(DYNAMIC_QUANTIZATION), "0".to_string()),
                (precision_key(INFERENCE_PRECISION), "f32".to_string()),
            ],
            Precision::Fast => plugin_defaults,
        };
        properties.push((RwPropertyKey::HintPerformanceMode, "LATENCY".to_string()));
        if options.threads > 0 && device == DeviceType::CPU {
            properties.push((
                RwPropertyKey::InferenceNumThreads,
                options.threads.to_string(),
            ));
        }
        for (key, value) in &properties {
            core.set_property(&device, key, value)
                .map_err(load_error(&described))?;
        }
        let model = core
            .read_model_from_file(&described, &weights_path.to_string_lossy())
            .map_err(load_error(&described))?;
        let compiled = core
            .compile_model(&model, device)
            .map_err(load_error(&described))?;
        drop(core);
        Ok(Arc::new(OpenVinoGraph::new(compiled, &model)?))
    }
}

/// The model as PagedAttention, its contexts batched ([`paged_batcher`]): the properties of its precision
/// mode go to its compilation alone (the library compiles on a core of its own). `plugin_defaults` are the
/// CPU plugin's own precision properties.
fn load_paged(
    xml: &Path,
    options: &LoadOptions,
    plugin_defaults: &Properties,
) -> Result<PagedGraph, BackendError> {
    let mut properties = vec![(PERFORMANCE_HINT, "LATENCY".to_string())];
    match options.precision {
        Precision::Exact => properties.extend([
            (INFERENCE_PRECISION, "f32".to_string()),
            (DYNAMIC_QUANTIZATION, "0".to_string()),
            // A stateful model's caches would be u8 by default; exact mode keeps them as computed.
            (KV_CACHE_PRECISION, "f32".to_string()),
        ]),
        // The caches in the precision the plugin computes in (bf16 on AMX/AVX512-BF16 CPUs, f32
        // elsewhere), not its default u8: over bench/quality.py's text, u8 keys and values agree with
        // exact on 97.32% of the top tokens against 97.59% in bf16 (mean KLD 0.00140 against 0.00132).
        Precision::Fast => {
            if let Some((_, computed)) = plugin_defaults
                .iter()
                .find(|(key, _)| key.as_ref() == INFERENCE_PRECISION)
            {
                properties.push((KV_CACHE_PRECISION, computed.clone()));
            }
        }
    }
    if options.threads > 0 {
        properties.push((INFERENCE_NUM_THREADS, options.threads.to_string()));
    }
    PagedGraph::start(
        PagedModel::load(xml, "CPU", &properties)?,
        options.prefix_cache_bytes,
    )
}

struct OpenVinoGraph {
    /// Creating infer requests needs `&mut`; inference itself runs on each context's own request.
    compiled: Mutex<CompiledModel>,
    caches: Arc<[CacheInput]>,
    /// The outputs a guest reads: every one but the caches (a decoder's `logits`, an encoder's
    /// `sentence_embedding`).
    results: Arc<[String]>,
    /// A stateful model's `beam_idx` input: which cache row each batch row continues.
    beam_idx: bool,
}

impl OpenVinoGraph {
    /// `model` is the model as read: its outputs carry the names the file gives them, while the compiled
    /// model's may answer with an internal one (`Add_672/out0` for `logits`).
    fn new(compiled: CompiledModel, model: &openvino::Model) -> Result<Self, BackendError> {
        let fail = load_error("reading the compiled model");
        let mut inputs = Vec::new();
        for i in 0..compiled.get_input_size().map_err(&fail)? {
            let port = compiled.get_input_by_index(i).map_err(&fail)?;
            inputs.push((port.get_name().map_err(&fail)?, port));
        }
        let mut outputs = Vec::new();
        for i in 0..model.get_outputs_len().map_err(&fail)? {
            outputs.push(
                model
                    .get_output_by_index(i)
                    .and_then(|port| port.get_name())
                    .map_err(&fail)?,
            );
        }
        let mut described = Vec::with_capacity(inputs.len());
        for (name, port) in &inputs {
            let ty = element_type(port.get_element_type().map_err(&fail)?);
            let dims = port
                .get_partial_shape()
                .map_err(&fail)?
                .get_dimensions()
                .iter()
                .map(|d| if d.is_dynamic() { -1 } else { d.get_min() })
                .collect();
            described.push((name.as_str(), ty, dims));
        }
        let caches = decoder::cache_inputs(described, |present| {
            outputs.iter().any(|output| output == present)
        })?;
        let beam_idx = inputs.iter().any(|(name, _)| name == BEAM_IDX);
        let results = outputs
            .into_iter()
            .filter(|output| !caches.iter().any(|cache| &cache.present == output))
            .collect();
        Ok(Self {
            compiled: Mutex::new(compiled),
            caches: caches.into(),
            results,
            beam_idx,
        })
    }
}

impl BackendGraph for OpenVinoGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        let request = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .create_infer_request()
            .map_err(BackendError::runtime)?;
        Ok(Box::new(OpenVinoContext {
            request,
            caches: self.caches.clone(),
            results: self.results.clone(),
            beam_idx: self.beam_idx,
            started: false,
        }))
    }
}

struct OpenVinoContext {
    request: InferRequest,
    caches: Arc<[CacheInput]>,
    results: Arc<[String]>,
    beam_idx: bool,
    /// Whether the caches hold this sequence's past (set after the first step).
    started: bool,
}

impl BackendExecutionContext for OpenVinoContext {
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
        decoder::check_guest_inputs(&inputs)?;
        let rows = decoder::rows(&inputs);
        for (name, tensor) in inputs {
            let tensor = to_openvino(tensor)?;
            self.request
                .set_tensor(&name, &tensor)
                .map_err(|e| BackendError::InvalidArgument(format!("{name}: {e}")))?;
        }
        if !self.started {
            for cache in self.caches.iter() {
                let shape = Shape::new(&cache.empty_dims(rows)).map_err(BackendError::runtime)?;
                let empty =
                    openvino::Tensor::new(OvType::F32, &shape).map_err(BackendError::runtime)?;
                self.request
                    .set_tensor(&cache.name, &empty)
                    .map_err(BackendError::runtime)?;
            }
        }
        if self.beam_idx {
            let shape = Shape::new(&[rows]).map_err(BackendError::runtime)?;
            let mut beams =
                openvino::Tensor::new(OvType::I32, &shape).map_err(BackendError::runtime)?;
            let data = beams.get_data_mut::<i32>().map_err(BackendError::runtime)?;
            for (i, row) in data.iter_mut().enumerate() {
                *row = i as i32;
            }
            self.request
                .set_tensor(BEAM_IDX, &beams)
                .map_err(BackendError::runtime)?;
        }
        self.request.infer().map_err(BackendError::runtime)?;
        self.started = true;
        for cache in self.caches.iter() {
            let present = self
                .request
                .get_tensor(&cache.present)
                .map_err(BackendError::runtime)?;
            self.request
                .set_tensor(&cache.name, &present)
                .map_err(BackendError::runtime)?;
        }
        self.results
            .iter()
            .map(|name| {
                let tensor = self
                    .request
                    .get_tensor(name)
                    .map_err(BackendError::runtime)?;
                Ok((name.clone(), from_openvino(&tensor)?))
            })
            .collect()
    }
}

/// The element type as nnspin's tensors name it, if they can hold it.
fn element_type(ty: OvType) -> Option<ElementType> {
    Some(match ty {
        OvType::F16 => ElementType::F16,
        OvType::Bf16 => ElementType::Bf16,
        OvType::F32 => ElementType::F32,
        OvType::F64 => ElementType::F64,
        OvType::U8 => ElementType::U8,
        OvType::I32 => ElementType::I32,
        OvType::I64 => ElementType::I64,
        _ => return None,
    })
}

fn to_openvino(tensor: Tensor) -> Result<openvino::Tensor, BackendError> {
    tensor.check_size()?;
    let ty = match tensor.ty {
        ElementType::I64 => OvType::I64,
        ElementType::I32 => OvType::I32,
        ElementType::F32 => OvType::F32,
        ElementType::U8 => OvType::U8,
        other => {
            return Err(BackendError::Unsupported(format!(
                "input tensor type {other:?}"
            )));
        }
    };
    let dims: Vec<i64> = tensor.dims.iter().map(|&d| d as i64).collect();
    let bad = |e: openvino::InferenceError| BackendError::InvalidArgument(e.to_string());
    let mut out = openvino::Tensor::new(ty, &Shape::new(&dims).map_err(bad)?).map_err(bad)?;
    // wasi-nn bytes are little-endian, as OpenVINO's are on every platform it runs on.
    out.get_raw_data_mut()
        .map_err(bad)?
        .copy_from_slice(&tensor.data);
    Ok(out)
}

fn from_openvino(tensor: &openvino::Tensor) -> Result<Tensor, BackendError> {
    let ov_type = tensor.get_element_type().map_err(BackendError::runtime)?;
    let ty = element_type(ov_type)
        .ok_or_else(|| BackendError::Unsupported(format!("output tensor type {ov_type:?}")))?;
    let dims = tensor
        .get_shape()
        .map_err(BackendError::runtime)?
        .get_dimensions()
        .iter()
        .map(|&d| d as u32)
        .collect();
    Ok(Tensor {
        dims,
        ty,
        data: tensor
            .get_raw_data()
            .map_err(BackendError::runtime)?
            .to_vec(),
    })
}
