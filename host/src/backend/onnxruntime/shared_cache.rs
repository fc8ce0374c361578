//! The KV caches of all sequences of one model, kept in place in one set of buffers: one buffer per cache
//! input, `[rows, kv_heads, capacity, head_dim]`, one row per sequence. A run over a range of rows binds a
//! view of those rows both as the `past_key_values.*` input and as the `present.*` output, so
//! GroupQueryAttention (in its shared-buffer mode, `past_present_share_buffer` in the model's
//! `genai_config.json`) writes only the new positions, and sequences of different lengths decode in one
//! batched pass, each row's length taken from `attention_mask`.

use std::collections::HashMap;
use std::ptr::{self, NonNull};

use ort::AsPointer;
use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::sys::ONNXTensorElementDataType;
use ort::value::{DynValue, Tensor as OrtTensor};

use crate::backend::BackendError;
use crate::backend::decoder::CacheInput;

/// Positions the buffers start with; they double when a sequence outgrows them.
const FIRST_CAPACITY: usize = 256;

/// Row ranges whose bindings are kept; beyond this many (rare: many sequences joining and leaving at
/// once) the kept bindings are dropped and rebuilt on use.
const KEPT_BINDINGS: usize = 64;

pub(super) struct SharedCache {
    /// Bindings of the row ranges `(first, count)` runs used, each holding views into `buffers`. Declared
    /// first so they are dropped before the buffers they point into.
    bindings: HashMap<(usize, usize), IoBinding>,
    buffers: Vec<OrtTensor<f32>>,
    rows: usize,
    capacity: usize,
}

impl SharedCache {
    pub(super) fn new() -> Self {
        Self {
            bindings: HashMap::new(),
            buffers: Vec::new(),
            rows: 0,
            capacity: 0,
        }
    }

    /// Makes room for `rows` rows of `positions` positions each, keeping the first `lengths[row]` positions
    /// of every row (the buffers grow by doubling, so this copies rarely). Returns whether they grew.
    pub(super) fn reserve(
        &mut self,
        caches: &[CacheInput],
        rows: usize,
        positions: usize,
        lengths: &[usize],
    ) -> Result<bool, BackendError> {
        if rows <= self.rows && positions <= self.capacity {
            return Ok(false);
        }
        let new_rows = rows.max(self.rows).next_power_of_two();
        let new_capacity = if positions > self.capacity {
            positions.max(FIRST_CAPACITY).max(self.capacity * 2)
        } else {
            self.capacity
        };
        self.bindings.clear();
        let mut buffers = Vec::with_capacity(caches.len());
        for (index, cache) in caches.iter().enumerate() {
            let (heads, head_dim) = cache
                .heads_and_dim()
                .expect("the batcher serves only models that fix them");
            // Zeros, not whatever memory held (masked positions must not be NaN), and zeroed by the
            // system's allocator: fresh pages come zeroed, so a buffer of hundreds of MiB (a pool of kept
            // rows) costs no pass of its own over them.
            let zeros = vec![0.0_f32; new_rows * heads * new_capacity * head_dim];
            let mut buffer =
                OrtTensor::from_array(([new_rows, heads, new_capacity, head_dim], zeros))
                    .map_err(BackendError::runtime)?;
            let (_, data) = buffer.extract_tensor_mut();
            if let Some(old) = self.buffers.get(index) {
                let (_, old) = old.extract_tensor();
                for (row, &length) in lengths.iter().enumerate().take(self.rows) {
                    for head in 0..heads {
                        let from = (row * heads + head) * self.capacity * head_dim;
                        let to = (row * heads + head) * new_capacity * head_dim;
                        data[to..to + length * head_dim]
                            .copy_from_slice(&old[from..from + length * head_dim]);
                    }
                }
            }
            buffers.push(buffer);
        }
        self.buffers = buffers;
        self.rows = new_rows;
        self.capacity = new_capacity;
        Ok(true)
    }

    /// Bytes of all buffers.
    pub(super) fn bytes(&self) -> u64 {
        self.buffers
            .iter()
            .map(|b| (b.shape().iter().product::<i64>() as u64) * size_of::<f32>() as u64)
            .sum()
    }

