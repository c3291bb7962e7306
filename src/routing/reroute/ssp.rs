//! The first `reroute:optimal` solver, kept as a test oracle: successive
//! shortest paths. Exact but `O(A E^2)` for `A` units of overflow.
//!
//! The problem it solves:
//!
//! Maximise `sum p[t,e]` over served `(t,e)` subject to each bin holding at
//! most its capacity and each token at most `k` distinct experts. As a
//! transportation problem: every token ships `k` units, each to a distinct
//! expert (gain `p`) or to a drop node `D` (gain 0, unbounded).
//!
//! Method: successive shortest paths from the plain top-k assignment, which is
//! optimal without capacities. While a bin is overfull, one unit is pushed
//! along a shortest path in the residual graph to a bin with room or to `D`.
//! Token nodes are eliminated: the graph has one node per expert, per bin and
//! `D`, and the edge `a -> b` costs the cheapest move of one token from `a` to
//! `b`, `min_t p[t,a] - p[t,b]`, kept in a lazily cleaned heap per pair.
//! Dijkstra with node potentials keeps reduced costs non-negative.
//!
//! Exactness: costs are `p` in fixed point with 48 fraction bits, and integer
//! arithmetic is exact, so the result is optimal for `p` rounded to 2^-48; its
//! mass is within `T*k*2^-48` of the true optimum.
//!
//! Complexity: `O(T k (E-k) log)` to build the pair heaps, then per unit of
//! overflow `A`, one Dijkstra on `V = E + bins + 1` nodes with `O(E^2)` heap
//! peeks, plus `O(E log)` heap pushes per moved token: `O(T k E log + A E^2)`
//! time and `O(T k E)` memory.

use crate::routing::capacity::Bins;
use crate::routing::gate::Gate;
use crate::routing::served::Served;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const FRAC_BITS: i32 = 48;
const INF: i64 = i64::MAX / 4;
const NONE: u32 = u32::MAX;

type MinHeap = BinaryHeap<Reverse<(i64, u32)>>;

/// How a path enters a node: from node `from`, moving token `token`.
#[derive(Clone, Copy)]
struct Pred {
    from: usize,
    token: u32,
}

struct Flow<'a> {
    bins: &'a Bins,
    experts: usize,
    k: usize,
    q: Vec<i64>,
    held: Vec<u32>,
    load_e: Vec<u64>,
    load_b: Vec<u64>,
    /// `mv[a * E + b]`: tokens at `a`, not at `b`, by `q[t,a] - q[t,b]`.
    mv: Vec<MinHeap>,
    /// `dr[a]`: tokens at `a`, by `q[t,a]` (cheapest to drop first).
    dr: Vec<MinHeap>,
    /// `jn[b]`: tokens with a free slot, not at `b`, by `-q[t,b]`.
    jn: Vec<MinHeap>,
}

impl<'a> Flow<'a> {
    fn new(gate: &Gate, bins: &'a Bins) -> Self {
        let (tokens, experts, k) = (gate.tokens(), gate.experts(), gate.top_k());
        let scale = (FRAC_BITS as f64).exp2();
        let q: Vec<i64> = gate
            .probs()
            .iter()
            .map(|&p| (p as f64 * scale).round() as i64)
            .collect();
        let held = gate.topk_all().to_vec();
        let mut load_e = vec![0u64; experts];
        let mut load_b = vec![0u64; bins.count()];
        let mut mv_v: Vec<Vec<Reverse<(i64, u32)>>> = vec![Vec::new(); experts * experts];
        let mut dr_v: Vec<Vec<Reverse<(i64, u32)>>> = vec![Vec::new(); experts];
        let mut is_top = vec![false; experts];
        for t in 0..tokens {
            let top = &held[t * k..(t + 1) * k];
            let qt = &q[t * experts..(t + 1) * experts];
            for &a in top {
                is_top[a as usize] = true;
            }
            for &a in top {
                let a = a as usize;
                load_e[a] += 1;
                load_b[bins.bin(a)] += 1;
                dr_v[a].push(Reverse((qt[a], t as u32)));
                for b in (0..experts).filter(|&b| !is_top[b]) {
                    mv_v[a * experts + b].push(Reverse((qt[a] - qt[b], t as u32)));
                }
            }
            for &a in top {
                is_top[a as usize] = false;
            }
        }
        Self {
            bins,
            experts,
            k,
            q,
            held,
            load_e,
            load_b,
            mv: mv_v.into_iter().map(BinaryHeap::from).collect(),
            dr: dr_v.into_iter().map(BinaryHeap::from).collect(),
            jn: vec![MinHeap::new(); experts],
        }
    }

    fn slots(&self, t: usize) -> &[u32] {
        &self.held[t * self.k..(t + 1) * self.k]
    }
    fn holds(&self, t: usize, e: u32) -> bool {
        self.slots(t).contains(&e)
    }
    fn has_free(&self, t: usize) -> bool {
        self.slots(t).contains(&NONE)
    }
    fn qp(&self, t: usize, e: usize) -> i64 {
        self.q[t * self.experts + e]
    }

    /// Cheapest valid entry of a heap, dropping stale ones.
    fn top(heap: &mut MinHeap, valid: impl Fn(usize) -> bool) -> Option<(i64, u32)> {
        while let Some(&Reverse((c, t))) = heap.peek() {
            if valid(t as usize) {
                return Some((c, t));
            }
            heap.pop();
        }
        None
    }
    fn top_move(&mut self, a: usize, b: usize) -> Option<(i64, u32)> {
        let mut h = std::mem::take(&mut self.mv[a * self.experts + b]);
        let r = Self::top(&mut h, |t| {
            self.holds(t, a as u32) && !self.holds(t, b as u32)
        });
        self.mv[a * self.experts + b] = h;
        r
    }
    fn top_drop(&mut self, a: usize) -> Option<(i64, u32)> {
        let mut h = std::mem::take(&mut self.dr[a]);
        let r = Self::top(&mut h, |t| self.holds(t, a as u32));
        self.dr[a] = h;
        r
    }
    fn top_join(&mut self, b: usize) -> Option<(i64, u32)> {
        let mut h = std::mem::take(&mut self.jn[b]);
        let r = Self::top(&mut h, |t| self.has_free(t) && !self.holds(t, b as u32));
        self.jn[b] = h;
        r
    }

