//! The simulation's figure: predicted EP speedup over `none` against the
//! GPU count, a panel per gamma and a line per policy.

use super::run::SimReport;
use crate::chart::{
    cartesian, color, dashed, legend, line, mesh, range, reference, save_png, DrawResult,
    SeriesLabelPosition, BLACK, FONT, SMALL,
};
use plotters::style::Color;
use std::path::Path;

/// Draws `speedup.png` of `r` at `path`: a panel per gamma, a line per
/// capacity policy (x: GPUs on a log2 axis).
pub fn speedup_figure(path: &Path, r: &SimReport) -> DrawResult {
    let (mut policies, mut gammas): (Vec<String>, Vec<f64>) = (Vec::new(), Vec::new());
    for c in r.topologies.iter().flat_map(|t| &t.cases) {
        if let Some(g) = c.gamma {
            if !policies.contains(&c.policy) {
                policies.push(c.policy.clone());
            }
            if !gammas.contains(&g) {
                gammas.push(g);
            }
        }
    }
    let x = |gpus: usize| (gpus.max(1) as f64).log2();
    let lo = r
        .topologies
        .iter()
        .map(|t| x(t.gpus))
        .fold(f64::INFINITY, f64::min);
    let hi = r.topologies.iter().map(|t| x(t.gpus)).fold(0.0, f64::max);
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let xs = (lo - 0.3, hi + 0.3);
    let ticks = (hi - lo).round() as usize + 1;
    let ys = range(
        r.topologies
            .iter()
            .flat_map(|t| t.cases.iter().flat_map(|c| [c.speedup, c.ideal_speedup])),
        Some(1.0),
    );
    let ys = (ys.0.min(0.9), ys.1 * 1.05);
    let cols = gammas.len().clamp(1, 2);
    let rows = gammas.len().div_ceil(cols).max(1);
    save_png(path, (800 * cols as u32, 520 * rows as u32 + 40), |root| {
        let (top, body) = root.split_vertically(40);
        top.titled(
            &format!(
                "Predicted MoE-layer EP speedup over none (simulated, not measured), E = {}, k = {}; dashed: ideal from the busiest rank's rows",
                r.experts, r.top_k
            ),
            (FONT, 18),
        )?;
        let panels = body.split_evenly((rows, cols));
        for (&g, area) in gammas.iter().zip(panels.iter()) {
            let mut chart = cartesian(area, &SMALL, &format!("gamma = {g}"), xs, ys)?;
            mesh(
                &mut chart,
                &SMALL,
                "GPUs (log scale)",
                "speedup over none (x)",
                |m| {
                    m.x_labels(ticks).x_label_formatter(&|v| {
                        if (v - v.round()).abs() < 1e-6 {
                            format!("{:.0}", 2f64.powf(v.round()))
                        } else {
                            String::new()
                        }
                    });
                },
            )?;
            reference(&mut chart, xs, 1.0, (6, 4), BLACK.stroke_width(1), "none")?;
            for (i, p) in policies.iter().enumerate() {
                let find = |t: &super::run::SimTopology| {
                    t.cases
                        .iter()
                        .find(|c| c.policy == *p && c.gamma == Some(g))
                        .map(|c| (x(t.gpus), c.speedup, c.ideal_speedup))
                };
                let pts: Vec<(f64, f64, f64)> = r.topologies.iter().filter_map(find).collect();
                let solid: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
                line(&mut chart, &SMALL, &solid, color(i), p)?;
                let ideal = pts.iter().map(|p| (p.0, p.2)).collect();
                dashed(&mut chart, ideal, (4, 4), color(i).stroke_width(1), None)?;
            }
            legend(&mut chart, &SMALL, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}
