//! The two routing paths: (a) candle's own top-k written with candle ops,
//! (b) capmoe's plan, compacted; and the check that they agree under `none`.

use candle_core::{DType, Tensor, D};
use capmoe::routing::{route, Logits, RouterConfig, RoutingPlan};

use crate::block::Routing;
use crate::Res;

/// (a) Mixtral's gating in candle ops: softmax over all experts, the k
/// largest (stable descending arg-sort: ties to the lower index), weights
/// renormalised over the k. Returns the probabilities `[T, E]` too.
pub fn candle_topk(logits: &Tensor, k: usize) -> Res<(Vec<Vec<f32>>, Routing)> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let exp = logits.broadcast_sub(&max)?.exp()?;
    let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
    let idx = probs
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .contiguous()?;
    let top = probs.gather(&idx, D::Minus1)?;
    let w = top.broadcast_div(&top.sum_keepdim(D::Minus1)?)?;
    let (idx, w) = (idx.to_vec2::<u32>()?, w.to_vec2::<f32>()?);
    let routing = idx
        .into_iter()
        .zip(w)
        .map(|(i, w)| i.into_iter().zip(w).collect())
        .collect();
    Ok((probs.to_vec2::<f32>()?, routing))
}

/// (b) capmoe: the same logits, as f32, through `capmoe::routing::route`.
/// A plan holds served experts only (no drop markers), so its lists are
/// already compacted.
pub fn capmoe_route(logits: &Tensor, cfg: &RouterConfig) -> Res<(RoutingPlan, Routing)> {
    let (t, e) = logits.dims2()?;
    let flat = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plan = route(&Logits::new(&flat, t, e)?, cfg)?;
    let routing = (0..t)
        .map(|tok| {
            plan.assignments(tok)
                .map(|a| (a.expert, a.weight))
                .collect()
        })
        .collect();
    Ok((plan, routing))
}

/// Tolerances of the `none` check.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Relative gap under which two probabilities count as a near-tie (their
    /// order may then differ between candle's and capmoe's softmax).
    pub tie: f32,
    /// Relative difference allowed between two weights of one assignment.
    pub weight: f32,
}

pub const TOL: Tolerance = Tolerance {
    tie: 1e-5,
    weight: 1e-6,
};

/// What the check found when the two routings agreed.
#[derive(Debug, Clone, Default)]
pub struct Agreement {
    pub tokens: usize,
    pub assignments: usize,
    /// Tokens whose k-th and (k+1)-th probabilities are a near-tie.
    pub near_ties: usize,
    pub max_weight_rel: f32,
}

fn rel(a: f32, b: f32) -> f32 {
    let m = a.abs().max(b.abs());
    if m == 0.0 {
        0.0
    } else {
        (a - b).abs() / m
    }
}

/// Checks that `b` serves every token the same experts as `a` with the same
/// weights. Expert sets must match exactly, except on a near-tie at the k-th
/// place, where only experts tied with the boundary may differ.
pub fn compare(
    probs: &[Vec<f32>],
    a: &Routing,
    b: &Routing,
    k: usize,
    tol: Tolerance,
) -> Result<Agreement, String> {
    if a.len() != b.len() || a.len() != probs.len() {
        return Err(format!("token counts {} vs {}", a.len(), b.len()));
    }
    let mut agr = Agreement {
        tokens: a.len(),
        ..Default::default()
    };
    for (t, ((la, lb), p)) in a.iter().zip(b).zip(probs).enumerate() {
        if la.len() != k || lb.len() != k {
            return Err(format!(
                "token {t}: {} vs {} experts, want {k}",
                la.len(),
                lb.len()
            ));
        }
        let mut sorted = p.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let boundary = sorted[k - 1];
        let tied = sorted
            .get(k)
            .is_some_and(|&next| rel(boundary, next) <= tol.tie);
        agr.near_ties += usize::from(tied);
        let may_differ = |e: u32| tied && rel(p[e as usize], boundary) <= tol.tie;
        for &(e, wa) in la {
            match lb.iter().find(|&&(eb, _)| eb == e) {
                Some(&(_, wb)) => {
                    let r = rel(wa, wb);
                    if r.is_nan() || r > tol.weight {
                        return Err(format!(
                            "token {t} expert {e}: weight {wa:e} vs {wb:e} (rel {r:.2e} > {:.0e})",
                            tol.weight
                        ));
                    }
                    agr.max_weight_rel = agr.max_weight_rel.max(r);
                    agr.assignments += 1;
                }
                None if may_differ(e) => {}
                None => return Err(format!("token {t}: expert {e} in (a) only; (b) has {lb:?}")),
            }
        }
        if let Some(&(e, _)) = lb
            .iter()
            .find(|&&(e, _)| !la.iter().any(|&(ea, _)| ea == e) && !may_differ(e))
        {
            return Err(format!("token {t}: expert {e} in (b) only; (a) has {la:?}"));
        }
    }
    Ok(agr)
}

/// `max |a - b|` and `||a - b|| / ||a||` of two `[T, D]` outputs.
pub fn output_diff(a: &Tensor, b: &Tensor) -> Res<(f32, f32)> {
    let diff = (a - b)?;
    let max_abs = diff.abs()?.max_all()?.to_scalar::<f32>()?;
    let num = diff.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    let den = a.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok((max_abs, if den > 0.0 { num / den } else { num }))
}