    /// Bytes one row takes across the buffers (0 before the first reservation).
    pub(super) fn row_bytes(&self) -> u64 {
        self.bytes().checked_div(self.rows as u64).unwrap_or(0)
    }

    /// Copies positions `0..positions` of row `from` into row `to` (both reserved), in every buffer: a
    /// new sequence starting from another's cached prefix.
    pub(super) fn copy_prefix(&mut self, from: usize, to: usize, positions: usize) {
        assert!(from.max(to) < self.rows && positions <= self.capacity);
        for buffer in &mut self.buffers {
            let (heads, head_dim) = (buffer.shape()[1] as usize, buffer.shape()[3] as usize);
            let (_, data) = buffer.extract_tensor_mut();
            for head in 0..heads {
                let source = (from * heads + head) * self.capacity * head_dim;
                let target = (to * heads + head) * self.capacity * head_dim;
                data.copy_within(source..source + positions * head_dim, target);
            }
        }
    }

    /// The binding for a run over rows `first..first + count`: views of those rows bound as every cache
    /// input and its output, the model's other outputs (logits) left to ONNX Runtime to allocate. Built
    /// once per range and kept, so a step only rebinds its three small inputs.
    pub(super) fn binding(
        &mut self,
        session: &Session,
        caches: &[CacheInput],
        first: usize,
        count: usize,
    ) -> Result<&mut IoBinding, BackendError> {
        assert!(first + count <= self.rows, "rows reserved before binding");
        if !self.bindings.contains_key(&(first, count)) {
            if self.bindings.len() >= KEPT_BINDINGS {
                self.bindings.clear();
            }
            let mut binding = session.create_binding().map_err(BackendError::runtime)?;
            for (cache, buffer) in caches.iter().zip(&mut self.buffers) {
                let mut view = rows_view(buffer, session.allocator(), first, count)?;
                binding
                    .bind_input(cache.name.as_str(), &view)
                    .map_err(BackendError::runtime)?;
                binding
                    .bind_output(cache.present.as_str(), &mut view)
                    .map_err(BackendError::runtime)?;
            }
            for output in session.outputs() {
                if !caches.iter().any(|cache| cache.present == output.name()) {
                    binding
                        .bind_output_to_device(output.name(), session.allocator().memory_info())
                        .map_err(BackendError::runtime)?;
                }
            }
            self.bindings.insert((first, count), binding);
        }
        Ok(self
            .bindings
            .get_mut(&(first, count))
            .expect("inserted above"))
    }
}

/// A tensor over rows `first..first + count` of `buffer`, sharing its memory.
///
/// `ort`'s borrowed-tensor views would not do: an `IoBinding` copies a borrowed input (so the cache would
/// no longer be read and written in one place), so the view is made with ONNX Runtime's C API and held
/// like an owned value. It stays valid while `buffer` lives, which [`SharedCache`] guarantees by dropping
/// its bindings first.
fn rows_view(
    buffer: &mut OrtTensor<f32>,
    allocator: &Allocator,
    first: usize,
    count: usize,
) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = buffer.shape().iter().copied().collect();
    let row = shape[1..].iter().product::<i64>() as usize;
    let (_, data) = buffer.extract_tensor_mut();
    let rows = &mut data[first * row..(first + count) * row];
    let dims = [count as i64, shape[1], shape[2], shape[3]];
    let mut value = ptr::null_mut();
    // SAFETY: `rows` is `count * row` initialised floats owned by `buffer`, which outlives the view (see
    // above); the dimensions describe exactly that many elements.
    unsafe {
        ort::Error::result_from_status((ort::api().CreateTensorWithDataAsOrtValue)(
            allocator.memory_info().ptr(),
            rows.as_mut_ptr().cast(),
            size_of_val(rows),
            dims.as_ptr(),
            dims.len(),
            ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
            &mut value,
        ))
        .map_err(BackendError::runtime)?;
        let value = NonNull::new(value)
            .ok_or_else(|| BackendError::Runtime("ONNX Runtime returned no tensor".into()))?;
        Ok(DynValue::from_ptr(value, Some(allocator)))
    }
}
