//! Who may use the GPU while a test captures a CUDA graph. Every test of a
//! binary opens device 0's primary context, so they all share it, and a
//! capture needs it alone: the capture switches cudarc's event tracking off
//! for the context (see `GpuContext`'s capture rights), and CUDA
//! refuses a context-wide sync from any thread while one of its streams
//! captures. The emulated driver refuses it too (a test running beside a
//! capture aborted there). So every GPU test holds this lock shared for its
//! whole run, and a capturing test holds it exclusively.

use std::cell::{Cell, RefCell};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static DEVICE: RwLock<()> = RwLock::new(());

thread_local! {
    static SHARED: RefCell<Option<RwLockReadGuard<'static, ()>>> = const { RefCell::new(None) };
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Holds the device shared until the test's thread ends (libtest runs each
/// test on a thread of its own). A no-op while this thread holds it alone.
pub fn shared() {
    if ALONE.with(Cell::get) {
        return;
    }
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(DEVICE.read().unwrap_or_else(|p| p.into_inner()));
        }
    });
}

/// The device held alone while this lives (no other test runs on the GPU).
pub struct Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// Waits until no other test holds the device, then holds it alone.
pub fn alone() -> Alone {
    SHARED.with(|s| s.borrow_mut().take());
    let g = DEVICE.write().unwrap_or_else(|p| p.into_inner());
    ALONE.with(|a| a.set(true));
    Alone(g)
}

/// The fake driver's count of device allocations so far (`None` off the emulator).
#[allow(dead_code)]
pub fn alloc_calls() -> Option<u64> {
    if !cfg!(feature = "emulate") {
        return None;
    }
    // SAFETY: the fake libcuda cudarc already loaded (same handle); the symbol is a
    // `uint64_t (void)` function that only reads an atomic.
    unsafe {
        let lib = libloading::Library::new("libcuda.so").ok()?;
        let f: libloading::Symbol<unsafe extern "C" fn() -> u64> =
            lib.get(b"capmoe_fake_alloc_calls").ok()?;
        Some(f())
    }
}
