//! Stream capture into a CUDA graph: the one place cudarc's cross-stream
//! event tracking is switched off (a wait on an event recorded outside a
//! capture is illegal inside it, and cudarc waits on every buffer's last
//! write when tracking is on).

use super::{GpuContext, GpuError};
use cudarc::driver::sys::{
    self, CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use cudarc::driver::{result, CudaContext, CudaGraph, CudaStream};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, PoisonError};

/// One capture at a time in the process: two on clones of one context would
/// otherwise switch tracking back on under each other.
static CAPTURE: Mutex<()> = Mutex::new(());

/// Turns cudarc's event tracking back on when dropped (also when the capture
/// fails half way), if it was on before.
struct TrackingOff<'a>(&'a Arc<CudaContext>, bool);

impl<'a> TrackingOff<'a> {
    /// # Safety
    /// While the guard lives, no thread may use a buffer of `ctx` on a stream
    /// other than the one that allocated it, nor run work on a second stream
    /// of `ctx` that cudarc would have to order (cudarc's own contract for
    /// `disable_event_tracking`).
    unsafe fn new(ctx: &'a Arc<CudaContext>) -> Self {
        let on = ctx.is_event_tracking();
        // SAFETY: the caller's contract.
        unsafe { ctx.disable_event_tracking() };
        Self(ctx, on)
    }
}

impl Drop for TrackingOff<'_> {
    fn drop(&mut self) {
        if self.1 {
            // SAFETY: restores the previous state. Buffers allocated while it
            // was off carry no events; they are the graph's own temporaries
            // (freed inside the capture) or buffers of the context's one
            // stream, where stream order alone orders their uses.
            unsafe { self.0.enable_event_tracking() };
        }
    }
}

/// Ends the capture when dropped unless it has ended: after an early return
/// or a panic in the body, or when cudarc's `end_capture` failed before it
/// reached the driver, the stream must not stay capturing (every later call
/// on it would fail, and its destruction too).
struct Capturing<'a>(&'a CudaStream);

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        let s = self.0.cu_stream();
        // Raw driver calls: cudarc's wrappers refuse to run while the context
        // holds a recorded error, which is one way to get here.
        // SAFETY: `s` is a live stream of the context bound to this thread
        // (the capture began on it here); a graph the driver hands back is
        // ours alone and destroyed at once.
        unsafe {
            if let Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) =
                result::stream::is_capturing(s)
            {
                return;
            }
            if let Ok(g) = result::stream::end_capture(s) {
                if !g.is_null() {
                    let _ = result::graph::destroy(g);
                }
            }
        }
    }
}

/// A captured, instantiated graph. Dropping it trims the device's graph
/// memory pool, so the memory nodes of a large graph go back to the device
/// instead of staying reserved for graphs that no longer exist.
pub(crate) struct Graph {
    graph: ManuallyDrop<CudaGraph>,
    ctx: Arc<CudaContext>,
}

impl Graph {
    /// Replays the graph on its stream (no host sync).
    pub(crate) fn launch(&self) -> Result<(), GpuError> {
        Ok(self.graph.launch()?)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the field is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.graph) };
        // Best effort: a failed trim only leaves memory reserved.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: a plain driver call on the context's own device.
            let _ = unsafe { sys::cuDeviceGraphMemTrim(self.ctx.cu_device()) };
        }
    }
}

/// Captures what `body` enqueues on `gpu`'s stream as one CUDA graph,
/// instantiated and uploaded. The capture ends in every case (an error or a
/// panic in `body`, an error cudarc recorded on the context meanwhile), so
/// the stream is usable again after an error. `what` names the graph in the
/// error for an empty capture. Refused on a context without capture rights
/// ([`GpuContext::new`] has them; a caller's context gets them through
/// [`GpuContext::allow_capture`]).
pub(crate) fn capture<T, E: From<GpuError>>(
    gpu: &GpuContext,
    what: &'static str,
    body: impl FnOnce() -> Result<T, E>,
) -> Result<(T, Graph), E> {
    if !gpu.may_capture() {
        return Err(GpuError::Shape {
            what: "CUDA graph capture",
            got: "a caller's CUDA context (GpuContext::from_stream / from_parts)".into(),
            expected: "a context capmoe opened (GpuContext::new), or one passed through \
                       the unsafe GpuContext::allow_capture"
                .into(),
        }
        .into());
    }
    let _one = CAPTURE.lock().unwrap_or_else(PoisonError::into_inner);
    let st = gpu.stream();
    let ctx = st.context().clone();
    // SAFETY: the context has capture rights. Either capmoe made the cudarc
    // context object (GpuContext::new; cudarc keeps the tracking flag per
    // object, so contexts made elsewhere are untouched) and uses its buffers
    // on its one stream only (the launch gate's second stream touches a raw
    // flag, no cudarc buffer), so no use needs the events; or the caller
    // vouched for as much (GpuContext::allow_capture). Captures are
    // serialised by CAPTURE.
    let tracking = unsafe { TrackingOff::new(&ctx) };
    st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(GpuError::from)?;
    let ending = Capturing(st);
    let captured = body();
    // An error cudarc recorded during the body (a drop's failed stream-ordered
    // free, say) makes its next call fail before it reaches the driver,
    // `end_capture` included: take it first, so that the capture ends.
    let pending = ctx.check_err();
    let graph = st.end_capture(CUgraphInstantiate_flags(0));
    drop(ending);
    drop(tracking);
    let out = captured?;
    pending.map_err(GpuError::from)?;
    let graph = graph.map_err(GpuError::from)?.ok_or(GpuError::Shape {
        what,
        got: "an empty graph".into(),
        expected: "the kernels to replay".into(),
    })?;
    let graph = Graph {
        graph: ManuallyDrop::new(graph),
        ctx,
    };
    graph.graph.upload().map_err(GpuError::from)?;
    Ok((out, graph))
}
