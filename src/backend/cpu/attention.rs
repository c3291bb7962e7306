//! Causal grouped-query attention over a growing per-sequence KV cache.

use super::gemm::{matmul, View};
use crate::backend::AttnGeom;
use gemm::Parallelism;
use rayon::prelude::*;

/// One sequence's keys and values for one layer: per KV head a row-major
/// `[len, head_dim]` buffer that grows as positions are appended.
#[derive(Debug, Clone, Default)]
pub struct CpuKv {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) head_dim: usize,
    pub(crate) len: usize,
}

impl CpuKv {
    /// An empty cache of `kv_heads` heads of width `head_dim`.
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self {
            k: vec![Vec::new(); kv_heads],
            v: vec![Vec::new(); kv_heads],
            head_dim,
            len: 0,
        }
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends rows `[n, kv_heads * head_dim]` of keys and values.
    fn append(&mut self, k: &[f32], v: &[f32], n: usize) {
        let hd = self.head_dim;
        let w = self.k.len() * hd;
        for r in 0..n {
            for (h, (kc, vc)) in self.k.iter_mut().zip(self.v.iter_mut()).enumerate() {
                kc.extend_from_slice(&k[r * w + h * hd..r * w + (h + 1) * hd]);
                vc.extend_from_slice(&v[r * w + h * hd..r * w + (h + 1) * hd]);
            }
        }
        self.len += n;
    }
}

/// Attention of `n` new query rows (`q` is `[n, heads * head_dim]`) of one
/// sequence, after appending its new keys/values to `cache`. Writes
/// `[n, heads * head_dim]` into `out`.
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    cache: &mut CpuKv,
    geom: &AttnGeom,
    out: &mut [f32],
) {
    cache.append(k, v, n);
    let hd = geom.head_dim;
    let len = cache.len;
    let p0 = len - n;
    let qw = geom.heads * hd;
    let group = geom.heads / geom.kv_heads;
    // Query rows go in blocks; each block only scores the keys some row of
    // it can see (causal, and the sliding window), so the masked upper
    // triangle is mostly skipped.
    const QBLOCK: usize = 64;
    let heads: Vec<Vec<f32>> = (0..geom.heads)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let (kc, vc) = (&cache.k[kvh], &cache.v[kvh]);
            let mut o = vec![0.0f32; n * hd];
            let mut scores = Vec::new();
            for i0 in (0..n).step_by(QBLOCK) {
                let i1 = (i0 + QBLOCK).min(n);
                let bn = i1 - i0;
                let lo0 = geom.window.map_or(0, |w| (p0 + i0 + 1).saturating_sub(w));
                let hi = p0 + i1; // keys lo0..hi
                let kl = hi - lo0;
                scores.clear();
                scores.resize(bn * kl, 0.0f32);
                let qv = View {
                    data: &q[i0 * qw + h * hd..],
                    rows: bn,
                    cols: hd,
                    rs: qw,
                    cs: 1,
                };
                let kt = View::rows(&kc[lo0 * hd..hi * hd], kl, hd).t();
                matmul(&mut scores, kl, qv, kt, false, Parallelism::None);
                for i in 0..bn {
                    let pos = p0 + i0 + i;
                    let lo = geom.window.map_or(0, |w| (pos + 1).saturating_sub(w)) - lo0;
                    let end = pos - lo0;
                    let row = &mut scores[i * kl..(i + 1) * kl];
                    let mut max = f32::NEG_INFINITY;
                    for s in &mut row[lo..=end] {
                        *s *= geom.scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0f32;
                    for s in &mut row[lo..=end] {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    for s in &mut row[lo..=end] {
                        *s /= sum;
                    }
                    row[..lo].fill(0.0);
                    row[end + 1..].fill(0.0);
                }
                matmul(
                    &mut o[i0 * hd..i1 * hd],
                    hd,
                    View::rows(&scores, bn, kl),
                    View::rows(&vc[lo0 * hd..hi * hd], kl, hd),
                    false,
                    Parallelism::None,
                );
            }
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        for i in 0..n {
            out[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
}
