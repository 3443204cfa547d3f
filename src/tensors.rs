//! Tensors on the host and the one safetensors read and write path of the workspace: model
//! weights, checkpoints and feature chunks are all f32 tensors by name in `.safetensors` files.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor on the host: shape and row-major f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "host tensor of shape {shape:?} given {} values",
            data.len()
        );
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self { shape, data: vec![0.0; n] }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Element values of a stored dtype (little-endian bytes) as f32; `None` for dtypes no
    /// model weight uses (complex, quantised, ...). Integers only ever become unused tensors.
    pub fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
        fn each<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            b.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect()
        }
        Some(match dtype {
            Dtype::F32 => each(bytes, f32::from_le_bytes),
            Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
            Dtype::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
            Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
            Dtype::I16 => each(bytes, |b| i16::from_le_bytes(b) as f32),
            Dtype::I8 => each(bytes, |b: [u8; 1]| b[0] as i8 as f32),
            Dtype::U8 | Dtype::Bool => each(bytes, |b: [u8; 1]| b[0] as f32),
            Dtype::Other => return None,
        })
    }
}

/// Element types of stored tensors (safetensors and PyTorch storages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    Other,
}

impl Dtype {
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
            Dtype::Other => return None,
        })
    }

    fn of(d: safetensors::Dtype) -> Self {
        use safetensors::Dtype as S;
        match d {
            S::F32 => Dtype::F32,
            S::F64 => Dtype::F64,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::I64 => Dtype::I64,
            S::I32 => Dtype::I32,
            S::I16 => Dtype::I16,
            S::I8 => Dtype::I8,
            S::U8 => Dtype::U8,
            S::BOOL => Dtype::Bool,
            _ => Dtype::Other,
        }
    }
}

/// A safetensors file's tensors (converted to f32) and its metadata.
#[derive(Debug)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads every tensor of a `.safetensors` file as f32 (float and integer dtypes are
/// converted; any other dtype is an error naming the tensor).
pub fn read_safetensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a safetensors file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = HostTensor::decode(Dtype::of(view.dtype()), view.data()).ok_or_else(|| {
            Error::invalid(path, format!("tensor {name} has unsupported dtype {:?}", view.dtype()))
        })?;
        tensors.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(TensorFile { tensors, metadata })
}

/// Writes f32 tensors by name (stored in name order) with string metadata, atomically.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            (n, t.shape.as_slice(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                .map_err(|e| Error::invalid(path, format!("tensor {n}: {e}")))?;
            Ok((n.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    let buf = safetensors::tensor::serialize(views, meta)
        .map_err(|e| Error::invalid(path, format!("cannot serialise: {e}")))?;
    crate::fsutil::write_atomic(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = HostTensor::new(vec![2, 3], (0..6).map(|v| v as f32 * 0.5).collect());
        let b = HostTensor::new(vec![1], vec![-1.0]);
        let meta: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        write_safetensors(&path, [("b", &b), ("a", &a)], &meta).unwrap();
        let f = read_safetensors(&path).unwrap();
        assert_eq!(f.tensors["a"], a);
        assert_eq!(f.tensors["b"], b);
        assert_eq!(f.metadata["k"], "v");
        let err = read_safetensors(&dir.path().join("missing.safetensors")).unwrap_err();
        assert!(err.to_string().contains("missing.safetensors"), "{err}");
        std::fs::write(&path, b"not a file").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file") && err.contains("t.safetensors"), "{err}");
    }
}
