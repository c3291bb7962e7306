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
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self {
            k: vec![Vec::new(); kv_heads],
            v: vec![Vec::new(); kv_heads],
            head_dim,
            len: 0,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
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
    let heads: Vec<Vec<f32>> = (0..geom.heads)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let mut scores = vec![0.0f32; n * len];
            let qv = View {
                data: &q[h * hd..],
                rows: n,
                cols: hd,
                rs: qw,
                cs: 1,
            };
            let kt = View::rows(&cache.k[kvh], len, hd).t();
            matmul(&mut scores, len, qv, kt, false, Parallelism::None);
            for i in 0..n {
                let pos = p0 + i;
                let lo = geom.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let row = &mut scores[i * len..(i + 1) * len];
                let mut max = f32::NEG_INFINITY;
                for s in &mut row[lo..=pos] {
                    *s *= geom.scale;
                    max = max.max(*s);
                }
                let mut sum = 0.0f32;
                for s in &mut row[lo..=pos] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                for s in &mut row[lo..=pos] {
                    *s /= sum;
                }
                row[..lo].fill(0.0);
                row[pos + 1..].fill(0.0);
            }
            let mut o = vec![0.0f32; n * hd];
            matmul(
                &mut o,
                hd,
                View::rows(&scores, n, len),
                View::rows(&cache.v[kvh], len, hd),
                false,
                Parallelism::None,
            );
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        for i in 0..n {
            out[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
}
