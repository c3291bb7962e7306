//! Expert FFNs on the CPU. Each expert's rows go through one GEMM per weight
//! block: the work is cut into (expert, column block) tasks that rayon
//! balances over the cores, each task a single-threaded GEMM over all of the
//! expert's rows, so every weight block is read once per expert and skewed
//! loads (one hot expert, many cold ones) still keep every core busy. An
//! expert with at most `SMALL_ROWS` rows (decode) reads its weight block
//! straight from the weights (`rows.rs`) instead of packing it first.

use super::gemm::{matmul, View};
use super::ops::silu_mul;
use super::rows::{linear_rows, SMALL_ROWS};
use crate::backend::{HostExpert, HostTensor};
use crate::routing::DispatchLayout;
use gemm::Parallelism;
use rayon::prelude::*;
use std::ops::Range;

/// Columns of `w1`/`w3` (intermediate) per up-projection task.
const UP_BLOCK: usize = 512;
/// Columns of `w2` (hidden) per down-projection task.
const DOWN_BLOCK: usize = 256;

fn blocks(n: usize, b: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n.div_ceil(b)).map(move |i| i * b..((i + 1) * b).min(n))
}

/// `w2 (silu(w1 x) * w3 x)` for experts `range`; see `Backend::expert_ffn`.
/// Shapes were checked by the caller.
pub fn expert_ffn(
    rows: &[f32],
    hidden: usize,
    layout: &DispatchLayout,
    experts: &[HostExpert],
    range: Range<usize>,
) -> Vec<f32> {
    let offs = layout.offsets();
    let base = offs[range.start] as usize;
    let mut out = vec![0.0f32; (offs[range.end] as usize - base) * hidden];
    let active: Vec<(usize, usize, usize)> = range
        .filter(|&e| layout.counts()[e] > 0)
        .map(|e| (e, offs[e] as usize, layout.counts()[e] as usize))
        .collect();
    if active.is_empty() {
        return out;
    }
    let inter = experts[active[0].0].w1.shape()[0];
    // Up projections: a[e][:, blk] = silu(x_e w1[blk]^T) * (x_e w3[blk]^T).
    let up_tasks: Vec<(usize, Range<usize>)> = active
        .iter()
        .enumerate()
        .flat_map(|(i, _)| blocks(inter, UP_BLOCK).map(move |b| (i, b)))
        .collect();
    let up: Vec<Vec<f32>> = up_tasks
        .par_iter()
        .map(|(i, b)| {
            let (e, start, n) = active[*i];
            let x = View::rows(&rows[start * hidden..(start + n) * hidden], n, hidden);
            let w = &experts[e];
            fn wb<'a>(t: &'a HostTensor, b: &Range<usize>, hidden: usize) -> View<'a> {
                View::rows(&t.data()[b.start * hidden..b.end * hidden], b.len(), hidden).t()
            }
            let mut h1 = vec![0.0f32; n * b.len()];
            let mut h3 = vec![0.0f32; n * b.len()];
            if n <= SMALL_ROWS {
                let xs = &rows[start * hidden..(start + n) * hidden];
                let span = b.start * hidden..b.end * hidden;
                let (w1, w3) = (&w.w1.data()[span.clone()], &w.w3.data()[span]);
                linear_rows(&mut h1, b.len(), xs, n, hidden, w1, b.len());
                linear_rows(&mut h3, b.len(), xs, n, hidden, w3, b.len());
                silu_mul(&mut h1, &h3);
                return h1;
            }
            matmul(
                &mut h1,
                b.len(),
                x,
                wb(&w.w1, b, hidden),
                false,
                Parallelism::None,
            );
            matmul(
                &mut h3,
                b.len(),
                x,
                wb(&w.w3, b, hidden),
                false,
                Parallelism::None,
            );
            silu_mul(&mut h1, &h3);
            h1
        })
        .collect();
    // Assemble each expert's activations [n, inter].
    let mut acts: Vec<Vec<f32>> = active
        .iter()
        .map(|&(_, _, n)| vec![0.0; n * inter])
        .collect();
    for ((i, b), blk) in up_tasks.iter().zip(&up) {
        let n = active[*i].2;
        let a = &mut acts[*i];
        for r in 0..n {
            a[r * inter + b.start..r * inter + b.end]
                .copy_from_slice(&blk[r * b.len()..(r + 1) * b.len()]);
        }
    }
    // Down projection: y_e[:, blk] = a_e w2[blk]^T.
    let down_tasks: Vec<(usize, Range<usize>)> = active
        .iter()
        .enumerate()
        .flat_map(|(i, _)| blocks(hidden, DOWN_BLOCK).map(move |b| (i, b)))
        .collect();
    let down: Vec<Vec<f32>> = down_tasks
        .par_iter()
        .map(|(i, b)| {
            let (e, _, n) = active[*i];
            let w2 = &experts[e].w2;
            let mut y = vec![0.0f32; n * b.len()];
            let w2b = &w2.data()[b.start * inter..b.end * inter];
            if n <= SMALL_ROWS {
                linear_rows(&mut y, b.len(), &acts[*i], n, inter, w2b, b.len());
                return y;
            }
            matmul(
                &mut y,
                b.len(),
                View::rows(&acts[*i], n, inter),
                View::rows(w2b, b.len(), inter).t(),
                false,
                Parallelism::None,
            );
            y
        })
        .collect();
    for ((i, b), blk) in down_tasks.iter().zip(&down) {
        let (_, start, n) = active[*i];
        for r in 0..n {
            let o = (start - base + r) * hidden;
            out[o + b.start..o + b.end].copy_from_slice(&blk[r * b.len()..(r + 1) * b.len()]);
        }
    }
    out
}

/// Checks one expert's shapes against `hidden`.
pub fn check_expert(e: &HostExpert, hidden: usize) -> bool {
    let s = |t: &HostTensor| (t.shape()[0], t.shape()[1]);
    let (i1, h1) = s(&e.w1);
    let (i3, h3) = s(&e.w3);
    let (h2, i2) = s(&e.w2);
    h1 == hidden && h3 == hidden && h2 == hidden && i1 == i3 && i1 == i2
}
