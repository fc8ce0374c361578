//! Tensors between wasi-nn's little-endian bytes and ONNX Runtime's values.

use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType};

use crate::backend::{BackendError, ElementType, Tensor};

/// The element type as nnspin's tensors name it, if they can hold it.
pub(super) fn element_type(ty: TensorElementType) -> Option<ElementType> {
    Some(match ty {
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Bfloat16 => ElementType::Bf16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        _ => return None,
    })
}

pub(super) fn to_ort(tensor: Tensor) -> Result<DynValue, BackendError> {
    tensor.check_size()?;
    let dims: Vec<i64> = tensor.dims.iter().map(|&d| d as i64).collect();
    let bad = |e: ort::Error| BackendError::InvalidArgument(e.to_string());
    Ok(match tensor.ty {
        ElementType::I64 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, i64::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        ElementType::I32 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, i32::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        ElementType::F32 => {
            OrtTensor::from_array((dims, le_values(&tensor.data, f32::from_le_bytes)))
                .map_err(bad)?
                .into_dyn()
        }
        ElementType::U8 => OrtTensor::from_array((dims, tensor.data))
            .map_err(bad)?
            .into_dyn(),
        other => {
            return Err(BackendError::Unsupported(format!(
                "input tensor type {other:?}"
            )));
        }
    })
}

fn le_values<const N: usize, T>(bytes: &[u8], convert: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| convert(c.try_into().expect("chunk of N bytes")))
        .collect()
}

pub(super) fn from_ort(value: &DynValue) -> Result<Tensor, BackendError> {
    let unsupported = || BackendError::Unsupported(format!("output type {:?}", value.dtype()));
    let ty = value
        .dtype()
        .tensor_type()
        .and_then(element_type)
        .ok_or_else(unsupported)?;
    macro_rules! convert {
        ($t:ty) => {{
            let (shape, data) = value
                .try_extract_tensor::<$t>()
                .map_err(BackendError::runtime)?;
            let mut bytes = Vec::with_capacity(data.len() * size_of::<$t>());
            for v in data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            (shape.iter().map(|&d| d as u32).collect(), bytes)
        }};
    }
    let (dims, data) = match ty {
        ElementType::F32 => convert!(f32),
        ElementType::I64 => convert!(i64),
        ElementType::I32 => convert!(i32),
        ElementType::U8 => convert!(u8),
        _ => return Err(unsupported()),
    };
    Ok(Tensor { dims, ty, data })
}
