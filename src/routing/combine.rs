//! Combine: the weighted gather of expert outputs back to token order. CPU
//! twin of the combine kernel.

use super::dispatch::{check_len, DispatchLayout};
use super::error::RoutingError;
use super::plan::RoutingPlan;

/// `out[t] = sum_i w_i * y[row_i]` over token `t`'s assignments in plan order
/// (decreasing `p`), each product and sum rounded separately. A token with no
/// expert gets zeros: only the residual connection carries it.
///
/// `expert_out` is `[layout.rows(), hidden]`, expert-major as laid out.
pub fn combine(
    plan: &RoutingPlan,
    layout: &DispatchLayout,
    expert_out: &[f32],
    hidden: usize,
) -> Result<Vec<f32>, RoutingError> {
    check_len("expert outputs", expert_out.len(), layout.rows() * hidden)?;
    check_len(
        "layout assignments",
        layout.assignment_rows().len(),
        plan.len(),
    )?;
    let mut out = vec![0.0f32; plan.tokens() * hidden];
    for t in 0..plan.tokens() {
        let acc = &mut out[t * hidden..(t + 1) * hidden];
        for i in plan.offsets()[t] as usize..plan.offsets()[t + 1] as usize {
            let w = plan.weights()[i];
            let r = layout.assignment_rows()[i] as usize;
            for (a, &y) in acc
                .iter_mut()
                .zip(&expert_out[r * hidden..(r + 1) * hidden])
            {
                *a += w * y;
            }
        }
    }
    Ok(out)
}
