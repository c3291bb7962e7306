//! [`CudaBackend`] itself: construction on a [`GpuContext`], and the helpers its operations share.

use super::tensor::CudaAct;
use crate::backend::BackendError;
use crate::cuda::blas::Blas;
use crate::cuda::{GpuContext, GpuError};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

impl From<GpuError> for BackendError {
    fn from(e: GpuError) -> Self {
        BackendError::Device(crate::backend::DeviceError::new(e))
    }
}

impl From<cudarc::driver::DriverError> for BackendError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::from(e).into()
    }
}

/// The CUDA backend: one GPU context and stream, and a cuBLAS handle on it.
/// Every operation is stream-ordered; only `download` (and the host-side
/// routing, which downloads the router logits) synchronise.
#[derive(Clone)]
pub struct CudaBackend {
    pub(crate) gpu: GpuContext,
    pub(crate) blas: Arc<Blas>,
    /// Whether the model's decoder (`ModelBackend::decoder`) may capture decode graphs
    /// ([`CudaBackend::with_decode_graphs`]).
    pub(crate) decode_graphs: bool,
    /// Fixed grouped-GEMM variants for experts uploaded from now on
    /// ([`CudaBackend::with_gemm_variants`]).
    pub(crate) gemm_variants: Option<(String, String)>,
}

pub(crate) use crate::cuda::to_i32 as i32_of;

pub(crate) fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

impl CudaBackend {
    /// A backend on `gpu`'s stream (cuBLAS is loaded here).
    pub fn new(gpu: &GpuContext) -> Result<Self, GpuError> {
        Ok(Self {
            gpu: gpu.clone(),
            blas: Arc::new(Blas::new(gpu)?),
            decode_graphs: false,
            gemm_variants: None,
        })
    }

    /// Runs every layer's experts uploaded after this call with the fixed
    /// grouped-GEMM variants `gemm1` and `gemm2` (names from
    /// [`ExpertFfn::variants`](crate::cuda::ExpertFfn::variants)), instead
    /// of the tuned or heuristic choice per batch. Two paths through the
    /// same experts (a device-routed layer and its host-layout replay, say)
    /// then run the same CUTLASS kernels; different variants sum in
    /// different orders on a GPU. An unknown name fails the upload.
    pub fn with_gemm_variants(mut self, gemm1: &str, gemm2: &str) -> Self {
        self.gemm_variants = Some((gemm1.to_string(), gemm2.to_string()));
        self
    }

    /// Lets the model's decoder (`Model::decoder`, and so
    /// generation and the e2e benchmark's decode) capture each batch size's
    /// decode step as one CUDA graph and replay it. Without it the backend
    /// decodes by forward passes (the same tokens, one host sync per step
    /// and layer-by-layer launches).
    ///
    /// A capture switches cudarc's cross-stream event tracking off for the
    /// context while it runs, so the backend's context must have capture
    /// rights ([`GpuContext`]'s docs): [`CudaBackend::open`] and a context
    /// from [`GpuContext::new`] have them; a caller's context is an error
    /// here unless passed through [`GpuContext::allow_capture`].
    pub fn with_decode_graphs(mut self) -> Result<Self, GpuError> {
        if !self.gpu.may_capture() {
            return Err(GpuError::Shape {
                what: "CudaBackend::with_decode_graphs",
                got: "a caller's CUDA context without capture rights".into(),
                expected: "a context from GpuContext::new, or one passed through \
                           GpuContext::allow_capture"
                    .into(),
            });
        }
        self.decode_graphs = true;
        Ok(self)
    }

    /// Device 0.
    pub fn open() -> Result<Self, GpuError> {
        Self::new(&GpuContext::new(0)?)
    }

    /// The GPU context (device and stream) the backend runs on.
    pub fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    /// A `[rows, cols]` activation from bf16 bits already on the host.
    pub(crate) fn upload_bits(
        &self,
        bits: &[u16],
        rows: usize,
        cols: usize,
    ) -> Result<CudaAct, GpuError> {
        let data = if bits.is_empty() {
            self.gpu.stream().alloc_zeros::<u16>(1)?
        } else {
            self.gpu.stream().clone_htod(bits)?
        };
        Ok(CudaAct { data, rows, cols })
    }

    /// An activation's buffer with room for `n` elements, contents unset.
    pub(crate) fn alloc(&self, n: usize) -> Result<CudaSlice<u16>, GpuError> {
        // Not zeroed: every caller launches a kernel that writes all n
        // elements before anything reads them.
        crate::cuda::uninit::<u16>(self.gpu.stream(), n)
    }
}
