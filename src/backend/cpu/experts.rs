//! Expert FFNs on the CPU: one GEMM per expert and matrix over the expert's
//! contiguous rows.

use super::gemm::{linear, matmul, threads, View};
use super::ops::silu_mul;
use crate::backend::{ExpertWeights, HostTensor};
use crate::routing::DispatchLayout;
use std::ops::Range;

/// `w2 (silu(w1 x) * w3 x)` for experts `range`; see `Backend::expert_ffn`.
/// Shapes were checked by the caller.
pub fn expert_ffn(
    rows: &[f32],
    hidden: usize,
    layout: &DispatchLayout,
    experts: &[ExpertWeights<super::CpuBackend>],
    range: Range<usize>,
) -> Vec<f32> {
    let offs = layout.offsets();
    let base = offs[range.start] as usize;
    let mut out = vec![0.0f32; (offs[range.end] as usize - base) * hidden];
    for e in range {
        let n = layout.counts()[e] as usize;
        if n == 0 {
            continue;
        }
        let start = offs[e] as usize;
        let x = &rows[start * hidden..(start + n) * hidden];
        let w = &experts[e];
        let inter = w.w1.shape()[0];
        let mut h1 = linear(x, n, hidden, w.w1.data(), inter, threads());
        let h3 = linear(x, n, hidden, w.w3.data(), inter, threads());
        silu_mul(&mut h1, &h3);
        let dst = &mut out[(start - base) * hidden..(start - base + n) * hidden];
        matmul(
            dst,
            hidden,
            View::rows(&h1, n, inter),
            View::rows(w.w2.data(), hidden, inter).t(),
            false,
            threads(),
        );
    }
    out
}

/// Checks one expert's shapes against `hidden`.
pub fn check_expert(e: &ExpertWeights<super::CpuBackend>, hidden: usize) -> bool {
    let s = |t: &HostTensor| (t.shape()[0], t.shape()[1]);
    let (i1, h1) = s(&e.w1);
    let (i3, h3) = s(&e.w3);
    let (h2, i2) = s(&e.w2);
    h1 == hidden && h3 == hidden && h2 == hidden && i1 == i3 && i1 == i2
}
