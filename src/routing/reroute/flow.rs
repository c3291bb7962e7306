//! Min-cost flow by cost scaling (Goldberg and Tarjan's push-relabel).
//!
//! Integer costs and capacities; node prices `p`; the reduced cost of an arc
//! `v -> w` is `c + p[v] - p[w]`. A pseudoflow is eps-optimal when every
//! residual arc has reduced cost `>= -eps`. `refine(eps)` turns an
//! (alpha*eps)-optimal flow into an eps-optimal one that meets every supply.
//! Everything runs in a fixed order (each node's arcs in an order set by the
//! input and the pushes so far, active nodes FIFO), so the result is a
//! function of the input alone.
//!
//! Prices are `i128`: a refine may move a price by a few multiples of the
//! longest simple residual path times eps, which can pass `i64` even when
//! costs fit in 62 bits.

use std::collections::VecDeque;

/// One arc as the caller describes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub from: u32,
    pub to: u32,
    pub cap: i64,
    pub cost: i64,
    /// Units already on the arc (a warm start), `0..=cap`.
    pub flow: i64,
}

/// One residual arc. The fields a scan reads sit together: one cache line
/// holds a few arcs of a node.
#[derive(Clone, Copy, Default)]
pub(super) struct Arc {
    pub cost: i64,
    pub res: i64,
    pub to: u32,
    pub rev: u32,
}

