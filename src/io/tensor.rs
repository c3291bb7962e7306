//! Host tensors: f32 weights either borrowed in place from a memory-mapped
//! safetensors file or owned (converted from bf16/f16, randomly initialised,
//! or copied because the mapped bytes were not 4-byte aligned).

use memmap2::Mmap;
use std::sync::Arc;

/// A host tensor's data does not fit its shape (the backends report it as
/// `BackendError::Shape`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: shape {got:?} does not fit, expected {expected:?}")]
pub struct ShapeError {
    /// Which tensor.
    pub what: &'static str,
    /// Its shape (the data length).
    pub got: Vec<usize>,
    /// The shape expected.
    pub expected: Vec<usize>,
}

/// Where a host tensor's f32 values live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Owned values.
    Owned(Arc<Vec<f32>>),
    /// `len` little-endian f32 values at byte `offset` of a mapped file,
    /// used in place. Only built when `offset` is 4-byte aligned in memory
    /// (see [`HostTensor::mapped`]).
    Mapped {
        /// The mapped file.
        map: Arc<Mmap>,
        /// Byte offset of the first value in the mapping (4-byte aligned in memory).
        offset: usize,
        /// Number of f32 values.
        len: usize,
    },
}

/// A named, shaped, row-major f32 tensor in host memory.
#[derive(Debug, Clone)]
pub struct HostTensor {
    name: String,
    shape: Vec<usize>,
    storage: Storage,
}

impl HostTensor {
    /// An owned tensor, checked: `data.len()` must equal the product of `shape`.
    ///
    /// ```
    /// use capmoe::io::HostTensor;
    /// assert!(HostTensor::new("w", vec![2, 3], vec![0.0; 6]).is_ok());
    /// assert!(HostTensor::new("w", vec![2, 3], vec![0.0; 5]).is_err());
    /// ```
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<Self, ShapeError> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(ShapeError {
                what: "host tensor data",
                got: vec![data.len()],
                expected: shape,
            });
        }
        Ok(Self::owned(name, shape, data))
    }

    /// An owned tensor whose length matches `shape` by construction (crate-internal callers
    /// that computed `data` from `shape`); [`HostTensor::new`] is the checked door.
    pub(crate) fn owned(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self {
            name: name.into(),
            shape,
            storage: Storage::Owned(Arc::new(data)),
        }
    }

    /// f32 values at `map[offset..offset + 4 * len]`, borrowed in place.
    ///
    /// Fallback: when the bytes are not 4-byte aligned in memory (a
    /// safetensors header whose length is not a multiple of 4 puts every
    /// tensor off alignment), or on a big-endian host, the values are copied
    /// into an owned buffer once instead. `offset + 4 * len` must lie inside
    /// the map (the safetensors parser has checked it).
    pub fn mapped(
        name: impl Into<String>,
        shape: Vec<usize>,
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    ) -> Self {
        let bytes = &map[offset..offset + 4 * len];
        let aligned = bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok();
        if aligned && cfg!(target_endian = "little") {
            Self {
                name: name.into(),
                shape,
                storage: Storage::Mapped { map, offset, len },
            }
        } else {
            let data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Self::owned(name, shape, data)
        }
    }

    /// The tensor's name (its safetensors key).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of f32 values (the product of the shape).
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Owned(v) => v.len(),
            Storage::Mapped { len, .. } => *len,
        }
    }
    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the values are used in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                // Alignment was checked when the tensor was built.
                bytemuck::cast_slice(&map[*offset..*offset + 4 * *len])
            }
        }
    }
}
