//! Dense projections through cuBLAS: `y = x W^T` with bf16 operands and f32
//! compute (`cublasGemmEx`), bf16 or f32 output. The one cuBLAS call of the
//! crate; the backend's `linear` wraps it with its tensor types.

use super::alloc::{uninit, Plain};
use super::{to_i32, GpuContext, GpuError};
use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::c_void;
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for f32 {}
}

/// Output element types of [`linear`]: bf16 (raw bits) or f32.
pub(crate) trait GemmOut: Plain + sealed::Sealed {
    /// cuBLAS's name for the type.
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

/// The dimensions of one [`linear`]: `x [rows, inp]`, `W [out, inp]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinearDims {
    pub rows: usize,
    pub inp: usize,
    pub out: usize,
}

fn check_len(what: &'static str, len: usize, a: usize, b: usize) -> Result<(), GpuError> {
    let need = a
        .checked_mul(b)
        .ok_or(GpuError::TooLarge { what, value: a })?;
    if len < need {
        return Err(GpuError::Shape {
            what,
            got: format!("{len} elements"),
            expected: format!("at least {need} ([{a}, {b}])"),
        });
    }
    Ok(())
}

/// A cuBLAS handle bound to one stream, which it keeps: every GEMM and its
/// output allocation are ordered on that stream.
///
/// The handle is raw rather than cudarc's `CudaBlas`, whose drop unwraps
/// `cublasDestroy`: a failing destroy while a panic unwinds (a context
/// already broken by the error that panicked) would abort the process.
/// Here a failed destroy is ignored; the handle's memory is the driver's.
pub(crate) struct Blas {
    handle: sys::cublasHandle_t,
    stream: Arc<CudaStream>,
}

// SAFETY: cuBLAS is thread safe, its functions callable from several host
// threads even with one handle (cuBLAS docs, "Thread Safety"); each use binds
// the context first, and the handle's stream never changes after `new`.
// cudarc's `CudaBlas` is Send and Sync on the same grounds.
unsafe impl Send for Blas {}
// SAFETY: as for Send.
unsafe impl Sync for Blas {}

fn create_err(e: result::CublasError) -> GpuError {
    GpuError::Launch {
        launcher: "cublasCreate",
        code: e.0 as i32,
        message: format!("{e:?} (is libcublas on the library path?)"),
    }
}

impl Blas {
    /// A handle on `gpu`'s stream (libcublas is loaded here).
    pub(crate) fn new(gpu: &GpuContext) -> Result<Self, GpuError> {
        // cudarc panics on the first cuBLAS call when libcublas cannot be
        // loaded (the driver alone does not bring it): an error instead.
        if !super::probe::library_present("cublas") {
            return Err(GpuError::Launch {
                launcher: "cublasCreate",
                code: -1,
                message: "libcublas could not be loaded (not on the library path; \
                          the CUDA driver does not ship it)"
                    .into(),
            });
        }
        let stream = gpu.stream().clone();
        stream.context().bind_to_thread()?;
        let handle = result::create_handle().map_err(create_err)?;
        let blas = Self { handle, stream };
        // SAFETY: a live handle and a live stream of the current context;
        // on failure `blas` drops and destroys the handle.
        unsafe { result::set_stream(blas.handle, blas.stream.cu_stream() as _) }
            .map_err(create_err)?;
        Ok(blas)
    }

    /// `out [rows, out] = x [rows, inp] W^T` (W row-major `[out, inp]`, bf16
    /// bits) on the handle's stream. Every dimension must be at least 1 and
    /// each buffer long enough.
    pub(crate) fn linear<T: GemmOut>(
        &self,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        d: LinearDims,
    ) -> Result<CudaSlice<T>, GpuError> {
        gemm_nt(self.handle, &self.stream, x, w, d)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // Never panics (see the type's docs): an error is ignored.
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: the handle was created in `new`, is destroyed once, here,
        // and no call uses it any more (`&mut self`).
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

fn gemm_nt<T: GemmOut>(
    handle: sys::cublasHandle_t,
    st: &Arc<CudaStream>,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    d: LinearDims,
) -> Result<CudaSlice<T>, GpuError> {
    if d.rows == 0 || d.inp == 0 || d.out == 0 {
        return Err(GpuError::Shape {
            what: "linear [rows, in] x [out, in]^T",
            got: format!("[{}, {}] x [{}, {}]^T", d.rows, d.inp, d.out, d.inp),
            expected: "every dimension at least 1".into(),
        });
    }
    check_len("linear input", x.len(), d.rows, d.inp)?;
    check_len("linear weight", w.len(), d.out, d.inp)?;
    let (m, n, k) = (
        to_i32("linear out", d.out)?,
        to_i32("linear rows", d.rows)?,
        to_i32("linear in", d.inp)?,
    );
    let n_out = d.rows.checked_mul(d.out).ok_or(GpuError::TooLarge {
        what: "linear output elements",
        value: d.rows,
    })?;
    let mut out = uninit::<T>(st, n_out)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, _ga) = w.device_ptr(st);
    let (b, _gb) = x.device_ptr(st);
    let (c, _gc) = out.device_ptr_mut(st);
    // Column-major view: C^T [out, rows] = W [in, out]^T-as-stored (op T) x X^T [in, rows].
    // SAFETY: lengths checked above: W holds out * in bf16 (lda = in), X rows * in
    // (ldb = in), C rows * out of T (ldc = out), each dimension within i32; alpha/beta are host
    // f32 as CUBLAS_COMPUTE_32F expects in the default host pointer mode; the handle
    // runs on `st` (`Blas` binds them), which the guards, alive past the call, order.
    unsafe {
        result::gemm_ex(
            handle,
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
