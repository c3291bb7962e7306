//! PNG figures of the GPU benchmark, drawn with the shared chart setup of
//! [`crate::chart`]: for every batch size, a grid of panels (a row per EP
//! size, a column per skew) of speedup against gamma per policy with its
//! ideal ratio, and of P50/P99 layer latency.

use super::{GpuBenchReport, GpuCaseReport, GroupReport};
use crate::chart::{
    by_policy, gamma_range, range, save_png, Area, DrawResult, GammaPanel, RGBColor, Series,
    SeriesLabelPosition, BLACK, SMALL,
};
use crate::ep::EpError;
use std::path::{Path, PathBuf};

/// A per-case value to plot (`None`: no point).
type Metric<'a> = &'a dyn Fn(&GpuCaseReport) -> Option<f64>;

/// One line per capacity policy of `metric` (solid) and, if given, of
/// `dashed` in the same colour; black dashed horizontal references.
#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area<'_>,
    r: &GpuBenchReport,
    g: &GroupReport,
    title: &str,
    y_desc: &str,
    metric: Metric<'_>,
    dashed: Option<(&str, Metric<'_>)>,
    refs: &[(String, f64, RGBColor)],
    legend: SeriesLabelPosition,
) -> DrawResult {
    let groups = by_policy(&g.cases, |c| &c.policy, |c| c.capacity_factor);
    let points = |cases: &[&GpuCaseReport], f: Metric<'_>| -> Vec<(f64, f64)> {
        cases
            .iter()
            .filter_map(|c| Some((c.capacity_factor?, f(c)?)))
            .collect()
    };
    let series: Vec<Series> = groups
        .iter()
        .map(|(p, cases)| Series {
            label: p.clone(),
            points: points(cases, metric),
            dashed: dashed.map(|(_, f)| points(cases, f)).unwrap_or_default(),
            errors: Vec::new(),
        })
        .collect();
    let vals = groups.iter().flat_map(|(_, v)| {
        v.iter().flat_map(|c| {
            let d = dashed.and_then(|(_, f)| f(c));
            [metric(c), d].into_iter().flatten()
        })
    });
    let (mut y0, mut y1) = range(vals.chain(refs.iter().map(|x| x.1)), None);
    if y0 == y1 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    }
    GammaPanel {
        style: &SMALL,
        title,
        y_desc,
        x: gamma_range(&r.setup.capacity_factors),
        y: (y0, y1),
        refs,
        series: &series,
        dashed_label: dashed.map(|d| d.0),
        legend,
    }
    .draw(area)
}

/// The groups of batch size `t` laid out as rows (EP sizes) x columns (skews).
fn grid(r: &GpuBenchReport, t: usize) -> (Vec<usize>, Vec<String>) {
    let mut ranks: Vec<usize> = Vec::new();
    let mut skews: Vec<String> = Vec::new();
    for g in r.groups.iter().filter(|g| g.tokens == t) {
        if !ranks.contains(&g.ranks) {
            ranks.push(g.ranks);
        }
        if !skews.contains(&g.skew) {
            skews.push(g.skew.clone());
        }
    }
    (ranks, skews)
}

fn figure(
    path: &Path,
    r: &GpuBenchReport,
    t: usize,
    draw: &dyn Fn(&Area<'_>, &GroupReport) -> DrawResult,
) -> DrawResult {
    let (ranks, skews) = grid(r, t);
    let (w, h) = (640u32, 430u32);
    let size = (w * skews.len() as u32, h * ranks.len() as u32);
    save_png(path, size, |root| {
        let areas = root.split_evenly((ranks.len(), skews.len()));
        for (i, &rk) in ranks.iter().enumerate() {
            for (j, sk) in skews.iter().enumerate() {
                if let Some(g) = r.group(t, sk, rk) {
                    draw(&areas[i * skews.len() + j], g)?;
                }
            }
        }
        Ok(())
    })
}

fn speedup(path: &Path, r: &GpuBenchReport, t: usize) -> DrawResult {
    figure(path, r, t, &|a, g| {
        panel(
            a,
            r,
            g,
            &format!(
                "T {} EP {} skew {}: layer speedup P50",
                g.tokens, g.ranks, g.skew
            ),
            "speedup vs none (x)",
            &|c| c.speedup_p50,
            Some(("ideal (dashed)", &|c: &GpuCaseReport| c.ideal)),
            &[("none".to_string(), 1.0, BLACK)],
            SeriesLabelPosition::LowerRight,
        )
    })
}

fn latency(path: &Path, r: &GpuBenchReport, t: usize) -> DrawResult {
    figure(path, r, t, &|a, g| {
        let mut refs = Vec::new();
        if let Some(n) = g.case("none", None) {
            refs.push((
                format!("none P50 {:.3}", n.latency_ms.p50),
                n.latency_ms.p50,
                BLACK,
            ));
            refs.push((
                format!("none P99 {:.3}", n.latency_ms.p99),
                n.latency_ms.p99,
                RGBColor(140, 140, 140),
            ));
        }
        panel(
            a,
            r,
            g,
            &format!(
                "T {} EP {} skew {}: layer latency",
                g.tokens, g.ranks, g.skew
            ),
            "ms (solid P50, dashed P99)",
            &|c| Some(c.latency_ms.p50),
            Some(("P99 (dashed)", &|c: &GpuCaseReport| Some(c.latency_ms.p99))),
            &refs,
            SeriesLabelPosition::LowerRight,
        )
    })
}

/// Writes `gpu-speedup-T<T>.png` and `gpu-latency-T<T>.png` for every batch
/// size that has capacity cases; returns their paths.
pub fn write_figures(dir: &Path, r: &GpuBenchReport) -> Result<Vec<PathBuf>, EpError> {
    let mut out = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for g in &r.groups {
        if !sizes.contains(&g.tokens) && g.cases.iter().any(|c| c.capacity_factor.is_some()) {
            sizes.push(g.tokens);
        }
    }
    for t in sizes {
        for (name, f) in [
            (
                format!("gpu-speedup-T{t}.png"),
                speedup as fn(&Path, &GpuBenchReport, usize) -> DrawResult,
            ),
            (format!("gpu-latency-T{t}.png"), latency),
        ] {
            let p = dir.join(name);
            f(&p, r, t).map_err(|e| EpError::Plot {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            out.push(p);
        }
    }
    Ok(out)
}
