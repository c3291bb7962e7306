//! Device tensors of the CUDA backend: bf16 activations and weight matrices
//! (raw bf16 bits in `u16`), f32 vectors, and one sequence's KV cache.

use crate::cuda::GpuError;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// A row-major `[rows, cols]` bf16 activation on the device.
pub struct CudaAct {
    pub(crate) data: CudaSlice<u16>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl CudaAct {
    /// Wraps a caller's bf16 device buffer (raw bits as `u16`, row-major `[rows, cols]`)
    /// without a copy. It must be allocated on the backend's context; at least
    /// `max(rows * cols, 1)` elements (CUDA allocations are never empty).
    pub fn from_device(data: CudaSlice<u16>, rows: usize, cols: usize) -> Result<Self, GpuError> {
        let n = rows.checked_mul(cols).ok_or(GpuError::TooLarge {
            what: "activation rows * cols",
            value: usize::MAX,
        })?;
        if data.len() < n.max(1) {
            return Err(GpuError::Shape {
                what: "caller's activation buffer",
                got: format!("{} bf16 elements", data.len()),
                expected: format!("at least {} for [{rows}, {cols}]", n.max(1)),
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// Hands the buffer back (no copy): the bits, rows and columns.
    pub fn into_device(self) -> (CudaSlice<u16>, usize, usize) {
        (self.data, self.rows, self.cols)
    }

    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (hidden size).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw bf16 buffer (`rows * cols` elements; at least one, as CUDA
    /// allocations are never empty).
    pub fn data(&self) -> &CudaSlice<u16> {
        &self.data
    }
    /// Elements, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Whether the activation has no element (`rows * cols == 0`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A weight matrix `[out, in]` (PyTorch's `nn.Linear` layout), bf16.
pub struct CudaMat {
    pub(crate) data: CudaSlice<u16>,
    pub(crate) out: usize,
    pub(crate) inp: usize,
}

impl CudaMat {
    /// The raw bf16 buffer, row-major `[out, in]`.
    pub fn data(&self) -> &CudaSlice<u16> {
        &self.data
    }
}

/// A 1-D weight (the RMSNorm scales), kept in f32: it is tiny and the
/// kernels compute in f32.
pub struct CudaVector {
    pub(crate) data: CudaSlice<f32>,
    pub(crate) len: usize,
}

/// One sequence's keys and values for one layer: `[capacity, kv_heads *
/// head_dim]` bf16 each, positions `0..len` written. Grows by doubling.
pub struct CudaKv {
    pub(crate) k: Option<CudaSlice<u16>>,
    pub(crate) v: Option<CudaSlice<u16>>,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) capacity: usize,
    pub(crate) len: usize,
}

impl CudaKv {
    pub(crate) fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self {
            k: None,
            v: None,
            kv_heads,
            head_dim,
            capacity: 0,
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `extra` more positions, copying what is held.
    pub(crate) fn reserve(&mut self, st: &Arc<CudaStream>, extra: usize) -> Result<(), GpuError> {
        let need = self.len + extra;
        if need <= self.capacity && self.k.is_some() {
            return Ok(());
        }
        let cap = need.max(2 * self.capacity).max(16);
        let w = self.kv_heads * self.head_dim;
        let grow = |old: &Option<CudaSlice<u16>>| -> Result<CudaSlice<u16>, GpuError> {
            // Not zeroed: positions 0..len are copied below; the rest is written
            // by appends before attention reads it (it reads 0..len only).
            let mut buf = crate::cuda::uninit::<u16>(st, cap * w)?;
            if let Some(old) = old {
                if self.len > 0 {
                    st.memcpy_dtod(
                        &old.slice(..self.len * w),
                        &mut buf.slice_mut(..self.len * w),
                    )?;
                }
            }
            Ok(buf)
        };
        let (k, v) = (grow(&self.k)?, grow(&self.v)?);
        self.k = Some(k);
        self.v = Some(v);
        self.capacity = cap;
        Ok(())
    }
}
