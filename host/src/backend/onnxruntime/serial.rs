//! Contexts that run their own steps, one at a time, for decoders without shared cache buffers (an
//! Optimum export, say): each step returns a fresh cache, which the context feeds back as the next step's
//! `past_key_values.*`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor};

use super::tensors::{from_ort, to_ort};
use crate::backend::decoder::{self, CacheInput};
use crate::backend::{BackendError, BackendExecutionContext, NamedTensors};

pub(super) struct SerialContext {
    /// ONNX Runtime's `Run` is not thread safe on one session: the model's contexts take turns.
    session: Arc<Mutex<Session>>,
    caches: Arc<[CacheInput]>,
    /// The previous step's `present.*` values, in the order of `caches`; `None` before the first step.
    past: Option<Vec<DynValue>>,
}

impl SerialContext {
    pub(super) fn new(session: Arc<Mutex<Session>>, caches: Arc<[CacheInput]>) -> Self {
        Self {
            session,
            caches,
            past: None,
        }
    }

    /// Zero-length caches for the first step of a sequence of `rows` rows.
    fn empty_caches(&self, rows: i64) -> Result<Vec<DynValue>, BackendError> {
        self.caches
            .iter()
            .map(|cache| {
                OrtTensor::<f32>::from_array((cache.empty_dims(rows), Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(BackendError::runtime)
            })
            .collect()
    }
}

impl BackendExecutionContext for SerialContext {
    fn compute(&mut self, inputs: NamedTensors) -> Result<NamedTensors, BackendError> {
        decoder::check_guest_inputs(&inputs)?;
        if self.past.is_none() {
            self.past = Some(self.empty_caches(decoder::rows(&inputs))?);
        }
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len() + self.caches.len());
        for (name, tensor) in inputs {
            feed.push((Cow::Owned(name), to_ort(tensor)?.into()));
        }
        let past = self.past.as_ref().expect("caches initialised above");
        // Per token: the cache names are borrowed, not copied, and found by name without allocating.
        for (cache, value) in self.caches.iter().zip(past) {
            feed.push((Cow::Borrowed(cache.name.as_str()), value.into()));
        }

        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut outputs = session.run(feed).map_err(BackendError::runtime)?;
        let mut present = Vec::with_capacity(self.caches.len());
        for cache in self.caches.iter() {
            let value = outputs.remove(&cache.present).ok_or_else(|| {
                BackendError::Runtime(format!("the model returned no {}", cache.present))
            })?;
            present.push(value);
        }
        let rest: Vec<(String, DynValue)> = outputs
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        drop(session);
        self.past = Some(present);
        rest.into_iter()
            .map(|(name, value)| Ok((name, from_ort(&value)?)))
            .collect()
    }
}
