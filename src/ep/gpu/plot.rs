//! PNG figures of the GPU benchmark (plotters' bitmap backend, text from a
//! shipped font as in [`crate::ep::plot`]): for every batch size, a grid of
//! panels (a row per EP size, a column per skew) of speedup against gamma
//! per policy with its ideal ratio, and of P50/P99 layer latency.

use super::{GpuBenchReport, GpuCaseReport, GroupReport};
use crate::ep::plot::{color, fonts, range, render_atomic, Res, FONT};
use crate::ep::EpError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// A per-case value to plot (`None`: no point).
type Metric<'a> = &'a dyn Fn(&GpuCaseReport) -> Option<f64>;

/// Capacity policies of a group in order, each with its cases by gamma.
fn by_policy(g: &GroupReport) -> Vec<(String, Vec<&GpuCaseReport>)> {
    let mut out: Vec<(String, Vec<&GpuCaseReport>)> = Vec::new();
    for c in g.cases.iter().filter(|c| c.capacity_factor.is_some()) {
        match out.iter_mut().find(|(p, _)| *p == c.policy) {
            Some((_, v)) => v.push(c),
            None => out.push((c.policy.clone(), vec![c])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.capacity_factor.partial_cmp(&b.capacity_factor).unwrap());
    }
    out
}

fn gamma_range(r: &GpuBenchReport) -> (f64, f64) {
    let (lo, hi) = range(r.setup.capacity_factors.iter().copied(), None);
    if hi - lo < 0.2 {
        (lo - 0.25, hi + 0.25)
    } else {
        (lo, hi)
    }
}

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
) -> Res {
    let series = by_policy(g);
    let (x0, x1) = gamma_range(r);
    let vals = series.iter().flat_map(|(_, v)| {
        v.iter().flat_map(|c| {
            let d = dashed.and_then(|(_, f)| f(c));
            [metric(c), d].into_iter().flatten()
        })
    });
    let (mut y0, mut y1) = range(vals.chain(refs.iter().map(|x| x.1)), None);
    if y0 == y1 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("capacity factor gamma")
        .y_desc(y_desc)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    for (label, v, col) in refs {
        let col = *col;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, *v), (x1, *v)],
                6,
                4,
                col.stroke_width(1),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col));
    }
    for (i, (p, cases)) in series.iter().enumerate() {
        let col = color(i);
        let pts: Vec<(f64, f64)> = cases
            .iter()
            .filter_map(|c| Some((c.capacity_factor?, metric(c)?)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(p.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, col.filled())))?;
        if let Some((what, f)) = dashed {
            let d: Vec<(f64, f64)> = cases
                .iter()
                .filter_map(|c| Some((c.capacity_factor?, f(c)?)))
                .collect();
            let s = chart.draw_series(DashedLineSeries::new(d, 5, 4, col.stroke_width(1)))?;
            if i == 0 {
                s.label(what)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col));
            }
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 11))
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
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
    draw: &dyn Fn(&Area<'_>, &GroupReport) -> Res,
) -> Res {
    let (ranks, skews) = grid(r, t);
    let (w, h) = (640u32, 430u32);
    let root = BitMapBackend::new(path, (w * skews.len() as u32, h * ranks.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((ranks.len(), skews.len()));
    for (i, &rk) in ranks.iter().enumerate() {
        for (j, sk) in skews.iter().enumerate() {
            if let Some(g) = r.group(t, sk, rk) {
                draw(&areas[i * skews.len() + j], g)?;
            }
        }
    }
    root.present()?;
    Ok(())
}

fn speedup(path: &Path, r: &GpuBenchReport, t: usize) -> Res {
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

fn latency(path: &Path, r: &GpuBenchReport, t: usize) -> Res {
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
    fonts();
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
                speedup as fn(&Path, &GpuBenchReport, usize) -> Res,
            ),
            (format!("gpu-latency-T{t}.png"), latency),
        ] {
            let p = dir.join(name);
            render_atomic(&p, &|q| f(q, r, t)).map_err(|e| EpError::Plot {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            out.push(p);
        }
    }
    Ok(out)
}
