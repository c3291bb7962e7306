//! Primal-dual repair of a 1-optimal flow that a few new arcs broke.
//!
//! After a certificate round adds arcs with reduced cost below -1, resuming
//! the cost scaling from the worst violation costs about a full descent: the
//! refines at large eps move prices all over the network. When the new arcs
//! put only a few units out of place, shortest paths are cheaper: saturate
//! them, then move the excess they leave in phases. A phase runs Dijkstra
//! from every excess node with lengths `rc + 1` (`>= 0` while the network is
//! 1-optimal), shifts every price by its distance (every residual arc keeps
//! `rc >= -1`, shortest paths become tight at `rc == -1`), then augments
//! along tight arcs. A push along a tight arc leaves its reverse at `+1`, so
//! 1-optimality holds throughout. Tight arcs form no cycle: a residual
//! cycle's scaled cost is a multiple of `S` above `-S`, hence 0, and a tight
//! cycle's would be minus its length. So every search ends, and every phase
//! moves at least one unit (the path to the nearest deficit is tight).

use super::flow::Net;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

impl Net {
    /// Units that saturating the arcs below reduced cost -1 would move,
    /// counted up to just past `limit`.
    pub fn violation_units(&self, limit: i64) -> i64 {
        let mut units = 0i64;
        for v in 0..self.first.len() - 1 {
            for a in self.first[v] as usize..self.live[v] as usize {
                if self.reduced(v, a) < -1 {
                    units = units.saturating_add(self.arcs[a].res);
                    if units > limit {
                        return units;
                    }
                }
            }
        }
        units
    }

    /// Makes the flow balanced and 1-optimal again (see the module docs).
    /// False if a phase moved nothing, which the invariants above rule out:
    /// the flow is then 1-optimal but not balanced, and the caller resumes
    /// the scaling rather than loop.
    pub fn repair(&mut self) -> bool {
        let n = self.first.len() - 1;
        self.saturate_below(-1);
        let mut dist = vec![i128::MAX; n];
        let mut done = vec![false; n];
        let mut heap = BinaryHeap::new();
        let mut cur: Vec<u32> = self.first[..n].to_vec();
        let mut dead = vec![false; n];
        let mut path: Vec<(u32, u32)> = Vec::new();
        loop {
            dist.fill(i128::MAX);
            done.fill(false);
            heap.clear();
            for (v, d) in dist.iter_mut().enumerate() {
                if self.excess[v] > 0 {
                    *d = 0;
                    heap.push(Reverse((0i128, v as u32)));
                }
            }
            if heap.is_empty() {
                return true;
            }
            // Every node the excess reaches: one phase makes the shortest
            // paths to all deficits tight at once.
            let mut far = 0i128;
            while let Some(Reverse((d, v))) = heap.pop() {
                let v = v as usize;
                if done[v] {
                    continue;
                }
                done[v] = true;
                far = d;
                for a in self.first[v] as usize..self.live[v] as usize {
                    let w = self.arcs[a].to as usize;
                    let nd = d + self.reduced(v, a) + 1;
                    if !done[w] && nd < dist[w] {
                        dist[w] = nd;
                        heap.push(Reverse((nd, w as u32)));
                    }
                }
            }
            // p += d - far; unreached nodes stay (no residual arc leads to
            // them from a reached one).
            for ((p, &d), &reached) in self.price.iter_mut().zip(&dist).zip(&done) {
                if reached {
                    *p -= far - d;
                }
            }
            cur.copy_from_slice(&self.first[..n]);
            dead.fill(false);
            let mut moved = false;
            for s in 0..n {
                while self.excess[s] > 0 && !dead[s] {
                    if self.augment_tight(s, &mut cur, &mut dead, &mut path) {
                        moved = true;
                    } else {
                        dead[s] = true;
                    }
                }
            }
            if !moved {
                return false;
            }
        }
    }

    /// One augmentation from `s` to a deficit along tight arcs, depth first
    /// with current-arc pointers; nodes found to lead nowhere are marked
    /// dead for the phase. False when `s` has no such path left.
    fn augment_tight(
        &mut self,
        s: usize,
        cur: &mut [u32],
        dead: &mut [bool],
        path: &mut Vec<(u32, u32)>,
    ) -> bool {
        path.clear();
        let mut v = s;
        loop {
            if self.excess[v] < 0 {
                let mut d = self.excess[s].min(-self.excess[v]);
                for &(_, a) in path.iter() {
                    d = d.min(self.arcs[a as usize].res);
                }
                // Each node is on the path once, and a push only moves arcs
                // of its own tail and the head's saturated ones: the later
                // path arcs stay where they are.
                for &(u, a) in path.iter() {
                    self.push(u as usize, a as usize, d);
                }
                return true;
            }
            let mut a = cur[v] as usize;
            let end = self.live[v] as usize;
            while a < end {
                let w = self.arcs[a].to as usize;
                if !dead[w] && self.reduced(v, a) == -1 {
                    break;
                }
                a += 1;
            }
            cur[v] = a as u32;
            if a < end {
                path.push((v as u32, a as u32));
                v = self.arcs[a].to as usize;
                continue;
            }
            dead[v] = true;
            match path.pop() {
                Some((u, _)) => v = u as usize,
                None => return false,
            }
        }
    }
}
