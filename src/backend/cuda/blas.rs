//! Dense projections `y = x W^T` on the backend's tensors, through the CUDA
//! layer's cuBLAS call ([`crate::cuda::blas`]).

use super::tensor::{CudaAct, CudaMat};
use crate::cuda::blas::{Blas, GemmOut, LinearDims};
use crate::cuda::GpuError;
use cudarc::driver::CudaSlice;

/// `out [rows, w.out] = x [rows, w.inp] W^T`, bf16 or f32. The caller checked
/// `x.cols == w.inp` and `rows > 0`; the CUDA layer checks again.
pub(crate) fn linear<T: GemmOut>(
    blas: &Blas,
    x: &CudaAct,
    w: &CudaMat,
) -> Result<CudaSlice<T>, GpuError> {
    let d = LinearDims {
        rows: x.rows,
        inp: w.inp,
        out: w.out,
    };
    blas.linear(&x.data, &w.data, d)
}
