//! Timing support for the benchmarks (`ep::gpu`'s timer), not the gating
//! kernel (that is [`crate::cuda::routing`]'s `gate`).
//!
//! [`LaunchGate`] holds a stream until the host has queued a whole chunk of
//! work, so that CUDA events time the GPU's work and not the host's launch
//! gaps.
//!
//! A rank's FFN at decode size runs in tens of microseconds, close to what
//! the host needs to launch it (allocations, argument kernels, CUTLASS
//! set-up; more in a debug build). Launched straight away, the GPU would wait
//! for the host between kernels and the events would measure that. Behind
//! the gate the stream first waits on a device flag
//! (`cuStreamWaitValue32`, the driver's V2 stream memory operations, on by
//! default since CUDA 12); the host queues the chunk, then a second stream
//! writes the flag and the chunk runs back to back from the queue.
//!
//! Not every device or driver set-up runs stream memory operations, and a
//! failure half way through a timed run would cost the run. So
//! [`LaunchGate::new`] probes them once: a flag write and a wait that already
//! holds, on the gate's own stream, then a sync. Where that fails it returns
//! the driver's error and the caller times without a gate, saying so
//! (`ep::gpu`'s report: "stream memory operations unavailable: ...").
//!
//! If the host ever stalled while the gate was shut (a launch blocking on a
//! full queue, or anything synchronous inside a launcher), nothing would
//! open it: a watchdog thread writes the flag itself after
//! [`WATCHDOG`] and counts it, so the run never deadlocks.

use crate::cuda::{GpuContext, GpuError};
use cudarc::driver::sys::{self, CUstreamWaitValue_flags, CUstreamWriteValue_flags};
use cudarc::driver::{result, CudaContext, CudaStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the gate may stay shut before the watchdog opens it.
pub const WATCHDOG: Duration = Duration::from_secs(2);

/// The flag and the stream that opens the gate, shared with the watchdog.
struct Opener {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    flag: sys::CUdeviceptr,
}

impl Opener {
    /// Writes `value` to the flag on the opener's stream.
    fn open(&self, value: u32) -> Result<(), GpuError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: `flag` is a live 4-byte device allocation of this context
        // (freed only when the gate drops, after the watchdog has stopped);
        // the opener's stream belongs to the same context.
        unsafe {
            sys::cuStreamWriteValue32_v2(
                self.stream.cu_stream(),
                self.flag,
                value,
                CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
            )
            .result()?
        };
        Ok(())
    }
}

/// What the watchdog waits on: the generation the gate is shut for, if any,
/// and since when.
#[derive(Default)]
struct Armed {
    gen: Option<(u32, Instant)>,
    stop: bool,
}

/// See the module docs.
pub struct LaunchGate {
    opener: Arc<Opener>,
    gen: u32,
    armed: Arc<(Mutex<Armed>, Condvar)>,
    fired: Arc<AtomicUsize>,
    watchdog: Option<JoinHandle<()>>,
}

impl LaunchGate {
    /// A gate for streams of `gpu`'s context, after probing that the
    /// device runs stream memory operations (see the module docs). Fails
    /// where they are unavailable; callers then time without a gate.
    pub fn new(gpu: &GpuContext) -> Result<Self, GpuError> {
        let ctx = gpu.context().clone();
        ctx.bind_to_thread()?;
        // SAFETY: a plain 4-byte allocation, zeroed before any use, freed in Drop.
        let flag = unsafe { result::malloc_sync(4) }?;
        let stream = match ctx.new_stream() {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: allocated just above, unused.
                let _ = unsafe { result::free_sync(flag) };
                return Err(e.into());
            }
        };
        if let Err(e) = probe(&stream, flag) {
            let _ = stream.synchronize();
            // SAFETY: the probe's work has run or failed (the sync above):
            // no queued operation reads the flag any more.
            let _ = unsafe { result::free_sync(flag) };
            return Err(e);
        }
        let opener = Arc::new(Opener { ctx, stream, flag });
        let armed = Arc::new((Mutex::new(Armed::default()), Condvar::new()));
        let fired = Arc::new(AtomicUsize::new(0));
        let watchdog = {
            let (opener, armed, fired) = (opener.clone(), armed.clone(), fired.clone());
            std::thread::Builder::new()
                .name("capmoe-gate-watchdog".into())
                .spawn(move || watchdog(&opener, &armed, &fired))
                .ok()
        };
        Ok(Self {
            opener,
            gen: 0,
            armed,
            fired,
            watchdog,
        })
    }

    /// Shuts the gate: work queued on `stream` after this waits until
    /// [`LaunchGate::open`].
    pub fn shut(&mut self, stream: &CudaStream) -> Result<(), GpuError> {
        self.gen = self.gen.wrapping_add(1);
        // SAFETY: as in `Opener::open`; `stream` belongs to the same context.
        // GEQ compares as `(int32_t)(*flag - gen) >= 0`, so the counter may wrap.
        unsafe {
            sys::cuStreamWaitValue32_v2(
                stream.cu_stream(),
                self.opener.flag,
                self.gen,
                CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
            )
            .result()?
        };
        let (m, cv) = &*self.armed;
        if let Ok(mut a) = m.lock() {
            a.gen = Some((self.gen, Instant::now()));
            cv.notify_all();
        }
        Ok(())
    }

    /// Opens the gate: the queued work starts.
    pub fn open(&mut self) -> Result<(), GpuError> {
        let (m, _) = &*self.armed;
        if let Ok(mut a) = m.lock() {
            a.gen = None;
        }
        self.opener.open(self.gen)
    }

    /// How often the watchdog had to open the gate.
    pub fn timeouts(&self) -> usize {
        self.fired.load(Ordering::Relaxed)
    }
}

