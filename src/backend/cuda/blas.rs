//! Dense projections through cuBLAS: `y = x W^T` with bf16 operands and f32
//! compute (`cublasGemmEx`), bf16 or f32 output.

use super::tensor::{CudaAct, CudaMat};
use crate::cuda::GpuError;
use cudarc::cublas::{result, sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use std::ffi::c_void;
use std::sync::Arc;

/// Output element types of [`linear`].
pub(crate) trait GemmOut: DeviceRepr {
    const TYPE: sys::cudaDataType;
}
impl GemmOut for u16 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

fn blas_err(e: result::CublasError) -> GpuError {
    GpuError::Launch {
        launcher: "cublasGemmEx",
        code: e.0 as i32,
        message: format!("{e:?}"),
    }
}

use crate::cuda::to_i32 as dim;

/// `out [rows, w.out] = x [rows, w.inp] W^T`. The caller checked
/// `x.cols == w.inp` and `rows > 0`.
pub(crate) fn linear<T: GemmOut>(
    blas: &CudaBlas,
    st: &Arc<CudaStream>,
    x: &CudaAct,
    w: &CudaMat,
) -> Result<CudaSlice<T>, GpuError> {
    let (m, n, k) = (
        dim("linear out", w.out)?,
        dim("linear rows", x.rows)?,
        dim("linear in", w.inp)?,
    );
    // SAFETY: the GEMM below writes all rows * out elements.
    let mut out = unsafe { st.alloc::<T>((x.rows * w.out).max(1)) }?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, _ga) = w.data.device_ptr(st);
    let (b, _gb) = x.data.device_ptr(st);
    let (c, _gc) = out.device_ptr_mut(st);
    // Column-major view: C^T [out, rows] = W [in, out]^T-as-stored (op T) x X^T [in, rows].
    // SAFETY: W holds out * in bf16 (lda = in), X rows * in (ldb = in), C rows * out of T
    // (ldc = out); alpha/beta are host f32 as CUBLAS_COMPUTE_32F expects in the default
    // host pointer mode; the handle runs on `st`, which the guards order against.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            (&alpha as *const f32).cast::<c_void>(),
            a as *const c_void,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            b as *const c_void,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            (&beta as *const f32).cast::<c_void>(),
            c as *mut c_void,
            T::TYPE,
            m,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(blas_err)?;
    drop((_ga, _gb, _gc));
    Ok(out)
}
