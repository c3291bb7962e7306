//! The device context and stream every GPU call runs on.

use super::error::GpuError;
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// A CUDA device's primary context and one stream. cudarc and the kernels'
/// statically linked runtime share the primary context, so cudarc buffers
/// feed the launchers directly.
///
/// Capture rights: capturing a CUDA graph ([`MoeLayerGraph`](super::MoeLayerGraph),
/// the CUDA backend's decode graphs) switches cudarc's cross-stream event
/// tracking off for the context while it runs. A context capmoe opened
/// ([`GpuContext::new`]) may capture: capmoe made its cudarc context object
/// and uses its buffers on one stream. A caller's context
/// ([`GpuContext::from_stream`], [`GpuContext::from_parts`]) may not, unless
/// the caller vouches for it with [`GpuContext::allow_capture`].
#[derive(Clone)]
pub struct GpuContext {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    capture: bool,
}

impl GpuContext {
    /// Opens device `ordinal` on a cudarc context object of its own, with
    /// capture rights (see the type's docs). The first one per device in the
    /// process raises the device's default memory pool's release threshold
    /// to the maximum, so stream-ordered temporaries are not handed back to
    /// the OS at every sync ([`Self::pool_release_threshold`]). No driver or no device is an
    /// error, never a panic (cudarc panics when libcuda is absent, so that is
    /// checked first). Code that takes the context out ([`Self::context`])
    /// must not run a second stream on it while a capture runs.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        if !super::probe::library_present("cuda") {
            return Err(GpuError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal)?;
        super::pool::keep_memory(&ctx)?;
        let stream = ctx.new_stream()?;
        Ok(Self {
            ctx,
            stream,
            capture: true,
        })
    }

    /// GPUs the driver sees; no driver is [`GpuError::NoDriver`], not a panic.
    pub fn device_count() -> Result<usize, GpuError> {
        if !super::probe::library_present("cuda") {
            return Err(GpuError::NoDriver);
        }
        Ok(usize::try_from(CudaContext::device_count()?).unwrap_or(0))
    }

    /// Runs on a caller's stream (an engine that owns the GPU: candle, mistral.rs, your own
    /// cudarc code). capmoe enqueues every kernel on `stream` and allocates its temporaries
    /// stream-ordered there; nothing is copied and no other stream is created. The stream's
    /// context must be its device's primary context, which every cudarc
    /// [`CudaContext::new`] is: the kernels' CUDA runtime uses the primary context.
    pub fn from_stream(stream: Arc<CudaStream>) -> Self {
        Self {
            ctx: stream.context().clone(),
            stream,
            capture: false,
        }
    }

    /// As [`GpuContext::from_stream`], checking that `stream` belongs to `ctx`.
    pub fn from_parts(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, GpuError> {
        if !Arc::ptr_eq(&ctx, stream.context()) {
            return Err(GpuError::Shape {
                what: "caller's CUDA stream",
                got: "a stream of another context".into(),
                expected: "a stream created on the given CudaContext".into(),
            });
        }
        Ok(Self {
            ctx,
            stream,
            capture: false,
        })
    }

    /// Gives a caller's context capture rights (see the type's docs).
    ///
    /// # Safety
    /// While capmoe captures a graph on this context (building a
    /// [`MoeLayerGraph`](super::MoeLayerGraph), or a decoder of a backend made
    /// with decode graphs, or retaining its sequences), no other thread may
    /// use a buffer of the context on a stream other than the one that
    /// allocated it, or run work on another stream of the context that relies
    /// on cudarc's automatic cross-stream ordering. Buffers allocated during
    /// the capture on another thread would keep no events afterwards.
    pub unsafe fn allow_capture(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Whether graphs may be captured on this context.
    pub fn may_capture(&self) -> bool {
        self.capture
    }

    /// Why no GPU can be used here, or `None` when device 0 opens. Tests call
    /// this to skip with a reason.
    pub fn unavailable() -> Option<String> {
        Self::new(0).err().map(|e| e.to_string())
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every capmoe call on this context is ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Device name, e.g. "NVIDIA H200".
    pub fn name(&self) -> Result<String, GpuError> {
        Ok(self.ctx.name()?)
    }

    /// Compute capability `(major, minor)`, e.g. `(9, 0)` on an H200.
    pub fn compute_capability(&self) -> Result<(u32, u32), GpuError> {
        let (major, minor) = self.ctx.compute_capability()?;
        Ok((major.max(0) as u32, minor.max(0) as u32))
    }

    /// Number of streaming multiprocessors (CUTLASS sizes persistent grids
    /// and TMA-descriptor workspaces with it).
    pub fn sm_count(&self) -> Result<u32, GpuError> {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS;
        Ok(self.ctx.attribute(SMS)?.max(1) as u32)
    }

    /// The release threshold (bytes) of the device's default memory pool,
    /// which capmoe's stream-ordered temporaries come from: `u64::MAX` once
    /// a [`GpuContext::new`] opened the device (the pool then keeps freed
    /// memory for reuse); a caller's context keeps the caller's setting.
    pub fn pool_release_threshold(&self) -> Result<u64, GpuError> {
        super::pool::release_threshold(&self.ctx)
    }

    /// Waits for everything queued on [`Self::stream`].
    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }
}