/// Zeroes `flag`, then writes 0 to it and waits for it to be at least 0 on
/// `stream` (both already hold), and syncs: the stream memory operations
/// the gate needs, tried once where a failure costs nothing.
fn probe(stream: &CudaStream, flag: sys::CUdeviceptr) -> Result<(), GpuError> {
    // SAFETY: `flag` is a live 4-byte allocation of the stream's context,
    // used by nothing else yet.
    unsafe {
        sys::cuMemsetD32_v2(flag, 0, 1).result()?;
        sys::cuStreamWriteValue32_v2(
            stream.cu_stream(),
            flag,
            0,
            CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
        )
        .result()?;
        sys::cuStreamWaitValue32_v2(
            stream.cu_stream(),
            flag,
            0,
            CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
        )
        .result()?;
    }
    Ok(stream.synchronize()?)
}

fn watchdog(opener: &Opener, armed: &(Mutex<Armed>, Condvar), fired: &AtomicUsize) {
    let (m, cv) = armed;
    let Ok(mut a) = m.lock() else { return };
    loop {
        if a.stop {
            return;
        }
        match a.gen {
            None => {
                a = match cv.wait(a) {
                    Ok(g) => g,
                    Err(_) => return,
                }
            }
            Some((gen, since)) => {
                let waited = since.elapsed();
                if waited >= WATCHDOG {
                    a.gen = None;
                    fired.fetch_add(1, Ordering::Relaxed);
                    let _ = opener.open(gen);
                } else {
                    a = match cv.wait_timeout(a, WATCHDOG - waited) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

impl Drop for LaunchGate {
    fn drop(&mut self) {
        // Never leave a stream waiting on a flag that is about to be freed.
        let _ = self.opener.open(self.gen);
        {
            let (m, cv) = &*self.armed;
            if let Ok(mut a) = m.lock() {
                a.stop = true;
                cv.notify_all();
            }
        }
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
        let _ = self.opener.ctx.synchronize();
        // SAFETY: the context is idle and the watchdog has stopped: nothing
        // reads the flag any more.
        let _ = unsafe { result::free_sync(self.opener.flag) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe passes where stream memory operations run (a GPU, the
    /// emulated driver), and a gate made after it opens and drops cleanly;
    /// where they are refused (the emulated driver with the
    /// `no-stream-memops` fault) `new` returns the driver's error, which the
    /// EP runner reports while it times without a gate.
    #[test]
    fn the_gate_probes_stream_memory_operations() {
        let gpu = match GpuContext::new(0) {
            Ok(g) => g,
            Err(e) => return eprintln!("skipped: {e}"),
        };
        let mut gate = LaunchGate::new(&gpu).expect("stream memory operations run here");
        gate.open().expect("an open gate opens again");
        assert_eq!(gate.timeouts(), 0);
        drop(gate);
        if cfg!(feature = "emulate") {
            // The fault is read only by stream memory operations, which no
            // other test of this binary runs.
            std::env::set_var("CAPMOE_FAKE_FAULT", "no-stream-memops");
            let r = LaunchGate::new(&gpu);
            std::env::remove_var("CAPMOE_FAKE_FAULT");
            let e = r
                .err()
                .expect("unsupported stream memory operations refuse the gate");
            assert!(e.to_string().contains("NOT_SUPPORTED"), "{e}");
        }
        gpu.synchronize().unwrap();
    }
}