/// A residual network in CSR form: node `v`'s arcs are `first[v]..first[v+1]`.
pub(crate) struct Net {
    pub(super) first: Vec<u32>,
    pub(super) arcs: Vec<Arc>,
    pub price: Vec<i128>,
    pub(super) excess: Vec<i64>,
    /// Arc index of each caller edge, in the order given.
    fwd: Vec<u32>,
    /// Caller edge of each forward arc (`NONE` for reverse arcs), to keep
    /// `fwd` right when arcs move.
    edge: Vec<u32>,
    /// Node `v`'s arcs with residual capacity are `first[v]..live[v]`, the
    /// rest after them: scans skip saturated arcs (a bin's reverse arcs are
    /// mostly empty: it holds a quarter of its candidate tokens).
    pub(super) live: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Net {
    /// `supply[v]` units leave node `v` (negative: enter it); supplies sum to 0.
    pub fn new(supply: &[i64], edges: &[Edge], price: Vec<i128>) -> Self {
        let n = supply.len();
        let mut deg = vec![0u32; n + 1];
        for e in edges {
            deg[e.from as usize + 1] += 1;
            deg[e.to as usize + 1] += 1;
        }
        for v in 0..n {
            deg[v + 1] += deg[v];
        }
        let first = deg.clone();
        let m = first[n] as usize;
        let mut next = deg;
        let mut arcs = vec![Arc::default(); m];
        let mut fwd = Vec::with_capacity(edges.len());
        let mut edge = vec![NONE; m];
        let mut excess = supply.to_vec();
        for (i, e) in edges.iter().enumerate() {
            let (a, b) = (next[e.from as usize], next[e.to as usize]);
            next[e.from as usize] += 1;
            next[e.to as usize] += 1;
            let (a, b) = (a as usize, b as usize);
            arcs[a] = Arc {
                cost: e.cost,
                res: e.cap - e.flow,
                to: e.to,
                rev: b as u32,
            };
            arcs[b] = Arc {
                cost: -e.cost,
                res: e.flow,
                to: e.from,
                rev: a as u32,
            };
            excess[e.from as usize] -= e.flow;
            excess[e.to as usize] += e.flow;
            fwd.push(a as u32);
            edge[a] = i as u32;
        }
        let mut net = Self {
            live: first[..n].to_vec(),
            first,
            arcs,
            price,
            excess,
            fwd,
            edge,
        };
        // Partition every node's arcs: residual ones first, in their order.
        for v in 0..n {
            for a in net.first[v] as usize..net.first[v + 1] as usize {
                if net.arcs[a].res > 0 {
                    let l = net.live[v] as usize;
                    net.swap(l, a);
                    net.live[v] += 1;
                }
            }
        }
        net
    }

    /// Swaps arcs at positions `x` and `y` of one node, fixing the links to
    /// them (their reverses' `rev`, and `fwd`).
    #[inline]
    fn swap(&mut self, x: usize, y: usize) {
        if x == y {
            return;
        }
        self.arcs.swap(x, y);
        self.edge.swap(x, y);
        for p in [x, y] {
            let r = self.arcs[p].rev as usize;
            self.arcs[r].rev = p as u32;
            if self.edge[p] != NONE {
                self.fwd[self.edge[p] as usize] = p as u32;
            }
        }
    }

    /// Units on caller edge `i`.
    pub fn flow(&self, i: usize) -> i64 {
        self.arcs[self.arcs[self.fwd[i] as usize].rev as usize].res
    }

    #[inline]
    pub(super) fn reduced(&self, v: usize, a: usize) -> i128 {
        let arc = &self.arcs[a];
        arc.cost as i128 + self.price[v] - self.price[arc.to as usize]
    }

    /// Sends `d` units along arc `a` (at `v`). Returns true when that
    /// saturated `a`, which then left `v`'s live arcs: the arc now at `a` is
    /// another one, not yet looked at.
    #[inline]
    pub(super) fn push(&mut self, v: usize, a: usize, d: i64) -> bool {
        let (w, r) = (self.arcs[a].to as usize, self.arcs[a].rev as usize);
        self.arcs[a].res -= d;
        let was = self.arcs[r].res;
        self.arcs[r].res += d;
        self.excess[v] -= d;
        self.excess[w] += d;
        if was == 0 {
            let l = self.live[w] as usize;
            self.swap(l, r);
            self.live[w] += 1;
        }
        if self.arcs[a].res == 0 {
            self.live[v] -= 1;
            let l = self.live[v] as usize;
            self.swap(a, l);
            return true;
        }
        false
    }

    /// Cost scaling from an `eps0`-optimal state down to eps `<= floor` (at
    /// least 1); returns the eps reached.
    pub fn scale_until(&mut self, eps0: i128, alpha: i128, floor: i128) -> i128 {
        let mut eps = eps0.max(1);
        loop {
            eps = (eps / alpha).max(1);
            self.refine(eps);
            if eps <= floor.max(1) {
                return eps;
            }
        }
    }

    /// Cost scaling from an `eps0`-optimal state down to 1-optimal.
    pub fn scale(&mut self, eps0: i128, alpha: i128) {
        self.scale_until(eps0, alpha, 1);
    }

    /// Makes the flow eps-optimal and balanced (every excess 0). Only arcs
    /// that break eps-optimality are saturated first (not every negative
    /// one), so a nearly optimal warm start stays nearly untouched.
    fn refine(&mut self, eps: i128) {
        let n = self.first.len() - 1;
        self.saturate_below(-eps);
        let mut queued: Vec<bool> = self.excess.iter().map(|&x| x > 0).collect();
        let mut queue: VecDeque<u32> = (0..n as u32).filter(|&v| queued[v as usize]).collect();
        let mut cur: Vec<u32> = self.first[..n].to_vec();
        while let Some(v) = queue.pop_front() {
            let v = v as usize;
            queued[v] = false;
            self.discharge(v, eps, &mut cur, &mut queued, &mut queue);
        }
    }

    /// Saturates every residual arc whose reduced cost is below `floor`.
    pub(super) fn saturate_below(&mut self, floor: i128) {
        for v in 0..self.first.len() - 1 {
            let mut a = self.first[v] as usize;
            while a < self.live[v] as usize {
                if self.reduced(v, a) < floor {
                    let res = self.arcs[a].res;
                    if self.push(v, a, res) {
                        continue;
                    }
                }
                a += 1;
            }
        }
    }

    fn discharge(
        &mut self,
        v: usize,
        eps: i128,
        cur: &mut [u32],
        queued: &mut [bool],
        queue: &mut VecDeque<u32>,
    ) {
        while self.excess[v] > 0 {
            let mut a = (cur[v] as usize).min(self.live[v] as usize);
            while a < self.live[v] as usize {
                if self.reduced(v, a) < 0 {
                    let w = self.arcs[a].to as usize;
                    let d = self.excess[v].min(self.arcs[a].res);
                    let gone = self.push(v, a, d);
                    if self.excess[w] > 0 && !queued[w] {
                        queued[w] = true;
                        queue.push_back(w as u32);
                    }
                    if self.excess[v] == 0 {
                        break;
                    }
                    if gone {
                        continue;
                    }
                }
                a += 1;
            }
            cur[v] = a as u32;
            if self.excess[v] > 0 {
                self.relabel(v, eps, cur);
            }
        }
    }

    /// Lowers `p[v]` as far as eps-optimality allows; the arc that binds
    /// becomes the current arc.
    fn relabel(&mut self, v: usize, eps: i128, cur: &mut [u32]) {
        let (lo, hi) = (self.first[v] as usize, self.live[v] as usize);
        let mut best: Option<(i128, usize)> = None;
        for a in lo..hi {
            let arc = &self.arcs[a];
            let cand = self.price[arc.to as usize] - arc.cost as i128;
            if best.is_none_or(|(b, _)| cand > b) {
                best = Some((cand, a));
            }
        }
        // A node with excess always has a residual arc in a feasible network.
        let (b, a) = best.expect("a node with excess has a residual arc");
        self.price[v] = b - eps;
        cur[v] = a as u32;
    }
}
