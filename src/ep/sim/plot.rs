//! The simulation's figure: predicted EP speedup over `none` against the
//! GPU count, a line per policy and gamma.

use super::run::SimReport;
use crate::chart::{
    cartesian, color, legend, line, mesh, range, reference, save_png, DrawResult,
    SeriesLabelPosition, BLACK, LARGE,
};
use plotters::style::Color;
use std::path::Path;

/// Draws `speedup.png` of `r` at `path` (x: GPUs on a log2 axis).
pub fn speedup_figure(path: &Path, r: &SimReport) -> DrawResult {
    let mut labels: Vec<String> = Vec::new();
    for t in &r.topologies {
        for c in t.cases.iter().filter(|c| c.gamma.is_some()) {
            let l = format!("{} @ {}", c.policy, c.gamma.unwrap_or(0.0));
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
    }
    let x = |gpus: usize| (gpus.max(1) as f64).log2();
    let xs = range(r.topologies.iter().map(|t| x(t.gpus)), None);
    let ys = range(
        r.topologies
            .iter()
            .flat_map(|t| t.cases.iter().map(|c| c.speedup)),
        Some(1.0),
    );
    let title = format!(
        "Predicted MoE-layer EP speedup over none (simulated), E = {}, k = {}",
        r.experts, r.top_k
    );
    save_png(path, (1400, 800), |root| {
        let mut chart = cartesian(root, &LARGE, &title, xs, (ys.0.min(0.9), ys.1 * 1.05))?;
        mesh(
            &mut chart,
            &LARGE,
            "GPUs (log scale)",
            "speedup over none (x)",
            |m| {
                m.x_label_formatter(&|v| format!("{:.0}", 2f64.powf(*v)));
            },
        )?;
        reference(&mut chart, xs, 1.0, (6, 4), BLACK.stroke_width(1), "none")?;
        for (i, l) in labels.iter().enumerate() {
            let pts: Vec<(f64, f64)> = r
                .topologies
                .iter()
                .filter_map(|t| {
                    t.cases
                        .iter()
                        .find(|c| c.gamma.is_some_and(|g| format!("{} @ {g}", c.policy) == *l))
                        .map(|c| (x(t.gpus), c.speedup))
                })
                .collect();
            line(&mut chart, &LARGE, &pts, color(i), l)?;
        }
        legend(&mut chart, &LARGE, SeriesLabelPosition::UpperRight)
    })
}
