//! The serving benchmark's figures, drawn with the shared chart setup of [`capmoe::chart`]:
//! latency CDFs (TTFT and end to end) and load over time, a line per run.

use super::Outcome;
use capmoe::chart::{
    cartesian, color, legend, mesh, range, save_png, Area, DrawResult, SeriesLabelPosition, LARGE,
};
use capmoe::serve::{percentile, ServeRun};
use plotters::prelude::{LineSeries, PathElement};
use plotters::style::Color;
use std::path::Path;

/// A figure drawn from an [`Outcome`] into a PNG.
pub type Figure = fn(&Path, &Outcome) -> DrawResult;

/// Labelled lines, no markers (a CDF or a time series has too many points for markers).
fn panel(
    area: &Area<'_>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    lines: &[(String, Vec<(f64, f64)>)],
    y_floor: Option<f64>,
    pos: SeriesLabelPosition,
) -> DrawResult {
    let x = range(
        lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)),
        Some(0.0),
    );
    let y = range(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)), y_floor);
    let mut chart = cartesian(area, &LARGE, title, x, y)?;
    mesh(&mut chart, &LARGE, x_desc, y_desc, |_| {})?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let col = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    legend(&mut chart, &LARGE, pos)
}

/// The empirical CDF of `values` (ms) at 101 quantiles.
fn cdf(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    (1..=100)
        .filter_map(|q| percentile(&values, q as f64).map(|v| (v, q as f64 / 100.0)))
        .collect()
}

fn latencies(run: &ServeRun, first: bool) -> Vec<f64> {
    run.requests
        .iter()
        .filter_map(|r| {
            let t = if first {
                r.token_s.first()
            } else {
                r.token_s.last()
            };
            t.map(|t| (t - r.arrival_s) * 1e3)
        })
        .collect()
}

/// `latency_cdf.png`: the CDF of TTFT and of end-to-end latency, a line per run.
pub fn latency_cdf(path: &Path, o: &Outcome) -> DrawResult {
    let lines = |first: bool| -> Vec<(String, Vec<(f64, f64)>)> {
        o.report
            .runs
            .iter()
            .zip(&o.runs)
            .map(|(r, run)| (r.label.clone(), cdf(latencies(run, first))))
            .collect()
    };
    save_png(path, (1400, 560), |root| {
        let (a, b) = root.split_horizontally(700);
        let (n, ep) = (o.report.requests, &o.report.ep_timing);
        panel(
            &a,
            &format!("Time to first token, {n} requests ({ep} EP)"),
            ("TTFT (ms)", "fraction of requests"),
            &lines(true),
            Some(0.0),
            SeriesLabelPosition::LowerRight,
        )?;
        panel(
            &b,
            &format!("End-to-end latency ({ep} EP)"),
            ("end-to-end latency (ms)", "fraction of requests"),
            &lines(false),
            Some(0.0),
            SeriesLabelPosition::LowerRight,
        )
    })
}

/// At most `max` points of `pts`, each the mean of a run of consecutive ones.
fn thin(pts: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    let per = pts.len().div_ceil(max.max(1)).max(1);
    pts.chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// `load.png`: over the virtual clock, the requests in the system (in flight and waiting)
/// and the busiest EP rank's rows over the mean, a line per run.
pub fn load_over_time(path: &Path, o: &Outcome) -> DrawResult {
    let series = |f: &dyn Fn(&capmoe::serve::StepRecord) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        o.report
            .runs
            .iter()
            .zip(&o.runs)
            .map(|(r, run)| {
                let pts = run.steps.iter().map(|s| (s.start_s, f(s))).collect();
                (r.label.clone(), thin(pts, 400))
            })
            .collect()
    };
    save_png(path, (1400, 560), |root| {
        let (a, b) = root.split_horizontally(700);
        let ep = &o.report.ep_timing;
        panel(
            &a,
            "Requests in the system",
            ("time (s, virtual clock)", "in flight + waiting"),
            &series(&|s| (s.running + s.waiting) as f64),
            Some(0.0),
            SeriesLabelPosition::UpperLeft,
        )?;
        panel(
            &b,
            &format!("Busiest rank's rows over the mean ({ep} EP)"),
            ("time (s, virtual clock)", "busiest / mean rank rows"),
            &series(&|s| s.busiest_over_mean),
            Some(1.0),
            SeriesLabelPosition::UpperRight,
        )
    })
}
