//! [`LayerWorkspace`]: the device buffers of an eager MoE layer kept from
//! call to call, so that a layer called again at the same shape (a decode
//! step, a fixed prefill chunk) allocates nothing.
//!
//! While [`MoeLayer::forward_in`](crate::cuda::MoeLayer::forward_in) runs,
//! the workspace's pool is this thread's active pool: the crate's allocation
//! helpers ([`take`], [`take_zeroed`]) take a free buffer of the exact length
//! from it before they ask the driver, and the layer's temporaries go back
//! to it ([`give`]) when the layer is done with them. Exact lengths keep
//! every `len()` the code reads what it was before; reuse is in stream order
//! on the one stream the pool belongs to, so no reuse races a kernel.

use super::GpuError;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

/// Free device buffers of one stream, by type and length.
pub(crate) struct Pool {
    stream: Arc<CudaStream>,
    /// Each free buffer with the call it was given back in.
    free: Vec<(Box<dyn Any + Send>, u64)>,
    /// Calls run with this pool active.
    call: u64,
}

thread_local! {
    static ACTIVE: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// A free buffer of exactly `n.max(1)` elements from this thread's active
/// pool on `st`, contents as its last user left them; `None` when no pool
/// is active on `st` or it has none.
pub(crate) fn take<T: DeviceRepr + Send + 'static>(
    st: &Arc<CudaStream>,
    n: usize,
) -> Option<CudaSlice<T>> {
    let n = n.max(1);
    ACTIVE.with(|a| {
        let mut a = a.try_borrow_mut().ok()?;
        let pool = a.as_mut().filter(|p| Arc::ptr_eq(&p.stream, st))?;
        let i = pool.free.iter().position(|(b, _)| {
            b.downcast_ref::<CudaSlice<T>>()
                .is_some_and(|s| s.len() == n)
        })?;
        pool.free
            .swap_remove(i)
            .0
            .downcast::<CudaSlice<T>>()
            .ok()
            .map(|b| *b)
    })
}

/// [`take`], zeroed on the stream (a memset, not an allocation).
pub(crate) fn take_zeroed<T: DeviceRepr + ValidAsZeroBits + Send + 'static>(
    st: &Arc<CudaStream>,
    n: usize,
) -> Result<Option<CudaSlice<T>>, GpuError> {
    match take::<T>(st, n) {
        Some(mut s) => {
            st.memset_zeros(&mut s)?;
            Ok(Some(s))
        }
        None => Ok(None),
    }
}

/// True when a pool is active on this thread (a `with_pool` is running).
pub(crate) fn active_here() -> bool {
    ACTIVE.with(|a| a.try_borrow().map_or(true, |a| a.is_some()))
}

/// Hands `buf` to this thread's active pool when it is on the pool's
/// stream; otherwise drops it (freed in stream order, as any buffer).
pub(crate) fn give<T: DeviceRepr + Send + 'static>(buf: CudaSlice<T>) {
    ACTIVE.with(|a| {
        if let Ok(mut a) = a.try_borrow_mut() {
            if let Some(p) = a.as_mut().filter(|p| Arc::ptr_eq(&p.stream, buf.stream())) {
                let call = p.call;
                p.free.push((Box::new(buf), call));
            }
        }
    });
}

/// The buffers of one eager [`MoeLayer`](crate::cuda::MoeLayer) (or any
/// layer on the same stream) kept between calls, and the last call's
/// output and plan, which [`MoeLayer::forward_in`](crate::cuda::MoeLayer::forward_in)
/// lends out until the next call recycles them.
///
/// The first call at a shape allocates what the layer needs; later calls at
/// that shape take the same buffers back. A call at a new shape allocates
/// its new lengths once. [`LayerWorkspace::buffers`] says how many free
/// buffers it holds; [`LayerWorkspace::clear`] hands them back to the pool.
pub struct LayerWorkspace {
    pool: Option<Pool>,
    pub(crate) last: Option<super::expert::LayerRun>,
}

impl LayerWorkspace {
    /// An empty workspace for layers on `st` (the layer's
    /// [`GpuContext`](crate::cuda::GpuContext) stream).
    pub fn new(st: &Arc<CudaStream>) -> Self {
        Self {
            pool: Some(Pool {
                stream: st.clone(),
                free: Vec::new(),
                call: 0,
            }),
            last: None,
        }
    }

    /// True when this workspace serves layers on `st`.
    pub(crate) fn is_on(&self, st: &Arc<CudaStream>) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.stream, st))
    }

    /// Free buffers held (the last call's output and plan not counted).
    pub fn buffers(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.free.len())
    }

    /// Drops every free buffer and the last call's output and plan.
    pub fn clear(&mut self) {
        if let Some(p) = self.pool.as_mut() {
            p.free.clear();
        }
        self.last = None;
    }

    /// Runs `f` with this workspace's pool active on this thread, and puts
    /// it back after, whatever `f` returned (or if it panicked).
    ///
    /// With `trim`, the buffers this call neither took nor gave back are
    /// dropped after it: the workspace then holds one call's buffers at most
    /// (a hidden workspace that callers cannot clear must not grow with every
    /// shape it sees).
    pub(crate) fn with_pool<R, E: From<GpuError>>(
        &mut self,
        trim: bool,
        f: impl FnOnce(&mut Option<super::expert::LayerRun>) -> Result<R, E>,
    ) -> Result<R, E> {
        struct Restore<'a>(&'a mut Option<Pool>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.0 = ACTIVE.with(|a| a.borrow_mut().take());
            }
        }
        if active_here() {
            return Err(GpuError::Shape {
                what: "layer workspace",
                got: "another workspace active on this thread".into(),
                expected: "one forward_in at a time per thread".into(),
            }
            .into());
        }
        let mut pool = self.pool.take();
        if let Some(p) = pool.as_mut() {
            p.call += 1;
        }
        ACTIVE.with(|a| *a.borrow_mut() = pool);
        let r = {
            let _restore = Restore(&mut self.pool);
            f(&mut self.last)
        };
        if let (true, Some(p)) = (trim, self.pool.as_mut()) {
            let call = p.call;
            p.free.retain(|(_, c)| *c == call);
        }
        r
    }
}
