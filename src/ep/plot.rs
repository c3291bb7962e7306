//! PNG figures of a benchmark report, drawn with the shared chart setup of
//! [`crate::chart`] (plotters' bitmap backend, a shipped font, atomic files).

use super::{BenchReport, CaseReport, EpError};
use crate::chart::{
    self, bars, by_policy, cartesian, dashed, gamma_range, legend, mesh, range, save_png, Area,
    DrawResult, GammaPanel, RGBColor, Series, SeriesLabelPosition, BLACK, LARGE,
};
use plotters::style::Color;
use std::path::{Path, PathBuf};

/// What one panel draws beside its metric: an optional dashed companion
/// (label, metric) and an optional spread `(low, high)` as error bars.
#[derive(Default)]
struct Extras<'a> {
    dashed: Option<(&'a str, Metric<'a>)>,
    spread: Option<Spread<'a>>,
}

type Metric<'a> = &'a dyn Fn(&CaseReport) -> f64;
type Spread<'a> = &'a dyn Fn(&CaseReport) -> (f64, f64);

/// One panel: a metric against gamma, a line per capacity policy, and an
/// optional dashed reference (the `none` value).
fn panel(
    area: &Area<'_>,
    r: &BenchReport,
    title: &str,
    y_desc: &str,
    metric: &dyn Fn(&CaseReport) -> f64,
    reference: Option<f64>,
    extras: Extras<'_>,
) -> DrawResult {
    let groups = by_policy(&r.cases, |c| &c.policy, |c| c.capacity_factor);
    let x = |c: &CaseReport| c.capacity_factor.unwrap_or(0.0);
    let series: Vec<Series> = groups
        .iter()
        .map(|(p, cases)| Series {
            label: p.clone(),
            points: cases.iter().map(|c| (x(c), metric(c))).collect(),
            dashed: extras
                .dashed
                .map(|(_, f)| cases.iter().map(|c| (x(c), f(c))).collect())
                .unwrap_or_default(),
            errors: extras
                .spread
                .map(|f| {
                    cases
                        .iter()
                        .map(|c| {
                            let (lo, hi) = f(c);
                            (x(c), lo, hi)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let y = range(
        series.iter().flat_map(|s| {
            let dashed = s.dashed.iter().map(|p| p.1);
            let bars = s.errors.iter().flat_map(|e| [e.1, e.2]);
            s.points.iter().map(|p| p.1).chain(dashed).chain(bars)
        }),
        reference,
    );
    let refs: Vec<_> = reference
        .map(|v| ("none (dropless)".to_string(), v, BLACK))
        .into_iter()
        .collect();
    GammaPanel {
        style: &LARGE,
        title,
        y_desc,
        x: gamma_range(&r.setup.capacity_factors),
        y,
        refs: &refs,
        series: &series,
        dashed_label: extras.dashed.map(|(l, _)| l),
        legend: SeriesLabelPosition::UpperRight,
    }
    .draw(area)
}

/// The MoE-layer panel carries the ideal (busiest rank's rows, none over the
/// policy) dashed beside the measured median, and the spread over timing
/// rounds (min to max) as error bars.
fn speedup(path: &Path, r: &BenchReport) -> DrawResult {
    save_png(path, (1400, 560), |root| {
        let (a, b) = root.split_horizontally(700);
        let ideal = |c: &CaseReport| c.summary.ideal_speedup;
        let spread = |c: &CaseReport| {
            let s = c.summary.speedup_moe_spread;
            (s[0], s[2])
        };
        panel(
            &a,
            r,
            "MoE-layer EP speedup vs none (bars: min-max over rounds)",
            "speedup (x)",
            &|c| c.summary.speedup_moe,
            Some(1.0),
            Extras {
                dashed: Some(("ideal (busiest rank's rows)", &ideal)),
                spread: Some(&spread),
            },
        )?;
        panel(
            &b,
            r,
            "End-to-end EP prefill speedup vs none",
            "speedup (x)",
            &|c| c.summary.speedup_e2e,
            Some(1.0),
            Extras::default(),
        )
    })
}

fn fidelity(path: &Path, r: &BenchReport) -> DrawResult {
    save_png(path, (1400, 560), |root| {
        let (a, b) = root.split_horizontally(700);
        panel(
            &a,
            r,
            "KL(none || policy), mean over positions",
            "KL (nats)",
            &|c| c.summary.fidelity.kl,
            Some(0.0),
            Extras::default(),
        )?;
        panel(
            &b,
            r,
            "Top-1 agreement with none",
            "agreement (%)",
            &|c| 100.0 * c.summary.fidelity.top1,
            Some(100.0),
            Extras::default(),
        )
    })
}

/// The gamma the load figure shows: the one closest to 1.5 (the paper's).
pub fn load_gamma(r: &BenchReport) -> Option<f64> {
    r.setup
        .capacity_factors
        .iter()
        .copied()
        .min_by(|a, b| (a - 1.5).abs().total_cmp(&(b - 1.5).abs()))
}

fn load(path: &Path, r: &BenchReport, layer: usize) -> DrawResult {
    let g = load_gamma(r);
    let cases: Vec<&CaseReport> = r
        .cases
        .iter()
        .filter(|c| c.capacity_factor.is_none() || c.capacity_factor == g)
        .collect();
    let experts = r.model.experts;
    let cap = cases.iter().find_map(|c| c.capacity);
    let ymax = cases
        .iter()
        .filter_map(|c| c.layers.get(layer))
        .flat_map(|l| l.load.iter().copied())
        .chain(cap)
        .max()
        .unwrap_or(1) as f64
        * 1.45;
    let title = match g {
        Some(g) => format!(
            "Layer {layer}: assignments per expert, none vs capacity policies at gamma = {g}"
        ),
        None => format!("Layer {layer}: assignments per expert (dropless)"),
    };
    let xs = (-0.5, experts as f64 - 0.5);
    save_png(path, (1400, 620), |root| {
        let mut chart = cartesian(root, &LARGE, &title, xs, (0.0, ymax.max(1.0)))?;
        mesh(&mut chart, &LARGE, "expert", "assignments served", |m| {
            m.y_label_formatter(&|y| format!("{y:.0}"))
                .x_labels(experts.min(32))
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .disable_x_mesh();
        })?;
        let n = cases.len().max(1) as f64;
        let w = 0.84 / n;
        for (i, c) in cases.iter().enumerate() {
            let Some(l) = c.layers.get(layer) else {
                continue;
            };
            let col = if c.capacity_factor.is_none() {
                RGBColor(90, 90, 90)
            } else {
                chart::color(i - 1)
            };
            let rects = l.load.iter().enumerate().map(|(e, &v)| {
                let x0 = e as f64 - 0.42 + i as f64 * w;
                ((x0, 0.0), (x0 + w * 0.92, v as f64))
            });
            bars(&mut chart, rects, col, &c.policy)?;
        }
        if let Some(cv) = cap {
            let (y, label) = (cv as f64, format!("capacity C = {cv}"));
            let line = vec![(xs.0, y), (xs.1, y)];
            dashed(
                &mut chart,
                line,
                (8, 5),
                BLACK.stroke_width(2),
                Some(&label),
            )?;
        }
        legend(&mut chart, &LARGE, SeriesLabelPosition::UpperRight)
    })
}

/// Writes `load.png` (per-expert load of `layer` before and after capacity),
/// `speedup.png` (MoE-layer and end-to-end speedup vs gamma per policy) and
/// `fidelity.png` (KL and top-1 vs gamma) into `dir`; returns their paths.
/// Speedup and fidelity figures need at least one capacity policy.
pub fn write_figures(dir: &Path, r: &BenchReport, layer: usize) -> Result<Vec<PathBuf>, EpError> {
    let mut out = Vec::new();
    let draw = |name: &str, f: &dyn Fn(&Path) -> DrawResult, out: &mut Vec<PathBuf>| {
        let p = dir.join(name);
        f(&p).map_err(|e| EpError::Plot {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        out.push(p);
        Ok::<(), EpError>(())
    };
    draw("load.png", &|p| load(p, r, layer), &mut out)?;
    if r.cases.iter().any(|c| c.capacity_factor.is_some()) {
        draw("speedup.png", &|p| speedup(p, r), &mut out)?;
        draw("fidelity.png", &|p| fidelity(p, r), &mut out)?;
    }
    Ok(out)
}
