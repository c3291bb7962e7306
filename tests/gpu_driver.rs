//! The CUDA layer's driver glue, which the kernel tests do not reach: a
//! capture that fails still ends (the stream stays usable and the next test
//! of the binary runs), and the device's default memory pool keeps its
//! memory. Under emulation the fake libcuda injects the faults
//! (`CAPMOE_FAKE_FAULT`, cuda/emu/fake_fault.h) and aborts on a second set of
//! the pool's release threshold; on a GPU the fault cases check only what
//! runs without a fault. Without a GPU every test prints why and passes as
//! skipped.
#![cfg(feature = "cuda")]

use capmoe::cuda::{
    ExpertFfn, FfnShape, GpuContext, GpuRouter, LayerWorkspace, MoeLayer, MoeLayerGraph,
};
use capmoe::routing::{Policy, RouterConfig};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

mod gpu_lock;

fn gpu() -> Option<GpuContext> {
    gpu_lock::shared();
    match GpuContext::new(0) {
        Ok(g) => Some(g),
        Err(e) if cfg!(feature = "emulate") => panic!("emulated GPU did not open: {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

const SHAPE: FfnShape = FfnShape {
    experts: 8,
    hidden: 64,
    intermediate: 160,
};
const TOKENS: usize = 5;

fn layer(g: &GpuContext) -> MoeLayer {
    let cfg = RouterConfig::new(2, Policy::None);
    MoeLayer::new(
        GpuRouter::new(g, cfg).unwrap(),
        ExpertFfn::random(g, SHAPE, 7).unwrap(),
    )
    .unwrap()
}

/// Captures the layer, replays it and syncs the whole context (which the
/// driver refuses while any stream still captures).
fn capture_and_replay(g: &GpuContext, layer: &MoeLayer) {
    let mut graph = MoeLayerGraph::capture(layer, TOKENS).unwrap();
    let (logits, _) = graph.inputs_mut();
    g.stream()
        .memcpy_htod(&vec![0.5f32; TOKENS * SHAPE.experts], logits)
        .unwrap();
    graph.launch().unwrap();
    let load = g.stream().clone_dtoh(graph.load()).unwrap();
    assert_eq!(load.iter().sum::<u32>() as usize, TOKENS * 2);
    g.context().synchronize().unwrap();
}

/// Set when the failing-capture test is over (passed or not), so that the
/// next test runs after it in the same process.
static FIRST_DONE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

struct MarkDone;
impl Drop for MarkDone {
    fn drop(&mut self) {
        *FIRST_DONE.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        FIRST_DONE.1.notify_all();
    }
}

/// A driver error inside a capture (a stream-ordered free that fails, which
/// cudarc records on the context and then reports from its next call,
/// `end_capture` included) is returned, and the capture still ends: the
/// stream runs eager work and a new capture afterwards.
#[test]
fn a_failed_capture_ends_and_the_stream_runs_on() {
    let _done = MarkDone;
    let _alone = gpu_lock::alone();
    let Some(g) = gpu() else { return };
    let layer = layer(&g);
    if cfg!(feature = "emulate") {
        // Only this test runs now (the lock above), so no other thread
        // reads the environment while it changes.
        std::env::set_var("CAPMOE_FAKE_FAULT", "capture-free");
        let r = MoeLayerGraph::capture(&layer, TOKENS);
        std::env::remove_var("CAPMOE_FAKE_FAULT");
        let e = r.err().expect("the injected driver error is reported");
        assert!(e.to_string().contains("driver"), "{e}");
    }
    let logits = g
        .stream()
        .clone_htod(&vec![0.0f32; TOKENS * SHAPE.experts])
        .unwrap();
    let x = g
        .stream()
        .alloc_zeros::<u16>(TOKENS * SHAPE.hidden)
        .unwrap();
    drop(layer.forward(&logits, &x, TOKENS).unwrap());
    g.synchronize().unwrap();
    capture_and_replay(&g, &layer);
}

/// Runs after the failing capture above, in the same process: a fresh
/// context captures, replays and syncs.
#[test]
fn the_next_test_captures_after_a_failed_capture() {
    let (m, cv) = &FIRST_DONE;
    let done = m.lock().unwrap_or_else(|p| p.into_inner());
    let (done, _) = cv
        .wait_timeout_while(done, Duration::from_secs(1800), |d| !*d)
        .unwrap_or_else(|p| p.into_inner());
    assert!(*done, "the failing-capture test did not finish");
    drop(done);
    let _alone = gpu_lock::alone();
    let Some(g) = gpu() else { return };
    capture_and_replay(&g, &layer(&g));
}

/// Every context capmoe opens finds the default pool keeping its memory; the
/// threshold is set once per device (the emulated driver aborts on a second
/// set, so the many contexts of this binary check that too).
#[test]
fn the_default_pool_keeps_its_memory() {
    let Some(a) = gpu() else { return };
    let b = GpuContext::new(0).unwrap();
    assert_eq!(a.pool_release_threshold().unwrap(), u64::MAX);
    assert_eq!(b.pool_release_threshold().unwrap(), u64::MAX);
    let theirs = GpuContext::from_stream(b.stream().clone());
    assert_eq!(theirs.pool_release_threshold().unwrap(), u64::MAX);
}

/// An eager `MoeLayer::forward` allocates the same number of buffers every call (counted by the
/// fake driver); `forward_in` over a `LayerWorkspace` allocates none after its first call at a
/// shape (or `prepare` for it), and gives `forward`'s bits, for every policy, across shapes that
/// come back.
#[test]
fn eager_layer_allocations_are_counted_and_none_with_a_workspace() {
    let _alone = gpu_lock::alone();
    let Some(g) = gpu() else { return };
    let st = g.stream();
    for policy in ["none", "drop:score", "reroute:next-best", "expand:local"] {
        let mut cfg = RouterConfig::new(2, policy.parse().unwrap());
        if policy != "none" {
            cfg = cfg.with_capacity_factor(0.75);
        }
        let layer = MoeLayer::new(
            GpuRouter::new(&g, cfg).unwrap(),
            ExpertFfn::random(&g, SHAPE, 7).unwrap(),
        )
        .unwrap();
        let inputs = |t: usize| {
            let l: Vec<f32> = (0..t * SHAPE.experts)
                .map(|i| ((i * 37 + t) % 23) as f32 * 0.125 - 1.0)
                .collect();
            let x: Vec<u16> = (0..t * SHAPE.hidden)
                .map(|i| 0x3c00 + ((i * 13 + t) % 97) as u16)
                .collect();
            (st.clone_htod(&l).unwrap(), st.clone_htod(&x).unwrap())
        };
        let mut ws = LayerWorkspace::new(st);
        layer.prepare(&mut ws, 3).unwrap();
        let (mut eager, mut pooled) = (Vec::new(), Vec::new());
        for t in [TOKENS, TOKENS, 3, TOKENS, 3, 1] {
            let (logits, x) = inputs(t);
            g.synchronize().unwrap();
            let before = gpu_lock::alloc_calls();
            let (want, want_plan) = layer.forward(&logits, &x, t).unwrap();
            g.synchronize().unwrap();
            let mid = gpu_lock::alloc_calls();
            let (got, got_plan) = layer.forward_in(&mut ws, &logits, &x, t).unwrap();
            g.synchronize().unwrap();
            if let (Some(a), Some(b), Some(c)) = (before, mid, gpu_lock::alloc_calls()) {
                eager.push(b - a);
                pooled.push(c - b);
            }
            assert_eq!(
                st.clone_dtoh(&want).unwrap(),
                st.clone_dtoh(got).unwrap(),
                "{policy} T {t}"
            );
            assert_eq!(
                want_plan.to_host().unwrap(),
                got_plan.to_host().unwrap(),
                "{policy} T {t}"
            );
        }
        if cfg!(feature = "emulate") {
            assert_eq!(eager.len(), 6, "the fake driver's counter was not found");
            assert!(eager.iter().all(|&n| n > 0), "{policy}: {eager:?}");
            assert_eq!(
                eager[0], eager[1],
                "{policy}: eager calls at one shape differ"
            );
            // The first call at a new shape allocates; every later one at a seen (or
            // prepared: T = 3) shape none.
            assert!(pooled[0] > 0 && pooled[5] > 0, "{policy}: {pooled:?}");
            assert_eq!(pooled[1..5], [0, 0, 0, 0], "{policy}: {pooled:?}");
            eprintln!(
                "{policy}: eager MoE layer (T {TOKENS}, E {}, k 2): {} device allocations per call; \
                 with a workspace, per call: {pooled:?}",
                SHAPE.experts, eager[0]
            );
        }
        assert!(ws.buffers() > 0);
    }
}