    fn leave(&mut self, t: usize, a: usize) {
        let k = self.k;
        let slot = self.held[t * k..(t + 1) * k]
            .iter()
            .position(|&e| e == a as u32)
            .expect("token holds a");
        self.held[t * k + slot] = NONE;
        self.load_e[a] -= 1;
        self.load_b[self.bins.bin(a)] -= 1;
        for i in 0..k {
            let y = self.held[t * k + i];
            if y != NONE {
                let c = self.qp(t, y as usize) - self.qp(t, a);
                self.mv[y as usize * self.experts + a].push(Reverse((c, t as u32)));
            }
        }
    }
    fn join(&mut self, t: usize, b: usize) {
        let k = self.k;
        let slot = self.held[t * k..(t + 1) * k]
            .iter()
            .position(|&e| e == NONE)
            .expect("token has a free slot");
        self.held[t * k + slot] = b as u32;
        self.load_e[b] += 1;
        self.load_b[self.bins.bin(b)] += 1;
        for x in 0..self.experts {
            if !self.holds(t, x as u32) {
                let c = self.qp(t, b) - self.qp(t, x);
                self.mv[b * self.experts + x].push(Reverse((c, t as u32)));
            }
        }
        let c = self.qp(t, b);
        self.dr[b].push(Reverse((c, t as u32)));
    }
    fn push_joins(&mut self, t: usize, only: Option<usize>) {
        for x in 0..self.experts {
            if only.is_none_or(|o| o == x) && !self.holds(t, x as u32) {
                let c = -self.qp(t, x);
                self.jn[x].push(Reverse((c, t as u32)));
            }
        }
    }
}

pub(crate) fn ssp_optimal(gate: &Gate, bins: &Bins) -> Served {
    let experts = gate.experts();
    let nb = bins.count();
    let mut f = Flow::new(gate, bins);
    let d = experts + nb;
    let v = d + 1;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); nb];
    for e in 0..experts {
        members[bins.bin(e)].push(e);
    }
    let mut pi = vec![0i64; v];
    let mut dist = vec![INF; v];
    let mut done = vec![false; v];
    let mut pred = vec![
        Pred {
            from: usize::MAX,
            token: NONE
        };
        v
    ];

    while let Some(src_bin) = (0..nb).find(|&b| f.load_b[b] > bins.cap(b)) {
        let src = experts + src_bin;
        dist.fill(INF);
        done.fill(false);
        dist[src] = 0;
        let target = loop {
            // Dense Dijkstra: V is small; ties go to the lower node index.
            let u = (0..v)
                .filter(|&x| !done[x] && dist[x] < INF)
                .min_by_key(|&x| (dist[x], x))
                .expect("the drop node is always reachable from an overfull bin");
            done[u] = true;
            let is_sink = u == d
                || (u >= experts
                    && u < d
                    && u != src
                    && f.load_b[u - experts] < bins.cap(u - experts));
            if is_sink {
                break u;
            }
            let mut relax = |to: usize, cost: i64, token: u32, dist: &mut Vec<i64>| {
                let rc = cost + pi[u] - pi[to];
                debug_assert!(rc >= 0, "negative reduced cost {rc}");
                if !done[to] && dist[u] + rc < dist[to] {
                    dist[to] = dist[u] + rc;
                    pred[to] = Pred { from: u, token };
                }
            };
            if u < experts {
                relax(experts + bins.bin(u), 0, NONE, &mut dist);
                for b in 0..experts {
                    if b != u {
                        if let Some((c, t)) = f.top_move(u, b) {
                            relax(b, c, t, &mut dist);
                        }
                    }
                }
                if let Some((c, t)) = f.top_drop(u) {
                    relax(d, c, t, &mut dist);
                }
            } else if u < d {
                for &a in &members[u - experts] {
                    if f.load_e[a] > 0 {
                        relax(a, 0, NONE, &mut dist);
                    }
                }
            } else {
                for b in 0..experts {
                    if let Some((c, t)) = f.top_join(b) {
                        relax(b, c, t, &mut dist);
                    }
                }
            }
        };
        let dt = dist[target];
        for x in 0..v {
            pi[x] += dist[x].min(dt);
        }
        // Walk the path back, then apply its token moves from the source on.
        let mut path = Vec::new();
        let mut x = target;
        while x != src {
            let p = pred[x];
            path.push((p.from, x, p.token as usize));
            x = p.from;
        }
        for &(from, to, t) in path.iter().rev() {
            match (from < experts, to < experts, from == d, to == d) {
                (true, true, _, _) => {
                    f.leave(t, from);
                    f.join(t, to);
                    if f.has_free(t) {
                        f.push_joins(t, Some(from));
                    }
                }
                (true, false, _, true) => {
                    f.leave(t, from);
                    f.push_joins(t, None);
                }
                (false, true, true, _) => f.join(t, to),
                _ => {} // bin <-> expert: load moves with the token moves
            }
        }
    }
    let k = f.k;
    Served::from_lists((0..gate.tokens()).map(|t| {
        f.held[t * k..(t + 1) * k]
            .iter()
            .copied()
            .filter(|&e| e != NONE)
            .collect::<Vec<_>>()
    }))
}
